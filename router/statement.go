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
)

// Statement describes one statement of a query string.
type Statement struct {
	Kind Kind
	// Names are the run-time parameters a SET or RESET changes (several for
	// SET SESSION CHARACTERISTICS), or the statement name of a DEALLOCATE.
	Names []string
}

// Scan reads a query string statement by statement and reports each one
// that is not KindOther, plus a KindSet for every set_config(name, value,
// false) call with a constant name anywhere in it. It allocates only for
// the statements it reports. standard is standard_conforming_strings.
func Scan(sql string, standard bool, report func(Statement)) {
	l := NewLexer(sql)
	l.StandardStrings = standard
	for {
		t := l.Next()
		for l.IsOp(t, ";") {
			t = l.Next()
		}
		if t.Kind == EOF || t.Kind == Invalid {
			return
		}
		if st, ok := classify(&l, t); ok && st.Kind != KindOther {
			report(st)
		}
		// Walk to the end of the statement, watching for set_config calls.
		for t = l.Next(); t.Kind != EOF && t.Kind != Invalid && !l.IsOp(t, ";"); t = l.Next() {
			if l.EqualFold(t, "set_config") {
				if name, ok := setConfigName(&l); ok {
					report(Statement{Kind: KindSet, Names: []string{name}})
				}
			}
		}
		if t.Kind != Punct {
			return
		}
	}
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

// setConfigName reads set_config('name', value, false) after the function
// name; it reports the name of a session-level change with a constant name.
func setConfigName(l *Lexer) (string, bool) {
	if !l.IsOp(l.Next(), "(") {
		return "", false
	}
	arg := l.Next()
	if arg.Kind != String {
		return "", false
	}
	name, err := l.Value(arg)
	if err != nil {
		return "", false
	}
	// Skip the value expression to the last argument at this depth.
	depth := 0
	var last Token
	for t := l.Next(); t.Kind != EOF && t.Kind != Invalid; t = l.Next() {
		switch {
		case l.IsOp(t, "(") || l.IsOp(t, "["):
			depth++
		case l.IsOp(t, ")") || l.IsOp(t, "]"):
			if depth == 0 {
				if l.EqualFold(last, "true") {
					return "", false // is_local: transaction-scoped
				}
				return foldIdent(name), true
			}
			depth--
		case l.IsOp(t, ";"):
			return "", false
		}
		last = t
	}
	return "", false
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
