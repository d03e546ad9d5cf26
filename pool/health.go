package pool

import (
	"context"
	"errors"
	"strconv"
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
	// Role is what the server said it is at the latest check: RolePrimary,
	// RoleStandby, or "" (not known: the check could not ask). Lag is a
	// standby's replay lag (0 when it has replayed all it received).
	Role string
	Lag  time.Duration
}

// Server roles, as pg_is_in_recovery() tells them.
const (
	RolePrimary = "primary"
	RoleStandby = "standby"
)

// roleQuery asks a server its role and, for a standby, how far its replay is
// behind: 0 when it has replayed all WAL it received (an idle primary sends
// none, so the time since the last replayed transaction would grow for
// nothing), else the age of the last transaction it replayed (of its start,
// when it has replayed none since).
const roleQuery = `SELECT pg_is_in_recovery(), CASE WHEN NOT pg_is_in_recovery() OR pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
	ELSE EXTRACT(EPOCH FROM now() - COALESCE(pg_last_xact_replay_timestamp(), pg_postmaster_start_time())) END`

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
	var role string
	var lag time.Duration
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
		role, lag = "", 0
		if err == nil && conn != nil {
			role, lag = c.role(ctx, conn)
		}
		c.record(latency, err, role, lag)
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

// role asks the server its role and replay lag; "" when it cannot say.
func (c *checker) role(ctx context.Context, conn *pgconn.PgConn) (string, time.Duration) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	res, err := conn.Exec(ctx, roleQuery).ReadAll()
	if err != nil || len(res) != 1 || len(res[0].Rows) != 1 || len(res[0].Rows[0]) != 2 {
		return "", 0
	}
	row := res[0].Rows[0]
	secs, err := strconv.ParseFloat(string(row[1]), 64)
	if err != nil {
		return "", 0
	}
	if string(row[0]) == "t" {
		return RoleStandby, time.Duration(secs * float64(time.Second))
	}
	return RolePrimary, 0
}

func (c *checker) record(latency time.Duration, err error, role string, lag time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	h := &c.health
	h.Checked = time.Now()
	if role != h.Role && h.Role != "" && role != "" {
		c.log.Warn("server changed role", zap.String("shard", c.shard.Name), zap.String("was", h.Role), zap.String("now", role))
	}
	h.Role, h.Lag = role, lag
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
