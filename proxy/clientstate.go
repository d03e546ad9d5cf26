package proxy

import (
	"github.com/pgrouter/pgrouter/config"
	"github.com/pgrouter/pgrouter/router"
	"github.com/pgrouter/pgrouter/sqlstate"
)

// What a client makes pgrouter hold between its messages (the definitions
// of its named statements, its named portals, the SETs of a transaction
// that has not chosen its shard) is bounded by pool.max_client_state, so
// no client can grow the router's memory without limit by preparing
// distinct statements it never closes. Each entry costs its bytes plus
// stateEntryCost for the maps and structs around it.
const stateEntryCost = 128

// charge reserves n bytes of the client's state budget, or refuses with
// 54000 saying what to do.
func (s *session) charge(n int) error {
	if s.stateBytes+n > s.stateLimit {
		return errorf(sqlstate.ProgramLimitExceeded, "pgrouter: this client would hold more than %s of prepared statements, portals and transaction SETs (pool.max_client_state)", config.ByteSize(s.stateLimit)).
			WithHint("Close the prepared statements and portals it no longer uses (Close, DEALLOCATE), or raise pool.max_client_state.")
	}
	s.stateBytes += n
	return nil
}

func (s *session) refund(n int) { s.stateBytes -= n }

func statementCost(name string, st *statement) int {
	return len(name) + len(st.parseBody) + stateEntryCost
}

// keepStatement records a client's named statement within the budget.
func (s *session) keepStatement(name string, st *statement) error {
	if err := s.charge(statementCost(name, st)); err != nil {
		return err
	}
	s.dropStatement(name)
	s.stmts[name] = st
	return nil
}

// restoreStatement puts back a statement whose removal was undone; it was
// within the budget before, so it is not refused.
func (s *session) restoreStatement(name string, st *statement) {
	s.dropStatement(name)
	s.stateBytes += statementCost(name, st)
	s.stmts[name] = st
}

// dropStatement forgets a client's named statement.
func (s *session) dropStatement(name string) {
	if old, ok := s.stmts[name]; ok {
		s.refund(statementCost(name, old))
		delete(s.stmts, name)
	}
}

// portalCost is what a tracked named portal costs.
func portalCost(name string) int { return len(name) + stateEntryCost }

// dropPortal forgets a named portal.
func (s *session) dropPortal(name string) {
	if _, ok := s.portals[name]; ok {
		s.refund(portalCost(name))
		delete(s.portals, name)
	}
	if _, ok := s.localPortals[name]; ok && name != "" {
		s.refund(portalCost(name))
		delete(s.localPortals, name)
	}
}

// endPortals forgets the named portals pgrouter tracks when the
// transaction they belonged to has ended (PostgreSQL has dropped them), so
// a client binding a new portal name per query (JDBC's C_1, C_2, ...) does
// not fill its budget.
func (s *session) endPortals() {
	for name := range s.portals {
		s.refund(portalCost(name))
	}
	clear(s.portals)
}

// deferSet keeps a SET (or savepoint) of a transaction that has not chosen
// its shard yet, to replay there.
func (s *session) deferSet(p *router.Plan) error {
	n := len(p.SQL) + stateEntryCost
	if err := s.charge(n); err != nil {
		return err
	}
	s.deferredBytes += n
	s.deferred = append(s.deferred, p)
	return nil
}

// truncateDeferred keeps the first n deferred statements.
func (s *session) truncateDeferred(n int) {
	s.deferred = s.deferred[:n]
	kept := 0
	for _, p := range s.deferred {
		kept += len(p.SQL) + stateEntryCost
	}
	s.refund(s.deferredBytes - kept)
	s.deferredBytes = kept
}
