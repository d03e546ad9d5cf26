package pool

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"

	"github.com/pgrouter/pgrouter/shardmap"
)

// HealthConfig says how shards are checked. A zero Interval disables checks.
type HealthConfig struct {
	Interval time.Duration
	Timeout  time.Duration
	Failures int // consecutive failures that mark a shard down
	Query    string
}

// Shard health states.
const (
	HealthUnknown = "unknown" // not checked yet (or checks are disabled)
	HealthUp      = "up"
	HealthDown    = "down"
)

// Health is the result of a shard's latest checks.
type Health struct {
	State     string
	Failures  int           // consecutive failed checks
	Checked   time.Time     // when the latest check ended
	Latency   time.Duration // of the latest successful check
	LastError string        // of the latest failed check
	Since     time.Time     // when State last changed
}

// checker checks one shard on its own goroutine, over one connection it
// keeps open between checks, so a check costs a round trip, not a login.
type checker struct {
	shard *shardmap.Shard
	cfg   HealthConfig
	log   *zap.Logger
	stop  chan struct{}
	done  chan struct{}

	mu     sync.Mutex
	health Health
}

// Watch starts checking shards that have no checker and stops the checkers
// of shards no longer listed (or whose DSN or check settings changed, which
// restart from unknown).
func (s *Set) Watch(shards []*shardmap.Shard, cfg HealthConfig) {
	want := map[string]*shardmap.Shard{}
	for _, sh := range shards {
		want[sh.Name] = sh
	}
	var stopped []*checker
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	for name, c := range s.checkers {
		if sh, ok := want[name]; !ok || sh.DSN != c.shard.DSN || cfg != c.cfg {
			delete(s.checkers, name)
			stopped = append(stopped, c)
		}
	}
	if cfg.Interval > 0 {
		for name, sh := range want {
			if _, ok := s.checkers[name]; ok {
				continue
			}
			c := &checker{shard: sh, cfg: cfg, log: s.cfg.Log, stop: make(chan struct{}), done: make(chan struct{}),
				health: Health{State: HealthUnknown, Since: time.Now()}}
			s.checkers[name] = c
			go c.run()
		}
	}
	s.mu.Unlock()
	for _, c := range stopped {
		close(c.stop)
		<-c.done
	}
}

// Health returns a shard's health; unknown when it is not checked.
func (s *Set) Health(shard string) Health {
	s.mu.Lock()
	c := s.checkers[shard]
	s.mu.Unlock()
	if c == nil {
		return Health{State: HealthUnknown}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.health
}

// Down reports whether the latest checks found a shard down.
func (s *Set) Down(shard string) bool { return s.Health(shard).State == HealthDown }

func (c *checker) run() {
	defer close(c.done)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-c.stop:
			cancel()
		case <-c.done:
		}
	}()
	var conn *pgconn.PgConn
	defer func() {
		if conn != nil {
			closeCtx, cancelClose := context.WithTimeout(context.Background(), time.Second)
			_ = conn.Close(closeCtx)
			cancelClose()
		}
	}()
	t := time.NewTicker(c.cfg.Interval)
	defer t.Stop()
	for {
		var latency time.Duration
		var err error
		conn, latency, err = c.check(ctx, conn)
		if ctx.Err() != nil {
			return
		}
		c.record(latency, err)
		select {
		case <-c.stop:
			return
		case <-t.C:
		}
	}
}

// check runs the health query, connecting first when needed. A server that
// answers the login with an error other than "not accepting connections" is
// up: it is there and talking, which is what the check is for (a DSN
// without a user may name no role that exists).
func (c *checker) check(ctx context.Context, conn *pgconn.PgConn) (*pgconn.PgConn, time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	start := time.Now()
	if conn == nil || conn.IsClosed() {
		cc, err := pgconn.ParseConfig(c.shard.DSN)
		if err != nil {
			return nil, 0, err
		}
		cc.RuntimeParams["application_name"] = "pgrouter health check"
		conn, err = pgconn.ConnectConfig(ctx, cc)
		if err != nil {
			if answered(err) {
				return nil, time.Since(start), nil
			}
			return nil, 0, err
		}
	}
	if _, err := conn.Exec(ctx, c.cfg.Query).ReadAll(); err != nil {
		closeCtx, cancelClose := context.WithTimeout(context.Background(), time.Second)
		_ = conn.Close(closeCtx)
		cancelClose()
		return nil, 0, err
	}
	return conn, time.Since(start), nil
}

// answered reports whether a failed login got an answer from a running
// server (an authentication or unknown-database error).
func answered(err error) bool {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return false
	}
	return !strings.HasPrefix(pe.Code, "57") && !strings.HasPrefix(pe.Code, "53") && !strings.HasPrefix(pe.Code, "08")
}

func (c *checker) record(latency time.Duration, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	h := &c.health
	h.Checked = time.Now()
	prev := h.State
	if err == nil {
		h.Failures = 0
		h.Latency = latency
		h.LastError = ""
		h.State = HealthUp
	} else {
		h.Failures++
		h.LastError = err.Error()
		if h.Failures >= c.cfg.Failures {
			h.State = HealthDown
		}
	}
	if h.State == prev {
		return
	}
	h.Since = h.Checked
	switch h.State {
	case HealthDown:
		c.log.Error("shard is down", zap.String("shard", c.shard.Name), zap.Int("failed_checks", h.Failures), zap.String("error", h.LastError))
	case HealthUp:
		c.log.Info("shard is up", zap.String("shard", c.shard.Name), zap.Duration("check_latency", latency))
	}
}
