package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/pgrouter/pgrouter/auth"
	"github.com/pgrouter/pgrouter/config"
	"github.com/pgrouter/pgrouter/pool"
	"github.com/pgrouter/pgrouter/router"
	"github.com/pgrouter/pgrouter/shardmap"
)

// generation is one loaded config with everything derived from it. It is
// immutable; a reload builds a new one and swaps the pointer.
type generation struct {
	cfg    *config.Config
	shards *shardmap.Map
	users  *auth.Users // nil with trust and no users file
	tls    *tls.Config // nil when tls.mode is disable
	// binding is SCRAM's tls-server-end-point channel binding data: the
	// hash of pgrouter's certificate (RFC 5929), nil without TLS.
	binding []byte
	// routers place statements, one per cluster.
	routers map[string]*router.Router
	// ctx ends when a reload replaces the generation, stopping its
	// background catalog loads.
	ctx    context.Context
	cancel context.CancelFunc
}

// allShards lists every shard of every cluster.
func (g *generation) allShards() []*shardmap.Shard {
	var all []*shardmap.Shard
	for _, cl := range g.shards.Clusters() {
		for _, sh := range cl.Shards {
			all = append(all, sh)
			all = append(all, sh.Replicas...) // pools and health checks of their own
		}
	}
	return all
}

// Server accepts client connections and runs one session per client.
//
// Locks (docs/architecture.md has them all): reloadMu is taken first, by
// Reload and Subscribe, which under it take pool.Set's, each pool.Pool's
// and the subscribers' locks one at a time; mu is never held while any other lock is taken
// (the watchdog and SHOW CLIENTS copy the session list and let go of mu
// before taking a session's mu); pool.Pool.mu is a leaf.
type Server struct {
	// Set at construction.
	log     *zap.Logger
	pools   *pool.Set
	cancels cancelRegistry
	known   knownRegistry
	ctx     context.Context // ends when the server closes
	stop    context.CancelFunc
	gen     atomic.Pointer[generation]

	clientIDs atomic.Uint64
	// replicaTurn spreads read_only calls over a shard's replicas.
	replicaTurn atomic.Uint64
	clients     atomic.Int64 // connections counted against max_client_conn, from accept on
	overflow    atomic.Int64 // connections past max_client_conn still being told so
	started     time.Time
	// draining is set by Shutdown: clients are told 57P01 as soon as they
	// are between transactions.
	draining atomic.Bool
	reloadMu sync.Mutex // one reload at a time
	reloads  reloadCounters
	// subscribers are called with each config put in force (Subscribe);
	// guarded by reloadMu.
	subscribers []func(context.Context, *config.Config, *shardmap.Map)
	// console serves logins to the admin database (SetConsole).
	console atomic.Pointer[Console]

	mu       sync.Mutex
	disabled map[string]bool // clusters and shards DISABLE refuses logins to
	// refreshing: a RefreshOwnership is running (others fold into it).
	refreshing atomic.Bool
	// partPauses: the partitions PAUSE PARTITIONS holds, by cluster (nil:
	// none, the routed call's only cost).
	partPauses atomic.Pointer[map[string]*partitionPause]
	listeners  map[net.Listener]struct{}
	conns      map[net.Conn]bool     // true once the client has logged in
	sessions   map[*session]struct{} // logged-in clients, for SHOW CLIENTS
	closed     bool
	done       chan struct{} // closed when Close has finished

	wg sync.WaitGroup // one per connection goroutine
}

