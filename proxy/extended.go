package proxy

import (
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgrouter/pgrouter/pool"
	"github.com/pgrouter/pgrouter/wire"
)

// query handles a simple Query message.
func (s *session) query(m wire.Message) error {
	sql := trimNUL(m.Body())
	util := classifyUtility(sql)
	if handled, err := s.answerLocally(util); handled {
		return err
	}
	if err := s.link(); err != nil {
		return err
	}
	c := s.server
	s.unnamed.valid = false // a simple Query destroys the unnamed statement
	c.Unnamed = 0
	_ = c.W.Write(m.Raw)
	s.queue.push(request{kind: reqQuery})
	ok, err := s.exchange()
	if err != nil {
		return err
	}
	if ok && util.kind != utilNone {
		if err := s.afterUtility(util, c); err != nil {
			return err
		}
	}
	s.maybeRelease()
	return nil
}

// functionCall handles the legacy FunctionCall message.
func (s *session) functionCall(m wire.Message) error {
	if err := s.link(); err != nil {
		return err
	}
	_ = s.server.W.Write(m.Raw)
	s.queue.push(request{kind: reqFunctionCall})
	if _, err := s.exchange(); err != nil {
		return err
	}
	s.maybeRelease()
	return nil
}

// exchange flushes what was queued for the server and relays the answers.
// ok is false when the server reported an error.
func (s *session) exchange() (ok bool, err error) {
	if err := s.server.W.Flush(); err != nil {
		return false, s.serverLost(err)
	}
	return s.relay()
}

// parse handles Parse.
func (s *session) parse(m wire.Message) error {
	name, definition, ok := cutCString(m.Body())
	if !ok {
		return fatalf(codeProtocolViolation, "pgrouter: malformed Parse message")
	}
	if len(name) > 0 && !s.passthrough && s.server == nil && s.txStatus == wire.TxIdle && s.stmts[string(name)] == nil {
		// A statement some server has already parsed needs no server now:
		// it is prepared where it executes.
		if st := newStatement(definition); s.srv.known.has(st.serverName) {
			clientName := string(name)
			s.stmts[clientName] = st
			s.queue.push(request{kind: reqLocal, reply: wire.ParseComplete, clientStmt: clientName, serverStmt: st.serverName})
			s.emitLocals()
			return nil
		}
	}
	if err := s.link(); err != nil {
		return err
	}
	c := s.server
	s.inBatch = true
	if len(name) == 0 {
		c.Unnamed = s.unnamed.set(m.Raw, definition)
		_ = c.W.Write(m.Raw)
		s.queue.push(request{kind: reqParse, unnamed: true})
		return nil
	}
	if s.passthrough {
		_ = c.W.Write(m.Raw)
		s.queue.push(request{kind: reqParse})
		return nil
	}
	if old := s.stmts[string(name)]; old != nil {
		// PostgreSQL answers 42P05. Let the server say so in pipeline order:
		// make sure it has the existing statement, then Parse that name again.
		if !c.Statements.Has(old.serverName) {
			s.prepareOn(c, old, true, "")
		}
		start := c.W.Begin(wire.Parse)
		c.W.AppendString(old.serverName)
		c.W.AppendByte(0)
		c.W.AppendBytes(definition)
		_ = c.W.End(start)
		s.queue.push(request{kind: reqParse, renameFrom: old.serverName, renameTo: string(name)})
		return nil
	}
	st := newStatement(definition)
	clientName := string(name)
	s.stmts[clientName] = st
	if c.Statements.Has(st.serverName) {
		s.queue.push(request{kind: reqLocal, reply: wire.ParseComplete, serverStmt: st.serverName, clientStmt: clientName})
		return nil
	}
	s.prepareOn(c, st, false, clientName)
	return nil
}

// bind handles Bind, pointing it at the server-side statement name.
func (s *session) bind(m wire.Message) error {
	portal, rest, ok1 := cutCString(m.Body())
	name, params, ok2 := cutCString(rest)
	if !ok1 || !ok2 {
		return fatalf(codeProtocolViolation, "pgrouter: malformed Bind message")
	}
	if err := s.link(); err != nil {
		return err
	}
	c := s.server
	s.inBatch = true
	if len(name) == 0 || s.passthrough {
		if len(name) == 0 {
			s.ensureUnnamed(c)
		}
		_ = c.W.Write(m.Raw)
		s.queue.push(request{kind: reqBind})
		return nil
	}
	serverName, req := s.serverStatement(c, name)
	req.kind = reqBind
	start := c.W.Begin(wire.Bind)
	c.W.AppendBytes(portal)
	c.W.AppendByte(0)
	c.W.AppendString(serverName)
	c.W.AppendByte(0)
	c.W.AppendBytes(params)
	_ = c.W.End(start)
	s.queue.push(req)
	return nil
}

// serverStatement returns the server-side name for a client's statement,
// preparing it on c first if c lacks it. For a name the client never
// prepared it returns missingStatement and a request that renames it back in
// the server's error.
func (s *session) serverStatement(c *pool.Conn, name []byte) (string, request) {
	st := s.stmts[string(name)]
	if st == nil {
		return missingStatement, request{renameFrom: missingStatement, renameTo: string(name)}
	}
	if !c.Statements.Has(st.serverName) {
		s.prepareOn(c, st, true, "")
	}
	return st.serverName, request{}
}

