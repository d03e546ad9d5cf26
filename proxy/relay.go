package proxy

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgrouter/pgrouter/config"
	"github.com/pgrouter/pgrouter/pool"
	"github.com/pgrouter/pgrouter/sqlstate"
	"github.com/pgrouter/pgrouter/wire"
)

// relay forwards the linked server's replies to the client until every
// queued request is answered, or until a COPY FROM STDIN started by the
// extended protocol has taken its data (its result comes after the client's
// next Sync). Replies are matched to requests in order; the ones pgrouter
// asked for itself are swallowed, and replies pgrouter owes from its own
// bookkeeping (reqLocal) are emitted where they belong.
func (s *session) relay() error {
	for {
		s.emitLocals()
		if s.queue.empty() {
			return nil
		}
		c := s.server
		if !c.R.HasMessage() {
			if s.cw.Len() > 0 { // about to wait for the server: pass on what we have
				if err := s.cw.Flush(); err != nil {
					return clientIO(err)
				}
			}
		}
		m, err := s.readServer(c)
		if err != nil {
			return s.serverLost(err)
		}
		suspend, err := s.handleServerMessage(m, true)
		if err != nil || suspend {
			return err
		}
	}
}

// handleServerMessage processes one server reply against the head of the
// queue. suspend reports an extended-protocol COPY FROM STDIN whose data has
// been passed on. allowCopy is false while a batch is still being written.
func (s *session) handleServerMessage(m wire.Message, allowCopy bool) (suspend bool, err error) {
	head := s.queue.peek()
	switch m.Type {
	case wire.DataRow:
		if head.internal && head.kind == reqQuery {
			return false, s.internalRow(m, head)
		}
		return false, s.forward(m)
	case wire.CopyData:
		return false, s.forward(m)
	case wire.CommandComplete, wire.EmptyQueryResponse:
		switch head.kind {
		case reqExecute:
			s.queue.pop()
			return false, s.forward(m)
		case reqQuery, reqFunctionCall:
			if head.internal {
				return false, nil
			}
			return false, s.forward(m)
		}
		return false, s.unexpected(m, head)
	case wire.RowDescription:
		switch head.kind {
		case reqDescribeStatement, reqDescribePortal:
			s.queue.pop()
			return false, s.forward(m)
		case reqQuery, reqExecute:
			if head.internal {
				return false, nil
			}
			return false, s.forward(m)
		}
		return false, s.unexpected(m, head)
	case wire.NoData:
		return false, s.answer(m, head, reqDescribeStatement, reqDescribePortal)
	case wire.ParameterDescription:
		if head.kind != reqDescribeStatement {
			return false, s.unexpected(m, head)
		}
		return false, s.forward(m)
	case wire.ParseComplete:
		if head.kind == reqParse && head.serverStmt != "" {
			s.known.add(head.serverStmt)
		}
		return false, s.answer(m, head, reqParse, reqParse)
	case wire.BindComplete:
		return false, s.answer(m, head, reqBind, reqBind)
	case wire.CloseComplete:
		return false, s.answer(m, head, reqClose, reqClose)
	case wire.PortalSuspended:
		return false, s.answer(m, head, reqExecute, reqExecute)
	case wire.ReadyForQuery:
		return false, s.ready(m, head)
	case wire.ErrorResponse:
		return false, s.serverError(m, head)
	case wire.NoticeResponse:
		if head.internal {
			return false, nil
		}
		return false, s.forward(m)
	case wire.NotificationResponse:
		if s.mode.Shared() {
			// LISTEN is refused outside session mode, so a notification is
			// for a LISTEN some function ran for an earlier client.
			return false, nil
		}
		return false, s.forward(m)
	case wire.ParameterStatus:
		return false, s.parameterStatus(m, head)
	case wire.CopyOutResponse, wire.CopyDone, wire.FunctionCallResponse:
		return false, s.forward(m)
	case wire.CopyInResponse:
		if !allowCopy {
			s.server.MarkBroken()
			return false, fatalf(sqlstate.ProtocolViolation, "pgrouter: COPY FROM STDIN started in the middle of a pipelined batch; wait for CopyInResponse before sending more")
		}
		if err := s.forward(m); err != nil {
			return false, err
		}
		return s.copyIn()
	}
	return false, s.unexpected(m, head)
}

