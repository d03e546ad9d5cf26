package proxy

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgrouter/pgrouter/pool"
	"github.com/pgrouter/pgrouter/sqlstate"
	"github.com/pgrouter/pgrouter/wire"
)

// malformed is the one error a message that does not parse gets (see
// wire.MalformedError).
func malformed(err error) *Error {
	return fatalf(sqlstate.ProtocolViolation, "pgrouter: %v", err).because(err)
}

// Error is what a client is told: one ErrorResponse. Errors from inside
// pgrouter are translated to it in exactly one place, toError; FATAL is used
// only when the connection is closed right after.
type Error struct {
	Fatal   bool
	Code    string
	Message string
	Detail  string
	Hint    string
	// Err is the internal cause, for the log.
	Err error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s (SQLSTATE %s): %v", e.Message, e.Code, e.Err)
	}
	return fmt.Sprintf("%s (SQLSTATE %s)", e.Message, e.Code)
}

func (e *Error) Unwrap() error { return e.Err }

// errorf builds an ERROR; the session goes on.
func errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// fatalf builds a FATAL; the connection is closed after it is sent.
func fatalf(code, format string, args ...any) *Error {
	return &Error{Fatal: true, Code: code, Message: fmt.Sprintf(format, args...)}
}

// WithHint sets the hint, which says what to do about the error.
func (e *Error) WithHint(format string, args ...any) *Error {
	e.Hint = fmt.Sprintf(format, args...)
	return e
}

func (e *Error) because(err error) *Error {
	e.Err = err
	return e
}

// errClientGone means the client socket failed or closed; nothing can be sent.
var errClientGone = errors.New("client connection closed")

// toError is the one translation from internal errors to what a client sees.
func toError(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	var waitErr *pool.WaitTimeoutError
	if errors.As(err, &waitErr) && waitErr.Paused {
		return errorf(sqlstate.TooManyConnections, "pgrouter: query_wait_timeout: %s", waitErr.Error()).
			WithHint("An operator paused the shard (PAUSE in the admin console); retry after RESUME.").
			because(err)
	}
	if errors.As(err, &waitErr) {
		return errorf(sqlstate.TooManyConnections, "pgrouter: query_wait_timeout: %s", waitErr.Error()).
			WithHint("Raise pool.size or pool.query_wait_timeout in router.yaml, or look for long transactions holding server connections.").
			because(err)
	}
	var standby *pool.StandbyError
	if errors.As(err, &standby) {
		return errorf(sqlstate.ReadOnlyTransaction, "pgrouter: shard %s's server is a standby, not its primary: nothing is sent there", standby.Shard).
			WithHint("Its primary was failed over or the host demoted: point the shard's dsn at the new primary, or list every host with target_session_attrs=read-write, and RELOAD.").
			because(err)
	}
	var connErr *pool.ConnectError
	if errors.As(err, &connErr) {
		return errorf(sqlstate.UnableToConnect, "pgrouter: cannot connect to shard %s (%s)", connErr.Shard, connErr.Reason()).
			WithHint("Check that shard %s is running and reachable (pgrouter's log has the details); the next statement tries again.", connErr.Shard).
			because(err)
	}
	var srvErr *pool.ServerError
	if errors.As(err, &srvErr) {
		return &Error{Code: srvErr.Err.Code, Message: srvErr.Err.Message, Detail: srvErr.Err.Detail, Hint: srvErr.Err.Hint, Err: err}
	}
	var tooLarge *wire.TooLargeError
	if errors.As(err, &tooLarge) {
		return fatalf(sqlstate.ProtocolViolation, "pgrouter: %s", tooLarge.Error()).
			WithHint("Raise pool.max_message_size in router.yaml if such messages are expected.").
			because(err)
	}
	if errors.Is(err, wire.ErrMalformed) {
		return fatalf(sqlstate.ProtocolViolation, "pgrouter: invalid message framing: %v", err).because(err)
	}
	if errors.Is(err, pool.ErrRetired) {
		return errorf(sqlstate.SerializationFailure, "pgrouter: the shard map changed (RELOAD) while this statement waited to be placed; it was not run anywhere").
			WithHint("Run it again: it will be placed with the new map.").because(err)
	}
	if errors.Is(err, pool.ErrClosed) {
		return fatalf(sqlstate.AdminShutdown, "pgrouter: terminating connection: the pool is shutting down").because(err)
	}
	if errors.Is(err, context.Canceled) {
		return fatalf(sqlstate.AdminShutdown, "pgrouter: terminating connection due to administrator command").because(err)
	}
	return fatalf(sqlstate.InternalError, "pgrouter: internal error: %v", err).because(err)
}

// errorResponse encodes e as an ErrorResponse.
func (e *Error) response() *pgproto3.ErrorResponse {
	sev := "ERROR"
	if e.Fatal {
		sev = "FATAL"
	}
	return &pgproto3.ErrorResponse{
		Severity:            sev,
		SeverityUnlocalized: sev,
		Code:                e.Code,
		Message:             e.Message,
		Detail:              e.Detail,
		Hint:                e.Hint,
	}
}

// isClientGone reports whether err means the client socket is unusable.
// Only client I/O sites produce it (through clientIO), so a server's network
// error can never be mistaken for a departed client.
func isClientGone(err error) bool { return errors.Is(err, errClientGone) }

// clientIO classifies an error from reading or writing the client socket:
// framing violations stay what they are (the client gets a FATAL), anything
// else means the client is gone.
func clientIO(err error) error {
	if err == nil || isProtocolViolation(err) {
		return err
	}
	return fmt.Errorf("%w: %w", errClientGone, err)
}

// isProtocolViolation reports a malformed or oversized message.
func isProtocolViolation(err error) bool {
	var tooLarge *wire.TooLargeError
	var pgErr *Error
	return errors.As(err, &tooLarge) || errors.Is(err, wire.ErrMalformed) || errors.As(err, &pgErr)
}
