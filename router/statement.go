package router

// Kind is what a statement does that pgrouter must mirror in its own state.
type Kind uint8

// Statement kinds. KindOther covers everything pgrouter passes through
// without looking further.
const (
	KindOther         Kind = iota
	KindBegin              // BEGIN, START TRANSACTION
	KindCommit             // COMMIT, END (COMMIT AND CHAIN too)
	KindRollback           // ROLLBACK, ABORT (not ROLLBACK TO SAVEPOINT)
	KindSet                // SET [SESSION] ...: a session setting changes
	KindSetLocal           // SET LOCAL ..., SET TRANSACTION, SET CONSTRAINTS: transaction-scoped
	KindReset              // RESET name
	KindResetAll           // RESET ALL
	KindDiscardAll         // DISCARD ALL
	KindDeallocate         // DEALLOCATE [PREPARE] name
	KindDeallocateAll      // DEALLOCATE [PREPARE] ALL
	KindPrepare            // PREPARE name ...: an SQL-level prepared statement
	KindExecute            // EXECUTE name ...
	// KindSessionState: the statement leaves state on the server that
	// outlives its transaction and that pgrouter cannot carry to another
	// server: LISTEN, a session advisory lock, a temporary object (unless
	// ON COMMIT DROP), a WITH HOLD cursor, set_config of a computed name.
	// Names[0] says which, for the error a pooled client gets.
	KindSessionState
)

// What a KindSessionState statement leaves behind.
const (
	StateListen     = "LISTEN"
	StateLock       = "session advisory locks"
	StateTemp       = "temporary tables"
	StateHoldCursor = "WITH HOLD cursors"
	StateSetConfig  = "set_config of a computed setting name"
)

// sessionLockFunctions take advisory locks held until the session ends (the
// pg_advisory_xact_* ones end with the transaction and pool fine).
var sessionLockFunctions = []string{"pg_advisory_lock", "pg_advisory_lock_shared", "pg_try_advisory_lock", "pg_try_advisory_lock_shared"}

// Statement describes one statement of a query string.
type Statement struct {
	Kind Kind
	// Names are the run-time parameters a SET or RESET changes (several for
	// SET SESSION CHARACTERISTICS), or the statement name of a DEALLOCATE.
	Names []string
}

// classify looks at a statement's first tokens; first is already read. It
// leaves the lexer inside the statement.
func classify(l *Lexer, first Token) (Statement, bool) {
	switch {
	case l.EqualFold(first, "begin"):
		return Statement{Kind: KindBegin}, true
	case l.EqualFold(first, "start"):
		if l.EqualFold(l.Next(), "transaction") {
			return Statement{Kind: KindBegin}, true
		}
	case l.EqualFold(first, "commit") || l.EqualFold(first, "end"):
		save := *l
		if next := l.Next(); l.EqualFold(next, "prepared") {
			return Statement{}, true // COMMIT PREPARED 'x' touches another transaction
		}
		*l = save
		return Statement{Kind: KindCommit}, true
	case l.EqualFold(first, "rollback") || l.EqualFold(first, "abort"):
		save := *l
		next := l.Next()
		if l.EqualFold(next, "work") || l.EqualFold(next, "transaction") {
			next = l.Next()
		}
		if l.EqualFold(next, "to") || l.EqualFold(next, "prepared") {
			return Statement{}, true
		}
		*l = save
		return Statement{Kind: KindRollback}, true
	case l.EqualFold(first, "set"):
		return classifySet(l), true
	case l.EqualFold(first, "reset"):
		t := l.Next()
		if l.EqualFold(t, "all") {
			return Statement{Kind: KindResetAll}, true
		}
		if name, ok := settingName(l, t); ok {
			return Statement{Kind: KindReset, Names: []string{name}}, true
		}
	case l.EqualFold(first, "discard"):
		if l.EqualFold(l.Next(), "all") {
			return Statement{Kind: KindDiscardAll}, true
		}
	case l.EqualFold(first, "prepare"), l.EqualFold(first, "execute"):
		kind := KindPrepare
		if l.EqualFold(first, "execute") {
			kind = KindExecute
		}
		if t := l.Next(); t.Kind == Ident || t.Kind == QuotedIdent {
			if name, err := l.Value(t); err == nil {
				return Statement{Kind: kind, Names: []string{name}}, true
			}
		}
	case l.EqualFold(first, "listen"):
		return Statement{Kind: KindSessionState, Names: []string{StateListen}}, true
	case l.EqualFold(first, "create"):
		save := *l
		t := l.Next()
		if l.EqualFold(t, "global") || l.EqualFold(t, "local") {
			t = l.Next()
		}
		if l.EqualFold(t, "temp") || l.EqualFold(t, "temporary") {
			return Statement{Kind: KindSessionState, Names: []string{StateTemp}}, true
		}
		*l = save
	case l.EqualFold(first, "declare"):
		// DECLARE name [options] CURSOR [WITH HOLD | WITHOUT HOLD] FOR query
		save := *l
		var prev Token
		for t := l.Next(); t.Kind != EOF && t.Kind != Invalid && !l.IsOp(t, ";") && !l.EqualFold(t, "for"); prev, t = t, l.Next() {
			if l.EqualFold(t, "hold") && l.EqualFold(prev, "with") {
				*l = save
				return Statement{Kind: KindSessionState, Names: []string{StateHoldCursor}}, true
			}
		}
		*l = save
	case l.EqualFold(first, "deallocate"):
		t := l.Next()
		if l.EqualFold(t, "prepare") {
			t = l.Next()
		}
		if l.EqualFold(t, "all") {
			return Statement{Kind: KindDeallocateAll}, true
		}
		if t.Kind == Ident || t.Kind == QuotedIdent {
			name, err := l.Value(t)
			if err == nil {
				return Statement{Kind: KindDeallocate, Names: []string{name}}, true
			}
		}
	}
	return Statement{}, false
}

