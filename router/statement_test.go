package router

import (
	"reflect"
	"testing"
)

func TestScan(t *testing.T) {
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
	}
	for _, tc := range cases {
		var got []Statement
		Scan(tc.sql, true, func(s Statement) { got = append(got, s) })
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%q:\n got %+v\nwant %+v", tc.sql, got, tc.want)
		}
	}
}

func TestScanDoesNotAllocateForOrdinaryQueries(t *testing.T) {
	q := "SELECT abalance FROM pgbench_accounts WHERE aid = $1; UPDATE t SET x = 1"
	if n := testing.AllocsPerRun(100, func() { Scan(q, true, func(Statement) {}) }); n != 0 {
		t.Fatalf("%v allocations", n)
	}
}
