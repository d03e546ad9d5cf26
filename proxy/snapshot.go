package proxy

import (
	"context"
	"crypto/tls"
	"net"
	"sort"
	"time"

	"github.com/pgrouter/pgrouter/config"
	"github.com/pgrouter/pgrouter/pool"
	"github.com/pgrouter/pgrouter/router"
	"github.com/pgrouter/pgrouter/shardmap"
)

// The snapshot API: what the control plane (the admin console, the
// pollers, /metrics) reads of a running Server. Every method returns copies
// or immutable values, taken without holding any lock of the caller's, so
// the control plane never blocks the data plane for longer than a copy.

// Config is the config in force (immutable: a reload swaps in another).
func (s *Server) Config() *config.Config { return s.gen.Load().cfg }

// Map is the shard map in force (immutable, like Config).
func (s *Server) Map() *shardmap.Map { return s.gen.Load().shards }

// Catalog is the function signatures loaded for a cluster of the config in
// force, nil for a cluster that does not exist.
func (s *Server) Catalog(cluster string) *router.Catalog {
	r := s.gen.Load().routers[cluster]
	if r == nil {
		return nil
	}
	return r.Catalog()
}

// Subscribe calls f with the config in force now and again after each
// successful reload, with a context that ends when that config is replaced
// or the server closes: the pollers run one round of work per config. f is
// called under the reload lock and must return promptly (start goroutines,
// do not wait on them). Call it before Serve.
func (s *Server) Subscribe(f func(ctx context.Context, cfg *config.Config, shards *shardmap.Map)) {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	s.subscribers = append(s.subscribers, f)
	gen := s.gen.Load()
	f(gen.ctx, gen.cfg, gen.shards)
}

// ReloadCounts are the RELOADs and SIGHUPs so far, by outcome.
func (s *Server) ReloadCounts() (ok, failed int64) {
	return s.reloads.ok.Load(), s.reloads.failed.Load()
}

// ShardStatus is one shard's state.
type ShardStatus struct {
	Shard    *shardmap.Shard
	Health   pool.Health
	Paused   bool
	Stats    pool.Stats    // summed over the shard's pools
	Counters pool.Counters // summed over the shard's pools
}

// ShardStatuses returns every shard's state in config order.
func (s *Server) ShardStatuses() []ShardStatus {
	byShard := map[string][]*pool.Pool{}
	for _, p := range s.pools.Pools() {
		byShard[p.Shard()] = append(byShard[p.Shard()], p)
	}
	var out []ShardStatus
	for _, sh := range s.gen.Load().allShards() {
		st := ShardStatus{Shard: sh, Health: s.pools.Health(sh.Name), Paused: s.pools.Paused(sh.Name)}
		for _, p := range byShard[sh.Name] {
			ps := p.Stats()
			st.Stats.Active += ps.Active
			st.Stats.Idle += ps.Idle
			st.Stats.Waiting += ps.Waiting
			st.Stats.Open += ps.Open
			st.Stats.MaxWait = max(st.Stats.MaxWait, ps.MaxWait)
			st.Counters = st.Counters.Add(p.Counters())
		}
		out = append(out, st)
	}
	return out
}

// Client states, as SHOW CLIENTS names them.
const (
	ClientIdle    = "idle"    // between requests, no server linked
	ClientActive  = "active"  // a server connection is linked
	ClientWaiting = "waiting" // queued for a server connection
)

// ClientStatus is one logged-in client.
type ClientStatus struct {
	ID       uint64
	User     string
	Database string // the cluster
	AppName  string
	State    string     // ClientIdle, ClientActive or ClientWaiting
	Server   *pool.Conn // linked server connection, nil unless active
	Remote   net.Addr
	Local    net.Addr
	TLS      bool
	// Connected is when the client logged in; LastRequest when its latest
	// request began (zero before the first).
	Connected   time.Time
	LastRequest time.Time
}

// Clients returns every logged-in client, in login order.
func (s *Server) Clients() []ClientStatus {
	sessions := s.sessionList()
	out := make([]ClientStatus, 0, len(sessions))
	for _, sess := range sessions {
		out = append(out, sess.status())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// status is the session as Clients shows it; safe from any goroutine (it
// reads only what is set at login, atomics, and linked under mu).
func (s *session) status() ClientStatus {
	s.mu.Lock()
	linked := s.linked
	s.mu.Unlock()
	st := ClientStatus{ID: s.id, User: s.user, Database: s.dbName, AppName: s.appName, State: ClientIdle,
		Remote: s.conn.RemoteAddr(), Local: s.conn.LocalAddr(), Connected: s.connected}
	_, st.TLS = s.conn.(*tls.Conn)
	if ns := s.lastRequest.Load(); ns != 0 {
		st.LastRequest = time.Unix(0, ns)
	}
	switch {
	case s.waiting.Load():
		st.State = ClientWaiting
	case linked != nil:
		st.State, st.Server = ClientActive, linked
	}
	return st
}