// classifySet reads what follows SET.
func classifySet(l *Lexer) Statement {
	t := l.Next()
	switch {
	case l.EqualFold(t, "local"):
		return Statement{Kind: KindSetLocal}
	case l.EqualFold(t, "transaction"), l.EqualFold(t, "constraints"):
		return Statement{Kind: KindSetLocal}
	case l.EqualFold(t, "session"):
		save := *l
		next := l.Next()
		switch {
		case l.EqualFold(next, "characteristics"):
			return Statement{Kind: KindSet, Names: []string{"default_transaction_isolation", "default_transaction_read_only", "default_transaction_deferrable"}}
		case l.EqualFold(next, "authorization"):
			return Statement{Kind: KindSet, Names: []string{"session_authorization", "role"}}
		}
		*l = save
		t = l.Next()
	}
	if name, ok := settingName(l, t); ok {
		return Statement{Kind: KindSet, Names: []string{name}}
	}
	return Statement{Kind: KindOther}
}

// settingName reads a parameter name starting at t, with SET's special
// forms: TIME ZONE, SCHEMA, NAMES, ROLE, SESSION AUTHORIZATION, and dotted
// custom names (myapp.user_id).
func settingName(l *Lexer, t Token) (string, bool) {
	switch {
	case l.EqualFold(t, "time"):
		if l.EqualFold(l.Next(), "zone") {
			return "timezone", true
		}
		return "", false
	case l.EqualFold(t, "schema"):
		return "search_path", true
	case l.EqualFold(t, "names"):
		return "client_encoding", true
	case l.EqualFold(t, "session"):
		if l.EqualFold(l.Next(), "authorization") {
			return "session_authorization", true
		}
		return "", false
	}
	if t.Kind != Ident && t.Kind != QuotedIdent {
		return "", false
	}
	name, err := l.Value(t)
	if err != nil {
		return "", false
	}
	for {
		save := *l
		if dot := l.Next(); !l.IsOp(dot, ".") {
			*l = save
			break
		}
		part := l.Next()
		if part.Kind != Ident && part.Kind != QuotedIdent {
			return "", false
		}
		v, err := l.Value(part)
		if err != nil {
			return "", false
		}
		name += "." + v
	}
	return foldIdent(name), true
}

// setConfigName reads set_config(name, value, is_local) after the function
// name. It reports the name of a session-level change with a constant name;
// computed is set for a session-level change (is_local not the constant
// true) whose name pgrouter cannot know.
func setConfigName(l *Lexer) (name string, ok, computed bool) {
	if !l.IsOp(l.Next(), "(") {
		return "", false, false
	}
	arg := l.Next()
	constant := false
	if arg.Kind == String {
		v, err := l.Value(arg)
		if err != nil {
			return "", false, false
		}
		// A literal alone (not 'a' || x) is the whole name.
		save := *l
		constant = l.IsOp(l.Next(), ",")
		*l = save
		name = v
	}
	// Skip to the last argument at this depth.
	depth := 0
	var last Token
	if !constant {
		last = arg
		if l.IsOp(arg, "(") || l.IsOp(arg, "[") {
			depth++
		}
	}
	for t := l.Next(); t.Kind != EOF && t.Kind != Invalid; t = l.Next() {
		switch {
		case l.IsOp(t, "(") || l.IsOp(t, "["):
			depth++
		case l.IsOp(t, ")") || l.IsOp(t, "]"):
			if depth == 0 {
				if l.EqualFold(last, "true") {
					return "", false, false // is_local: transaction-scoped
				}
				if !constant {
					return "", false, true
				}
				return foldIdent(name), true, false
			}
			depth--
		case l.IsOp(t, ";"):
			return "", false, !constant
		}
		last = t
	}
	return "", false, !constant
}

// Single reports whether a query string holds at most one statement (empty
// statements between semicolons aside).
func Single(sql string, standard bool) bool {
	l := NewLexer(sql)
	l.StandardStrings = standard
	statements, inStatement := 0, false
	for t := l.Next(); t.Kind != EOF && t.Kind != Invalid; t = l.Next() {
		if l.IsOp(t, ";") {
			inStatement = false
			continue
		}
		if !inStatement {
			statements++
			inStatement = true
		}
	}
	return statements <= 1
}

// isSessionLock reports a name of a session advisory lock function (the
// caller checks that a call follows).
func isSessionLock(l *Lexer, t Token) bool {
	if t.Kind != Ident {
		return false
	}
	for _, f := range sessionLockFunctions {
		if l.EqualFold(t, f) {
			return true
		}
	}
	return false
}
