package proxy

import (
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgrouter/pgrouter/config"
	"github.com/pgrouter/pgrouter/pool"
	"github.com/pgrouter/pgrouter/wire"
)

// relay forwards the linked server's replies to the client until every
// queued request is answered. Replies are matched to requests in order; the
// ones pgrouter asked for itself are swallowed, and replies pgrouter owes
// from its own bookkeeping (reqLocal) are emitted where they belong. ok is
// false when the server reported an error for a client request.
func (s *session) relay() (ok bool, err error) {
	c := s.server
	ok = true
	for {
		s.emitLocals()
		if s.queue.empty() {
			return ok, nil
		}
		if !c.R.HasMessage() && s.cw.Len() > 0 { // about to wait for the server: pass on what we have
			if err := s.cw.Flush(); err != nil {
				return false, clientIO(err)
			}
		}
		m, err := c.R.Next()
		if err != nil {
			return false, s.serverLost(err)
		}
		head := s.queue.peek()
		switch m.Type {
		case wire.DataRow, wire.CopyData:
			err = s.forward(m)
		case wire.CommandComplete, wire.EmptyQueryResponse:
			switch head.kind {
			case reqExecute:
				s.queue.pop()
				err = s.forward(m)
			case reqQuery, reqFunctionCall:
				err = s.forward(m)
			default:
				err = s.unexpected(m, head)
			}
		case wire.RowDescription:
			switch head.kind {
			case reqDescribeStatement, reqDescribePortal:
				s.queue.pop()
				err = s.forward(m)
			case reqQuery, reqExecute:
				err = s.forward(m)
			default:
				err = s.unexpected(m, head)
			}
		case wire.NoData:
			err = s.answer(m, head, reqDescribeStatement, reqDescribePortal)
		case wire.ParameterDescription:
			if head.kind != reqDescribeStatement {
				err = s.unexpected(m, head)
			} else {
				err = s.forward(m)
			}
		case wire.ParseComplete:
			if head.serverStmt != "" {
				s.srv.known.add(head.serverStmt)
			}
			err = s.answer(m, head, reqParse, reqParse)
		case wire.BindComplete:
			err = s.answer(m, head, reqBind, reqBind)
		case wire.CloseComplete:
			err = s.answer(m, head, reqClose, reqClose)
		case wire.PortalSuspended:
			err = s.answer(m, head, reqExecute, reqExecute)
		case wire.ReadyForQuery:
			err = s.ready(m, head)
		case wire.ErrorResponse:
			ok = false
			err = s.serverError(m, head)
		case wire.NoticeResponse, wire.NotificationResponse:
			if !head.internal {
				err = s.forward(m)
			}
		case wire.ParameterStatus:
			err = s.parameterStatus(m, head)
		case wire.CopyOutResponse, wire.CopyDone, wire.FunctionCallResponse:
			err = s.forward(m)
		case wire.CopyInResponse:
			if err = s.forward(m); err == nil {
				err = s.copyIn()
			}
		default:
			err = s.unexpected(m, head)
		}
		if err != nil {
			return false, err
		}
	}
}

// forward passes a server message to the client unchanged.
func (s *session) forward(m wire.Message) error {
	if err := s.cw.Write(m.Raw); err != nil {
		return clientIO(err)
	}
	return nil
}

// answer pops the request a single-message reply belongs to, checking that
// it is one of the two kinds that can receive it, and forwards the reply
// unless pgrouter asked for it itself.
func (s *session) answer(m wire.Message, head *request, k1, k2 requestKind) error {
	if head.kind != k1 && head.kind != k2 {
		return s.unexpected(m, head)
	}
	r := s.queue.pop()
	if r.internal {
		return nil
	}
	return s.forward(m)
}

// ready handles ReadyForQuery, which ends a Query, FunctionCall or Sync.
func (s *session) ready(m wire.Message, head *request) error {
	body := m.Body()
	if len(body) != 1 || (head.kind != reqSync && head.kind != reqQuery && head.kind != reqFunctionCall) {
		return s.unexpected(m, head)
	}
	s.queue.pop()
	s.txStatus = body[0]
	return s.forward(m)
}

// serverError handles an ErrorResponse. After a simple Query the server
// goes on to ReadyForQuery; after an extended-protocol message it skips
// everything up to the next Sync, so those requests are dropped (and what
// pgrouter recorded for them undone) without waiting for replies.
func (s *session) serverError(m wire.Message, head *request) error {
	if isFatal(m.Body()) {
		return s.serverEnded(m)
	}
	switch head.kind {
	case reqQuery, reqFunctionCall, reqSync: // an error at Sync is a failed implicit COMMIT
		return s.forward(m)
	}
	failed := s.queue.pop()
	s.undo(failed)
	for !s.queue.empty() && s.queue.peek().kind != reqSync {
		s.undo(s.queue.pop())
	}
	if failed.renameFrom != "" {
		return s.forwardRenamed(m, failed.renameFrom, failed.renameTo)
	}
	return s.forward(m)
}

