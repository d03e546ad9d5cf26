package router

import (
	"fmt"
	"strings"

	"github.com/pgrouter/pgrouter/shardmap"
	"github.com/pgrouter/pgrouter/sqlstate"
)

// KeyKind says where a routed call's key comes from.
type KeyKind uint8

// Key kinds.
const (
	KeyNone  KeyKind = iota // run_on any or all: no key
	KeyConst                // a constant in the statement text
	KeyNull                 // the constant NULL
	KeyParam                // a Bind parameter
	KeySplit                // a split array, hashed element by element (Call.Split)
)

// Key is where a call's routing key comes from and how to read it.
type Key struct {
	Kind  KeyKind
	Const string // KeyConst: the constant's text
	Param int    // KeyParam: 0-based parameter index
	// Type is the key argument's declared type, which decides how the value
	// is canonicalized before hashing (text '42' and int8 42 alike).
	Type uint32
	// ParamType is the type the parameter is sent as: the innermost cast
	// applied to it, else Type. It decides how a binary value is read.
	ParamType uint32
	// Arg names the key argument, for messages.
	Arg string
}

// Call is a recognized call of a routed function.
type Call struct {
	Fn  *shardmap.Function
	Sig *Signature
	Key Key
	// Split are the split arguments when the key is one of them (see split.go).
	Split []SplitArg
}

// Plan is what pgrouter knows about a statement string before running it.
// Plans are immutable and cached by text.
type Plan struct {
	// Statements are the statements pgrouter must mirror or refuse (see
	// classify and Kind).
	Statements []Statement
	// Calls are the routed calls found, in text order.
	Calls []Call
	// AnyShard: without routed calls, the string may run on any shard
	// (SELECTs without FROM of constants and read-only built-ins, SHOW,
	// SET, RESET, DISCARD, DEALLOCATE, transaction control, empty).
	AnyShard bool
	// Free: the string only reads, and needs no particular shard: SHOW,
	// VALUES, SELECTs without FROM of constants and read-only built-ins,
	// and catalog reads (see isCatalogRead).
	// Inside a transaction that has not chosen its shard yet, such a string
	// runs on any shard outside the transaction and does not choose it.
	Free bool
	// Undeclared is the first function the string calls that router.yaml
	// does not declare and that is not a read-only built-in, for the error
	// an unrouted statement gets under default_route: error.
	Undeclared string
	// Override is a leading /* pgrouter: shard=... */ or key=... comment.
	Override Override
	// Err is a reason the string cannot be routed, reported when it runs.
	Err *Error
	// SQL is the statement string.
	SQL string
	// Single: the string holds at most one statement.
	Single bool
	// ReadOnly: one SELECT of read_only functions' calls (see readOnly).
	ReadOnly bool
	// Copy: a statement of the string is a COPY, which may read COPY data
	// from the client: nothing may follow the string in the same write.
	Copy bool
	// Command is set when the session answers or holds back the string
	// itself (see ParseCommand).
	Command Command
	// Rewritten is SQL with every call of a function that has a target
	// calling the target instead (PL/Proxy's TARGET): the text the shards
	// must get. Empty when SQL calls no such function.
	Rewritten string
	// catalog is the catalog version the plan was made with.
	catalog uint64
	// retarget are the names Rewritten replaces.
	retarget []retarget
}

// retarget is a function name in a statement (with its schema, if
// written) to be replaced by the function's target.
type retarget struct {
	from, to int
	f        *shardmap.Function
}

// rewrite builds Rewritten from the names analyze found.
func (p *Plan) rewrite() {
	if len(p.retarget) == 0 {
		return
	}
	var b strings.Builder
	last := 0
	for _, r := range p.retarget {
		b.WriteString(p.SQL[last:r.from])
		b.WriteString(quoteIdent(r.f.TargetSchema))
		b.WriteByte('.')
		b.WriteString(quoteIdent(r.f.TargetName))
		last = r.to
	}
	b.WriteString(p.SQL[last:])
	p.Rewritten = b.String()
	p.retarget = nil
}

// quoteIdent writes a name as an SQL identifier, quoted unless it is a
// plain lower-case one.
func quoteIdent(s string) string {
	plain := s != ""
	for i, c := range s {
		if !(c >= 'a' && c <= 'z' || c == '_' || i > 0 && c >= '0' && c <= '9') {
			plain = false
		}
	}
	if plain && !reservedWords[s] {
		return s
	}
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}

