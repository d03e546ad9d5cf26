package monitor

import (
	"context"
	"sync"
	"time"

	"github.com/pgrouter/pgrouter/pool"
)

// StatsPeriod is the window of SHOW STATS averages, as pgbouncer's
// stats_period.
const StatsPeriod = 15 * time.Second

// statsSampler keeps the pool counters at the start and end of the last
// complete period, so SHOW STATS can give per-second rates and averages
// over it, as pgbouncer does.
type statsSampler struct {
	mu         sync.Mutex
	prev, last map[pool.Key]pool.Counters
	span       time.Duration
}

func (st *statsSampler) run(ctx context.Context, pools *pool.Set) {
	t := time.NewTicker(StatsPeriod)
	defer t.Stop()
	st.sample(pools, 0)
	start := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			st.sample(pools, now.Sub(start))
			start = now
		}
	}
}

func (st *statsSampler) sample(pools *pool.Set, span time.Duration) {
	snap := map[pool.Key]pool.Counters{}
	for _, p := range pools.Pools() {
		snap[pool.Key{Shard: p.Shard(), User: p.User()}] = p.Counters()
	}
	st.mu.Lock()
	st.prev, st.last, st.span = st.last, snap, span
	st.mu.Unlock()
}

// StatsWindow returns the counters moved during the last complete
// StatsPeriod, summed by shard, and the period's length (0 before the
// first one ends).
func (m *Monitor) StatsWindow() (map[string]pool.Counters, time.Duration) {
	st := &m.stats
	st.mu.Lock()
	defer st.mu.Unlock()
	out := map[string]pool.Counters{}
	if st.prev == nil {
		return out, 0
	}
	for key, c := range st.last {
		out[key.Shard] = out[key.Shard].Add(c.Sub(st.prev[key]))
	}
	return out, st.span
}
