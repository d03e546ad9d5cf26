package router

import (
	"reflect"
	"testing"
)

// TestStatements: what a plan reports of each statement kind pgrouter mirrors.
func TestStatements(t *testing.T) {
	cases := []struct {
		sql  string
		want []Statement
	}{
		{"SELECT 1", nil},
		{"BEGIN; SELECT 1; COMMIT", []Statement{{Kind: KindBegin}, {Kind: KindCommit}}},
		{"start transaction isolation level serializable", []Statement{{Kind: KindBegin}}},
		{"END", []Statement{{Kind: KindCommit}}},
		{"ROLLBACK TO SAVEPOINT a", nil},
		{"rollback work", []Statement{{Kind: KindRollback}}},
		{"ABORT", []Statement{{Kind: KindRollback}}},
		{"COMMIT PREPARED 'x'", nil},
		{"SET search_path = a, b", []Statement{{Kind: KindSet, Names: []string{"search_path"}}}},
		{"set session TimeZone to 'UTC'", []Statement{{Kind: KindSet, Names: []string{"timezone"}}}},
		{"SET TIME ZONE 'Europe/Rome'", []Statement{{Kind: KindSet, Names: []string{"timezone"}}}},
		{"SET SCHEMA 'x'", []Statement{{Kind: KindSet, Names: []string{"search_path"}}}},
		{"SET NAMES 'UTF8'", []Statement{{Kind: KindSet, Names: []string{"client_encoding"}}}},
		{`SET "MyApp".user_id = 5`, []Statement{{Kind: KindSet, Names: []string{"myapp.user_id"}}}}, // GUC names ignore case
		{"SET myapp.user_id = 5", []Statement{{Kind: KindSet, Names: []string{"myapp.user_id"}}}},
		{"SET ROLE admin", []Statement{{Kind: KindSet, Names: []string{"role"}}}},
		{"SET SESSION AUTHORIZATION bob", []Statement{{Kind: KindSet, Names: []string{"session_authorization", "role"}}}},
		{"SET LOCAL statement_timeout = 5", []Statement{{Kind: KindSetLocal}}},
		{"SET TRANSACTION READ ONLY", []Statement{{Kind: KindSetLocal}}},
		{"SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", []Statement{{Kind: KindSet, Names: []string{"default_transaction_isolation", "default_transaction_read_only", "default_transaction_deferrable"}}}},
		{"RESET search_path", []Statement{{Kind: KindReset, Names: []string{"search_path"}}}},
		{"reset time zone", []Statement{{Kind: KindReset, Names: []string{"timezone"}}}},
		{"RESET ALL", []Statement{{Kind: KindResetAll}}},
		{"DISCARD ALL", []Statement{{Kind: KindDiscardAll}}},
		{"DISCARD PLANS", nil},
		{"DEALLOCATE PREPARE s1; DEALLOCATE ALL", []Statement{{Kind: KindDeallocate, Names: []string{"s1"}}, {Kind: KindDeallocateAll}}},
		{"SELECT set_config('search_path', 'x', false)", []Statement{{Kind: KindSet, Names: []string{"search_path"}}}},
		{"SELECT pg_catalog.set_config('a.b', concat('x', 'y'), false), 1", []Statement{{Kind: KindSet, Names: []string{"a.b"}}}},
		{"SELECT set_config('a.b', 'x', true)", nil},
		{"ALTER ROLE x SET search_path = y", nil},
		{"SELECT 'SET search_path = x; BEGIN'", nil},
		{"/* BEGIN */ SELECT 1 -- ; COMMIT", nil},
		{";; BEGIN;;", []Statement{{Kind: KindBegin}}},
		{`PREPARE "Pgr_x"(int) AS SELECT $1; EXECUTE pgr_y(1)`, []Statement{{Kind: KindPrepare, Names: []string{"Pgr_x"}}, {Kind: KindExecute, Names: []string{"pgr_y"}}}},
		// State a pooled server cannot carry from one client to the next.
		{"LISTEN ch", []Statement{{Kind: KindSessionState, Names: []string{StateListen}}}},
		{"UNLISTEN *", nil},
		{"SELECT pg_advisory_lock(1)", []Statement{{Kind: KindSessionState, Names: []string{StateLock}}}},
		{"select 1 where PG_TRY_ADVISORY_LOCK_SHARED(1, 2)", []Statement{{Kind: KindSessionState, Names: []string{StateLock}}}},
		{"SELECT pg_advisory_xact_lock(1)", nil},
		{"SELECT pg_advisory_lock FROM t", nil},
		{"CREATE TEMP TABLE t (a int)", []Statement{{Kind: KindSessionState, Names: []string{StateTemp}}}},
		{"create global temporary table t (a int) on commit delete rows", []Statement{{Kind: KindSessionState, Names: []string{StateTemp}}}},
		{"CREATE TEMP TABLE t ON COMMIT DROP AS SELECT 1", nil},
		{"CREATE TEMPORARY TABLE t (a int) ON COMMIT DROP", nil},
		{"CREATE TABLE t (a int)", nil},
		{"SELECT 1 AS a INTO TEMP t", []Statement{{Kind: KindSessionState, Names: []string{StateTemp}}}},
		{"DECLARE c CURSOR WITH HOLD FOR SELECT 1", []Statement{{Kind: KindSessionState, Names: []string{StateHoldCursor}}}},
		{"DECLARE c NO SCROLL CURSOR WITHOUT HOLD FOR WITH hold AS (SELECT 1) SELECT * FROM hold", nil},
		{"SELECT set_config(lower('SEARCH_PATH'), 'evil', false)", []Statement{{Kind: KindSessionState, Names: []string{StateSetConfig}}}},
		{"SELECT set_config('search' || '_path', 'evil', false)", []Statement{{Kind: KindSessionState, Names: []string{StateSetConfig}}}},
		{"SELECT set_config($1, $2, false)", []Statement{{Kind: KindSessionState, Names: []string{StateSetConfig}}}},
		{"SELECT set_config($1, $2, true)", nil},
	}
	for _, tc := range cases {
		got := analyze(tc.sql, true, nil, nil).Statements
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%q:\n got %+v\nwant %+v", tc.sql, got, tc.want)
		}
	}
}
