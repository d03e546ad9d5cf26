package proxy

import (
	"errors"
	"os"
	"time"

	"go.uber.org/zap"

	"github.com/pgrouter/pgrouter/pool"
	"github.com/pgrouter/pgrouter/sqlstate"
	"github.com/pgrouter/pgrouter/wire"
)

// readClient reads the client's next message. In session mode the linked
// server may speak while the client is idle (NOTIFY for a LISTENer, a notice,
// a FATAL before the server goes away), so a watcher goroutine relays those
// until the client sends something; it is stopped with a read deadline, which
// the wire.Reader survives without losing framing.
func (s *session) readClient() (wire.Message, error) {
	for {
		limit, code, what := s.idleLimitNow()
		var deadline time.Time
		if limit > 0 && !s.cr.HasMessage() {
			deadline = time.Now().Add(limit)
			_ = s.conn.SetReadDeadline(deadline)
			if s.drainNow() { // Shutdown's wake-up may have come before our deadline
				return wire.Message{}, ShutdownError()
			}
		}
		m, err := s.readClientWatching()
		if !deadline.IsZero() {
			_ = s.conn.SetReadDeadline(time.Time{})
		}
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			return m, err
		}
		if s.srv.draining.Load() {
			if s.drainNow() {
				return m, ShutdownError()
			}
			if s.atBoundary() { // its grace: a request arrived
				_ = s.conn.SetReadDeadline(time.Time{})
				continue
			}
			if deadline.IsZero() || time.Now().Before(deadline) {
				_ = s.conn.SetReadDeadline(time.Time{})
				continue // woken by Shutdown inside a transaction: let it finish
			}
		}
		return m, fatalf(code, "pgrouter: terminating connection: %s (%s) expired", what, limit).
			WithHint("The limit is pool.%s in router.yaml.", what)
	}
}

// idleLimitNow returns the idle limit that applies while waiting for the
// client: idle_transaction_timeout inside a transaction, client_idle_timeout
// outside one.
func (s *session) idleLimitNow() (time.Duration, string, string) {
	if s.server != nil && s.tx != txIdle {
		return s.idleTxLimit, sqlstate.IdleInTransactionTimeout, "idle_transaction_timeout"
	}
	return s.idleLimit, sqlstate.IdleSessionTimeout, "client_idle_timeout"
}

// readClientWatching reads the client's next message, relaying what a linked
// session-mode server says meanwhile.
func (s *session) readClientWatching() (wire.Message, error) {
	c := s.server
	if c == nil || s.mode.Shared() || s.cr.HasMessage() ||
		!s.queue.empty() || s.batch != batchNone || c.W.Len() > 0 { // the server may still be answering the client
		return s.cr.Next()
	}
	done := make(chan error, 1)
	go func() { done <- s.watch(c) }()
	m, err := s.cr.Next()
	// Stop the watcher: wake its read, and a write to a client that is not
	// reading (the interrupted write leaves the client writer failed, which
	// ends the session: its stream can no longer be trusted).
	_ = c.SetReadDeadline(time.Unix(1, 0))
	_ = s.conn.SetWriteDeadline(time.Unix(1, 0))
	werr := <-done
	_ = c.SetReadDeadline(time.Time{})
	_ = s.conn.SetWriteDeadline(time.Time{})
	if werr != nil {
		c.MarkBroken()
		s.logger().Info("server connection ended while the client was idle", zap.String("shard", c.Shard()), zap.Error(werr))
	}
	return m, err
}

// errServerEnded means a server sent an error while its client was idle:
// PostgreSQL only does that right before closing the connection.
var errServerEnded = errors.New("server sent an error while idle")

// watch relays asynchronous server messages to the idle client. It owns the
// client writer until it returns.
func (s *session) watch(c *pool.Conn) error {
	for {
		m, err := c.R.Next()
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return nil
			}
			_ = s.conn.Close() // as PostgreSQL would: the session is gone
			return err
		}
		switch m.Type {
		case wire.NotificationResponse, wire.NoticeResponse:
		case wire.ParameterStatus:
			c.Params.NoteStatus(m.Body())
		case wire.ErrorResponse:
			_ = s.cw.Write(m.Raw)
			_ = s.cw.Flush()
			_ = s.conn.Close()
			return errServerEnded
		default:
			_ = s.conn.Close()
			return errors.New("unexpected message from an idle server")
		}
		if s.cw.Write(m.Raw) != nil || s.cw.Flush() != nil {
			return nil // the client is gone; the session goroutine will notice
		}
	}
}
