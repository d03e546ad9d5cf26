package proxy

import (
	"bytes"
	"context"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgrouter/pgrouter/config"
	"github.com/pgrouter/pgrouter/router"
	"github.com/pgrouter/pgrouter/sqlstate"
	"github.com/pgrouter/pgrouter/wire"
)

// A client's transaction, whatever protocol and message grouping its
// driver uses.
//
// The client's transaction is in one of four states, each with the
// ReadyForQuery status the client sees:
//
//	idle      (I)  no transaction
//	unpinned  (T)  BEGIN answered by pgrouter; no shard chosen yet
//	pinned    (T)  open on the linked server (its ReadyForQuery status)
//	failed    (E)  aborted, pinned or unpinned: only ROLLBACK ends it
//
// On a cluster of more than one shard with routed functions (not in
// statement mode), BEGIN / START TRANSACTION from idle makes the transaction
// unpinned, through the simple protocol or the extended one (psycopg 3's
// Parse/Bind/Describe/Execute of BEGIN, JDBC's named BEGIN pipelined ahead
// of its first statement). COMMIT and ROLLBACK of an unpinned transaction,
// and SET / SET LOCAL / RESET in it, are answered by pgrouter too (the SETs
// are replayed at the pin). The first statement that needs a particular
// shard pins it: BEGIN with its options and the deferred SETs are sent to
// that shard right before the statement. Statements that need no shard
// (router.Plan.Free: SHOW, constant SELECTs, catalog reads) run on any
// shard outside the transaction and leave it unpinned; so does a pipeline
// that only prepares (Parse, Describe). A run_on all call in an unpinned
// transaction runs on every shard in a READ ONLY transaction of its own, as
// PL/Proxy runs each call as its own transaction on each partition.
//
// The predicates below are the only places that read these states to decide
// what a message may do.

// canStartUnpinned reports whether a BEGIN now starts an unpinned
// transaction (answered by pgrouter) rather than running on a server.
func (s *session) canStartUnpinned() bool {
	// One shard without replicas: the transaction can only go there.
	return (len(s.cluster.Shards) > 1 || s.cluster.HasReplicas()) && s.router.HasFunctions() && s.mode != config.ModeStatement &&
		s.tx == txIdle && s.unbound()
}

// unbound reports whether no server holds any part of the client's current
// request: nothing linked (or, in session mode, a linked server between
// transactions), nothing held, no fan-out under way.
func (s *session) unbound() bool {
	return (s.server == nil || s.switchable()) && s.held.empty() && s.fan == nil && s.queue.empty() && s.batch == batchNone
}

// quiet reports whether the client is between transactions (idle or
// unpinned) with nothing in flight: its server may go back to the pool.
func (s *session) quiet() bool {
	return !s.tx.onServer() && s.queue.empty() && s.batch == batchNone && !s.skipping
}

// switchable reports whether a session-mode client is between
// transactions, so its next statement may use a server on another shard.
func (s *session) switchable() bool {
	return s.mode == config.ModeSession && s.quiet()
}

// movable reports whether the linked server's part of the current pipeline
// may be ended (with a Sync of pgrouter's own) so that the pipeline goes on
// on another shard: outside a pinned transaction, nothing executed in it
// but statements that need no shard (a driver that prepares with
// Parse/Describe/Flush before it binds).
func (s *session) movable() bool {
	return s.server != nil && s.batch == batchSent && !s.skipping && s.fan == nil &&
		!s.tx.onServer()
}

// atBoundary reports whether the client is between transactions with
// nothing in flight: the only moment it may take a new config or be told
// to leave without losing anything.
func (s *session) atBoundary() bool {
	return s.quiet() && s.tx == txIdle && s.held.empty() && s.fan == nil &&
		(s.server == nil || s.mode == config.ModeSession)
}

// failedUnpinned reports an unpinned transaction that an error aborted.
func (s *session) failedUnpinned() bool { return s.tx == txUnpinnedFailed }

// startUnpinned begins an unpinned transaction for a BEGIN statement.
func (s *session) startUnpinned(begin string) {
	s.tx = txUnpinned
	s.beginSQL = begin
	b := strings.ToUpper(begin)
	s.txReadOnly = strings.Contains(b, "READ ONLY") && !strings.Contains(b, "READ WRITE")
	s.xactStart = time.Now()
}

// endVirtual forgets an unpinned transaction.
func (s *session) endVirtual() {
	s.tx = txIdle
	s.beginSQL = ""
	s.truncateDeferred(0)
	s.reqStart = time.Time{}
}

// abortUnpinned marks an unpinned transaction failed after an error.
func (s *session) abortUnpinned() {
	if s.tx == txUnpinned {
		s.tx = txUnpinnedFailed
	}
}

