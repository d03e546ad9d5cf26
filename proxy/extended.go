package proxy

import (
	"bytes"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgrouter/pgrouter/pool"
	"github.com/pgrouter/pgrouter/sqlstate"
	"github.com/pgrouter/pgrouter/wire"
)

func reservedNameError() *Error {
	return errorf(sqlstate.ReservedName, "pgrouter: prepared statement names starting with %q are reserved for pgrouter", serverStmtPrefix).
		WithHint("Choose another name; protocol-level prepared statements (what drivers use) may have any name.")
}

// applyEffects mirrors, after a request, what its statements did.
func (s *session) applyEffects(eff effects) error {
	if eff&effResetAll == 0 || s.server == nil {
		return nil
	}
	// The server went back to its defaults; PostgreSQL would have gone back
	// to the startup packet's values, so those are applied again.
	s.server.Applied = pool.ParamState{}
	s.desired = s.startup.Clone()
	return s.applySettings()
}

// parse handles Parse.
func (s *session) parse(m wire.Message) error {
	msg, err := wire.ReadParse(m.Body())
	if err != nil {
		return malformed(err)
	}
	name, definition := msg.Name, msg.Definition
	plan := s.router.PlanBytes(msg.Query, s.standardStrings())
	info := planInfo(plan)
	if len(name) > 0 && !s.passthrough && s.server == nil && s.tx == txIdle && s.stmts[string(name)] == nil {
		// A statement some server has already parsed needs no server now:
		// it is prepared where it executes.
		if st := newStatement(definition, info, plan); s.known.has(st.serverName) {
			clientName := string(name)
			if err := s.keepStatement(clientName, st); err != nil {
				return err
			}
			s.queue.push(request{kind: reqLocal, reply: wire.ParseComplete, clientStmt: clientName, serverStmt: st.serverName})
			s.emitLocals()
			return nil
		}
	}
	if !s.passthrough && info.effects&effReserved != 0 {
		return reservedNameError()
	}
	if s.passthrough && len(name) > 0 && s.mode.Shared() {
		// The name would reach shared servers as it is: another client's
		// statement of the same name would collide with it, or run instead.
		return errorf(sqlstate.FeatureNotSupported, "pgrouter: named prepared statements need pool.prepared_statements above 0 in %s pooling mode", s.mode).
			WithHint("Set pool.prepared_statements (default 256), use unnamed statements, or pool.mode: session.")
	}
	if info.effects&effSessionState != 0 && s.mode.Shared() {
		return sessionStateError(s.mode, info.sessionState)
	}
	if err := extendedOverride(plan); err != nil {
		return err
	}
	if err := s.link(); err != nil {
		return err
	}
	c := s.server
	s.batch.send()
	if len(name) == 0 {
		prev := c.Unnamed
		c.Unnamed = s.unnamed.set(m.Raw, definition, info, plan)
		_ = c.W.Write(m.Raw)
		s.queue.push(request{kind: reqParse, unnamed: true, prevUnnamed: prev})
		return s.pushServer()
	}
	if s.passthrough {
		_ = c.W.Write(m.Raw)
		s.queue.push(request{kind: reqParse})
		return s.pushServer()
	}
	if old := s.stmts[string(name)]; old != nil {
		// PostgreSQL answers 42P05. Let the server say so in pipeline order:
		// make sure it has the existing statement, then Parse it again under
		// its own name and text (never the new text: the name would then
		// stand for different SQL on this server).
		if !c.Statements.Has(old.serverName) {
			s.prepareOn(c, old, true, "")
		}
		start := c.W.Begin(wire.Parse)
		c.W.AppendBytes(old.parseBody)
		_ = c.W.End(start)
		s.queue.push(request{kind: reqParse, renameFrom: old.serverName, renameTo: string(name)})
		return s.pushServer()
	}
	st := newStatement(definition, info, plan)
	clientName := string(name)
	if err := s.keepStatement(clientName, st); err != nil {
		return err
	}
	if c.Statements.Has(st.serverName) {
		s.queue.push(request{kind: reqLocal, reply: wire.ParseComplete, serverStmt: st.serverName, clientStmt: clientName})
		return nil
	}
	s.prepareOn(c, st, false, clientName)
	return s.pushServer()
}

