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
	"net"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
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

// ErrRetired is returned by Acquire on a pool a reload retired (its shard
// left the map or changed DSN), and by Set.Get for such a shard: the caller
// placed its statement with an old map and must place it again.
var ErrRetired = errors.New("the shard map changed (RELOAD) while the statement was being placed")

// WaitTimeoutError is returned when no connection became free in time.
type WaitTimeoutError struct {
	Shard  string
	Size   int
	Waited time.Duration
	Paused bool // the shard was paused (PAUSE in the admin console)
}

func (e *WaitTimeoutError) Error() string {
	if e.Paused {
		return fmt.Sprintf("shard %s is paused (PAUSE in the admin console) and was not resumed within %s", e.Shard, e.Waited.Round(time.Millisecond))
	}
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

// Reason says why the connection failed without the shard's host, port,
// user or the server's own words, which the client should not learn (the
// log has them all).
func (e *ConnectError) Reason() string {
	var pgErr *pgconn.PgError
	switch {
	case errors.As(e.Err, &pgErr):
		return "the server refused it, SQLSTATE " + pgErr.Code
	case errors.Is(e.Err, context.DeadlineExceeded):
		return "no answer within server_connect_timeout"
	case errors.Is(e.Err, syscall.ECONNREFUSED):
		return "connection refused"
	}
	return "network error"
}

// StandbyError is a connection of a primary's pool that reached a standby
// (the host was demoted, or a failover moved the primary elsewhere): it is
// closed, as nothing sent to the shard's primary may land on a read-only
// server.
type StandbyError struct{ Shard string }

func (e *StandbyError) Error() string {
	return fmt.Sprintf("shard %s: the server is a standby (in_hot_standby = on), not the primary", e.Shard)
}

// Config describes one pool.
type Config struct {
	Shard string
	// Replica: the pool serves a replica, a standby by design; other pools
	// refuse a server that says it is one.
	Replica bool
	User    string
	Conn    *pgconn.Config // parsed DSN, user and password filled in
	Settings
	Log *zap.Logger
}

// Pool is the set of server connections for one (shard, server user).
// mu is a leaf lock: nothing else is taken while it is held, and waiters
// are woken with sends on buffered channels.
type Pool struct {
	cfg    Config // Settings in it are the first ones; see settings
	nextID *atomic.Uint64
	// settings are the limits now in force; a reload swaps them.
	settings atomic.Pointer[Settings]

	mu      sync.Mutex
	idle    []*Conn // stack: the most recently used is reused first
	open    int     // connections open or being dialed
	active  int
	waiters []*waiter
	closed  bool
	paused  bool               // PAUSE: nobody gets a connection until Resume
	retired bool               // closed by Set.Retire, not by shutdown
	conns   map[*Conn]struct{} // every open connection, for SHOW SERVERS
	// replaceBefore: connections created up to then are closed when released
	// (RECONNECT, KILL); zero when none is.
	replaceBefore time.Time
	dsn           string            // the shard DSN the pool was made from (Set.Retire compares it)
	params        map[string]string // ParameterStatus values of the newest connection

	counters counters
}

// waiter is a client queued for a connection. It receives a connection, or
// nil meaning "a slot is free: dial one yourself".
type waiter struct {
	ch    chan *Conn
	since time.Time
	timer *time.Timer // Acquire's wait limit, kept for the next wait
}

// waiterPool recycles the waiters of Acquire: with many clients on few
// connections nearly every request waits, and a new channel and timer for
// each were all the garbage a routed call made.
var waiterPool = sync.Pool{New: func() any { return &waiter{ch: make(chan *Conn, 1)} }}

func getWaiter(since time.Time) *waiter {
	w := waiterPool.Get().(*waiter)
	w.since = since
	return w
}

// putWaiter recycles a waiter that is out of the queue with its channel
// drained, so no hand-off can still reach it.
func putWaiter(w *waiter) { waiterPool.Put(w) }

// await waits for w, queued in p.waiters, to be handed something, for at
// most d or until ctx ends. It returns the connection handed over, or
// handed true for a free slot; nil and false when the wait ended first (w is
// then out of the queue). Either way w's channel is drained.
func (p *Pool) await(ctx context.Context, w *waiter, d time.Duration) (c *Conn, handed bool) {
	if w.timer == nil {
		w.timer = time.NewTimer(d)
	} else {
		w.timer.Reset(d) // timers are synchronous (Go 1.23): no stale tick can be waiting
	}
	select {
	case c := <-w.ch:
		w.timer.Stop()
		return c, true
	case <-w.timer.C:
	case <-ctx.Done():
		w.timer.Stop()
	}
	p.mu.Lock()
	queued := p.removeWaiterLocked(w)
	p.mu.Unlock()
	if queued {
		return nil, false
	}
	// A connection or a slot was handed to us as the wait ended.
	if c := <-w.ch; c != nil {
		if ctx.Err() == nil {
			return c, true
		}
		p.Release(c)
	} else {
		p.mu.Lock()
		p.wakeLocked()
		p.mu.Unlock()
	}
	return nil, false
}

// New returns an empty pool.
func New(cfg Config, ids *atomic.Uint64) *Pool {
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if ids == nil {
		ids = new(atomic.Uint64)
	}
	p := &Pool{cfg: cfg, nextID: ids, conns: map[*Conn]struct{}{}}
	st := cfg.Settings
	p.settings.Store(&st)
	return p
}

// Settings returns the limits now in force.
func (p *Pool) Settings() Settings { return *p.settings.Load() }

// Reconfigure puts new limits in force. Connections beyond a smaller size
// are closed as they come back; new connections use the new settings.
func (p *Pool) Reconfigure(st Settings) {
	p.settings.Store(&st)
	p.mu.Lock()
	for range p.waiters { // a larger size may let waiters dial now
		p.wakeLocked()
	}
	p.mu.Unlock()
}

// Closed reports whether the pool was closed (a reload retired it).
func (p *Pool) Closed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closed
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
			if p.retired {
				return nil, ErrRetired
			}
			return nil, ErrClosed
		}
		st := p.settings.Load()
		if c := p.popIdleLocked(); c != nil {
			p.mu.Unlock()
			if !p.check(ctx, c, start) {
				c.broken = true
				p.Release(c)
				continue
			}
			return c, nil
		}
		limit := st.Size
		if st.Reserve > 0 && time.Since(start) >= st.ReserveTimeout {
			limit += st.Reserve
		}
		if p.open < limit && !p.paused {
			p.open++
			w := &waiter{ch: make(chan *Conn, 1), since: start}
			p.waiters = append(p.waiters, w)
			p.mu.Unlock()
			return p.dialOrTake(ctx, w)
		}
		elapsed := time.Since(start)
		remaining := wait - elapsed
		if remaining <= 0 {
			p.mu.Unlock()
			return nil, &WaitTimeoutError{Shard: p.cfg.Shard, Size: st.Size, Waited: elapsed, Paused: p.paused}
		}
		if st.Reserve > 0 && elapsed < st.ReserveTimeout {
			remaining = min(remaining, st.ReserveTimeout-elapsed)
		}
		w := getWaiter(start)
		p.waiters = append(p.waiters, w)
		p.mu.Unlock()
		waited = true

		c, handed := p.await(ctx, w, remaining)
		putWaiter(w)
		if c != nil {
			return c, nil
		}
		if handed {
			continue // a slot was freed: go round and dial
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
	st := p.settings.Load()
	if st.CheckQuery == "" || idle < st.CheckDelay {
		return true
	}
	ctx, cancel := context.WithTimeout(ctx, st.ConnectTimeout)
	defer cancel()
	status, err := c.Exec(ctx, st.CheckQuery)
	return err == nil && status == wire.TxIdle
}

