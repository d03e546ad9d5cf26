package proxy

import (
	"sort"
	"time"

	"go.uber.org/zap"

	"github.com/pgrouter/pgrouter/shardmap"
	"github.com/pgrouter/pgrouter/sqlstate"
)

// What the admin console's pgbouncer commands do to clients: DISABLE and
// ENABLE, KILL and KILL_CLIENT.

// SetDisabled refuses (DISABLE) or accepts again (ENABLE) new logins to a
// cluster, or to every cluster with the named shard: any request of such a
// client might need that shard. Clients already logged in stay.
func (s *Server) SetDisabled(name string, disabled bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !disabled {
		delete(s.disabled, name)
		return
	}
	if s.disabled == nil {
		s.disabled = map[string]bool{}
	}
	s.disabled[name] = true
}

// Disabled reports whether DISABLE holds for a cluster or shard name.
func (s *Server) Disabled(name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.disabled[name]
}

// disabledFor returns the name DISABLE was run on that keeps logins out of
// a cluster, if any.
func (s *Server) disabledFor(cl *shardmap.Cluster) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.disabled[cl.Name] {
		return cl.Name, true
	}
	for _, sh := range cl.Shards {
		if s.disabled[sh.Name] {
			return sh.Name, true
		}
	}
	return "", false
}

// disabledError is what a login to a disabled cluster gets: pgbouncer's
// message and code, which scripts written for it match.
func disabledError(database, name string) *Error {
	return fatalf(sqlstate.ProtocolViolation, "database does not allow connections: %s", database).
		WithHint("An operator ran DISABLE %s on the admin console; ENABLE %s lets clients in again.", name, name)
}

// KillClients closes the connection of every logged-in client that match
// accepts (KILL, KILL_CLIENT) and returns how many. Each session then ends
// as if its client had vanished: a transaction it had open is rolled back
// on its shard, and its server is never reused with that state.
func (s *Server) KillClients(match func(ClientStatus) bool) int {
	n := 0
	for _, sess := range s.sessionList() {
		if match(sess.status()) {
			sess.kill()
			n++
		}
	}
	return n
}

// kill closes the client's socket under the session (from another
// goroutine): the raw connection, so that a TLS close cannot block on a
// write the session has stuck.
func (s *session) kill() {
	if s.watched != nil {
		_ = s.watched.Conn.Close()
		return
	}
	_ = s.conn.Close()
}

// LoginCount is the connections accepted that have not logged in yet.
func (s *Server) LoginCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, in := range s.conns {
		if !in {
			n++
		}
	}
	return n
}

// partitionPause is the partitions of one cluster a partition move's
// cut-over holds: routed calls for them wait until done is closed.
type partitionPause struct {
	parts map[int]bool
	done  chan struct{}
}

// PausePartitions holds the routed calls of a cluster's partitions (PAUSE
// PARTITIONS): they wait, up to query_wait_timeout, until
// ResumePartitions, and are then routed with the map in force then. Calls
// already sent go on: a move's freeze waits for them on the shard.
func (s *Server) PausePartitions(cluster string, parts []int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	next := map[string]*partitionPause{}
	if cur := s.partPauses.Load(); cur != nil {
		for k, v := range *cur {
			next[k] = v
		}
	}
	pp := &partitionPause{parts: map[int]bool{}, done: make(chan struct{})}
	if old := next[cluster]; old != nil { // widen: callers of the old pause keep waiting on it
		for p := range old.parts {
			pp.parts[p] = true
		}
		pp.done = old.done
	}
	for _, p := range parts {
		pp.parts[p] = true
	}
	next[cluster] = pp
	s.partPauses.Store(&next)
	// A mover killed while the partitions are held must not hold them for
	// ever: after query_wait_timeout (the longest any call waits) they are
	// released to the map in force, whose guards refuse what a half-done
	// cut-over cannot take yet (40001).
	expiry := s.gen.Load().cfg.Pool.QueryWaitTimeout.D()
	time.AfterFunc(expiry, func() {
		if cur := s.partPauses.Load(); cur != nil && (*cur)[cluster] != nil && (*cur)[cluster].done == pp.done {
			s.log.Warn("PAUSE PARTITIONS expired: releasing the held calls", zap.String("cluster", cluster), zap.Duration("after", expiry))
			s.ResumePartitions(cluster)
		}
	})
}

// ResumePartitions releases what PausePartitions holds for a cluster.
func (s *Server) ResumePartitions(cluster string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur := s.partPauses.Load()
	if cur == nil || (*cur)[cluster] == nil {
		return
	}
	close((*cur)[cluster].done)
	next := map[string]*partitionPause{}
	for k, v := range *cur {
		if k != cluster {
			next[k] = v
		}
	}
	if len(next) == 0 {
		s.partPauses.Store(nil)
		return
	}
	s.partPauses.Store(&next)
}

// PausedPartitions lists a cluster's paused partitions, sorted.
func (s *Server) PausedPartitions(cluster string) []int {
	cur := s.partPauses.Load()
	if cur == nil || (*cur)[cluster] == nil {
		return nil
	}
	var out []int
	for p := range (*cur)[cluster].parts {
		out = append(out, p)
	}
	sort.Ints(out)
	return out
}

// partitionWait returns what a routed call for partition p of cluster
// waits on, or nil when it is not paused.
func (s *Server) partitionWait(cluster string, p int) <-chan struct{} {
	cur := s.partPauses.Load()
	if cur == nil {
		return nil
	}
	if pp := (*cur)[cluster]; pp != nil && pp.parts[p] {
		return pp.done
	}
	return nil
}

// awaitPartition waits for a paused partition, up to query_wait_timeout.
func (s *session) awaitPartition(done <-chan struct{}, p int) error {
	t := time.NewTimer(s.waitTimeout)
	defer t.Stop()
	select {
	case <-done:
		return nil
	case <-t.C:
		return errorf(sqlstate.TooManyConnections, "pgrouter: query_wait_timeout: partition %d of cluster %s is paused (a partition move's cut-over) and was not resumed within %s", p, s.cluster.Name, s.waitTimeout).
			WithHint("pgrouter move --resume finishes the move and resumes it; RESUME PARTITIONS %s on the admin console releases it by hand.", s.cluster.Name)
	case <-s.srv.ctx.Done():
		return ShutdownError()
	}
}
