package monitor

import (
	"context"

	"github.com/pgrouter/pgrouter/fanin"
)

// With a fanin section, where the central copy holds every shard up to
// (pgrouter.fanin_state in the target against each shard's WAL position)
// is read every health interval, for SHOW SHARDS and /metrics: as for
// refsync, the databases are read, not the fanin process.

// faninView is the latest read of the central copy's positions.
type faninView struct {
	cluster string
	shards  []fanin.ShardStatus
}

// watchFanin polls fan-in's positions for one round. The caller holds mu.
func (m *Monitor) watchFanin(r *round) {
	interval := pollInterval(r)
	m.repeat(r, interval, func() {
		ctx, cancel := context.WithTimeout(r.ctx, interval)
		st, err := fanin.Status(ctx, r.cfg)
		cancel()
		view := &faninView{cluster: r.cfg.Fanin.Cluster, shards: st}
		if err != nil {
			view = nil
		}
		m.storeIfCurrent(r, func() { m.faninStatus.Store(view) })
	})
}

// FaninLag is how many bytes of a shard's WAL the central copy is behind;
// ok is false without a fanin section, before the shard's copy, or when
// the target or the shard could not be read.
func (m *Monitor) FaninLag(cluster, shard string) (bytes int64, ok bool) {
	v := m.faninStatus.Load()
	if v == nil || v.cluster != cluster {
		return 0, false
	}
	for _, s := range v.shards {
		if s.Shard == shard && s.Copied && s.LagBytes >= 0 {
			return s.LagBytes, true
		}
	}
	return 0, false
}
