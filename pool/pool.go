// Package pool keeps server connections per (shard, server user).
//
// It dials with pgconn (which handles TLS, SCRAM and MD5 to the server), then
// hijacks the socket: from then on the proxy relays raw protocol bytes and the
// pool only does bookkeeping. That is why pgxpool cannot carry client
// traffic: its release check only sees messages that went through pgconn, and
// a relayed transaction would come back looking idle. Here the holder alone
// decides when a connection is clean (ReadyForQuery 'I', nothing
// outstanding) and only then calls Release.
package pool

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"

	"github.com/pgrouter/pgrouter/wire"
)

// checkAfterIdle is how long a connection may sit idle before it is checked
// (one non-blocking peek at the socket) on its way out of the pool. Under
// load connections come back within milliseconds and are not checked; after
// a lull, one that the server terminated or a restart killed is replaced
// instead of failing the client's statement.
const checkAfterIdle = 100 * time.Millisecond

// ErrClosed is returned by Acquire on a pool that has been closed.
var ErrClosed = errors.New("pool is closed")

// WaitTimeoutError is returned when no connection became free in time.
type WaitTimeoutError struct {
	Shard  string
	Size   int
	Waited time.Duration
}

func (e *WaitTimeoutError) Error() string {
	return fmt.Sprintf("no server connection to shard %s became free within %s (all %d in use)", e.Shard, e.Waited.Round(time.Millisecond), e.Size)
}

// ConnectError is returned when a new server connection cannot be opened.
type ConnectError struct {
	Shard string
	Err   error
}

func (e *ConnectError) Error() string {
	return fmt.Sprintf("cannot connect to shard %s: %v", e.Shard, e.Err)
}

func (e *ConnectError) Unwrap() error { return e.Err }

// Config describes one pool.
type Config struct {
	Shard              string
	User               string
	Conn               *pgconn.Config // parsed DSN, user and password filled in
	Size               int
	MinIdle            int
	Reserve            int           // extra connections for a client that waited ReserveTimeout
	ReserveTimeout     time.Duration //
	Lifetime           time.Duration // 0: unlimited
	IdleTimeout        time.Duration // 0: never close idle connections
	ConnectTimeout     time.Duration
	CheckDelay         time.Duration // idle longer than this: run CheckQuery before reuse
	CheckQuery         string        // "": the socket check only
	PreparedStatements int
	MaxMessageSize     int
	Log                *zap.Logger
}

// Pool is the set of server connections for one (shard, server user).
type Pool struct {
	cfg    Config
	nextID *atomic.Uint64

	mu      sync.Mutex
	idle    []*Conn // stack: the most recently used is reused first
	open    int     // connections open or being dialed
	active  int
	waiters []*waiter
	closed  bool
	params  map[string]string // ParameterStatus values of the newest connection

	counters counters
}

// waiter is a client queued for a connection. It receives a connection, or
// nil meaning "a slot is free: dial one yourself".
type waiter struct {
	ch chan *Conn
}

// New returns an empty pool.
func New(cfg Config, ids *atomic.Uint64) *Pool {
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if ids == nil {
		ids = new(atomic.Uint64)
	}
	return &Pool{cfg: cfg, nextID: ids}
}

// Shard returns the pool's shard name.
func (p *Pool) Shard() string { return p.cfg.Shard }

// User returns the server user the pool connects as.
func (p *Pool) User() string { return p.cfg.User }