// bind handles Bind, pointing it at the server-side statement name.
func (s *session) bind(m wire.Message) error {
	msg, err := wire.ReadBind(m.Body())
	if err != nil {
		return malformed(err)
	}
	portal, name := msg.Portal, msg.Statement
	// A replayed pipeline was placed when it was held (holdMessage): all of
	// it runs on s.dest, so its Binds are not placed a second time.
	if p := s.stmtPlan(name); p != nil && !s.replaying {
		dest, all, err := s.place(p, msg)
		if err != nil {
			return err
		}
		if all != nil { // after a Parse/Describe/Flush on some shard: end that, run the call everywhere at Sync
			if s.server != nil {
				if err := s.detach(); err != nil {
					return err
				}
			}
			s.batchErr = false
			s.fan = &fanBatch{call: all.Call, split: all.Split, bind: bytes.Clone(m.Body()), portal: string(portal)}
			return nil
		}
		s.dest = dest
	}
	if err := s.link(); err != nil {
		return err
	}
	c := s.server
	s.batch.send()
	if len(name) == 0 || s.passthrough {
		var info queryInfo
		if len(name) == 0 {
			s.ensureUnnamed(c)
			info = s.unnamed.info
		}
		if err := s.bindPortal(portal, info); err != nil {
			return err
		}
		_ = c.W.Write(m.Raw)
		s.queue.push(request{kind: reqBind})
		return s.pushServer()
	}
	if st := s.stmts[string(name)]; st != nil {
		if err := s.bindPortal(portal, st.info); err != nil {
			return err
		}
	}
	serverName, req := s.serverStatement(c, name)
	req.kind = reqBind
	start := c.W.Begin(wire.Bind)
	c.W.AppendBytes(portal)
	c.W.AppendByte(0)
	c.W.AppendString(serverName)
	c.W.AppendByte(0)
	c.W.AppendBytes(msg.Params)
	c.W.AppendBytes(msg.Results)
	_ = c.W.End(start)
	s.queue.push(req)
	return s.pushServer()
}

// bindPortal remembers what executing a portal will do.
func (s *session) bindPortal(portal []byte, info queryInfo) error {
	if len(portal) == 0 {
		s.unnamedPortal = info
		return nil
	}
	if !info.changesState() && s.portals == nil {
		return nil
	}
	if s.portals == nil {
		s.portals = map[string]queryInfo{}
	}
	if _, ok := s.portals[string(portal)]; !ok {
		if err := s.charge(portalCost(string(portal))); err != nil {
			return err
		}
	}
	s.portals[string(portal)] = info
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
	return st.serverName, request{serverStmt: st.serverName}
}

// describe handles Describe of a statement or a portal.
func (s *session) describe(m wire.Message) error {
	msg, err := wire.ReadTarget(m.Type, m.Body())
	if err != nil {
		return malformed(err)
	}
	name := msg.Name
	if err := s.link(); err != nil {
		return err
	}
	c := s.server
	s.batch.send()
	if msg.Kind == 'P' {
		_ = c.W.Write(m.Raw)
		s.queue.push(request{kind: reqDescribePortal})
		return s.pushServer()
	}
	if len(name) == 0 || s.passthrough {
		if len(name) == 0 {
			s.ensureUnnamed(c)
		}
		_ = c.W.Write(m.Raw)
		s.queue.push(request{kind: reqDescribeStatement})
		return s.pushServer()
	}
	serverName, req := s.serverStatement(c, name)
	req.kind = reqDescribeStatement
	start := c.W.Begin(wire.Describe)
	c.W.AppendByte('S')
	c.W.AppendString(serverName)
	c.W.AppendByte(0)
	_ = c.W.End(start)
	s.queue.push(req)
	return s.pushServer()
}

