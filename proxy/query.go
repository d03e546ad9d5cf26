package proxy

import (
	"github.com/pgrouter/pgrouter/router"
	"github.com/pgrouter/pgrouter/wire"
)

// query handles a simple Query message.
func (s *session) query(m wire.Message) error {
	plan := s.router.PlanBytes(trimNUL(m.Body()), s.standardStrings())
	info := planInfo(plan)
	if info.effects&effReserved != 0 && !s.passthrough {
		return reservedNameError()
	}
	if info.effects&effSessionState != 0 && s.mode.Shared() {
		return sessionStateError(s.mode, info.sessionState)
	}
	if handled, err := s.answerLocally(info); handled {
		return err
	}
	if handled, err := s.sessionCommand(plan); handled {
		return err
	}
	dest, all, err := s.place(plan, wire.BindMsg{})
	if err != nil {
		return err
	}
	if all != nil {
		return s.fanoutQuery(m, plan, all)
	}
	s.dest = dest
	s.noPin = s.tx.unpinned() && plan.Free // runs outside the unpinned transaction
	err = s.link()
	s.noPin = false
	if err != nil {
		return err
	}
	c := s.server
	s.unnamed.drop() // a simple Query destroys the unnamed statement
	c.Unnamed = 0
	_ = c.W.Write(m.Raw)
	s.queue.push(request{kind: reqQuery})
	if plan.Copy {
		// A COPY FROM STDIN would read pgrouter's follow-up questions as
		// COPY data: they wait for the client's ReadyForQuery.
		if err := s.exchange(); err != nil {
			return err
		}
		if s.server == nil {
			return s.afterRequest(info.effects)
		}
		c = s.server
	}
	if info.effects&effStatements != 0 {
		c.Statements.Clear()
		s.queueStatementResync(c)
	}
	s.noteSettings(&info)
	s.queueSettingsReadBack(c)
	if !s.queue.empty() || c.W.Len() > 0 {
		if err := s.exchange(); err != nil {
			return err
		}
	}
	return s.afterRequest(info.effects)
}

// functionCall handles the legacy FunctionCall message.
func (s *session) functionCall(m wire.Message) error {
	dest, _, err := s.place(&unroutedPlan, wire.BindMsg{})
	if err != nil {
		return err
	}
	s.dest = dest
	if err := s.link(); err != nil {
		return err
	}
	_ = s.server.W.Write(m.Raw)
	s.queue.push(request{kind: reqFunctionCall})
	if err := s.exchange(); err != nil {
		return err
	}
	return s.afterRequest(0)
}

// unroutedPlan places a message that carries no statement text
// (FunctionCall) by the unrouted rules.
var unroutedPlan router.Plan

// exchange writes what was queued for the server and relays the answers.
func (s *session) exchange() error {
	if err := s.flushServer(); err != nil {
		return err
	}
	return s.relay()
}
