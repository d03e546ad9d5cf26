package router

import "strings"

// Command is a whole query string that pgrouter answers or holds back
// itself instead of sending it to a shard right away.
type Command struct {
	Kind CommandKind
	// Name is the pgrouter setting (shard or key) of an override command.
	Name string
	// Value is the value SET gives it.
	Value string
	// Tags are the CommandComplete tags of a deferrable SET string, one per
	// statement.
	Tags []string
	// Text is the original statement (BEGIN with its options).
	Text string
}

// CommandKind is the kind of a Command.
type CommandKind uint8

// Command kinds.
const (
	CmdNone      CommandKind = iota
	CmdSetOver               // SET pgrouter.shard|key = value
	CmdResetOver             // RESET pgrouter.shard|key
	CmdShowOver              // SHOW pgrouter.shard|key
	CmdBegin                 // one BEGIN / START TRANSACTION
	CmdCommit                // one COMMIT / END
	CmdRollback              // one ROLLBACK / ABORT
	CmdSets                  // only SET, SET LOCAL and RESET statements
	CmdSavepoint             // one SAVEPOINT, RELEASE [SAVEPOINT] or ROLLBACK TO [SAVEPOINT]
)

// Savepoint verbs, in Command.Value of a CmdSavepoint.
const (
	SavepointCreate   = "SAVEPOINT"
	SavepointRelease  = "RELEASE"
	SavepointRollback = "ROLLBACK"
)

// Override setting names.
const (
	OverShard  = "pgrouter.shard"
	OverKey    = "pgrouter.key"
	OverTarget = "pgrouter.target" // primary | replica | auto: where read_only calls go
)

// ParseCommand recognizes the query strings the session handles itself. It
// returns CmdNone for everything else.
func ParseCommand(sql string, standard bool) Command {
	l := NewLexer(sql)
	l.StandardStrings = standard
	t := l.Next()
	for l.IsOp(t, ";") {
		t = l.Next()
	}
	if t.Kind == EOF || t.Kind == Invalid {
		return Command{}
	}
	first := t
	switch {
	case l.EqualFold(t, "set"), l.EqualFold(t, "reset"), l.EqualFold(t, "show"):
		save := l
		if cmd, ok := parseOverrideCommand(&l, t); ok {
			return cmd
		}
		l = save
		if l.EqualFold(t, "show") {
			return Command{}
		}
		return parseSets(sql, standard)
	}
	if cmd, ok := parseSavepoint(l, t); ok {
		return cmd
	}
	st, ok := classify(&l, t)
	if !ok {
		return Command{}
	}
	kind := CmdNone
	switch st.Kind {
	case KindBegin:
		kind = CmdBegin
	case KindCommit:
		kind = CmdCommit
	case KindRollback:
		kind = CmdRollback
	default:
		return Command{}
	}
	end := first.End
	for t = l.Next(); t.Kind != EOF && !l.IsOp(t, ";"); t = l.Next() {
		if t.Kind == Invalid {
			return Command{}
		}
		// COMMIT AND CHAIN opens a new transaction at once: not handled locally.
		if kind != CmdBegin && l.EqualFold(t, "chain") {
			return Command{}
		}
		end = t.End
	}
	for t.Kind != EOF {
		t = l.Next()
		if t.Kind != EOF && !l.IsOp(t, ";") {
			return Command{} // more than one statement
		}
	}
	return Command{Kind: kind, Text: sql[first.Start:end]}
}