// Acquire returns a connection for the caller's exclusive use. While the pool
// is full it waits up to wait (then *WaitTimeoutError) or until ctx ends;
// after ReserveTimeout of waiting it may open up to Reserve extra
// connections. No timer is created unless the caller actually has to wait.
func (p *Pool) Acquire(ctx context.Context, wait time.Duration) (*Conn, error) {
	start := time.Now()
	waited := false
	defer func() {
		if waited {
			p.counters.waitCount.Add(1)
			p.counters.waitTime.Add(time.Since(start).Microseconds())
		}
	}()
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, ErrClosed
		}
		if c := p.popIdleLocked(); c != nil {
			p.mu.Unlock()
			if !p.check(ctx, c, start) {
				c.broken = true
				p.Release(c)
				continue
			}
			return c, nil
		}
		limit := p.cfg.Size
		if p.cfg.Reserve > 0 && time.Since(start) >= p.cfg.ReserveTimeout {
			limit += p.cfg.Reserve
		}
		if p.open < limit {
			p.open++
			p.mu.Unlock()
			c, err := p.dial(ctx)
			if err != nil {
				p.mu.Lock()
				p.open--
				p.wakeLocked()
				p.mu.Unlock()
				return nil, err
			}
			return c, nil
		}
		elapsed := time.Since(start)
		remaining := wait - elapsed
		if remaining <= 0 {
			p.mu.Unlock()
			return nil, &WaitTimeoutError{Shard: p.cfg.Shard, Size: p.cfg.Size, Waited: elapsed}
		}
		if p.cfg.Reserve > 0 && elapsed < p.cfg.ReserveTimeout {
			remaining = min(remaining, p.cfg.ReserveTimeout-elapsed)
		}
		w := &waiter{ch: make(chan *Conn, 1)}
		p.waiters = append(p.waiters, w)
		p.mu.Unlock()
		waited = true

		timer := time.NewTimer(remaining)
		select {
		case c := <-w.ch:
			timer.Stop()
			if c != nil {
				return c, nil
			}
			continue // a slot was freed: go round and dial
		case <-timer.C:
		case <-ctx.Done():
			timer.Stop()
		}
		p.mu.Lock()
		queued := p.removeWaiterLocked(w)
		p.mu.Unlock()
		if !queued { // a connection or a slot was handed to us meanwhile
			if c := <-w.ch; c != nil {
				if ctx.Err() == nil {
					return c, nil
				}
				p.Release(c)
			} else {
				p.mu.Lock()
				p.wakeLocked()
				p.mu.Unlock()
			}
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		// Either the wait is over (checked at the top) or the reserve opens.
	}
}

// check decides whether an idle connection may be handed out: after
// checkAfterIdle a free non-blocking peek at its socket, after CheckDelay
// the CheckQuery as well.
func (p *Pool) check(ctx context.Context, c *Conn, now time.Time) bool {
	idle := now.Sub(c.lastUsed)
	if idle < checkAfterIdle {
		return true
	}
	if !c.alive() {
		return false
	}
	if p.cfg.CheckQuery == "" || idle < p.cfg.CheckDelay {
		return true
	}
	ctx, cancel := context.WithTimeout(ctx, p.cfg.ConnectTimeout)
	defer cancel()
	status, err := c.Exec(ctx, p.cfg.CheckQuery)
	return err == nil && status == wire.TxIdle
}

// popIdleLocked takes the most recently used idle connection. Expired ones
// are closed by Release and the janitor, not here, to keep this path short.
func (p *Pool) popIdleLocked() *Conn {
	n := len(p.idle)
	if n == 0 {
		return nil
	}
	c := p.idle[n-1]
	p.idle[n-1] = nil
	p.idle = p.idle[:n-1]
	c.state = StateActive
	p.active++
	return c
}

// Release returns a connection. The holder must only release a connection
// that is clean (ReadyForQuery 'I' with nothing outstanding) or marked broken;
// broken, expired and surplus connections are closed.
func (p *Pool) Release(c *Conn) {
	c.WaitCancels()
	now := time.Now()
	p.mu.Lock()
	if c.state != StateActive {
		p.mu.Unlock()
		panic(fmt.Sprintf("pool: release of a %s connection", c.state))
	}
	p.active--
	c.lastUsed = now
	if p.closed || c.broken || (p.cfg.Lifetime > 0 && now.Sub(c.created) >= p.cfg.Lifetime) {
		p.open--
		c.state = StateClosed
		p.wakeLocked()
		p.mu.Unlock()
		c.close()
		return
	}
	if len(p.waiters) > 0 {
		w := p.waiters[0]
		p.waiters = p.waiters[1:]
		p.active++
		p.mu.Unlock()
		w.ch <- c
		return
	}
	c.state = StateIdle
	p.idle = append(p.idle, c)
	p.mu.Unlock()
}