// reservedWords are the key words that need quoting as a function name.
var reservedWords = map[string]bool{
	"all": true, "and": true, "any": true, "array": true, "as": true, "case": true, "cast": true, "check": true,
	"column": true, "constraint": true, "create": true, "default": true, "do": true, "else": true, "end": true,
	"false": true, "for": true, "from": true, "grant": true, "group": true, "in": true, "into": true, "not": true,
	"null": true, "on": true, "or": true, "order": true, "select": true, "table": true, "then": true, "to": true,
	"true": true, "union": true, "user": true, "using": true, "when": true, "where": true, "with": true,
}

// Override is an operator's explicit placement of one statement.
type Override struct {
	Shard string
	Key   string
	Set   bool
}

// Error is a routing error with its SQLSTATE.
type Error struct {
	Code    string
	Message string
	Hint    string
}

func (e *Error) Error() string { return e.Message }

func planError(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: "pgrouter: " + fmt.Sprintf(format, args...)}
}

// functionIndex finds declared functions by their unqualified name, and by
// their target's: a statement pgrouter rewrote to call the target routes as
// the call it was (see Plan.Rewritten).
type functionIndex map[string][]indexEntry

type indexEntry struct {
	f      *shardmap.Function
	schema string
	target bool // the name is f's target
}

func newFunctionIndex(fns []*shardmap.Function) functionIndex {
	idx := functionIndex{}
	declared := map[string]bool{}
	for _, f := range fns {
		idx[f.Name] = append(idx[f.Name], indexEntry{f: f, schema: f.Schema})
		declared[f.FullName()] = true
	}
	for _, f := range fns {
		// A target declared itself routes as itself: configuration
		// validation made sure that is how f routes too.
		if f.TargetName != "" && !declared[f.TargetSchema+"."+f.TargetName] {
			idx[f.TargetName] = append(idx[f.TargetName], indexEntry{f: f, schema: f.TargetSchema, target: true})
		}
	}
	return idx
}

// lookup returns the declared function a (schema-qualified or not) name
// calls, and whether the name is its target's. An unqualified name matches
// a declared function of that name, preferring schema public when several
// schemas declare it.
func (idx functionIndex) lookup(schema, name string) (*shardmap.Function, bool) {
	entries := idx[name]
	if len(entries) == 0 {
		return nil, false
	}
	if schema != "" {
		for _, e := range entries {
			if e.schema == schema {
				return e.f, e.target
			}
		}
		return nil, false
	}
	if len(entries) == 1 {
		return entries[0].f, entries[0].target
	}
	for _, e := range entries {
		if e.schema == "public" {
			return e.f, e.target
		}
	}
	return entries[0].f, entries[0].target
}

