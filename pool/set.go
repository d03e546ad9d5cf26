package pool

import (
	"context"
	"fmt"
	"net/url"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"

	"github.com/pgrouter/pgrouter/shardmap"
)

// janitorInterval is how often idle timeouts, lifetimes and min_idle are enforced.
const janitorInterval = time.Second

// Settings are the limits every pool of a Set shares.
type Settings struct {
	Size               int
	MinIdle            int
	Reserve            int
	ReserveTimeout     time.Duration
	Lifetime           time.Duration
	IdleTimeout        time.Duration
	ConnectTimeout     time.Duration
	CheckDelay         time.Duration
	CheckQuery         string
	PreparedStatements int
	MaxMessageSize     int
}

// SetConfig configures a Set.
type SetConfig struct {
	Settings
	// Log receives connection events; nil discards them.
	Log *zap.Logger
	// Password returns the password to log in to a shard whose DSN names no
	// user (the client's user is used, and its plain password from the users
	// file when there is one). Nil means no password.
	Password func(user string) (string, bool)
}

// Key identifies a pool.
type Key struct {
	Shard string
	User  string
}

// Set owns every pool, creating them on first use, and runs the janitor that
// enforces idle timeouts, lifetimes and min_idle.
type Set struct {
	cfg SetConfig
	ids atomic.Uint64

	mu       sync.Mutex
	pools    map[Key]*Pool
	paused   map[string]bool     // by shard name; kept across reloads
	current  map[string]string   // shard name -> DSN of the map in force (nil: any)
	checkers map[string]*checker // health checks, by shard name
	closed   bool

	stop chan struct{}
	done chan struct{}
	kick chan struct{} // asks the janitor for a pass now
}

// NewSet starts a Set and its janitor; Close stops both.
func NewSet(cfg SetConfig) *Set {
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	s := &Set{cfg: cfg, pools: map[Key]*Pool{}, paused: map[string]bool{}, checkers: map[string]*checker{}, stop: make(chan struct{}), done: make(chan struct{}), kick: make(chan struct{}, 1)}
	go s.janitor()
	return s
}

// Get returns the pool for a shard and the user a client logged in as. The
// server user is the DSN's user, or the client's when the DSN names none.
func (s *Set) Get(shard *shardmap.Shard, clientUser string) (*Pool, error) {
	user, hasUser := dsnUser(shard.DSN)
	if !hasUser {
		user = clientUser
	}
	key := Key{Shard: shard.Name, User: user}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	if s.current != nil && s.current[shard.Name] != shard.DSN {
		return nil, ErrRetired // the caller holds an old map: no pool to an old DSN
	}
	if p, ok := s.pools[key]; ok {
		return p, nil
	}
	cc, err := pgconn.ParseConfig(shard.DSN)
	if err != nil {
		return nil, fmt.Errorf("shard %s: parse dsn: %w", shard.Name, err)
	}
	if !hasUser {
		cc.User = user
		if s.cfg.Password != nil {
			if pw, ok := s.cfg.Password(user); ok {
				cc.Password = pw
			}
		}
	}
	cc.ConnectTimeout = 0 // dial bounds each attempt with the server_connect_timeout in force
	p := New(Config{Shard: shard.Name, Replica: shard.Primary != nil, User: user, Conn: cc, Settings: s.cfg.Settings, Log: s.cfg.Log}, &s.ids)
	p.paused = s.paused[shard.Name]
	p.dsn = shard.DSN
	s.pools[key] = p
	return p, nil
}

// Configure puts new limits in force on every pool, now and for pools
// created later.
func (s *Set) Configure(st Settings) {
	s.mu.Lock()
	s.cfg.Settings = st
	pools := make([]*Pool, 0, len(s.pools))
	for _, p := range s.pools {
		pools = append(pools, p)
	}
	s.mu.Unlock()
	for _, p := range pools {
		p.Reconfigure(st)
	}
}

// Retire makes shards the map in force and drains the pools of shards that
// are no longer in it, or whose DSN changed: they are forgotten (the next Get
// makes a fresh pool; a Get with an old DSN fails with ErrRetired), their
// idle connections close now and the busy ones when their clients release
// them, so no transaction is cut short. Their waiters get ErrRetired.
func (s *Set) Retire(shards []*shardmap.Shard) {
	keep := make(map[string]string, len(shards))
	for _, sh := range shards {
		keep[sh.Name] = sh.DSN
	}
	var gone []*Pool
	s.mu.Lock()
	s.current = keep
	for key, p := range s.pools {
		if dsn, ok := keep[key.Shard]; !ok || dsn != p.dsn {
			delete(s.pools, key)
			gone = append(gone, p)
		}
	}
	for name := range s.paused {
		if _, ok := keep[name]; !ok {
			delete(s.paused, name)
		}
	}
	s.mu.Unlock()
	for _, p := range gone {
		s.cfg.Log.Info("draining the pool of a shard removed or changed by reload", zap.String("shard", p.cfg.Shard), zap.String("server_user", p.cfg.User))
		p.mu.Lock()
		p.retired = true
		p.mu.Unlock()
		p.Close()
	}
}

