package monitor

import (
	"context"

	"github.com/pgrouter/pgrouter/move"
)

// For clusters that declare tables, the partition moves in progress are
// read from the shards every health interval (every 10 s without health
// checks), for SHOW SHARDS: every instance shows the moves whichever runs
// them.

// watchMoves polls the moves in progress for one round. The caller holds mu.
func (m *Monitor) watchMoves(r *round) {
	interval := pollInterval(r)
	m.repeat(r, interval, func() {
		ctx, cancel := context.WithTimeout(r.ctx, interval)
		st := move.ReadStatus(ctx, r.cfg)
		cancel()
		m.storeIfCurrent(r, func() { m.moves.Store(&st) })
	})
}

// Move describes the move in progress a shard takes part in (as source or
// target), or "" when none.
func (m *Monitor) Move(cluster, shard string) string {
	st := m.moves.Load()
	if st == nil {
		return ""
	}
	for _, mv := range *st {
		if mv.Cluster == cluster && (mv.Source == shard || mv.Target == shard) {
			return mv.String()
		}
	}
	return ""
}
