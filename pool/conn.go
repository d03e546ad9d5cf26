package pool

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"golang.org/x/sys/unix"

	"github.com/pgrouter/pgrouter/wire"
)

// State is where a server connection is in its life. Only the Pool changes it.
type State int

// Connection states.
const (
	StateIdle   State = iota // in the pool, owned by nobody
	StateActive              // handed out, owned by one holder
	StateClosed              // gone
)

func (s State) String() string {
	switch s {
	case StateIdle:
		return "idle"
	case StateActive:
		return "active"
	}
	return "closed"
}

// Conn is one server connection. Its reader, writer, parameters and statement
// cache belong to whoever holds it: the pool while it is idle, one session
// while it is active. The pool never reads from an active connection.
type Conn struct {
	// Set at construction.
	ID      uint64
	PID     uint32
	pool    *Pool
	netConn net.Conn
	secret  []byte
	created time.Time

	// Owned by the holder.
	R *wire.Reader
	W *wire.Writer
	// Params holds every parameter value the server has reported.
	Params ParamState
	// Applied holds the settings pgrouter (or a client, through it) changed
	// from the server's defaults; a session whose own settings have the same
	// fingerprint can use the connection without replaying anything.
	Applied    ParamState
	Statements *StatementCache
	// Unnamed is the fingerprint of the query text and parameter types of the
	// unnamed prepared statement on this server (0: none), so a client whose
	// Bind follows its Parse across a Sync can have it re-parsed.
	Unnamed uint64
	broken  bool
	// interrupted is set by MarkInterrupted from another goroutine; Release then
	// closes the connection whatever its holder thought of it.
	interrupted atomic.Bool
	lastUsed    time.Time // guarded by pool.mu once released

	// state is guarded by pool.mu.
	state State
	// holder is the id of the client the connection serves (0: none), for
	// SHOW SERVERS and SHOW CLIENTS.
	holder atomic.Uint64

	// cancels counts cancel requests being forwarded for this connection;
	// the connection is not handed to anyone else until they finish.
	cancels sync.WaitGroup
}

// Shard returns the name of the shard this connection belongs to.
func (c *Conn) Shard() string { return c.pool.cfg.Shard }

// SetHolder records which client the connection now serves.
func (c *Conn) SetHolder(client uint64) { c.holder.Store(client) }

func (c *Conn) tls() bool {
	_, ok := c.netConn.(*tls.Conn)
	return ok
}

// Pool returns the pool that owns the connection.
func (c *Conn) Pool() *Pool { return c.pool }

// MarkBroken records that the connection's protocol state is unknown, so it
// is closed instead of reused when released.
func (c *Conn) MarkBroken() { c.broken = true }

// Broken reports whether MarkBroken (or MarkInterrupted) was called.
func (c *Conn) Broken() bool { return c.broken || c.interrupted.Load() }

// MarkInterrupted is the first half of interrupting a connection from a
// goroutine other than the holder's (a watchdog whose timeout expired): from
// now on Release closes it, even if the holder saw its request complete.
// The caller must see the connection held (under the holder's lock) while
// it marks it, so that a connection already given back is never touched.
func (c *Conn) MarkInterrupted() { c.interrupted.Store(true) }

// Interrupted reports whether MarkInterrupted was called.
func (c *Conn) Interrupted() bool { return c.interrupted.Load() }

// CloseSocket is the second half: it closes the raw socket (under TLS too,
// without the close_notify a frozen server would never read), so the
// holder's blocked read or write fails.
func (c *Conn) CloseSocket() {
	conn := c.netConn
	if tc, ok := conn.(*tls.Conn); ok {
		conn = tc.NetConn()
	}
	_ = conn.Close()
}

// SetDeadline bounds the next reads and writes on the connection.
func (c *Conn) SetDeadline(t time.Time) error { return c.netConn.SetDeadline(t) }

// SetReadDeadline bounds the next reads; a past time unblocks a pending read.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.netConn.SetReadDeadline(t) }

// WriteRaw writes bytes taken from W (see wire.Writer.Take) to the server.
func (c *Conn) WriteRaw(b []byte) error {
	_, err := c.netConn.Write(b)
	return err
}

// Abort closes the socket at once, unblocking any read or write on it; the
// connection is marked broken and is not reused.
func (c *Conn) Abort() {
	c.broken = true
	_ = c.netConn.Close()
}

// StartCancel registers a cancel request in flight for this connection. The
// caller must have seen the connection linked to the client it cancels for
// under that client's lock, and must call the returned function when done.
func (c *Conn) StartCancel() (done func()) {
	c.cancels.Add(1)
	return c.cancels.Done
}

// WaitCancels blocks until every cancel request in flight has been delivered,
// so a cancel meant for one client cannot reach a query of the next one.
func (c *Conn) WaitCancels() { c.cancels.Wait() }