// Pause stops handing out connections of a shard (PAUSE): clients that need
// one wait, up to their query_wait_timeout, until Resume. Pools created
// while the shard is paused start paused.
func (s *Set) Pause(shard string) {
	s.setPaused(shard, true)
}

// Resume lets a paused shard's waiting clients go on.
func (s *Set) Resume(shard string) {
	s.setPaused(shard, false)
}

func (s *Set) setPaused(shard string, paused bool) {
	s.mu.Lock()
	if paused {
		s.paused[shard] = true
	} else {
		delete(s.paused, shard)
	}
	var pools []*Pool
	for key, p := range s.pools {
		if key.Shard == shard {
			pools = append(pools, p)
		}
	}
	s.mu.Unlock()
	for _, p := range pools {
		p.setPaused(paused)
	}
}

// Paused reports whether a shard is paused.
func (s *Set) Paused(shard string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.paused[shard]
}

// Busy returns how many connections of a shard are in use or being opened;
// a PAUSE is complete when it reaches zero.
func (s *Set) Busy(shard string) int {
	n := 0
	for _, p := range s.Pools() {
		if p.cfg.Shard == shard {
			st := p.Stats()
			n += st.Open - st.Idle // in use, or being dialed for someone
		}
	}
	return n
}

// Warm creates the pools of shards whose DSN names the server user (they do
// not wait for a client) and has the janitor open their min_idle
// connections now.
func (s *Set) Warm(shards []*shardmap.Shard) {
	for _, sh := range shards {
		if _, ok := dsnUser(sh.DSN); ok {
			_, _ = s.Get(sh, "")
		}
	}
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// Pools returns every pool, ordered by shard and user.
func (s *Set) Pools() []*Pool {
	s.mu.Lock()
	out := make([]*Pool, 0, len(s.pools))
	for _, p := range s.pools {
		out = append(out, p)
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if out[i].cfg.Shard != out[j].cfg.Shard {
			return out[i].cfg.Shard < out[j].cfg.Shard
		}
		return out[i].cfg.User < out[j].cfg.User
	})
	return out
}

// Close stops the janitor and closes every pool. It is idempotent.
func (s *Set) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	pools := s.pools
	checkers := s.checkers
	s.checkers = map[string]*checker{}
	s.mu.Unlock()
	close(s.stop)
	<-s.done
	for _, c := range checkers {
		close(c.stop)
		<-c.done
	}
	for _, p := range pools {
		p.Close()
	}
}

func (s *Set) janitor() {
	defer close(s.done)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-s.stop
		cancel()
	}()
	t := time.NewTicker(janitorInterval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case now := <-t.C:
			for _, p := range s.Pools() {
				p.maintain(ctx, now)
			}
		case <-s.kick:
			for _, p := range s.Pools() {
				p.maintain(ctx, time.Now())
			}
		}
	}
}

// dsnUser returns the user a connection string names, if any.
func dsnUser(dsn string) (string, bool) {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			return "", false
		}
		if name := u.User.Username(); name != "" {
			return name, true
		}
		if name := u.Query().Get("user"); name != "" {
			return name, true
		}
		return "", false
	}
	for _, kv := range keywordValues(dsn) {
		if kv[0] == "user" {
			return kv[1], kv[1] != ""
		}
	}
	return "", false
}

// keywordValues splits a libpq keyword/value string ("host=h user='a b'")
// into pairs, undoing single quotes and backslash escapes.
func keywordValues(dsn string) [][2]string {
	var out [][2]string
	i := 0
	for i < len(dsn) {
		for i < len(dsn) && (dsn[i] == ' ' || dsn[i] == '\t' || dsn[i] == '\n') {
			i++
		}
		start := i
		for i < len(dsn) && dsn[i] != '=' && dsn[i] != ' ' {
			i++
		}
		key := dsn[start:i]
		for i < len(dsn) && dsn[i] == ' ' {
			i++
		}
		if i >= len(dsn) || dsn[i] != '=' {
			return out
		}
		i++
		for i < len(dsn) && dsn[i] == ' ' {
			i++
		}
		var val strings.Builder
		if i < len(dsn) && dsn[i] == '\'' {
			i++
			for i < len(dsn) && dsn[i] != '\'' {
				if dsn[i] == '\\' && i+1 < len(dsn) {
					i++
				}
				val.WriteByte(dsn[i])
				i++
			}
			i++
		} else {
			for i < len(dsn) && dsn[i] != ' ' {
				if dsn[i] == '\\' && i+1 < len(dsn) {
					i++
				}
				val.WriteByte(dsn[i])
				i++
			}
		}
		out = append(out, [2]string{key, val.String()})
	}
	return out
}
