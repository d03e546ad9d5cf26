package proxy

import (
	"github.com/pgrouter/pgrouter/config"
	"github.com/pgrouter/pgrouter/router"
	"github.com/pgrouter/pgrouter/sqlstate"
)

// effects are what running a statement does to state pgrouter mirrors.
type effects uint8

const (
	// effStatements: DEALLOCATE or DISCARD ALL change the server's prepared
	// statements, so its cache is cleared and then re-read from the server.
	effStatements effects = 1 << iota
	// effResetAll: RESET ALL or DISCARD ALL put settings back to the
	// server's defaults, so the client's startup settings are re-applied.
	effResetAll
	// effReserved: the statement names a statement with pgrouter's reserved
	// "pgr_" prefix in SQL (PREPARE, EXECUTE, DEALLOCATE) and is refused.
	effReserved
	// effSessionState: the statement leaves state on the server that would
	// outlive the client's transaction (LISTEN, a session advisory lock, a
	// temporary table, ...); outside session mode it is refused.
	effSessionState
)

// queryInfo is what pgrouter learns from the text of a simple Query or of a
// prepared statement before running it.
type queryInfo struct {
	effects effects
	// deallocate is set when the whole text is DEALLOCATE of one name.
	deallocate string
	// settings are the run-time parameters its SET, RESET and
	// set_config(..., false) change for the session; resets are those it
	// RESETs, which PostgreSQL returns to the startup packet's value.
	settings []string
	resets   []string
	// free: the statement needs no particular shard (router.Plan.Free).
	free bool
	// sessionState names what an effSessionState statement leaves behind.
	sessionState string
}

// planInfo derives what a statement string does to mirrored state from its
// cached plan, so a statement seen before is not lexed again. It allocates
// only for the statements it has to act on.
func planInfo(p *router.Plan) queryInfo {
	info := queryInfo{free: p.Free}
	for _, st := range p.Statements {
		switch st.Kind {
		case router.KindDeallocate:
			info.effects |= effStatements
			if reservedName(st.Names[0]) {
				info.effects |= effReserved
			}
			info.deallocate = st.Names[0]
		case router.KindDeallocateAll:
			info.effects |= effStatements
		case router.KindDiscardAll:
			info.effects |= effStatements | effResetAll
		case router.KindResetAll:
			info.effects |= effResetAll
		case router.KindPrepare, router.KindExecute:
			if reservedName(st.Names[0]) {
				info.effects |= effReserved
			}
		case router.KindSessionState:
			info.effects |= effSessionState
			if info.sessionState == "" {
				info.sessionState = st.Names[0]
			}
		case router.KindSet:
			info.settings = append(info.settings, st.Names...)
		case router.KindReset:
			info.settings = append(info.settings, st.Names...)
			info.resets = append(info.resets, st.Names...)
		}
	}
	if len(p.Statements) != 1 || !p.Single {
		info.deallocate = ""
	}
	return info
}

// changesState reports whether running the statement needs any follow-up.
func (q *queryInfo) changesState() bool { return q.effects != 0 || len(q.settings) > 0 }

// sessionStateError refuses, outside session mode, a statement whose
// effect would stay on a server other clients use after this client's
// transaction ends (and reach them: a lock they cannot take, notifications
// they never asked for, a temporary table shadowing theirs).
func sessionStateError(mode config.PoolMode, what string) *Error {
	return errorf(sqlstate.FeatureNotSupported, "pgrouter: %s cannot be used in %s pooling mode: the server is shared with other clients after this transaction", what, mode).
		WithHint("Use the transaction-scoped form (pg_advisory_xact_lock, CREATE TEMP TABLE ... ON COMMIT DROP, set_config(name, value, true) or a literal name, a cursor WITHOUT HOLD), or a pgrouter with pool.mode: session.")
}
