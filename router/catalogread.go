package router

import "strings"

// Catalog reads: statements that need no particular shard.
//
// Drivers and tools read the system catalogs (asyncpg and JDBC look up
// types, psql's \d lists relations) in the middle of whatever the
// application does, inside its transactions too. Every shard has the same
// schema, so any shard answers them alike, and an unpinned transaction need
// not be decided by them. A statement counts as a catalog read when it is
// a SELECT (or WITH ... SELECT) that names at least one relation, and every
// relation it names is in pg_catalog or information_schema (qualified, or
// unqualified with PostgreSQL's "pg_" prefix) or is one of its own WITH
// queries, and it locks nothing (FOR UPDATE/SHARE), writes nothing (INSERT,
// UPDATE, DELETE, MERGE, SELECT INTO) and calls none of the functions below
// that change state.

// stateChangingFunctions are functions a catalog read may not call: they
// take locks, use sequences, notify, assign transaction ids or change
// server state.
var stateChangingFunctions = map[string]bool{
	"nextval": true, "setval": true, "currval": true, "lastval": true,
	"set_config": true, "pg_notify": true, "txid_current": true, "pg_current_xact_id": true,
	"pg_terminate_backend": true, "pg_cancel_backend": true, "pg_reload_conf": true,
	"pg_rotate_logfile": true, "pg_switch_wal": true, "pg_promote": true,
	"pg_sleep": true, "pg_sleep_for": true, "pg_sleep_until": true,
}

// stateChangingPrefixes are name prefixes of such function families.
var stateChangingPrefixes = []string{
	"pg_advisory", "pg_try_advisory", "lo_", "dblink", "pg_create_", "pg_drop_",
	"pg_replication_", "pg_stat_reset", "pg_logical_emit", "pg_import_", "pg_file_", "pg_read_",
}

// readOnlyBuiltins are PostgreSQL functions that read nothing but their
// arguments, the clock or the session's settings, called unqualified or as
// pg_catalog.name (pg_catalog is searched first, so these names are the
// built-ins). A SELECT of them without FROM runs on any shard. The list is
// closed on purpose: PostgreSQL lets users name functions pg_*, and some
// pg_catalog functions write (pg_stat_statements_reset) or read per-shard
// data (pg_relation_size, query_to_xml).
var readOnlyBuiltins = map[string]bool{
	"now": true, "clock_timestamp": true, "statement_timestamp": true, "transaction_timestamp": true, "timeofday": true,
	"version": true, "current_database": true, "current_schema": true, "current_schemas": true, "current_setting": true,
	"inet_server_addr": true, "inet_server_port": true, "inet_client_addr": true, "inet_client_port": true,
	"pg_backend_pid": true, "pg_postmaster_start_time": true, "pg_conf_load_time": true, "pg_is_in_recovery": true,
	"pg_typeof": true, "pg_client_encoding": true, "pg_size_pretty": true, "pg_encoding_to_char": true,
	"format": true, "format_type": true, "concat": true, "concat_ws": true, "lower": true, "upper": true, "initcap": true,
	"length": true, "char_length": true, "octet_length": true, "substr": true, "substring": true, "replace": true,
	"trim": true, "btrim": true, "ltrim": true, "rtrim": true, "lpad": true, "rpad": true, "left": true, "right": true,
	"split_part": true, "strpos": true, "position": true, "md5": true, "sha224": true, "sha256": true, "sha384": true,
	"sha512": true, "encode": true, "decode": true, "abs": true, "round": true, "trunc": true, "floor": true, "ceil": true,
	"ceiling": true, "sqrt": true, "power": true, "mod": true, "greatest": true, "least": true, "coalesce": true,
	"nullif": true, "random": true, "gen_random_uuid": true, "date_trunc": true, "date_part": true, "extract": true,
	"age": true, "make_date": true, "make_time": true, "make_timestamp": true, "make_timestamptz": true,
	"make_interval": true, "to_char": true, "to_date": true, "to_timestamp": true, "to_number": true,
	"array_length": true, "array_to_string": true, "string_to_array": true, "cardinality": true,
	"generate_series": true, "unnest": true, "to_json": true, "to_jsonb": true, "row_to_json": true,
	"json_build_object": true, "jsonb_build_object": true, "json_build_array": true, "jsonb_build_array": true,
	"jsonb_pretty": true, "regexp_replace": true, "regexp_match": true, "regexp_matches": true,
	"quote_ident": true, "quote_literal": true, "quote_nullable": true,
	// Aggregates: harmless without FROM, and never a routed function's name.
	"count": true, "sum": true, "min": true, "max": true, "avg": true, "array_agg": true, "string_agg": true,
	"bool_and": true, "bool_or": true, "every": true, "json_agg": true, "jsonb_agg": true,
}

