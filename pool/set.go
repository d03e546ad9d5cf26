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

	mu     sync.Mutex
	pools  map[Key]*Pool
	closed bool

	stop chan struct{}
	done chan struct{}
	kick chan struct{} // asks the janitor for a pass now
}

// NewSet starts a Set and its janitor; Close stops both.
func NewSet(cfg SetConfig) *Set {
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	s := &Set{cfg: cfg, pools: map[Key]*Pool{}, stop: make(chan struct{}), done: make(chan struct{}), kick: make(chan struct{}, 1)}
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
	cc.ConnectTimeout = s.cfg.ConnectTimeout
	p := New(Config{
		Shard:              shard.Name,
		User:               user,
		Conn:               cc,
		Size:               s.cfg.Size,
		MinIdle:            s.cfg.MinIdle,
		Reserve:            s.cfg.Reserve,
		ReserveTimeout:     s.cfg.ReserveTimeout,
		Lifetime:           s.cfg.Lifetime,
		IdleTimeout:        s.cfg.IdleTimeout,
		ConnectTimeout:     s.cfg.ConnectTimeout,
		CheckDelay:         s.cfg.CheckDelay,
		CheckQuery:         s.cfg.CheckQuery,
		PreparedStatements: s.cfg.PreparedStatements,
		MaxMessageSize:     s.cfg.MaxMessageSize,
		Log:                s.cfg.Log,
	}, &s.ids)
	s.pools[key] = p
	return p, nil
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
	s.mu.Unlock()
	close(s.stop)
	<-s.done
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
