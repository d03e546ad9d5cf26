package proxy

import (
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