// wakeLocked tells the first waiter that a slot is free.
func (p *Pool) wakeLocked() {
	if len(p.waiters) == 0 {
		return
	}
	w := p.waiters[0]
	p.waiters = p.waiters[1:]
	w.ch <- nil
}

func (p *Pool) removeWaiterLocked(w *waiter) bool {
	for i, x := range p.waiters {
		if x == w {
			p.waiters = append(p.waiters[:i], p.waiters[i+1:]...)
			return true
		}
	}
	return false
}

// dial opens a new server connection through pgconn and takes over its socket.
func (p *Pool) dial(ctx context.Context) (*Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.ConnectTimeout)
	defer cancel()
	pc, err := pgconn.ConnectConfig(ctx, p.cfg.Conn)
	if err != nil {
		if ctx.Err() != nil && errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("no answer within server_connect_timeout (%s): %w", p.cfg.ConnectTimeout, err)
		}
		return nil, &ConnectError{Shard: p.cfg.Shard, Err: err}
	}
	if err := pc.SyncConn(ctx); err != nil {
		_ = pc.Close(context.Background())
		return nil, &ConnectError{Shard: p.cfg.Shard, Err: err}
	}
	hj, err := pc.Hijack()
	if err != nil {
		_ = pc.Close(context.Background())
		return nil, &ConnectError{Shard: p.cfg.Shard, Err: err}
	}
	now := time.Now()
	c := &Conn{
		ID:         p.nextID.Add(1),
		PID:        hj.PID,
		pool:       p,
		netConn:    hj.Conn,
		secret:     hj.SecretKey,
		created:    now,
		lastUsed:   now,
		R:          wire.NewReader(hj.Conn, p.cfg.MaxMessageSize),
		W:          wire.NewWriter(hj.Conn),
		Statements: NewStatementCache(p.cfg.PreparedStatements),
		state:      StateActive,
	}
	c.W.SetManual() // the session flushes, reading replies while it does when needed
	params := make(map[string]string, len(hj.ParameterStatuses))
	for k, v := range hj.ParameterStatuses {
		c.Params.Set(k, v)
		params[k] = v
	}
	p.mu.Lock()
	p.active++
	p.params = params
	p.mu.Unlock()
	p.cfg.Log.Debug("server connection opened", zap.String("shard", p.cfg.Shard), zap.String("server_user", p.cfg.User), zap.Uint64("server_id", c.ID), zap.Uint32("backend_pid", c.PID))
	return c, nil
}

// ServerParams returns the ParameterStatus values reported by the newest
// server connection, opening one if the pool has never connected; they are
// what a client is told at login, before any server is linked to it.
func (p *Pool) ServerParams(ctx context.Context, wait time.Duration) (map[string]string, error) {
	p.mu.Lock()
	params := p.params
	p.mu.Unlock()
	if params != nil {
		return params, nil
	}
	c, err := p.Acquire(ctx, wait)
	if err != nil {
		return nil, err
	}
	p.Release(c)
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.params, nil
}

// Stats is a snapshot of a pool's occupancy.
type Stats struct {
	Active, Idle, Waiting, Open int
}

// counters accumulate what went through a pool since it was created.
type counters struct {
	xactCount, queryCount atomic.Int64
	xactTime, queryTime   atomic.Int64 // microseconds
	waitCount, waitTime   atomic.Int64 // clients that had to wait, and for how long (µs)
	received, sent        atomic.Int64 // bytes from clients to servers, and back
}

