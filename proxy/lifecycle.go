package proxy

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/pgrouter/pgrouter/config"
	"github.com/pgrouter/pgrouter/shardmap"
	"github.com/pgrouter/pgrouter/sqlstate"
)

// Reload reads the config file again and swaps in what it describes: shard
// map, routes, function signatures, pool limits, users and TLS. A file that
// does not load or validate changes nothing. Clients stay connected: each
// takes the new config at its next transaction boundary, shards removed (or
// whose DSN changed) are drained, paused shards stay paused. listen and
// metrics_listen keep their old values (a listener is not moved under its
// clients); the returned notes say so.
func (s *Server) Reload() (notes []string, err error) {
	return s.swap(true, func(old *generation) (*config.Config, []string, error) {
		return s.reread(old)
	})
}

// RefreshOwnership reads again where the shards record the partitions of
// the clusters with tables (a router saw a guard refuse a write: a move
// changed the map), and swaps in a map that follows it, the config in force
// otherwise unchanged. Concurrent calls are folded into one.
func (s *Server) RefreshOwnership() {
	if !s.refreshing.CompareAndSwap(false, true) {
		return
	}
	defer s.refreshing.Store(false)
	_, err := s.swap(false, func(old *generation) (*config.Config, []string, error) {
		cfg := old.cfg.Clone()
		readOwnership(cfg, s.log)
		return cfg, nil, nil
	})
	if err != nil {
		s.log.Warn("reading the partition map from the shards failed", zap.Error(err))
	}
}

// reread loads router.yaml again for Reload, keeping what changes only at
// a restart, and reads the partition map the shards record.
func (s *Server) reread(old *generation) (cfg *config.Config, notes []string, err error) {
	if old.cfg.Path == "" {
		return nil, nil, errors.New("pgrouter was started without a config file: there is nothing to reload")
	}
	cfg, err = config.Load(old.cfg.Path)
	if err != nil {
		return nil, nil, err
	}
	if cfg.Listen != old.cfg.Listen {
		notes = append(notes, fmt.Sprintf("listen changed to %s: it takes effect at the next restart", cfg.Listen))
		cfg.Listen = old.cfg.Listen
	}
	if cfg.ListenReuseport != old.cfg.ListenReuseport {
		notes = append(notes, fmt.Sprintf("listen_reuseport changed to %t: it takes effect at the next restart", cfg.ListenReuseport))
		cfg.ListenReuseport = old.cfg.ListenReuseport
	}
	if cfg.PeerID != old.cfg.PeerID {
		notes = append(notes, fmt.Sprintf("peer_id changed to %d: it takes effect at the next restart (the clients' cancel keys carry the old one)", cfg.PeerID))
		cfg.PeerID = old.cfg.PeerID
		if _, ok := cfg.Peers[cfg.PeerID]; len(cfg.Peers) > 0 && !ok {
			return nil, nil, fmt.Errorf("peers has no entry for the peer_id in force, %d (peer_id changes at restart only)", cfg.PeerID)
		}
	}
	if cfg.MetricsListen != old.cfg.MetricsListen {
		notes = append(notes, fmt.Sprintf("metrics_listen changed to %q: it takes effect at the next restart", cfg.MetricsListen))
		cfg.MetricsListen = old.cfg.MetricsListen
	}
	readOwnership(cfg, s.log)
	return cfg, notes, nil
}

// swap puts in force the config next returns, with its notes; counted says
// whether it is a RELOAD (SHOW INSTANCE's generation, /metrics).
func (s *Server) swap(counted bool, next func(old *generation) (*config.Config, []string, error)) (notes []string, err error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, errors.New("pgrouter is shutting down")
	}
	s.wg.Add(1) // Close waits for the reload (which starts catalog loaders)
	s.mu.Unlock()
	defer s.wg.Done()
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	defer func() {
		switch {
		case !counted:
		case err != nil:
			s.reloads.failed.Add(1)
			s.log.Error("reload failed; the running config is unchanged", zap.Error(err))
		default:
			s.reloads.ok.Add(1)
		}
	}()
	old := s.gen.Load()
	cfg, notes, err := next(old)
	if err != nil {
		return nil, err
	}
	gen, err := loadGeneration(cfg)
	if err != nil {
		return nil, err
	}
	warnAuth(s.log, gen)
	all := gen.allShards()
	s.pools.Watch(all, healthConfig(cfg))
	// Routes work the moment clients see the new map; what the shards lack is
	// told to whoever reloaded.
	notes = append(notes, s.startCatalogs(gen)...)
	s.pools.Configure(poolSettings(cfg))
	s.pools.Retire(all) // before the swap: nobody makes a pool to an old DSN after it
	s.gen.Store(gen)
	old.cancel()
	for _, f := range s.subscribers {
		f(gen.ctx, gen.cfg, gen.shards)
	}
	s.pools.Warm(all)
	for _, n := range notes {
		s.log.Warn("reload: " + n)
	}
	s.log.Info("config reloaded", zap.String("file", cfg.Path), zap.Int("shards", len(all)))
	return notes, nil
}

// ShutdownTimeout is the shutdown_timeout in force (a reload may change it).
func (s *Server) ShutdownTimeout() time.Duration { return s.gen.Load().cfg.ShutdownTimeout.D() }

