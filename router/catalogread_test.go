package router

import "testing"

// TestFreeStatements lists which statements need no particular shard (and so
// do not choose an unpinned transaction's shard) and which do.
func TestFreeStatements(t *testing.T) {
	// psql 15's \d
	const psqlListRelations = `SELECT n.nspname as "Schema",
  c.relname as "Name",
  CASE c.relkind WHEN 'r' THEN 'table' WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view' WHEN 'i' THEN 'index' WHEN 'S' THEN 'sequence' WHEN 't' THEN 'TOAST table' WHEN 'f' THEN 'foreign table' WHEN 'p' THEN 'partitioned table' WHEN 'I' THEN 'partitioned index' END as "Type",
  pg_catalog.pg_get_userbyid(c.relowner) as "Owner"
FROM pg_catalog.pg_class c
     LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
     LEFT JOIN pg_catalog.pg_am am ON am.oid = c.relam
WHERE c.relkind IN ('r','p','v','m','S','f','')
      AND n.nspname <> 'pg_catalog'
      AND n.nspname !~ '^pg_toast'
      AND n.nspname <> 'information_schema'
  AND pg_catalog.pg_table_is_visible(c.oid)
ORDER BY 1,2;`
	r := testRouter(t, "hashtext")
	asyncpgIntrospection := `WITH RECURSIVE typeinfo_tree(oid, ns, name, kind, basetype, elemtype, elemdelim, range_subtype, attrtypoids, attrnames, depth)
AS (SELECT ti.oid, ti.ns, ti.name, ti.kind, ti.basetype, ti.elemtype, ti.elemdelim, ti.range_subtype, ti.attrtypoids, ti.attrnames, 0
    FROM (SELECT t.oid AS oid, ns.nspname AS ns, t.typname AS name, t.typtype AS kind,
            (CASE WHEN t.typtype = 'd' THEN (WITH RECURSIVE typebases(oid, depth) AS (
                SELECT t2.typbasetype AS oid, 0 AS depth FROM pg_type t2 WHERE t2.oid = t.oid
                UNION ALL SELECT t2.typbasetype AS oid, tb.depth + 1 AS depth FROM pg_type t2, typebases tb
                WHERE tb.oid = t2.oid AND t2.typbasetype != 0) SELECT oid FROM typebases ORDER BY depth DESC LIMIT 1)
             ELSE NULL END) AS basetype,
            t.typelem AS elemtype, elem_t.typdelim AS elemdelim, range_t.rngsubtype AS range_subtype,
            (CASE WHEN t.typtype = 'c' THEN (SELECT array_agg(ia.atttypid ORDER BY ia.attnum) FROM pg_attribute ia
                INNER JOIN pg_class c ON (ia.attrelid = c.oid) WHERE ia.attnum > 0 AND NOT ia.attisdropped AND c.reltype = t.oid) ELSE NULL END) AS attrtypoids,
            (CASE WHEN t.typtype = 'c' THEN (SELECT array_agg(ia.attname::text ORDER BY ia.attnum) FROM pg_attribute ia
                INNER JOIN pg_class c ON (ia.attrelid = c.oid) WHERE ia.attnum > 0 AND NOT ia.attisdropped AND c.reltype = t.oid) ELSE NULL END) AS attrnames
          FROM pg_catalog.pg_type AS t INNER JOIN pg_catalog.pg_namespace ns ON (ns.oid = t.typnamespace)
          LEFT JOIN pg_type elem_t ON (t.typlen = -1 AND t.typelem != 0 AND t.typelem = elem_t.oid)
          LEFT JOIN pg_range range_t ON (t.oid = range_t.rngtypid)) AS ti
    WHERE ti.oid = any($1::oid[])
    UNION ALL
    SELECT ti.oid, ti.ns, ti.name, ti.kind, ti.basetype, ti.elemtype, ti.elemdelim, ti.range_subtype, ti.attrtypoids, ti.attrnames, tt.depth + 1
    FROM (SELECT t.oid, t.typelem AS elemtype FROM pg_catalog.pg_type t) AS ti, typeinfo_tree tt
    WHERE (tt.elemtype IS NOT NULL AND ti.oid = tt.elemtype) OR (tt.attrtypoids IS NOT NULL AND ti.oid = any(tt.attrtypoids)))
SELECT DISTINCT * FROM typeinfo_tree ORDER BY depth DESC`
	for _, tc := range []struct {
		sql  string
		free bool
	}{
		{"SELECT 1", true},
		{"select 'a' as x, null", true},
		{"SHOW statement_timeout", true},
		{"VALUES (1), (2)", true},
		{"select typname from pg_catalog.pg_type where oid = $1", true},
		{"SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'", true},
		{"select table_name from information_schema.tables, pg_namespace n where true", true},
		{"SELECT format_type(t.oid, NULL) FROM pg_catalog.pg_type t", true},
		{"select * from pg_catalog.pg_type t; select 1", true},
		{asyncpgIntrospection, true},
		// Application data, state, locks, writes: a shard of their own.
		{"select * from users", false},
		{"select * from pg_type, users", false},
		{"select * from public.pg_type", false},
		{"select nextval('s') from pg_class limit 1", false},
		{"select pg_advisory_lock(1) from pg_class limit 1", false},
		{"select set_config('a.b', 'c', true) from pg_class limit 1", false},
		{"select * from pg_class for update", false},
		{"select * into t from pg_class", false},
		{"with x as (delete from users returning *) select * from pg_class", false},
		{"select version(), lower('A'), format('%s', 1), pg_catalog.md5('x')", true},
		{psqlListRelations, true},
		// The transaction's time and settings: run on any shard, but inside
		// the transaction (not Free).
		{"select now()", false},
		{"SELECT current_user", false},
		{"select current_setting('search_path')", false},
		// pg_* is not a promise: user functions, writes, per-shard data.
		{"select pg_my_app_writer('x')", false},
		{"select pg_stat_statements_reset()", false},
		{"select pg_relation_size('users')", false},
		{"select pg_catalog.query_to_xml('select * from users', true, true, '')", false},
		{"select pg_sleep(1)", false},
		{"select public.now()", false},
		{"select my_function()", false},
		{"select nextval('s')", false},
		{"select now() from users", false},
		{"select get_user('bob') from pg_class", false},
		{"select 1; select * from users", false},
		{"SET statement_timeout = 5", false},
		{"/* pgrouter: shard=s1 */ select 1", false},
		{"select substring(relname from 1) from pg_class", false}, // read conservatively
	} {
		p := r.Plan(tc.sql, true)
		if p.Free != tc.free {
			t.Errorf("%.60q: Free = %v, want %v", tc.sql, p.Free, tc.free)
		}
		if p.Free && !p.AnyShard {
			t.Errorf("%.60q: free but not AnyShard", tc.sql)
		}
	}
}