// NewServer builds a server from a validated config. log may be nil.
func NewServer(cfg *config.Config, log *zap.Logger) (*Server, error) {
	readOwnership(cfg, log)
	if log == nil {
		log = zap.NewNop()
	}
	gen, err := loadGeneration(cfg)
	if err != nil {
		return nil, err
	}
	warnAuth(log, gen)
	s := &Server{
		log:       log,
		started:   time.Now(),
		listeners: map[net.Listener]struct{}{},
		conns:     map[net.Conn]bool{},
		sessions:  map[*session]struct{}{},
		done:      make(chan struct{}),
		cancels:   cancelRegistry{peerID: uint32(cfg.PeerID)},
	}
	s.ctx, s.stop = context.WithCancel(context.Background())
	s.gen.Store(gen)
	s.pools = pool.NewSet(pool.SetConfig{
		Settings: poolSettings(cfg),
		Log:      log,
		Password: s.plainPassword,
	})
	all := gen.allShards()
	s.pools.Warm(all) // min_idle connections open at start, not at the first client
	s.pools.Watch(all, healthConfig(cfg))
	s.startCatalogs(gen)
	s.wg.Add(1)
	go s.watchdog()
	return s, nil
}

// poolSettings are the pool limits of a config.
func poolSettings(cfg *config.Config) pool.Settings {
	p := cfg.Pool
	return pool.Settings{
		Size:               p.Size,
		MinIdle:            p.MinIdle,
		Reserve:            p.ReservePoolSize,
		ReserveTimeout:     p.ReservePoolTimeout.D(),
		Lifetime:           p.ServerLifetime.D(),
		IdleTimeout:        p.ServerIdleTimeout.D(),
		ConnectTimeout:     p.ServerConnectTimeout.D(),
		CheckDelay:         p.ServerCheckDelay.D(),
		CheckQuery:         p.ServerCheckQuery,
		PreparedStatements: p.PreparedStatements,
		MaxMessageSize:     int(p.MaxMessageSize),
	}
}

// healthConfig is how a config asks shards to be checked.
func healthConfig(cfg *config.Config) pool.HealthConfig {
	h := cfg.Health
	return pool.HealthConfig{Interval: h.Interval.D(), Timeout: min(h.Timeout.D(), max(h.Interval.D(), time.Millisecond)), Failures: h.Failures, Query: h.Query}
}

func loadGeneration(cfg *config.Config) (*generation, error) {
	shards, err := shardmap.New(cfg)
	if err != nil {
		return nil, err
	}
	g := &generation{cfg: cfg, shards: shards, routers: map[string]*router.Router{}}
	g.ctx, g.cancel = context.WithCancel(context.Background())
	for _, cl := range shards.Clusters() {
		g.routers[cl.Name] = router.New(cl)
	}
	if cfg.Auth.UsersFile != "" {
		if g.users, err = auth.LoadUsers(cfg.Auth.UsersFile); err != nil {
			return nil, err
		}
	}
	if cfg.TLS.Mode != config.TLSDisable {
		cert, err := tls.LoadX509KeyPair(cfg.TLS.Cert, cfg.TLS.Key)
		if err != nil {
			return nil, fmt.Errorf("tls: %w", err)
		}
		g.tls = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		if g.binding, err = endPointBinding(cert); err != nil {
			return nil, fmt.Errorf("tls: %w", err)
		}
	}
	return g, nil
}

// warnAuth says at start and at each reload what in the auth setup an
// operator must know: trust without a users file admits any client under
// any name (the admin console's admin_users included, and shards see the
// client's name as their login role when a DSN names no user), and
// users-file entries with the empty password, which nobody can log in as
// (as with pgbouncer), as happens to files generated from pg_shadow.
func warnAuth(log *zap.Logger, g *generation) {
	if g.cfg.Auth.Type == config.AuthTrust && g.users == nil {
		log.Warn("auth.type is trust and auth.users_file is not set: ANY client can log in under ANY user name, the admin console's admin_users included, and shards whose DSN names no user see that name as the login role; set auth.users_file or use scram-sha-256 unless only trusted local clients can reach "+g.cfg.Listen,
			zap.String("listen", g.cfg.Listen))
	}
	if names := g.users.EmptyPasswords(); len(names) > 0 {
		log.Warn("users file: these users have an empty password and cannot log in; give them a password",
			zap.String("users_file", g.cfg.Auth.UsersFile), zap.Strings("users", names))
	}
}

// plainPassword gives the pool a client's plain password from the users file,
// for shards whose DSN names no user (the client's own credentials are used).
func (s *Server) plainPassword(user string) (string, bool) {
	secret, ok := s.gen.Load().users.Lookup(user)
	if !ok || secret.Kind != auth.Plain {
		return "", false
	}
	return secret.Plain, true
}

