package proxy

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"os"

	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"

	"github.com/pgrouter/pgrouter/sqlstate"
	"github.com/pgrouter/pgrouter/wire"
)

// The admin console is the database "pgrouter" on the client port, for the
// users in admin_users. proxy logs its clients in (TLS, authentication,
// admin_users, the greeting) and hands each one, ready for a query, to the
// Console installed with SetConsole; the console package answers them from
// the snapshot API. Every ErrorResponse still leaves through this package
// (ConsoleConn.SendError), so the console's errors read as the data
// plane's do.

// Version is pgrouter's version, set by the command at start (the console
// greeting and SHOW VERSION).
var Version = "dev"

// A Console serves admin console clients. Serve returns when the client has
// left or must be disconnected; it runs on the client's goroutine.
type Console interface {
	Serve(c *ConsoleConn)
}

// SetConsole installs the admin console. Until it is called, logins to the
// admin database are refused.
func (s *Server) SetConsole(c Console) { s.console.Store(&c) }

// ConsoleConn is an admin console client that has logged in.
type ConsoleConn struct {
	srv  *Server
	r    *wire.Reader
	w    *wire.Writer
	user string
	log  *zap.Logger
}

// User is the admin user the client logged in as.
func (c *ConsoleConn) User() string { return c.user }

// Context ends when the server closes: bound the console's own work (a
// SHOW that reads the shards) with it.
func (c *ConsoleConn) Context() context.Context { return c.srv.ctx }

// Log is the client's logger.
func (c *ConsoleConn) Log() *zap.Logger { return c.log }

// Next sends what was queued and reads the client's next message. An error
// means the connection is over: the client left, sent a malformed message,
// or pgrouter is shutting down; hand it to SendError.
func (c *ConsoleConn) Next() (wire.Message, error) {
	if c.srv.draining.Load() {
		return wire.Message{}, ShutdownError()
	}
	if err := c.w.Flush(); err != nil {
		return wire.Message{}, clientIO(err)
	}
	m, err := c.r.Next()
	if err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) && c.srv.draining.Load() {
			return m, ShutdownError()
		}
		return m, clientIO(err)
	}
	return m, nil
}

// Send queues a message for the client.
func (c *ConsoleConn) Send(m pgproto3.BackendMessage) error { return c.w.Send(m) }

// SendReady queues ReadyForQuery (the console is never in a transaction).
func (c *ConsoleConn) SendReady() error { return c.w.SendReady(wire.TxIdle) }

// SendError tells the client what err means (the same translation the data
// plane uses) and reports whether the connection must now close: after a
// FATAL, or when the client is gone and nothing could be sent.
func (c *ConsoleConn) SendError(err error) (fatal bool) {
	if isClientGone(err) {
		return true
	}
	e := toError(err)
	if e.Fatal {
		sendFatal(c.w, e)
		return true
	}
	_ = c.w.Send(e.response())
	return false
}

// consoleClient runs a console login on the client's goroutine.
type consoleClient struct {
	c       *ConsoleConn
	console Console
}

func (cc consoleClient) run() { cc.console.Serve(cc.c) }

// consoleLogin finishes the login of an admin console client.
func (s *Server) consoleLogin(r *wire.Reader, w *wire.Writer, gen *generation, user string, log *zap.Logger) (consoleClient, error) {
	if !gen.cfg.IsAdmin(user) {
		return consoleClient{}, fatalf(sqlstate.InsufficientPrivilege, "permission denied: user %q may not use the admin console", user).
			WithHint("List the user under admin_users in router.yaml.")
	}
	console := s.console.Load()
	if console == nil {
		return consoleClient{}, fatalf(sqlstate.InvalidCatalogName, "pgrouter: this process serves no admin console").
			WithHint("pgrouter serve always has one; a program embedding the proxy must call SetConsole.")
	}
	_ = w.Send(&pgproto3.AuthenticationOk{})
	for _, p := range [][2]string{
		{"server_version", "15.0 (pgrouter " + Version + ")"}, {"server_encoding", "UTF8"}, {"client_encoding", "UTF8"},
		{"DateStyle", "ISO, MDY"}, {"integer_datetimes", "on"}, {"standard_conforming_strings", "on"}, {"TimeZone", "UTC"},
	} {
		_ = w.Send(&pgproto3.ParameterStatus{Name: p[0], Value: p[1]})
	}
	var key [8]byte
	_, _ = rand.Read(key[:]) // cancels are not served on the console; the key only has to look like one
	_ = w.Send(&pgproto3.BackendKeyData{ProcessID: binary.BigEndian.Uint32(key[:4]) &^ (1 << 31), SecretKey: key[4:]})
	_ = w.SendReady(wire.TxIdle)
	if err := w.Flush(); err != nil {
		return consoleClient{}, err
	}
	log.Info("admin console login")
	return consoleClient{c: &ConsoleConn{srv: s, r: r, w: w, user: user, log: log}, console: *console}, nil
}