// describe handles Describe of a statement or a portal.
func (s *session) describe(m wire.Message) error {
	body := m.Body()
	if len(body) < 2 || (body[0] != 'S' && body[0] != 'P') {
		return fatalf(codeProtocolViolation, "pgrouter: malformed Describe message")
	}
	name, _, ok := cutCString(body[1:])
	if !ok {
		return fatalf(codeProtocolViolation, "pgrouter: malformed Describe message")
	}
	if err := s.link(); err != nil {
		return err
	}
	c := s.server
	s.inBatch = true
	if body[0] == 'P' {
		_ = c.W.Write(m.Raw)
		s.queue.push(request{kind: reqDescribePortal})
		return nil
	}
	if len(name) == 0 || s.passthrough {
		if len(name) == 0 {
			s.ensureUnnamed(c)
		}
		_ = c.W.Write(m.Raw)
		s.queue.push(request{kind: reqDescribeStatement})
		return nil
	}
	serverName, req := s.serverStatement(c, name)
	req.kind = reqDescribeStatement
	start := c.W.Begin(wire.Describe)
	c.W.AppendByte('S')
	c.W.AppendString(serverName)
	c.W.AppendByte(0)
	_ = c.W.End(start)
	s.queue.push(req)
	return nil
}

// execute handles Execute.
func (s *session) execute(m wire.Message) error {
	if err := s.link(); err != nil {
		return err
	}
	s.inBatch = true
	_ = s.server.W.Write(m.Raw)
	s.queue.push(request{kind: reqExecute})
	return nil
}

// closeStatement handles Close. Closing a named statement only forgets the
// client's name (the server keeps the statement in its cache for others),
// so it is answered locally and needs no server.
func (s *session) closeStatement(m wire.Message) error {
	body := m.Body()
	if len(body) < 2 || (body[0] != 'S' && body[0] != 'P') {
		return fatalf(codeProtocolViolation, "pgrouter: malformed Close message")
	}
	name, _, ok := cutCString(body[1:])
	if !ok {
		return fatalf(codeProtocolViolation, "pgrouter: malformed Close message")
	}
	if body[0] == 'S' && len(name) > 0 && !s.passthrough {
		clientName := string(name)
		old := s.stmts[clientName]
		delete(s.stmts, clientName)
		s.queue.push(request{kind: reqLocal, reply: wire.CloseComplete, clientStmt: clientName, restore: old})
		if s.server == nil {
			s.emitLocals()
		}
		return nil
	}
	if err := s.link(); err != nil {
		return err
	}
	c := s.server
	s.inBatch = true
	if body[0] == 'S' && len(name) == 0 {
		s.unnamed.valid = false
		c.Unnamed = 0
	}
	_ = c.W.Write(m.Raw)
	s.queue.push(request{kind: reqClose})
	return nil
}

// sync handles Sync: the end of an extended-protocol batch.
func (s *session) sync(m wire.Message) error {
	s.inBatch = false
	if s.server == nil { // nothing went to a server: every reply is local
		s.emitLocals()
		return clientIO(s.cw.SendReady(s.txStatus))
	}
	_ = s.server.W.Write(m.Raw)
	s.queue.push(request{kind: reqSync})
	if _, err := s.exchange(); err != nil {
		return err
	}
	s.maybeRelease()
	return nil
}

// flush handles Flush: the client wants every reply owed so far, without
// ending the batch.
func (s *session) flush(m wire.Message) error {
	if s.server == nil {
		s.emitLocals()
		return clientIO(s.cw.Flush())
	}
	_ = s.server.W.Write(m.Raw)
	if _, err := s.exchange(); err != nil {
		return err
	}
	return clientIO(s.cw.Flush())
}

// answerLocally answers utility statements that only touch state pgrouter
// keeps for the client: DEALLOCATE of a statement the client prepared
// through the protocol (the server knows it under another name).
func (s *session) answerLocally(u utility) (bool, error) {
	if u.kind != utilDeallocate || s.passthrough || s.txStatus == wire.TxFailed {
		return false, nil
	}
	if _, ok := s.stmts[u.name]; !ok {
		return false, nil // maybe an SQL-level PREPARE on the server: let it answer
	}
	delete(s.stmts, u.name)
	s.emitLocals()
	_ = s.cw.Send(&pgproto3.CommandComplete{CommandTag: []byte("DEALLOCATE")})
	return true, clientIO(s.cw.SendReady(s.txStatus))
}

// afterUtility applies what a successful utility statement did on server c
// to pgrouter's picture of the client and the server.
func (s *session) afterUtility(u utility, c *pool.Conn) error {
	switch u.kind {
	case utilDeallocateAll:
		if !s.passthrough {
			clear(s.stmts)
			c.Statements.Clear()
		}
	case utilDiscardAll:
		clear(s.stmts)
		s.unnamed.valid = false
		c.Statements.Clear()
		c.Unnamed = 0
		fallthrough
	case utilResetAll:
		// The server went back to its defaults; PostgreSQL would have gone
		// back to the startup packet's values, so those are applied again.
		c.Applied = pool.ParamState{}
		s.desired = s.startup.Clone()
		if s.server != nil {
			return s.applySettings()
		}
	}
	return nil
}

func trimNUL(b []byte) []byte {
	if n := len(b); n > 0 && b[n-1] == 0 {
		return b[:n-1]
	}
	return b
}