// txScopedBuiltins give a value that belongs to the transaction or the
// session's settings (the transaction's start time, SET LOCAL search_path,
// SET LOCAL ROLE): run outside an unpinned transaction they would answer
// for another one, so they are not Free (see Plan.Free).
var txScopedBuiltins = map[string]bool{
	"now": true, "transaction_timestamp": true, "current_setting": true, "current_schema": true, "current_schemas": true,
	"current_timestamp": true, "current_date": true, "current_time": true, "localtime": true, "localtimestamp": true,
	"current_user": true, "current_role": true, "session_user": true, "user": true,
}

// readOnlyBuiltin reports a call of one of readOnlyBuiltins.
func readOnlyBuiltin(schema, name string) bool {
	return (schema == "" || schema == "pg_catalog") && readOnlyBuiltins[name]
}

// notFunctionNames are words followed by "(" that name no function: SQL
// syntax (VALUES (...), IN (...), ROW(...)), which Plan.Undeclared skips.
var notFunctionNames = map[string]bool{
	"values": true, "in": true, "exists": true, "any": true, "all": true, "some": true, "array": true, "row": true,
	"over": true, "filter": true, "within": true, "lateral": true, "using": true, "on": true, "as": true, "and": true,
	"or": true, "not": true, "select": true, "where": true, "cube": true, "rollup": true, "grouping": true, "sets": true,
	"window": true, "returning": true, "conflict": true, "set": true, "by": true, "when": true, "then": true, "else": true,
}

// notCallAfter are words after which "name(" is a table with a column list
// (INSERT INTO t (a, b), REFERENCES t (id)), not a call.
var notCallAfter = [...]string{"into", "update", "table", "references", "index", "view"}

// qualifiedName writes a function name as the statement called it.
func qualifiedName(schema, name string) string {
	if schema == "" {
		return name
	}
	return schema + "." + name
}