// analyze reads a statement string once: the statements pgrouter mirrors,
// the routed calls and whether the string may run on any shard.
func analyze(sql string, standard bool, idx functionIndex, cat *Catalog) *Plan {
	// Without a ';' anywhere the string is one statement; without "pg_" or
	// "information_schema" it names no catalog relation. Both save a pass of
	// the lexer over the common statement (a routed call).
	single := strings.IndexByte(sql, ';') < 0 || Single(sql, standard)
	mayReadCatalog := containsFold(sql, "pg_") || containsFold(sql, "information_schema")
	p := &Plan{AnyShard: true, Free: true, Override: parseOverride(sql), SQL: sql, Command: ParseCommand(sql, standard), Single: single}
	if p.Override.Set {
		p.Free = false
	}
	l := NewLexer(sql)
	l.StandardStrings = standard
	for {
		t := l.Next()
		for l.IsOp(t, ";") {
			t = l.Next()
		}
		if t.Kind == EOF {
			if len(p.Calls) > 0 {
				p.Free = false
			}
			return p
		}
		if t.Kind == Invalid {
			p.AnyShard, p.Free = false, false
			return p
		}
		if l.EqualFold(t, "copy") {
			p.Copy = true
		}
		catalogRead := mayReadCatalog && isCatalogRead(l, t)
		reads := l.EqualFold(t, "show") || l.EqualFold(t, "values")
		st, classified := classify(&l, t)
		// A temporary object is session state unless ON COMMIT DROP ends it
		// with its transaction; that clause comes later, so it waits.
		temp := classified && st.Kind == KindSessionState && st.Names[0] == StateTemp
		if classified && st.Kind != KindOther && !temp {
			p.Statements = append(p.Statements, st)
		}
		anyShard := classified || l.EqualFold(t, "show") || l.EqualFold(t, "savepoint") || l.EqualFold(t, "release") || l.EqualFold(t, "values")
		selectWithoutFrom := l.EqualFold(t, "select")
		txScoped := false // reads the transaction's time or settings (txScopedBuiltins)
		// Walk to the end of the statement: routed calls, set_config, and
		// whatever makes a SELECT more than constants.
		var prev, prev2, prev3 Token
		for t = l.Next(); t.Kind != EOF && t.Kind != Invalid && !l.IsOp(t, ";"); prev3, prev2, prev, t = prev2, prev, t, l.Next() {
			switch {
			case temp && l.EqualFold(t, "drop") && l.EqualFold(prev, "commit") && l.EqualFold(prev2, "on"):
				temp = false
			case (l.EqualFold(t, "temp") || l.EqualFold(t, "temporary")) && l.EqualFold(prev, "into"):
				p.Statements = append(p.Statements, Statement{Kind: KindSessionState, Names: []string{StateTemp}})
			case isSessionLock(&l, t):
				save := l
				if l.IsOp(l.Next(), "(") {
					p.Statements = append(p.Statements, Statement{Kind: KindSessionState, Names: []string{StateLock}})
				}
				l = save
			}
			switch t.Kind {
			case Ident, QuotedIdent:
				if t.Kind == Ident && (selectWithoutFrom || catalogRead) { // only what could still be Free
					if word, _ := l.Value(t); txScopedBuiltins[word] {
						txScoped = true
					}
				}
				if t.Kind == Ident && isConstantKeyword(&l, t) {
					continue
				}
				if l.IsOp(prev, "::") || l.EqualFold(prev, "as") {
					continue // a type name, or an alias
				}
				save := l
				next := l.Next()
				l = save
				if l.IsOp(next, ".") {
					continue // a qualifier, judged with the name after it
				}
				if !l.IsOp(next, "(") {
					selectWithoutFrom = false
					continue
				}
				schema := ""
				if l.IsOp(prev, ".") && (prev2.Kind == Ident || prev2.Kind == QuotedIdent) {
					schema, _ = l.Value(prev2)
				}
				name, _ := l.Value(t)
				if name == "set_config" {
					selectWithoutFrom = false
					if n, ok, computed := setConfigName(&l); ok {
						p.Statements = append(p.Statements, Statement{Kind: KindSet, Names: []string{n}})
					} else if computed {
						p.Statements = append(p.Statements, Statement{Kind: KindSessionState, Names: []string{StateSetConfig}})
					}
					continue
				}
				f, isTarget := idx.lookup(schema, name)
				if f == nil {
					if readOnlyBuiltin(schema, name) {
						continue // select now() is still a SELECT any shard answers alike
					}
					selectWithoutFrom = false
					if p.Undeclared == "" && t.Kind == Ident && !notFunctionNames[name] && !tableBefore(&l, prev, prev3) {
						p.Undeclared = qualifiedName(schema, name)
					}
					continue
				}
				selectWithoutFrom = false
				if f.TargetName != "" && !isTarget {
					from := t.Start
					if schema != "" {
						from = prev2.Start
					}
					p.retarget = append(p.retarget, retarget{from: from, to: t.End, f: f})
				}
				call, err := parseCall(&l, f, cat, p)
				if err != nil && p.Err == nil {
					p.Err = err
				}
				if err == nil {
					p.Calls = append(p.Calls, call)
				}
			case String, BitString, Number, Param, Punct, Op:
			}
		}
		if temp {
			p.Statements = append(p.Statements, st)
		}
		if !(anyShard || selectWithoutFrom || catalogRead) {
			p.AnyShard = false
		}
		if !(reads || selectWithoutFrom || catalogRead) || txScoped {
			p.Free = false
		}
		if t.Kind != Punct {
			if t.Kind == Invalid {
				p.AnyShard, p.Free = false, false
			}
			if len(p.Calls) > 0 {
				p.Free = false
			}
			return p
		}
	}
}

// tableBefore reports whether the name just read is a table with a column
// list rather than a call: INSERT INTO t (a, b), INSERT INTO s.t (a),
// REFERENCES t (id). prev is the token before the name; beforeSchema the
// one before its schema, when prev is a qualifier's dot.
func tableBefore(l *Lexer, prev, beforeSchema Token) bool {
	before := prev
	if l.IsOp(prev, ".") {
		before = beforeSchema
	}
	for _, w := range notCallAfter {
		if l.EqualFold(before, w) {
			return true
		}
	}
	return false
}