// localCommand reports whether pgrouter answers a statement itself now:
// BEGIN from idle; COMMIT and ROLLBACK of an unpinned transaction (a COMMIT
// that must make deferred session SETs last runs on a shard); SET, SET
// LOCAL and RESET in an active unpinned transaction.
func (s *session) localCommand(p *router.Plan) bool {
	if p == nil {
		return false
	}
	switch p.Command.Kind {
	case router.CmdBegin:
		return s.canStartUnpinned()
	case router.CmdRollback:
		return s.tx.unpinned()
	case router.CmdCommit:
		return s.tx.unpinned() && (s.tx.status() == wire.TxFailed || len(s.deferred) == 0)
	case router.CmdSets:
		return s.tx.unpinned() && s.tx.status() == wire.TxActive
	case router.CmdSavepoint: // ROLLBACK TO also recovers a failed one
		return s.tx.unpinned() && (s.tx.status() == wire.TxActive || p.Command.Value == router.SavepointRollback)
	}
	return false
}

// savepoints returns, for the statements kept in an unpinned transaction,
// the index in s.deferred of each savepoint that still exists, innermost
// last, as PostgreSQL would have them after running those statements.
func (s *session) savepoints() []int {
	var stack []int
	for i, p := range s.deferred {
		if p.Command.Kind != router.CmdSavepoint {
			continue
		}
		if p.Command.Value == router.SavepointCreate {
			stack = append(stack, i)
			continue
		}
		for j := len(stack) - 1; j >= 0; j-- {
			if s.deferred[stack[j]].Command.Name == p.Command.Name {
				if p.Command.Value == router.SavepointRelease {
					stack = stack[:j]
				} else {
					stack = stack[:j+1]
				}
				break
			}
		}
	}
	return stack
}

// savepointIndex returns the index in s.deferred of the innermost existing
// savepoint of that name, or -1.
func (s *session) savepointIndex(name string) int {
	stack := s.savepoints()
	for j := len(stack) - 1; j >= 0; j-- {
		if s.deferred[stack[j]].Command.Name == name {
			return stack[j]
		}
	}
	return -1
}

// runLocal carries out a statement localCommand accepted and returns its
// CommandComplete tags, or the error PostgreSQL would give.
func (s *session) runLocal(p *router.Plan) ([]string, error) {
	switch p.Command.Kind {
	case router.CmdBegin:
		s.startUnpinned(p.Command.Text)
		return []string{"BEGIN"}, nil
	case router.CmdSavepoint:
		cmd := &p.Command
		if cmd.Value == router.SavepointCreate {
			if err := s.deferSet(p); err != nil {
				return nil, err
			}
			return []string{"SAVEPOINT"}, nil
		}
		i := s.savepointIndex(cmd.Name)
		if i < 0 {
			return nil, errorf(sqlstate.InvalidSavepoint, "savepoint %q does not exist", cmd.Name)
		}
		if cmd.Value == router.SavepointRollback {
			// Undo what was kept since the savepoint, which stays; the
			// transaction is usable again.
			s.truncateDeferred(i + 1)
			s.tx = txUnpinned
			return []string{"ROLLBACK"}, nil
		}
		// Replayed at the pin: the savepoint's SETs stay.
		if err := s.deferSet(p); err != nil {
			return nil, err
		}
		return []string{"RELEASE"}, nil
	case router.CmdCommit, router.CmdRollback:
		tag := "ROLLBACK"
		if p.Command.Kind == router.CmdCommit && s.tx.status() == wire.TxActive {
			tag = "COMMIT"
		}
		s.endVirtual()
		return []string{tag}, nil
	case router.CmdSets:
		if err := s.deferSet(p); err != nil {
			return nil, err
		}
		return p.Command.Tags, nil
	}
	return nil, nil
}

