package proxy

import (
	"github.com/pgrouter/pgrouter/pool"
	"github.com/pgrouter/pgrouter/shardmap"
)

// replicaFor picks a replica of sh to serve a read_only call: one that the
// latest health check found up, a standby (roles are discovered, not
// trusted: a promoted replica serves no reads as a replica), and within
// max_replica_lag, taking them in turn. nil when none qualifies: the call
// goes to the primary.
func (s *Server) replicaFor(sh *shardmap.Shard) *shardmap.Shard {
	n := len(sh.Replicas)
	if n == 0 {
		return nil
	}
	maxLag := s.gen.Load().cfg.MaxReplicaLag.D()
	start := int(s.replicaTurn.Add(1) % uint64(n))
	for i := range n {
		r := sh.Replicas[(start+i)%n]
		h := s.pools.Health(r.Name)
		if h.State == pool.HealthUp && h.Role == pool.RoleStandby && h.Lag <= maxLag {
			return r
		}
	}
	return nil
}