// containsFold reports whether s contains the lower-case ASCII word w in
// any case. A name spelled with escapes (U&"\0070g_class") is missed, and
// its statement is then not taken for a catalog read: the safe side.
func containsFold(s, w string) bool {
	for i := 0; i+len(w) <= len(s); i++ {
		j := 0
		for j < len(w) && (s[i+j] == w[j] || s[i+j]+('a'-'A') == w[j] && s[i+j] >= 'A' && s[i+j] <= 'Z') {
			j++
		}
		if j == len(w) {
			return true
		}
	}
	return false
}

// isConstantKeyword reports words a constant-only SELECT may contain.
func isConstantKeyword(l *Lexer, t Token) bool {
	for _, kw := range [...]string{"select", "as", "null", "true", "false", "and", "or", "not", "is", "cast", "case", "when", "then", "else", "end",
		"current_timestamp", "current_date", "current_time", "localtime", "localtimestamp", "current_user", "session_user",
		"current_role", "current_catalog", "current_schema", "user"} {
		if l.EqualFold(t, kw) {
			return true
		}
	}
	return false
}

// parseCall reads the argument list of a call whose name the lexer has
// just passed, and finds the key.
// Session changes in the arguments (set_config, a session advisory lock)
// are recorded in p.Statements, as anywhere else in the string.
func parseCall(l *Lexer, f *shardmap.Function, cat *Catalog, p *Plan) (Call, *Error) {
	l.Next() // (
	var args [][]Token
	var cur []Token
	depth := 0
	for t := l.Next(); ; t = l.Next() {
		if t.Kind == EOF || t.Kind == Invalid || (depth == 0 && l.IsOp(t, ";")) {
			return Call{}, planError(sqlstate.FeatureNotSupported, "unterminated call of %s", f.FullName())
		}
		switch {
		case l.IsOp(t, "(") || l.IsOp(t, "["):
			depth++
		case l.IsOp(t, ")") || l.IsOp(t, "]"):
			if depth == 0 {
				if len(cur) > 0 || len(args) > 0 {
					args = append(args, cur)
				}
				return resolveCall(l, f, cat, args)
			}
			depth--
		case depth == 0 && l.IsOp(t, ","):
			args = append(args, cur)
			cur = nil
			continue
		case t.Kind == Ident && l.EqualFold(t, "set_config"):
			sub := *l
			if name, ok, computed := setConfigName(&sub); ok {
				p.Statements = append(p.Statements, Statement{Kind: KindSet, Names: []string{name}})
			} else if computed {
				p.Statements = append(p.Statements, Statement{Kind: KindSessionState, Names: []string{StateSetConfig}})
			}
		case isSessionLock(l, t):
			if sub := *l; l.IsOp(sub.Next(), "(") {
				p.Statements = append(p.Statements, Statement{Kind: KindSessionState, Names: []string{StateLock}})
			}
		}
		cur = append(cur, t)
	}
}