// Pools exposes the server's pools (for tests and the admin console).
func (s *Server) Pools() *pool.Set { return s.pools }

// Serve accepts connections on ln until Close. It returns nil after Close.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		_ = ln.Close()
		return nil
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	s.log.Info("listening", zap.String("addr", ln.Addr().String()))

	var backoff time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			if s.isClosed() || s.draining.Load() {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && !errors.Is(err, net.ErrClosed) { // EMFILE and friends: wait, then retry
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn("accept failed; retrying", zap.Error(err), zap.Duration("backoff", backoff))
				select {
				case <-time.After(backoff):
					continue
				case <-s.ctx.Done():
					return nil
				}
			}
			return fmt.Errorf("accept: %w", err)
		}
		backoff = 0
		adm := s.admit()
		if adm == dropped {
			s.log.Warn("max_client_conn reached twice over; closing a connection unanswered", zap.String("remote", conn.RemoteAddr().String()))
			_ = conn.Close()
			continue
		}
		if !s.track(conn) {
			s.release(adm)
			_ = conn.Close()
			return nil
		}
		go func() {
			defer s.wg.Done()
			defer s.untrack(conn)
			defer s.release(adm)
			s.handle(conn, adm)
		}()
	}
}

// track registers a connection so Close can reach it; false after Close.
func (s *Server) track(conn net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[conn] = false
	s.wg.Add(1)
	return true
}

// loggedIn marks a tracked connection as past login: from then on a
// shutdown wakes it when it is idle. One still logging in is left to finish
// (within client_login_timeout), so that a client accepted just before the
// listener closed gets its grace (drainNow) instead of a cut connection.
func (s *Server) loggedIn(conn net.Conn) {
	s.mu.Lock()
	if _, ok := s.conns[conn]; ok {
		s.conns[conn] = true
	}
	s.mu.Unlock()
}

func (s *Server) untrack(conn net.Conn) {
	_ = conn.Close()
	s.mu.Lock()
	delete(s.conns, conn)
	s.mu.Unlock()
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// Close stops accepting, closes every client connection, waits for their
// goroutines and closes the pools. It is idempotent.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		<-s.done
		return nil
	}
	s.closed = true
	for ln := range s.listeners {
		_ = ln.Close()
	}
	for conn := range s.conns {
		_ = conn.Close()
	}
	s.mu.Unlock()
	s.stop()
	s.gen.Load().cancel()
	s.wg.Wait()
	s.pools.Close()
	close(s.done)
	return nil
}

// Done is closed once the server has shut down (Close, or the end of a
// Shutdown, which the SHUTDOWN command and SIGTERM start).
func (s *Server) Done() <-chan struct{} { return s.done }

// admission is how an accepted connection is counted.
type admission int

const (
	admitted  admission = iota // counted against max_client_conn
	overLimit                  // past max_client_conn: may cancel, is told 53300 otherwise
	dropped                    // past max_client_conn twice over: closed unanswered
)

// admit counts a connection the moment it is accepted, before it has sent
// a byte: counting only clients that sent a startup packet let any number
// of silent connections pile up. A connection past the limit is still read
// (briefly) because a cancel request must get through to a saturated
// router; those are bounded by max_client_conn too, and past that a
// connection is closed without an answer. release undoes what admit did.
func (s *Server) admit() admission {
	limit := int64(s.gen.Load().cfg.Pool.MaxClientConn)
	if s.clients.Add(1) <= limit {
		return admitted
	}
	s.clients.Add(-1)
	if s.overflow.Add(1) <= limit {
		return overLimit
	}
	s.overflow.Add(-1)
	return dropped
}

func (s *Server) release(a admission) {
	switch a {
	case admitted:
		s.clients.Add(-1)
	case overLimit:
		s.overflow.Add(-1)
	}
}

// ClientCount reports the number of admitted client connections.
func (s *Server) ClientCount() int { return int(s.clients.Load()) }