// parseOverrideCommand reads SET/RESET/SHOW of pgrouter.shard or
// pgrouter.key; verb has been read.
func parseOverrideCommand(l *Lexer, verb Token) (Command, bool) {
	t := l.Next()
	if l.EqualFold(verb, "set") && l.EqualFold(t, "session") {
		t = l.Next()
	}
	name, ok := settingName(l, t)
	if !ok || (name != OverShard && name != OverKey && name != OverTarget) {
		return Command{}, false
	}
	cmd := Command{Name: name}
	switch {
	case l.EqualFold(verb, "reset"):
		cmd.Kind = CmdResetOver
	case l.EqualFold(verb, "show"):
		cmd.Kind = CmdShowOver
	default:
		cmd.Kind = CmdSetOver
		eq := l.Next()
		if !l.IsOp(eq, "=") && !l.EqualFold(eq, "to") {
			return Command{}, false
		}
		v := l.Next()
		switch v.Kind {
		case String, Ident, QuotedIdent, Number:
			val, err := l.Value(v)
			if err != nil {
				return Command{}, false
			}
			cmd.Value = val
		default:
			return Command{}, false
		}
		if l.EqualFold(v, "default") {
			cmd.Kind = CmdResetOver
		}
	}
	for t = l.Next(); l.IsOp(t, ";"); t = l.Next() {
	}
	if t.Kind != EOF {
		return Command{}, false
	}
	return cmd, true
}

// parseSets accepts a string made only of SET, SET LOCAL and RESET
// statements (not SET CONSTRAINTS, SET SESSION AUTHORIZATION or RESET ALL,
// whose effects are not plain settings), and gives their tags.
func parseSets(sql string, standard bool) Command {
	var tags []string
	ok := true
	l := NewLexer(sql)
	l.StandardStrings = standard
	for ok {
		t := l.Next()
		for l.IsOp(t, ";") {
			t = l.Next()
		}
		if t.Kind == EOF {
			break
		}
		switch {
		case l.EqualFold(t, "set"):
			save := l
			next := l.Next()
			if l.EqualFold(next, "constraints") || l.EqualFold(next, "role") {
				ok = false
			}
			if l.EqualFold(next, "session") && l.EqualFold(l.Next(), "authorization") {
				ok = false
			}
			l = save
			tags = append(tags, "SET")
		case l.EqualFold(t, "reset"):
			save := l
			if next := l.Next(); l.EqualFold(next, "all") || l.EqualFold(next, "role") || l.EqualFold(next, "session") {
				ok = false
			}
			l = save
			tags = append(tags, "RESET")
		default:
			ok = false
		}
		for t = l.Next(); t.Kind != EOF && t.Kind != Invalid && !l.IsOp(t, ";"); t = l.Next() {
			if t.Kind == Ident && strings.EqualFold(l.Text(t), "set_config") {
				ok = false
			}
		}
		if t.Kind == Invalid {
			ok = false
		}
		if t.Kind == EOF {
			break
		}
	}
	if !ok || len(tags) == 0 {
		return Command{}
	}
	return Command{Kind: CmdSets, Tags: tags}
}

// parseSavepoint reads one SAVEPOINT name, RELEASE [SAVEPOINT] name or
// ROLLBACK [WORK | TRANSACTION] TO [SAVEPOINT] name; first has been read.
func parseSavepoint(l Lexer, first Token) (Command, bool) {
	verb := ""
	switch {
	case l.EqualFold(first, "savepoint"):
		verb = SavepointCreate
	case l.EqualFold(first, "release"):
		verb = SavepointRelease
	case l.EqualFold(first, "rollback"):
		verb = SavepointRollback
	default:
		return Command{}, false
	}
	t := l.Next()
	if verb == SavepointRollback {
		if l.EqualFold(t, "work") || l.EqualFold(t, "transaction") {
			t = l.Next()
		}
		if !l.EqualFold(t, "to") {
			return Command{}, false
		}
		t = l.Next()
	}
	if verb != SavepointCreate && l.EqualFold(t, "savepoint") {
		t = l.Next()
	}
	if t.Kind != Ident && t.Kind != QuotedIdent {
		return Command{}, false
	}
	name, err := l.Value(t)
	if err != nil {
		return Command{}, false
	}
	end := t.End
	for t = l.Next(); l.IsOp(t, ";"); t = l.Next() {
	}
	if t.Kind != EOF {
		return Command{}, false
	}
	return Command{Kind: CmdSavepoint, Name: name, Value: verb, Text: l.Src()[first.Start:end]}, true
}