// resolveCall matches the arguments against the function's signatures and
// reads the key argument.
func resolveCall(l *Lexer, f *shardmap.Function, cat *Catalog, args [][]Token) (Call, *Error) {
	call := Call{Fn: f}
	if f.RunOn == shardmap.RunAny || f.RunOn == shardmap.RunAll || f.Partition >= 0 {
		return call, nil // no key to read
	}
	positional := 0
	named := map[string][]Token{}
	for _, a := range args {
		if len(a) >= 2 && (a[0].Kind == Ident || a[0].Kind == QuotedIdent) && (l.IsOp(a[1], "=>") || l.IsOp(a[1], ":=")) {
			name, _ := l.Value(a[0])
			named[name] = a[2:]
			continue
		}
		if len(named) > 0 {
			return call, planError(sqlstate.SyntaxError, "positional argument after a named one in a call of %s", f.FullName())
		}
		positional++
	}
	sig := chooseSignature(cat.Signatures(f), positional, named)
	if sig == nil {
		if cat == nil || len(cat.Signatures(f)) == 0 {
			return call, &Error{Code: sqlstate.ObjectNotInPrerequisiteState, Message: fmt.Sprintf("pgrouter: the signature of %s is not loaded yet, so its key cannot be found", f.FullName()),
				Hint: "pgrouter reads function signatures from the first reachable shard at start; check that the function exists there (pgrouter check)."}
		}
		return call, planError(sqlstate.UndefinedFunction, "no declared signature of %s takes %d positional and %d named arguments", f.FullName(), positional, len(named))
	}
	call.Sig = sig
	argName := sig.ArgNames[sig.KeyIndex]
	if argName == "" {
		argName = fmt.Sprintf("$%d", sig.KeyIndex+1)
	}
	argToks := func(i int) ([]Token, bool) {
		if i < positional {
			return args[i], true
		}
		toks, ok := named[sig.ArgNames[i]]
		return toks, ok
	}
	if sig.KeySplit {
		for _, i := range sig.SplitIndexes {
			name := sig.ArgNames[i]
			if name == "" {
				name = fmt.Sprintf("$%d", i+1)
			}
			toks, ok := argToks(i)
			if !ok {
				return call, planError(sqlstate.FeatureNotSupported, "the split argument %s of %s is omitted, so it takes its default; pass it explicitly", name, f.FullName())
			}
			a, err := readSplitArg(l, toks)
			if err != nil {
				return call, planError(sqlstate.FeatureNotSupported, "the split argument %s of %s is an expression; splitting needs a parameter ($n), a '{...}' constant or ARRAY[...] of constants", name, f.FullName())
			}
			a.Key = i == sig.KeyIndex
			call.Split = append(call.Split, a)
		}
		call.Key = Key{Kind: KeySplit, Type: sig.KeyType(), ParamType: sig.KeyType(), Arg: argName}
		return call, nil
	}
	keyToks, ok := argToks(sig.KeyIndex)
	if !ok {
		return call, planError(sqlstate.FeatureNotSupported, "the key argument %s of %s is omitted, so it takes its default; pass it explicitly", argName, f.FullName())
	}
	key, err := readKey(l, keyToks)
	if err != nil {
		return call, planError(sqlstate.FeatureNotSupported, "the key argument %s of %s is an expression; routing needs a constant or a parameter ($n)", argName, f.FullName())
	}
	key.Type = sig.KeyType()
	if key.ParamType == 0 {
		key.ParamType = key.Type
	}
	key.Arg = argName
	call.Key = key
	return call, nil
}

// chooseSignature picks the overload a call with these arguments resolves to.
func chooseSignature(sigs []*Signature, positional int, named map[string][]Token) *Signature {
	var found *Signature
	for _, s := range sigs {
		n := positional + len(named)
		if n > len(s.ArgTypes) || n < len(s.ArgTypes)-s.NumDefaults {
			continue
		}
		ok := true
		for name := range named {
			i := indexOf(s.ArgNames, name)
			if i < positional {
				ok = false
				break
			}
		}
		if !ok {
			continue
		}
		if found != nil && (found.KeyIndex != s.KeyIndex || found.KeyType() != s.KeyType()) {
			return nil // ambiguous in a way that matters for routing
		}
		if found == nil {
			found = s
		}
	}
	return found
}

func indexOf(list []string, s string) int {
	for i, x := range list {
		if x == s {
			return i
		}
	}
	return -1
}

// errExpression means an argument is not a constant or parameter.
var errExpression = fmt.Errorf("expression")

// castKey reads the key in value cast to typ: a parameter takes the type of
// the innermost cast.
func castKey(l *Lexer, value, typ []Token) (Key, error) {
	inner, err := readKey(l, value)
	if err != nil {
		return Key{}, err
	}
	if inner.ParamType == 0 {
		inner.ParamType = castType(typeText(l, typ))
	}
	return inner, nil
}