// Counters is a snapshot of a pool's totals (pgbouncer's SHOW STATS).
type Counters struct {
	XactCount, QueryCount int64
	XactTime, QueryTime   time.Duration
	WaitCount             int64
	WaitTime              time.Duration
	Received, Sent        int64
}

// Counters returns the pool's totals.
func (p *Pool) Counters() Counters {
	c := &p.counters
	return Counters{
		XactCount:  c.xactCount.Load(),
		QueryCount: c.queryCount.Load(),
		XactTime:   time.Duration(c.xactTime.Load()) * time.Microsecond,
		QueryTime:  time.Duration(c.queryTime.Load()) * time.Microsecond,
		WaitCount:  c.waitCount.Load(),
		WaitTime:   time.Duration(c.waitTime.Load()) * time.Microsecond,
		Received:   c.received.Load(),
		Sent:       c.sent.Load(),
	}
}

// RecordQuery adds one finished request (a Query, or a batch up to Sync)
// of duration d, with the bytes it moved each way.
func (p *Pool) RecordQuery(d time.Duration, received, sent int64) {
	p.counters.queryCount.Add(1)
	p.counters.queryTime.Add(d.Microseconds())
	p.counters.received.Add(received)
	p.counters.sent.Add(sent)
}

// RecordXact adds one finished transaction of duration d.
func (p *Pool) RecordXact(d time.Duration) {
	p.counters.xactCount.Add(1)
	p.counters.xactTime.Add(d.Microseconds())
}

// Stats returns the pool's current occupancy.
func (p *Pool) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return Stats{Active: p.active, Idle: len(p.idle), Waiting: len(p.waiters), Open: p.open}
}

// maintain closes connections idle past their timeout or lifetime (keeping
// min_idle) and opens connections up to min_idle. The janitor calls it.
func (p *Pool) maintain(ctx context.Context, now time.Time) {
	var expired []*Conn
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	kept := p.idle[:0] // idle[0] is the least recently used, so it goes first
	remaining := len(p.idle)
	for _, c := range p.idle {
		tooOld := p.cfg.Lifetime > 0 && now.Sub(c.created) >= p.cfg.Lifetime
		idleTooLong := p.cfg.IdleTimeout > 0 && now.Sub(c.lastUsed) >= p.cfg.IdleTimeout && remaining > p.cfg.MinIdle
		if tooOld || idleTooLong {
			c.state = StateClosed
			p.open--
			remaining--
			expired = append(expired, c)
			continue
		}
		kept = append(kept, c)
	}
	for i := len(kept); i < len(p.idle); i++ {
		p.idle[i] = nil
	}
	p.idle = kept
	missing := p.cfg.MinIdle - len(p.idle)
	if room := p.cfg.Size - p.open; missing > room {
		missing = room
	}
	p.open += max(missing, 0)
	p.wakeLockedFor(len(expired))
	p.mu.Unlock()

	for _, c := range expired {
		c.close()
	}
	for range max(missing, 0) {
		c, err := p.dial(ctx)
		if err != nil {
			p.mu.Lock()
			p.open--
			p.wakeLocked()
			p.mu.Unlock()
			p.cfg.Log.Warn("cannot open min_idle connection", zap.String("shard", p.cfg.Shard), zap.Error(err))
			return
		}
		p.Release(c)
	}
}

func (p *Pool) wakeLockedFor(n int) {
	for range n {
		p.wakeLocked()
	}
}

// Close closes idle connections and makes later Acquires fail; connections in
// use are closed when released.
func (p *Pool) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	idle := p.idle
	p.idle = nil
	p.open -= len(idle)
	for _, c := range idle {
		c.state = StateClosed
	}
	for len(p.waiters) > 0 {
		p.wakeLocked()
	}
	p.mu.Unlock()
	for _, c := range idle {
		c.close()
	}
}