// localExtended answers an extended-protocol message that concerns a
// statement pgrouter answers itself (see localCommand): Parse, Bind,
// Describe and Execute of it get their replies from pgrouter, in pipeline
// order, while no server holds any part of the pipeline. It reports
// whether it handled the message.
func (s *session) localExtended(m wire.Message) (bool, error) {
	if !s.unbound() || s.passthrough {
		return false, nil
	}
	// A malformed message is not answered here: the usual path refuses it.
	body := m.Body()
	switch m.Type {
	case wire.Parse:
		msg, err := wire.ReadParse(body)
		if err != nil {
			return false, nil
		}
		name, def, query := msg.Name, msg.Definition, msg.Query
		if !maybeLocalText(query) {
			return false, nil // most Parses: no plan look-up (and string copy) here
		}
		plan := s.router.PlanBytes(query, s.standardStrings())
		if !s.localCommand(plan) || (len(name) > 0 && s.stmts[string(name)] != nil) {
			return false, nil // a name in use: the server says 42P05
		}
		if len(name) == 0 {
			s.unnamed.set(m.Raw, def, planInfo(plan), plan)
		} else {
			if err := s.keepStatement(string(name), newStatement(def, planInfo(plan), plan)); err != nil {
				return true, err
			}
		}
		return true, clientIO(s.cw.SendEmpty(wire.ParseComplete))
	case wire.Bind:
		msg, err := wire.ReadBind(body)
		if err != nil {
			return false, nil
		}
		portal := msg.Portal
		plan := s.stmtPlan(msg.Statement)
		if !s.localCommand(plan) {
			return false, nil
		}
		if err := s.bindPortal(portal, queryInfo{}); err != nil {
			return true, err
		}
		if s.localPortals == nil {
			s.localPortals = map[string]*router.Plan{}
		}
		if _, ok := s.localPortals[string(portal)]; !ok && len(portal) > 0 {
			if err := s.charge(portalCost(string(portal))); err != nil {
				return true, err
			}
		}
		s.localPortals[string(portal)] = plan
		return true, clientIO(s.cw.SendEmpty(wire.BindComplete))
	case wire.Describe:
		msg, err := wire.ReadTarget(m.Type, body)
		if err != nil {
			return false, nil
		}
		name := msg.Name
		if msg.Kind == 'S' {
			if !s.localCommand(s.stmtPlan(name)) {
				return false, nil
			}
			_ = s.cw.Send(&pgproto3.ParameterDescription{})
		} else if s.localPortals[string(name)] == nil {
			return false, nil
		}
		return true, clientIO(s.cw.SendEmpty(wire.NoData))
	case wire.Execute:
		msg, err := wire.ReadExecute(body)
		if err != nil {
			return false, nil
		}
		portal := msg.Portal
		plan := s.localPortals[string(portal)]
		if plan == nil {
			return false, nil
		}
		if len(portal) > 0 {
			s.refund(portalCost(string(portal)))
		}
		delete(s.localPortals, string(portal))
		if !s.localCommand(plan) { // the state changed since Bind (a BEGIN executed twice)
			return false, nil
		}
		tags, err := s.runLocal(plan)
		if err != nil {
			return true, s.fail(err, m.Type)
		}
		for _, tag := range tags {
			_ = s.cw.Send(&pgproto3.CommandComplete{CommandTag: []byte(tag)})
		}
		return true, nil
	case wire.Close:
		// The unnamed statement or a portal while no server is linked: no
		// server has the client's, so forgetting it is all there is to do.
		msg, err := wire.ReadTarget(m.Type, body)
		if s.server != nil || err != nil || (msg.Kind == 'S' && len(msg.Name) > 0) {
			return false, nil
		}
		name := msg.Name
		if msg.Kind == 'S' {
			s.unnamed.drop()
		} else {
			s.dropPortal(string(name))
		}
		return true, clientIO(s.cw.SendEmpty(wire.CloseComplete))
	}
	return false, nil
}

// endBatch ends the linked server's part of the pipeline with a Sync of
// pgrouter's own and relays what the server still owed the client.
func (s *session) endBatch() error {
	c := s.server
	_ = c.W.SendEmpty(wire.Sync)
	s.queue.push(request{kind: reqSync, internal: true})
	if err := s.exchange(); err != nil {
		return err
	}
	s.batch = batchNone
	return nil
}

// detach ends a movable pipeline's part on the linked server and lets the
// server go (parked in session mode), so the pipeline goes on elsewhere.
func (s *session) detach() error {
	if err := s.endBatch(); err != nil {
		return err
	}
	if s.server == nil {
		return nil
	}
	if s.mode == config.ModeSession {
		s.park()
		return nil
	}
	s.unlink()
	return nil
}

// localWords are the first words of the statements localCommand may accept.
var localWords = [...]string{"begin", "start", "commit", "end", "rollback", "abort", "set", "reset", "savepoint", "release"}

// maybeLocalText is a cheap filter before planning a Parse: false when the
// text cannot be a statement pgrouter answers itself. A leading comment or
// anything unusual is left to the planner.
func maybeLocalText(q []byte) bool {
	i := 0
	for i < len(q) && (q[i] == ' ' || q[i] == '\t' || q[i] == '\n' || q[i] == '\r' || q[i] == '(') {
		i++
	}
	if i == len(q) {
		return false
	}
	if q[i] == '/' || q[i] == '-' {
		return true
	}
	for _, w := range localWords {
		if len(q)-i >= len(w) && bytes.EqualFold(q[i:i+len(w)], []byte(w)) {
			return true
		}
	}
	return false
}

// refuseTransaction rolls back a transaction a statement-mode client opened
// and tells it so (its ReadyForQuery was held back).
func (s *session) refuseTransaction() error {
	s.stmtViolation = false
	c := s.server
	ctx, cancel := context.WithTimeout(s.srv.ctx, resetTimeout)
	status, err := c.Exec(ctx, "ROLLBACK")
	cancel()
	if err != nil || status != wire.TxIdle {
		c.MarkBroken()
	}
	s.tx = txIdle
	e := errorf(sqlstate.FeatureNotSupported, "pgrouter: transactions are not allowed in statement pooling mode; the transaction was rolled back").
		WithHint("Use pool.mode: transaction for clients that open transactions.")
	if err := clientIO(s.cw.Send(e.response())); err != nil {
		return err
	}
	return clientIO(s.cw.SendReady(wire.TxIdle))
}