// readKey reads a key argument: a constant, NULL, a parameter, or one of
// those in parentheses, cast (x::type, CAST(x AS type)) or typed ('x' as
// text 'x').
func readKey(l *Lexer, toks []Token) (Key, error) {
	// Parentheses around the whole argument.
	for len(toks) >= 2 && l.IsOp(toks[0], "(") && l.IsOp(toks[len(toks)-1], ")") && matching(l, toks) {
		toks = toks[1 : len(toks)-1]
	}
	// x::type: the last top-level cast; the innermost cast types the parameter.
	if i := lastTopLevel(l, toks, "::"); i > 0 {
		return castKey(l, toks[:i], toks[i+1:])
	}
	// CAST(x AS type)
	if len(toks) >= 5 && l.EqualFold(toks[0], "cast") && l.IsOp(toks[1], "(") && l.IsOp(toks[len(toks)-1], ")") {
		body := toks[2 : len(toks)-1]
		for i := len(body) - 1; i > 0; i-- {
			if l.EqualFold(body[i], "as") {
				return castKey(l, body[:i], body[i+1:])
			}
		}
		return Key{}, errExpression
	}
	switch len(toks) {
	case 1:
		t := toks[0]
		switch t.Kind {
		case String, BitString:
			v, err := l.Value(t)
			if err != nil {
				return Key{}, err
			}
			return Key{Kind: KeyConst, Const: v}, nil
		case Number:
			return Key{Kind: KeyConst, Const: l.Text(t)}, nil
		case Param:
			n := 0
			for _, c := range l.Text(t)[1:] {
				n = n*10 + int(c-'0')
				if n > 65535 {
					return Key{}, errExpression
				}
			}
			if n < 1 {
				return Key{}, errExpression
			}
			return Key{Kind: KeyParam, Param: n - 1}, nil
		case Ident:
			switch {
			case l.EqualFold(t, "null"):
				return Key{Kind: KeyNull}, nil
			case l.EqualFold(t, "true"), l.EqualFold(t, "false"):
				return Key{Kind: KeyConst, Const: strings.ToLower(l.Text(t))}, nil
			}
		}
	case 2:
		if (l.IsOp(toks[0], "-") || l.IsOp(toks[0], "+")) && toks[1].Kind == Number {
			v := l.Text(toks[1])
			if l.IsOp(toks[0], "-") {
				v = "-" + v
			}
			return Key{Kind: KeyConst, Const: v}, nil
		}
	}
	// type 'literal'
	if n := len(toks); n >= 2 && toks[n-1].Kind == String {
		if oid := castType(typeText(l, toks[:n-1])); oid != 0 {
			v, err := l.Value(toks[n-1])
			if err != nil {
				return Key{}, err
			}
			return Key{Kind: KeyConst, Const: v, ParamType: oid}, nil
		}
	}
	return Key{}, errExpression
}

// matching reports whether toks[0] is the parenthesis closed by the last token.
func matching(l *Lexer, toks []Token) bool {
	depth := 0
	for i, t := range toks {
		switch {
		case l.IsOp(t, "("):
			depth++
		case l.IsOp(t, ")"):
			depth--
			if depth == 0 && i != len(toks)-1 {
				return false
			}
		}
	}
	return true
}

func lastTopLevel(l *Lexer, toks []Token, op string) int {
	depth, last := 0, -1
	for i, t := range toks {
		switch {
		case l.IsOp(t, "(") || l.IsOp(t, "["):
			depth++
		case l.IsOp(t, ")") || l.IsOp(t, "]"):
			depth--
		case depth == 0 && l.IsOp(t, op):
			last = i
		}
	}
	return last
}

// typeText turns the tokens of a type name into its lower-case spelling
// without modifiers or schema (pg_catalog.int8, character varying(10), text[]).
func typeText(l *Lexer, toks []Token) string {
	var words []string
	for _, t := range toks {
		if t.Kind == Ident || t.Kind == QuotedIdent {
			v, _ := l.Value(t)
			words = append(words, v)
		}
		if l.IsOp(t, "(") || l.IsOp(t, "[") {
			break
		}
		if l.IsOp(t, ".") {
			words = words[:0]
		}
	}
	return strings.Join(words, " ")
}

// parseOverride reads a leading /* pgrouter: shard=NAME */ or
// /* pgrouter: key=VALUE */ comment.
func parseOverride(sql string) Override {
	s := strings.TrimLeft(sql, " \t\r\n")
	if !strings.HasPrefix(s, "/*") {
		return Override{}
	}
	end := strings.Index(s, "*/")
	if end < 0 {
		return Override{}
	}
	body := strings.TrimSpace(s[2:end])
	rest, ok := strings.CutPrefix(body, "pgrouter:")
	if !ok {
		return Override{}
	}
	rest = strings.TrimSpace(rest)
	if v, ok := strings.CutPrefix(rest, "shard="); ok {
		return Override{Shard: strings.TrimSpace(v), Set: true}
	}
	if v, ok := strings.CutPrefix(rest, "key="); ok {
		return Override{Key: strings.TrimSpace(v), Set: true}
	}
	return Override{}
}
