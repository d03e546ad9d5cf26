package monitor

import (
	"context"
	"time"

	"github.com/pgrouter/pgrouter/refsync"
)

// With a reference section, where refsync has brought every shard
// (pgrouter.refsync_state on the shard against the source's WAL position)
// is read every health interval, for SHOW SHARDS and /metrics. It reads the
// databases, not a refsync process, so every pgrouter instance shows the
// same lag and needs no link to wherever refsync runs.

// pollDefault is the pollers' interval when health checks are off.
const pollDefault = 10 * time.Second

// pollInterval is how often the database pollers (refsync's and fan-in's
// lag, moves) read: every health interval, else pollDefault.
func pollInterval(r *round) time.Duration {
	if d := r.cfg.Health.Interval.D(); d > 0 {
		return d
	}
	return pollDefault
}

// watchRefsync polls refsync's positions for one round. The caller holds mu.
func (m *Monitor) watchRefsync(r *round) {
	interval := pollInterval(r)
	m.repeat(r, interval, func() {
		ctx, cancel := context.WithTimeout(r.ctx, interval)
		st := refsync.ReadStatus(ctx, r.cfg)
		cancel()
		m.storeIfCurrent(r, func() { m.refsyncStatus.Store(st) })
	})
}

// RefsyncLag is how far behind the source a shard's reference tables are;
// ok is false when there are none, the shard has not been copied yet, or
// its position (or the source's) could not be read.
func (m *Monitor) RefsyncLag(cluster, shard string) (bytes int64, lag time.Duration, ok bool) {
	st := m.refsyncStatus.Load()
	if st == nil || st.SourceErr != nil {
		return 0, 0, false
	}
	for _, sh := range st.Shards {
		if sh.Cluster == cluster && sh.Shard == shard && sh.Err == nil && sh.Copied {
			return sh.LagBytes, sh.Lag, true
		}
	}
	return 0, 0, false
}