// TestUndeclaredNamesTheCall: an unrouted statement remembers the first
// function it calls that router.yaml does not declare (a misspelled
// declaration shows up here), skipping read-only built-ins.
func TestUndeclaredNamesTheCall(t *testing.T) {
	r := testRouter(t, "hashtext")
	for sql, want := range map[string]string{
		"SELECT now(), get_usr('bob')":       "get_usr",
		"SELECT app.get_usr('bob')":          "app.get_usr",
		"SELECT lower('X'), pg_sleep(1)":     "pg_sleep",
		"SELECT now(), version()":            "",
		"SELECT * FROM users":                "",
		"SELECT get_user('bob'), other_fn()": "other_fn",
		// Syntax, tables with column lists and aggregates are not calls.
		"INSERT INTO users VALUES (1)":                                       "",
		"INSERT INTO users(a, b) VALUES (1, 2)":                              "",
		"INSERT INTO app.users (a) VALUES (1) RETURNING (a)":                 "",
		"SELECT count(*) FROM users WHERE id IN (1, 2)":                      "",
		"SELECT * FROM users WHERE EXISTS (SELECT 1) AND a = ANY (ARRAY[1])": "",
		"CREATE TABLE t (id int REFERENCES u (id))":                          "",
		"SELECT pg_my_app_writer('x')":                                       "pg_my_app_writer",
	} {
		if got := r.Plan(sql, true).Undeclared; got != want {
			t.Errorf("%q: Undeclared %q, want %q", sql, got, want)
		}
	}
}