// execute handles Execute.
func (s *session) execute(m wire.Message) error {
	msg, err := wire.ReadExecute(m.Body())
	if err != nil {
		return malformed(err)
	}
	portal := msg.Portal
	if err := s.link(); err != nil {
		return err
	}
	c := s.server
	s.batch.send()
	info := s.unnamedPortal
	if len(portal) > 0 {
		info = s.portals[string(portal)]
	}
	if info.effects&effStatements != 0 {
		c.Statements.Clear()
	}
	if !info.free {
		s.batch = batchExecuted
	}
	s.pending |= info.effects
	s.noteSettings(&info)
	_ = c.W.Write(m.Raw)
	s.queue.push(request{kind: reqExecute})
	return s.pushServer()
}

// closeStatement handles Close. Closing a named statement only forgets the
// client's name (the server keeps the statement in its cache for others),
// so it is answered locally and needs no server.
func (s *session) closeStatement(m wire.Message) error {
	msg, err := wire.ReadTarget(m.Type, m.Body())
	if err != nil {
		return malformed(err)
	}
	name := msg.Name
	if msg.Kind == 'S' && len(name) > 0 && !s.passthrough {
		clientName := string(name)
		old := s.stmts[clientName]
		s.dropStatement(clientName)
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
	s.batch.send()
	r := request{kind: reqClose}
	if msg.Kind == 'S' && len(name) == 0 {
		s.unnamed.drop()
		r.unnamed, r.prevUnnamed = true, c.Unnamed
		c.Unnamed = 0
	}
	_ = c.W.Write(m.Raw)
	s.queue.push(r)
	return s.pushServer()
}

// sync handles Sync: the end of an extended-protocol batch.
func (s *session) sync(m wire.Message) error {
	s.batch = batchNone
	eff := s.pending
	s.pending = 0
	if s.server == nil { // nothing went to a server: every reply is local
		s.emitLocals()
		return clientIO(s.cw.SendReady(s.tx.status()))
	}
	c := s.server
	_ = c.W.Write(m.Raw)
	s.queue.push(request{kind: reqSync})
	if eff&effStatements != 0 {
		s.queueStatementResync(c)
	}
	s.queueSettingsReadBack(c)
	if err := s.exchange(); err != nil {
		return err
	}
	return s.afterRequest(eff)
}

// flush handles Flush: the client wants every reply owed so far, without
// ending the batch.
func (s *session) flush(m wire.Message) error {
	if s.server == nil {
		s.emitLocals()
		return clientIO(s.cw.Flush())
	}
	_ = s.server.W.Write(m.Raw)
	if err := s.exchange(); err != nil {
		return err
	}
	return clientIO(s.cw.Flush())
}

// answerLocally answers DEALLOCATE of a statement the client prepared
// through the protocol (the server knows it under another name), when it
// is the whole query and nothing else is in flight.
func (s *session) answerLocally(info queryInfo) (bool, error) {
	if info.deallocate == "" || s.passthrough || s.tx.status() == wire.TxFailed || !s.queue.empty() || s.batch != batchNone {
		return false, nil
	}
	if _, ok := s.stmts[info.deallocate]; !ok {
		return false, nil // maybe an SQL-level PREPARE on the server: let it answer
	}
	s.dropStatement(info.deallocate)
	_ = s.cw.Send(&pgproto3.CommandComplete{CommandTag: []byte("DEALLOCATE")})
	return true, clientIO(s.cw.SendReady(s.tx.status()))
}

// standardStrings reports the client's standard_conforming_strings, which
// decides how backslashes in '...' literals are read.
func (s *session) standardStrings() bool {
	v, ok := s.desired.Get("standard_conforming_strings")
	return !ok || v != "off"
}

func trimNUL(b []byte) []byte {
	if n := len(b); n > 0 && b[n-1] == 0 {
		return b[:n-1]
	}
	return b
}
