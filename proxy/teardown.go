package proxy

import (
	"context"
	"errors"

	"go.uber.org/zap"

	"github.com/pgrouter/pgrouter/config"
	"github.com/pgrouter/pgrouter/pool"
	"github.com/pgrouter/pgrouter/sqlstate"
	"github.com/pgrouter/pgrouter/wire"
)

// finish runs when the client is gone: the server is rolled back (and reset
// in session mode) before anyone else can get it, or closed if that fails.
func (s *session) finish() {
	s.srv.removeSession(s)
	s.srv.cancels.unregister(s)
	s.closeCursor()
	s.releaseParked()
	c := s.server
	if c == nil {
		return
	}
	if c.Broken() || s.queue.awaitingServer() {
		s.abandonServer()
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), resetTimeout)
	defer cancel()
	if err := s.resetServer(ctx); err != nil {
		s.logger().Info("closing server connection that could not be reset", zap.String("shard", c.Shard()), zap.Error(err))
		c.MarkBroken()
	}
	s.unlink()
}

// releaseParked resets and returns the servers a session-mode client held
// on other shards; they are idle, so DISCARD ALL is all they need.
func (s *session) releaseParked() {
	for name, c := range s.parked {
		delete(s.parked, name)
		s.releaseServer(c)
	}
}

// releaseServer resets an idle server the client held in session mode and
// gives it back; DISCARD ALL is all it needs.
func (s *session) releaseServer(c *pool.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), resetTimeout)
	status, err := c.Exec(ctx, "DISCARD ALL")
	cancel()
	if err != nil || status != wire.TxIdle {
		c.MarkBroken()
	} else {
		c.Statements.Clear()
		c.Unnamed = 0
		c.Applied = pool.ParamState{}
	}
	c.Pool().Release(c)
}

// poolReset undoes, on the server a client held when it vanished in
// transaction or statement mode, the session state pgrouter refuses in SQL
// but a function may still have created. It keeps prepared statements
// (pgrouter tracks those) and settings (mirrored per client).
const poolReset = "CLOSE ALL; UNLISTEN *; SELECT pg_advisory_unlock_all(); DISCARD TEMP"

// resetServer ends whatever the departed client left open on its server.
func (s *session) resetServer(ctx context.Context) error {
	c := s.server
	status := s.tx.status()
	var err error
	if s.batch != batchNone { // extended messages without their Sync: close the implicit transaction
		if status, err = c.Sync(ctx); err != nil {
			return err
		}
	}
	if status != wire.TxIdle {
		if status, err = c.Exec(ctx, "ROLLBACK"); err != nil {
			return err
		}
		if status != wire.TxIdle {
			return errors.New("server still in a transaction after ROLLBACK")
		}
	}
	reset := poolReset
	if s.mode == config.ModeSession {
		reset = "DISCARD ALL"
	}
	if status, err = c.Exec(ctx, reset); err != nil {
		return err
	}
	if s.mode == config.ModeSession {
		c.Statements.Clear()
		c.Unnamed = 0
		c.Applied = pool.ParamState{}
	}
	if status != wire.TxIdle {
		return errors.New("server still in a transaction after " + reset)
	}
	return nil
}

// abandonServer closes a server whose protocol state is unknown (a request is
// in flight or it failed). A statement still running is cancelled, so no
// lock outlives the client; the cancel is delivered in the background (it
// costs the server a fork) while the socket is closed at once.
func (s *session) abandonServer() {
	c := s.server
	if s.queue.awaitingServer() && !c.Broken() {
		s.cancelInBackground(c, "cancel of abandoned statement failed")
	}
	c.MarkBroken()
	s.queue.clear()
	s.unlink()
}

// serverLost handles a failed read or write on the linked server. A client
// that was outside a transaction keeps its connection and gets an error;
// one inside a transaction (or in session mode, whose state lived on that
// server) is disconnected, as PostgreSQL would disconnect it.
func (s *session) serverLost(err error) error {
	c, fatal := s.dropServer()
	shard := c.Shard()
	if c.Interrupted() { // server_read_timeout: the watchdog closed it (watchdog.go)
		s.tx = txIdle
		return s.readTimeoutError(shard, fatal).because(err)
	}
	s.logger().Warn("server connection lost", zap.String("shard", shard), zap.Error(err))
	if fatal {
		return fatalf(sqlstate.ConnectionFailure, "pgrouter: lost the connection to shard %s; the transaction or session state on it is gone", shard).because(err)
	}
	s.tx = txIdle
	return errorf(sqlstate.ConnectionFailure, "pgrouter: lost the connection to shard %s while running the statement; it may or may not have completed", shard).because(err)
}

// dropServer forgets a server that is gone (lost, or ending with a FATAL)
// and everything owed by it. fatal reports that the client loses state
// with it (a transaction, or a session-mode session) and must be
// disconnected too.
func (s *session) dropServer() (c *pool.Conn, fatal bool) {
	c = s.server
	c.MarkBroken()
	s.queue.clear()
	s.batch = batchNone
	s.unlink()
	return c, s.mode == config.ModeSession || s.tx != txIdle
}

// sendFatal reports a fatal error to the client.
func (s *session) sendFatal(e *Error) {
	e.Fatal = true
	sendFatal(s.cw, e)
}