// sameRouting reports whether a statement placed on shard by generation a
// would be placed there by b too: the shard keeps its DSN and partitions,
// and the cluster's hash, partition count, default route and declared
// functions are unchanged.
func sameRouting(a, b *generation, cluster, shard string) bool {
	ca, cb := a.cfg.Clusters[cluster], b.cfg.Clusters[cluster]
	if ca == nil || cb == nil || ca.Hash != cb.Hash || ca.Partitions != cb.Partitions ||
		ca.DefaultRoute != cb.DefaultRoute || a.cfg.DefaultRoute != b.cfg.DefaultRoute ||
		!reflect.DeepEqual(a.cfg.Functions, b.cfg.Functions) {
		return false
	}
	find := func(cl *config.Cluster) *config.Shard {
		for _, sh := range cl.Shards {
			if sh.Name == shard {
				return sh
			}
		}
		return nil
	}
	sa, sb := find(ca), find(cb)
	return sa != nil && sb != nil && sa.DSN == sb.DSN && slices.Equal(sa.PartitionList, sb.PartitionList)
}

// reloadCounters count RELOADs and SIGHUPs by outcome, for /metrics.
type reloadCounters struct {
	ok, failed atomic.Int64
}

// Shutdown stops accepting connections and lets clients finish: each client
// is told 57P01 and disconnected as soon as it is between transactions
// (idle ones at once, after a grace for a request already on its way: see
// drainNow; clients still logging in finish their login first); when ctx ends, whoever is left is disconnected, which
// rolls back their open transactions on the shards. The server is closed
// when Shutdown returns.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		<-s.done
		return nil
	}
	first := !s.draining.Swap(true)
	for ln := range s.listeners {
		_ = ln.Close()
	}
	for conn, loggedIn := range s.conns {
		if loggedIn {
			_ = conn.SetReadDeadline(time.Unix(1, 0)) // wake clients blocked reading
		}
	}
	s.mu.Unlock()
	if first {
		s.log.Info("shutting down: waiting for transactions to finish", zap.Int("clients", s.ClientCount()))
	}
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	var err error
wait:
	for s.connCount() > 0 {
		select {
		case <-ctx.Done():
			err = fmt.Errorf("shutdown: %d connections still open when the wait ended; closing them: %w", s.connCount(), ctx.Err())
			s.log.Warn("shutdown timeout: closing the remaining connections", zap.Int("connections", s.connCount()))
			break wait
		case <-t.C:
		case <-s.done:
			return nil
		}
	}
	_ = s.Close()
	return err
}

// drainGraceWindow is how long a client found between transactions when a
// shutdown begins may take to send its next request (see drainNow).
const drainGraceWindow = 100 * time.Millisecond

// drainNow reports whether a shutdown should close the client now: it is
// between transactions and has had its grace. The grace is one wait of
// drainGraceWindow for a request already on its way, so that a client
// that connected just before the listener closed (a pgbench -C client, an
// application's pool opening a connection) runs the transaction it
// connected for instead of being told 57P01 before its first statement;
// the client is closed at the next boundary after it. A client silent for
// the whole window is closed at once.
func (s *session) drainNow() bool {
	if !s.srv.draining.Load() || !s.atBoundary() {
		return false
	}
	if s.drainGraced {
		return true
	}
	s.drainGraced = true
	if s.cr.HasMessage() {
		return false
	}
	_ = s.conn.SetReadDeadline(time.Now().Add(drainGraceWindow))
	_, err := s.cr.Peek()
	_ = s.conn.SetReadDeadline(time.Time{})
	return err != nil
}

// Draining reports whether a shutdown has begun.
func (s *Server) Draining() bool { return s.draining.Load() }

func (s *Server) connCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// addSession and removeSession keep the registry SHOW CLIENTS reads.
func (s *Server) addSession(sess *session) {
	s.mu.Lock()
	s.sessions[sess] = struct{}{}
	s.mu.Unlock()
}

func (s *Server) removeSession(sess *session) {
	s.mu.Lock()
	delete(s.sessions, sess)
	s.mu.Unlock()
}

func (s *Server) sessionList() []*session {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*session, 0, len(s.sessions))
	for sess := range s.sessions {
		out = append(out, sess)
	}
	return out
}

// ShutdownError is what clients are told when a shutdown reaches them
// (a new value each time: senders set fields on it).
func ShutdownError() *Error {
	return &Error{Fatal: true, Code: sqlstate.AdminShutdown, Message: "terminating connection due to administrator command: pgrouter is shutting down",
		Hint: "Reconnect: another pgrouter instance, or this one once restarted, will serve you."}
}

// adopt moves the session to a newly loaded config generation. Servers of
// pools that the reload retired are given back (and so closed); the
// session's settings and prepared statements follow it to new servers, as
// they do in transaction mode. A client whose cluster is gone is
// disconnected.
func (s *session) adopt(g *generation) error {
	cl, ok := g.shards.Cluster(s.cluster.Name)
	if !ok {
		return &Error{Fatal: true, Code: sqlstate.AdminShutdown, Message: fmt.Sprintf("terminating connection: cluster %s was removed from the config by a reload", s.cluster.Name)}
	}
	cfg := g.cfg
	s.gen, s.cluster, s.router = g, cl, g.routers[cl.Name]
	s.waitTimeout = cfg.Pool.QueryWaitTimeout.D()
	s.idleTxLimit = cfg.Pool.IdleTransactionTimeout.D()
	s.idleLimit = cfg.Pool.ClientIdleTimeout.D()
	clear(s.pools)
	if s.server != nil && (s.server.Pool().Closed() || !inCluster(cl, s.server.Shard())) {
		s.park()
	}
	for name, c := range s.parked {
		if c.Pool().Closed() || !inCluster(cl, name) {
			delete(s.parked, name)
			s.releaseServer(c)
		}
	}
	return nil
}

func inCluster(cl *shardmap.Cluster, shard string) bool {
	_, ok := cl.ShardNamed(shard)
	return ok
}