// popIdleLocked takes the most recently used idle connection. Expired ones
// are closed by Release and the janitor, not here, to keep this path short.
func (p *Pool) popIdleLocked() *Conn {
	n := len(p.idle)
	if n == 0 || p.paused {
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
	c.holder.Store(0)
	st := p.settings.Load()
	if p.closed || c.Broken() || (st.Lifetime > 0 && now.Sub(c.created) >= st.Lifetime) || p.open > st.Size+st.Reserve || p.closeNeededLocked(c) {
		p.dropLocked(c)
		p.wakeLocked()
		p.mu.Unlock()
		c.close()
		return
	}
	if len(p.waiters) > 0 && !p.paused {
		w := p.waiters[0]
		p.waiters = p.waiters[1:]
		p.active++
		p.mu.Unlock()
		w.ch <- c
		// Let the waiter send its request now: the releasing client still
		// has its own reply to write, and the server would idle for that
		// long. The waiter is this P's next goroutine, so it runs at once;
		// measured with 128 clients on 2 server connections, +2-14%
		// throughput, and a routed call on 8 connections 0.89x -> 1.00x
		// pgbouncer's (docs/performance.md).
		runtime.Gosched()
		return
	}
	c.state = StateIdle
	p.idle = append(p.idle, c)
	p.mu.Unlock()
}

// dropLocked forgets a connection that is being closed.
func (p *Pool) dropLocked(c *Conn) {
	c.state = StateClosed
	p.open--
	delete(p.conns, c)
}

// wakeLocked tells the first waiter that a slot is free. While the pool is
// paused nobody is woken: Resume wakes them all.
func (p *Pool) wakeLocked() {
	if len(p.waiters) == 0 || p.paused {
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

// dialOrTake dials a new connection for the caller, which also waits in the
// queue as w: a connection another client releases meanwhile serves it at
// once, and the new one, when it is up, goes to the next client waiting (or
// to the idle list). Otherwise a caller whose dial is slow (a shard busy
// forking backends for a burst of clients) would wait for it while other
// connections came free, as pgbouncer's clients do not.
func (p *Pool) dialOrTake(ctx context.Context, w *waiter) (*Conn, error) {
	type dialed struct {
		c   *Conn
		err error
	}
	done := make(chan dialed, 1)
	go func() {
		c, err := p.dial(ctx)
		done <- dialed{c, err}
	}()
	// pass hands a finished dial to whoever is waiting now.
	pass := func(d dialed) {
		if d.err != nil {
			p.mu.Lock()
			p.open--
			p.wakeLocked()
			p.mu.Unlock()
			return
		}
		p.Release(d.c)
	}
	select {
	case c := <-w.ch:
		if c != nil { // served by a release; our dial serves the next one
			go func() { pass(<-done) }()
			return c, nil
		}
		// nil means "a slot is free, dial": we already are, so the slot is
		// another waiter's to use.
		p.mu.Lock()
		p.wakeLocked()
		p.mu.Unlock()
		d := <-done
		if d.err != nil {
			pass(d)
			return nil, d.err
		}
		return d.c, nil
	case d := <-done:
		p.mu.Lock()
		queued := p.removeWaiterLocked(w)
		p.mu.Unlock()
		if !queued { // something was handed to us as the dial finished
			if c := <-w.ch; c != nil {
				pass(d)
				return c, nil
			}
			p.mu.Lock()
			p.wakeLocked()
			p.mu.Unlock()
		}
		if d.err != nil {
			pass(d)
			return nil, d.err
		}
		return d.c, nil
	}
}

// dial opens a new server connection through pgconn and takes over its socket.
func (p *Pool) dial(ctx context.Context) (*Conn, error) {
	st := p.settings.Load()
	ctx, cancel := context.WithTimeout(ctx, st.ConnectTimeout)
	defer cancel()
	pc, err := pgconn.ConnectConfig(ctx, p.cfg.Conn)
	if err != nil {
		if ctx.Err() != nil && errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("no answer within server_connect_timeout (%s): %w", st.ConnectTimeout, err)
		}
		p.cfg.Log.Warn("cannot connect to shard", zap.String("shard", p.cfg.Shard), zap.String("server_user", p.cfg.User), zap.Error(err))
		return nil, &ConnectError{Shard: p.cfg.Shard, Err: err}
	}
	if err := pc.SyncConn(ctx); err != nil {
		_ = pc.Close(context.Background())
		return nil, &ConnectError{Shard: p.cfg.Shard, Err: err}
	}
	if !p.cfg.Replica && pc.ParameterStatus("in_hot_standby") == "on" { // PostgreSQL 14+ says so at login
		_ = pc.Close(context.Background())
		p.cfg.Log.Error("a connection to a shard's primary reached a standby: refused", zap.String("shard", p.cfg.Shard))
		return nil, &StandbyError{Shard: p.cfg.Shard}
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
		R:          wire.NewReader(hj.Conn, st.MaxMessageSize),
		W:          wire.NewWriter(hj.Conn),
		Statements: NewStatementCache(st.PreparedStatements),
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
	p.conns[c] = struct{}{}
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

// setPaused pauses or resumes the pool; resuming wakes every waiter.
func (p *Pool) setPaused(paused bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.paused == paused || p.closed {
		return
	}
	p.paused = paused
	if !paused {
		for len(p.waiters) > 0 {
			p.wakeLocked()
		}
	}
}

// Stats is a snapshot of a pool's occupancy.
type Stats struct {
	Active, Idle, Waiting, Open int
	Paused                      bool
	// MaxWait is how long the longest-waiting client has waited.
	MaxWait time.Duration
}

// ServerInfo describes one server connection (SHOW SERVERS).
type ServerInfo struct {
	ID       uint64
	PID      uint32
	State    State
	Client   uint64 // the client it serves, 0 when idle
	Created  time.Time
	LastUsed time.Time // when it last came back to the pool
	Local    net.Addr
	Remote   net.Addr
	TLS      bool
	// CloseNeeded: RECONNECT or KILL has it closed when it is released.
	CloseNeeded bool
}

// Servers describes the pool's open connections, oldest first.
func (p *Pool) Servers() []ServerInfo {
	p.mu.Lock()
	out := make([]ServerInfo, 0, len(p.conns))
	for c := range p.conns {
		out = append(out, ServerInfo{
			ID: c.ID, PID: c.PID, State: c.state, Client: c.holder.Load(), Created: c.created, LastUsed: c.lastUsed,
			Local: c.netConn.LocalAddr(), Remote: c.netConn.RemoteAddr(), TLS: c.tls(), CloseNeeded: p.closeNeededLocked(c),
		})
	}
	p.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// counters accumulate what went through a pool since it was created.
type counters struct {
	xactCount, queryCount atomic.Int64
	xactTime, queryTime   atomic.Int64 // microseconds
	waitCount, waitTime   atomic.Int64 // clients that had to wait, and for how long (µs)
	received, sent        atomic.Int64 // bytes from clients to servers, and back
	latency               latency
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
	p.counters.latency.observe(d)
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
	st := Stats{Active: p.active, Idle: len(p.idle), Waiting: len(p.waiters), Open: p.open, Paused: p.paused}
	for _, w := range p.waiters {
		st.MaxWait = max(st.MaxWait, time.Since(w.since))
	}
	return st
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
	st := p.settings.Load()
	kept := p.idle[:0] // idle[0] is the least recently used, so it goes first
	remaining := len(p.idle)
	for _, c := range p.idle {
		tooOld := st.Lifetime > 0 && now.Sub(c.created) >= st.Lifetime
		idleTooLong := st.IdleTimeout > 0 && now.Sub(c.lastUsed) >= st.IdleTimeout && remaining > st.MinIdle
		tooMany := p.open > st.Size
		if tooOld || idleTooLong || tooMany {
			p.dropLocked(c)
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
	missing := st.MinIdle - len(p.idle)
	if p.paused {
		missing = 0
	}
	if room := st.Size - p.open; missing > room {
		missing = room
	}
	p.open += max(missing, 0)
	p.wakeLockedFor(len(expired))
	p.mu.Unlock()

	for _, c := range expired {
		c.close()
	}
	for i := range max(missing, 0) {
		c, err := p.dial(ctx)
		if err != nil {
			p.mu.Lock()
			p.open -= missing - i // this slot and the ones not dialed yet
			p.wakeLockedFor(missing - i)
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
	p.paused = false
	idle := p.idle
	p.idle = nil
	for _, c := range idle {
		p.dropLocked(c)
	}
	for len(p.waiters) > 0 {
		p.wakeLocked()
	}
	p.mu.Unlock()
	for _, c := range idle {
		c.close()
	}
}

// Add is the sum of two sets of counters.
func (c Counters) Add(o Counters) Counters {
	c.XactCount += o.XactCount
	c.QueryCount += o.QueryCount
	c.XactTime += o.XactTime
	c.QueryTime += o.QueryTime
	c.WaitCount += o.WaitCount
	c.WaitTime += o.WaitTime
	c.Received += o.Received
	c.Sent += o.Sent
	return c
}

// Sub is what moved from o to c.
func (c Counters) Sub(o Counters) Counters {
	return Counters{
		XactCount: c.XactCount - o.XactCount, QueryCount: c.QueryCount - o.QueryCount,
		XactTime: c.XactTime - o.XactTime, QueryTime: c.QueryTime - o.QueryTime,
		WaitCount: c.WaitCount - o.WaitCount, WaitTime: c.WaitTime - o.WaitTime,
		Received: c.Received - o.Received, Sent: c.Sent - o.Sent,
	}
}