// SendCancel delivers a CancelRequest for this connection's backend over a
// new connection, as PostgreSQL requires, and waits until the server closes it
// (the server has then signalled the backend).
func (c *Conn) SendCancel(ctx context.Context) error {
	addr := c.netConn.RemoteAddr()
	network, address := addr.Network(), addr.String()
	if network == "unix" { // getpeername gives the server's relative socket name: use the config's
		network, address = pgconn.NetworkAddress(c.pool.cfg.Conn.Host, c.pool.cfg.Conn.Port)
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, address)
	if err != nil {
		return fmt.Errorf("dial %s for cancel: %w", address, err)
	}
	defer conn.Close()
	if deadline, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(deadline)
	}
	req := pgproto3.CancelRequest{ProcessID: c.PID, SecretKey: c.secret}
	buf, err := req.Encode(nil)
	if err != nil {
		return err
	}
	if _, err := conn.Write(buf); err != nil {
		return fmt.Errorf("send cancel: %w", err)
	}
	var one [1]byte
	_, _ = conn.Read(one[:]) // returns at EOF: the postmaster has handled it
	return nil
}

// alive reports, without blocking, whether an idle connection is still open
// and has sent nothing (an idle server that sent something is about to close
// or was terminated, e.g. by pg_terminate_backend).
func (c *Conn) alive() bool {
	if c.R.Buffered() > 0 {
		return false
	}
	nc := c.netConn
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return true
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	alive := true
	err = raw.Read(func(fd uintptr) bool {
		var b [1]byte
		n, _, rerr := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		switch {
		case errors.Is(rerr, unix.EAGAIN):
		case rerr != nil, n == 0, n > 0:
			alive = false
		}
		return true
	})
	return err == nil && alive
}

// close shuts the socket, politely when possible.
func (c *Conn) close() {
	_ = c.netConn.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	if !c.broken {
		_, _ = c.netConn.Write([]byte{wire.Terminate, 0, 0, 0, 4})
	}
	_ = c.netConn.Close()
}

// ServerError is an ErrorResponse a server sent for a statement pgrouter
// issued itself (a reset, a parameter replay).
type ServerError struct {
	Shard string
	Err   *pgproto3.ErrorResponse
}

func (e *ServerError) Error() string {
	return fmt.Sprintf("shard %s: %s (SQLSTATE %s)", e.Shard, e.Err.Message, e.Err.Code)
}

// Exec runs one simple-query string that pgrouter itself issues (ROLLBACK,
// DISCARD ALL, a settings replay) and swallows its results. It returns the
// transaction status the server reports afterwards. A server error is
// returned as *ServerError and leaves the connection usable; any other error
// marks it broken.
func (c *Conn) Exec(ctx context.Context, sql string) (byte, error) {
	c.Unnamed = 0 // a simple Query destroys the unnamed statement
	if err := c.W.Send(&pgproto3.Query{String: sql}); err != nil {
		c.broken = true
		return 0, err
	}
	return c.roundTrip(ctx, sql)
}

// Sync ends an extended-protocol batch a departed client left without its
// Sync, discarding the replies, and returns the resulting transaction status.
func (c *Conn) Sync(ctx context.Context) (byte, error) {
	if err := c.W.SendEmpty(wire.Sync); err != nil {
		c.broken = true
		return 0, err
	}
	return c.roundTrip(ctx, "Sync")
}

// roundTrip flushes what was queued and reads until ReadyForQuery.
func (c *Conn) roundTrip(ctx context.Context, what string) (byte, error) {
	if deadline, ok := ctx.Deadline(); ok {
		_ = c.netConn.SetDeadline(deadline)
		defer func() { _ = c.netConn.SetDeadline(time.Time{}) }()
	}
	if err := c.W.Flush(); err != nil {
		c.broken = true
		return 0, err
	}
	var serverErr error
	for {
		m, err := c.R.Next()
		if err != nil {
			c.broken = true
			return 0, err
		}
		switch m.Type {
		case wire.ErrorResponse:
			var e pgproto3.ErrorResponse
			if err := e.Decode(m.Body()); err != nil {
				c.broken = true
				return 0, err
			}
			if serverErr == nil {
				serverErr = &ServerError{Shard: c.Shard(), Err: &e}
			}
		case wire.ParameterStatus:
			c.Params.NoteStatus(m.Body())
		case wire.ReadyForQuery:
			body := m.Body()
			if len(body) != 1 {
				c.broken = true
				return 0, fmt.Errorf("shard %s: malformed ReadyForQuery", c.Shard())
			}
			return body[0], serverErr
		case wire.CopyInResponse, wire.CopyBothResponse:
			c.broken = true
			return 0, fmt.Errorf("shard %s: unexpected COPY in reply to %s", c.Shard(), what)
		}
	}
}