// forward passes a server message to the client unchanged.
func (s *session) forward(m wire.Message) error {
	s.bytesOut += int64(len(m.Raw))
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
	r := s.queue.pop()
	if r.internal {
		if r.onEnd != nil {
			r.onEnd(!r.failed)
		}
		return nil
	}
	failed := s.reqFailed
	s.reqFailed = false
	if s.tx.unpinned() { // the server ran a statement outside the client's unpinned transaction
		if failed {
			s.abortUnpinned()
		}
		s.reqStart = time.Time{}
		return clientIO(s.cw.SendReady(s.tx.status()))
	}
	s.account(body[0])
	s.tx = serverTx(body[0])
	if s.mode == config.ModeStatement && body[0] != wire.TxIdle {
		s.stmtViolation = true // ReadyForQuery is held back: afterRequest rolls back and says why
		return nil
	}
	return s.forward(m)
}

// account adds a finished request, and a finished transaction, to the
// pool's counters.
func (s *session) account(status byte) {
	now := time.Now()
	p := s.server.Pool()
	p.RecordQuery(now.Sub(s.reqStart), s.bytesIn, s.bytesOut)
	switch {
	case s.tx == txIdle && status == wire.TxIdle:
		p.RecordXact(now.Sub(s.reqStart))
	case s.tx == txIdle:
		s.xactStart = s.reqStart
	case status == wire.TxIdle:
		p.RecordXact(now.Sub(s.xactStart))
	}
	s.reqStart = time.Time{}
	s.bytesIn, s.bytesOut = 0, 0
}

// internalRow hands a row of an internal query to its receiver.
func (s *session) internalRow(m wire.Message, head *request) error {
	if head.onRow == nil {
		return nil
	}
	var row pgproto3.DataRow
	if err := row.Decode(m.Body()); err != nil {
		return s.unexpected(m, head)
	}
	head.onRow(row.Values)
	return nil
}

// serverError handles an ErrorResponse. After a simple Query the server
// goes on to ReadyForQuery; after an extended-protocol message it skips
// everything up to the next Sync, so those requests are dropped (and what
// pgrouter recorded for them undone) without waiting for replies. If no
// Sync has been sent yet, the client's next messages are discarded up to
// its Sync, as the server does.
func (s *session) serverError(m wire.Message, head *request) error {
	if isFatal(m.Body()) {
		return s.serverEnded(m)
	}
	if !head.internal || head.replace != nil {
		s.reqFailed = true
	}
	if code, msg := errorFields(m.Body()); isMovedError(code, msg) {
		// A shard's ownership guard refused a write: the map is stale.
		s.srv.wg.Add(1)
		go func() {
			defer s.srv.wg.Done()
			s.srv.RefreshOwnership()
		}()
	}
	switch head.kind {
	case reqQuery, reqFunctionCall, reqSync: // an error at Sync is a failed implicit COMMIT
		switch {
		case head.internal:
			head.failed = true
			return nil
		case head.replace != nil:
			if head.replaced {
				return nil
			}
			head.replaced = true
			return clientIO(s.cw.Send(head.replace.response()))
		}
		return s.forward(m)
	}
	s.batchErr = true
	failed := s.queue.pop()
	s.undo(failed, true)
	if (failed.kind == reqBind || failed.kind == reqDescribeStatement) && failed.serverStmt != "" && errorCode(m.Body()) == sqlstate.InvalidStatementName {
		// The server lacks a statement the cache said it had: believe the server.
		s.server.Statements.Remove(failed.serverStmt)
	}
	for !s.queue.empty() && s.queue.peek().kind != reqSync {
		s.undo(s.queue.pop(), false)
	}
	if s.queue.empty() {
		s.skipping = true
	}
	switch {
	case failed.replace != nil:
		return clientIO(s.cw.Send(failed.replace.response()))
	case failed.renameFrom != "":
		return s.forwardRenamed(m, failed.renameFrom, failed.renameTo)
	}
	return s.forward(m)
}

// isFatal reports whether an ErrorResponse body has severity FATAL or PANIC
// (the first field is the severity, 'S').
func isFatal(body []byte) bool {
	return len(body) > 6 && body[0] == 'S' && (string(body[1:6]) == "FATAL" || string(body[1:6]) == "PANIC")
}