func stateChanging(name string) bool {
	if stateChangingFunctions[name] {
		return true
	}
	for _, p := range stateChangingPrefixes {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// isCatalogRead reports whether the statement that starts with first (l
// positioned just after it) is a catalog read. It reads its own copy of
// the lexer.
func isCatalogRead(l Lexer, first Token) bool {
	if !l.EqualFold(first, "select") && !l.EqualFold(first, "with") {
		return false
	}
	var toks []Token
	toks = append(toks, first)
	for t := l.Next(); t.Kind != EOF && !l.IsOp(t, ";"); t = l.Next() {
		if t.Kind == Invalid {
			return false
		}
		toks = append(toks, t)
	}
	ctes := withNames(&l, toks)
	relations := 0
	for i := 0; i < len(toks); i++ {
		t := toks[i]
		if t.Kind != Ident && t.Kind != QuotedIdent {
			continue
		}
		if t.Kind == Ident {
			switch {
			case l.EqualFold(t, "insert"), l.EqualFold(t, "update"), l.EqualFold(t, "delete"), l.EqualFold(t, "merge"),
				l.EqualFold(t, "into"), l.EqualFold(t, "copy"):
				return false
			case l.EqualFold(t, "for") && i+1 < len(toks) && (l.EqualFold(toks[i+1], "update") || l.EqualFold(toks[i+1], "share") ||
				l.EqualFold(toks[i+1], "no") || l.EqualFold(toks[i+1], "key")):
				return false
			case l.EqualFold(t, "from"), l.EqualFold(t, "join"):
				n, ok := catalogRelations(&l, toks, i+1, ctes)
				if !ok {
					return false
				}
				relations += n
				continue
			}
		}
		if i+1 < len(toks) && l.IsOp(toks[i+1], "(") {
			name, _ := l.Value(t)
			if stateChanging(name) {
				return false
			}
		}
	}
	return relations > 0
}

// catalogRelations reads the comma-separated relation list that starts at
// toks[i] (after FROM or JOIN) and reports how many relations it named and
// whether all of them are catalog relations or WITH queries. A subquery or
// a function in FROM is left to the caller's scan.
func catalogRelations(l *Lexer, toks []Token, i int, ctes []string) (int, bool) {
	n := 0
	for i < len(toks) {
		for i < len(toks) && toks[i].Kind == Ident && (l.EqualFold(toks[i], "lateral") || l.EqualFold(toks[i], "only")) {
			i++
		}
		if i >= len(toks) || l.IsOp(toks[i], "(") {
			return n, true
		}
		if toks[i].Kind != Ident && toks[i].Kind != QuotedIdent {
			return n, false
		}
		schema, name := "", ""
		name, _ = l.Value(toks[i])
		i++
		if i+1 < len(toks) && l.IsOp(toks[i], ".") && (toks[i+1].Kind == Ident || toks[i+1].Kind == QuotedIdent) {
			schema = name
			name, _ = l.Value(toks[i+1])
			i += 2
		}
		if i < len(toks) && l.IsOp(toks[i], "(") {
			return n, true // a function in FROM: the caller checks its name
		}
		if !catalogRelation(schema, name, ctes) {
			return n, false
		}
		n++
		// An alias, then maybe a comma and the next relation.
		if i < len(toks) && toks[i].Kind == Ident && l.EqualFold(toks[i], "as") {
			i++
		}
		if i < len(toks) && (toks[i].Kind == QuotedIdent || toks[i].Kind == Ident && !clauseKeyword(l, toks[i])) {
			i++
		}
		if i < len(toks) && l.IsOp(toks[i], ",") {
			i++
			continue
		}
		return n, true
	}
	return n, true
}

func catalogRelation(schema, name string, ctes []string) bool {
	switch schema {
	case "pg_catalog", "information_schema":
		return true
	case "":
		if strings.HasPrefix(name, "pg_") {
			return true
		}
		for _, c := range ctes {
			if c == name {
				return true
			}
		}
	}
	return false
}

// clauseKeyword reports words that end a relation reference rather than
// alias it.
func clauseKeyword(l *Lexer, t Token) bool {
	for _, kw := range [...]string{"where", "group", "order", "limit", "offset", "having", "window", "union", "intersect", "except",
		"join", "inner", "left", "right", "full", "cross", "natural", "on", "using", "fetch", "for", "tablesample"} {
		if l.EqualFold(t, kw) {
			return true
		}
	}
	return false
}

// withNames returns the names of the WITH queries a statement defines
// (at any depth): WITH [RECURSIVE] name [(columns)] AS [[NOT] MATERIALIZED] (...) [, ...].
func withNames(l *Lexer, toks []Token) []string {
	var names []string
	for i := 0; i < len(toks); i++ {
		if toks[i].Kind != Ident || !l.EqualFold(toks[i], "with") {
			continue
		}
		j := i + 1
		if j < len(toks) && l.EqualFold(toks[j], "recursive") {
			j++
		}
		for j < len(toks) && (toks[j].Kind == Ident || toks[j].Kind == QuotedIdent) {
			name, _ := l.Value(toks[j])
			names = append(names, name)
			j++
			if j < len(toks) && l.IsOp(toks[j], "(") {
				j = skipParens(l, toks, j)
			}
			if j >= len(toks) || !l.EqualFold(toks[j], "as") {
				break
			}
			j++
			for j < len(toks) && (l.EqualFold(toks[j], "not") || l.EqualFold(toks[j], "materialized")) {
				j++
			}
			if j >= len(toks) || !l.IsOp(toks[j], "(") {
				break
			}
			j = skipParens(l, toks, j)
			if j >= len(toks) || !l.IsOp(toks[j], ",") {
				break
			}
			j++
		}
	}
	return names
}

// skipParens returns the index after the parenthesis that closes toks[i].
func skipParens(l *Lexer, toks []Token, i int) int {
	depth := 0
	for ; i < len(toks); i++ {
		switch {
		case l.IsOp(toks[i], "("):
			depth++
		case l.IsOp(toks[i], ")"):
			depth--
			if depth == 0 {
				return i + 1
			}
		}
	}
	return i
}