// isFatal reports whether an ErrorResponse body has severity FATAL or PANIC
// (the first field is the severity, 'S').
func isFatal(body []byte) bool {
	return len(body) > 6 && body[0] == 'S' && (string(body[1:6]) == "FATAL" || string(body[1:6]) == "PANIC")
}

// serverEnded handles a FATAL from the server: the server connection is
// closing (shutdown, termination, timeout), so it is dropped now. A client
// outside a transaction in transaction mode loses nothing and gets the
// server's error as an ERROR, keeping its connection, as PL/Proxy
// downgrades remote FATALs; any other client is disconnected with it.
func (s *session) serverEnded(m wire.Message) error {
	var e pgproto3.ErrorResponse
	_ = e.Decode(m.Body())
	c := s.server
	shard := c.Shard()
	c.MarkBroken()
	s.queue.clear()
	s.inBatch = false
	s.unlink()
	out := &Error{Code: e.Code, Message: e.Message, Detail: e.Detail, Hint: e.Hint,
		Err: fmt.Errorf("shard %s ended the server connection: %s", shard, e.Message)}
	if s.mode == config.ModeSession || s.txStatus != wire.TxIdle {
		out.Fatal = true
		return out
	}
	out.Hint = "pgrouter: the server connection to shard " + shard + " ended; this connection stays open and the next statement gets a new server connection."
	return out
}

// forwardRenamed forwards an error whose message names a server-side
// statement, with the client's name in its place.
func (s *session) forwardRenamed(m wire.Message, from, to string) error {
	var e pgproto3.ErrorResponse
	if err := e.Decode(m.Body()); err != nil {
		return s.forward(m)
	}
	e.Message = strings.ReplaceAll(e.Message, `"`+from+`"`, `"`+to+`"`)
	if err := s.cw.Send(&e); err != nil {
		return clientIO(err)
	}
	return nil
}

// parameterStatus records a reported setting. A change made by the client's
// own statement becomes part of its settings (and of what the server has
// applied), so the next server it gets in transaction mode is given the
// same value and the server's next client is not.
func (s *session) parameterStatus(m wire.Message, head *request) error {
	c := s.server
	name, value, ok := pool.ParseParameterStatus(m.Body())
	if !ok {
		return s.unexpected(m, head)
	}
	c.Params.Set(name, value)
	if head.internal {
		return nil
	}
	if settableReported(name) {
		s.desired.Set(name, value)
		c.Applied.Set(name, value)
	}
	return s.forward(m)
}

// emitLocals sends the replies pgrouter owes at the head of the queue.
func (s *session) emitLocals() {
	for !s.queue.empty() && s.queue.peek().kind == reqLocal {
		r := s.queue.pop()
		switch r.reply {
		case wire.ErrorResponse:
			_ = s.cw.Send(r.err.response())
			// A local error ends the batch like a server error does.
			for !s.queue.empty() && s.queue.peek().kind != reqSync {
				s.undo(s.queue.pop())
			}
		default:
			_ = s.cw.SendEmpty(r.reply)
		}
	}
}

// copyIn relays COPY FROM STDIN data from the client until CopyDone or
// CopyFail. Syncs already sent after the COPY are ignored by the server
// while it reads data, so they no longer expect a ReadyForQuery.
func (s *session) copyIn() error {
	c := s.server
	for i := 1; i < s.queue.len(); {
		if s.queue.at(i).kind == reqSync {
			s.queue.removeAt(i)
			continue
		}
		i++
	}
	if err := s.cw.Flush(); err != nil {
		return clientIO(err)
	}
	for {
		if !s.cr.HasMessage() && c.W.Len() > 0 {
			if err := c.W.Flush(); err != nil {
				return s.serverLost(err)
			}
		}
		m, err := s.cr.Next()
		if err != nil {
			return clientIO(err)
		}
		switch m.Type {
		case wire.CopyData, wire.Flush, wire.Sync: // the server ignores Flush and Sync during COPY
			_ = c.W.Write(m.Raw)
		case wire.Terminate:
			return errTerminate
		default: // CopyDone, CopyFail, or a message that makes the server abort the COPY
			_ = c.W.Write(m.Raw)
			if err := c.W.Flush(); err != nil {
				return s.serverLost(err)
			}
			return nil
		}
	}
}

// unexpected reports a server reply that fits no outstanding request: the
// connection's state can no longer be trusted.
func (s *session) unexpected(m wire.Message, head *request) error {
	s.server.MarkBroken()
	return fatalf(codeProtocolViolation, "pgrouter: protocol out of step with shard %s", s.server.Shard()).
		because(fmt.Errorf("server sent %q while waiting for reply to request kind %d", m.Type, head.kind))
}

// settableReported reports whether a parameter the server reports through
// ParameterStatus is a client setting (as opposed to a fact about the server
// or the login, which no SET may change).
func settableReported(name string) bool {
	switch strings.ToLower(name) {
	case "server_version", "server_encoding", "integer_datetimes", "is_superuser",
		"session_authorization", "in_hot_standby":
		return false
	}
	return true
}