// errorCode extracts the SQLSTATE field of an ErrorResponse body.
func errorCode(body []byte) string {
	code, _ := errorFields(body)
	return code
}

// errorFields extracts the SQLSTATE and message fields of an ErrorResponse
// body.
func errorFields(body []byte) (code, message string) {
	for len(body) > 1 {
		field := body[0]
		end := 1
		for end < len(body) && body[end] != 0 {
			end++
		}
		switch field {
		case 'C':
			code = string(body[1:end])
		case 'M':
			message = string(body[1:end])
		}
		if end >= len(body) {
			break
		}
		body = body[end+1:]
	}
	return code, message
}

// serverEnded handles a FATAL from the server: the server connection is
// closing (shutdown, termination, timeouts), so it is dropped now. A client
// outside a transaction in transaction mode loses nothing and gets the
// server's error as an ERROR, keeping its connection, as PL/Proxy
// downgrades remote FATALs; any other client is disconnected with it.
func (s *session) serverEnded(m wire.Message) error {
	var e pgproto3.ErrorResponse
	_ = e.Decode(m.Body())
	c, fatal := s.dropServer()
	shard := c.Shard()
	out := &Error{Code: e.Code, Message: e.Message, Detail: e.Detail, Hint: e.Hint,
		Err: fmt.Errorf("shard %s ended the server connection: %s", shard, e.Message)}
	if fatal {
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
		_ = s.cw.SendEmpty(r.reply)
	}
}

// pushServer writes out the server batch once it is large, reading the
// server's replies meanwhile if it owes any.
func (s *session) pushServer() error {
	if s.server.W.Len() < wire.FlushThreshold {
		return nil
	}
	return s.flushServer()
}

// flushServer writes the server batch. A large batch sent while the server
// owes replies is written from a helper goroutine while this one relays
// those replies: otherwise a long pipeline deadlocks, the server blocked
// writing replies nobody reads and pgrouter blocked writing requests the
// server no longer reads.
func (s *session) flushServer() error {
	c := s.server
	if c.W.Len() < wire.FlushThreshold || !s.queue.awaitingServer() {
		s.waitBegin() // a frozen server stops taking bytes too
		err := c.W.Flush()
		s.waitEnd()
		if err != nil {
			return s.serverLost(err)
		}
		return nil
	}
	buf := c.W.Take()
	s.waitBegin() // the whole exchange: writes and reads
	defer s.waitEnd()
	done := make(chan error, 1)
	go func() {
		err := c.WriteRaw(buf)
		_ = c.SetReadDeadline(time.Unix(1, 0)) // wake the relay below
		done <- err
	}()
	var relayErr error
	for relayErr == nil && s.server == c {
		s.emitLocals()
		if !c.R.HasMessage() && s.cw.Len() > 0 {
			s.waitEnd() // a slow client is client_write_timeout's business
			err := s.cw.Flush()
			s.waitBegin()
			if err != nil {
				relayErr = clientIO(err)
				break
			}
		}
		m, err := c.R.Next()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			break // the batch is written
		}
		if err != nil {
			relayErr = err
			break
		}
		if s.queue.empty() {
			relayErr = s.unexpected(m, &request{})
			break
		}
		_, relayErr = s.handleServerMessage(m, false)
	}
	if relayErr != nil {
		c.Abort() // unblock the writer: this connection is not reused
	}
	werr := <-done
	_ = c.SetReadDeadline(time.Time{})
	c.W.Restore(buf, werr)
	var pgErr *Error
	switch {
	case relayErr != nil && s.server == c && !isClientGone(relayErr) && !errors.As(relayErr, &pgErr):
		return s.serverLost(relayErr) // reading the server failed
	case relayErr != nil:
		return relayErr
	case werr != nil:
		return s.serverLost(werr)
	}
	return nil
}

// unexpected reports a server reply that fits no outstanding request: the
// connection's state can no longer be trusted.
func (s *session) unexpected(m wire.Message, head *request) error {
	s.server.MarkBroken()
	return fatalf(sqlstate.ProtocolViolation, "pgrouter: protocol out of step with shard %s", s.server.Shard()).
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
