package proxy

import (
	"reflect"
	"testing"

	"github.com/pgrouter/pgrouter/pool"
	"github.com/pgrouter/pgrouter/router"
	"github.com/pgrouter/pgrouter/shardmap"
)

func TestPlanInfo(t *testing.T) {
	cases := []struct {
		sql  string
		want queryInfo
	}{
		{"DEALLOCATE foo", queryInfo{effects: effStatements, deallocate: "foo"}},
		{`  deallocate prepare "Foo" ;  `, queryInfo{effects: effStatements, deallocate: "Foo"}},
		{"SELECT 1; DEALLOCATE ALL", queryInfo{effects: effStatements}},
		{"DEALLOCATE a; SELECT 1", queryInfo{effects: effStatements}},
		{"discard all", queryInfo{effects: effStatements | effResetAll}},
		{"RESET ALL", queryInfo{effects: effResetAll}},
		{"PREPARE pgr_0123(int) AS SELECT 1", queryInfo{effects: effReserved}},
		{"EXECUTE PGR_x", queryInfo{effects: effReserved}},
		{"DEALLOCATE pgr_x", queryInfo{effects: effStatements | effReserved, deallocate: "pgr_x"}},
		{"PREPARE mine AS SELECT 1", queryInfo{}},
		{"SELECT 'DEALLOCATE ALL'", queryInfo{free: true}},
		{"SET search_path = a; RESET TimeZone; SELECT set_config('x.y', '1', false)", queryInfo{settings: []string{"search_path", "timezone", "x.y"}, resets: []string{"timezone"}}},
		{"SET LOCAL work_mem = '1MB'", queryInfo{}},
	}
	r := router.New(&shardmap.Cluster{Name: "t"})
	for _, tc := range cases {
		if got := planInfo(r.Plan(tc.sql, true)); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%q: got %+v want %+v", tc.sql, got, tc.want)
		}
	}
}

func TestPlanInfoDoesNotAllocateForOrdinaryQueries(t *testing.T) {
	q := "SELECT abalance FROM pgbench_accounts WHERE aid = $1"
	r := router.New(&shardmap.Cluster{Name: "t"})
	if n := testing.AllocsPerRun(100, func() { planInfo(r.Plan(q, true)) }); n != 0 {
		t.Fatalf("%v allocations per ordinary query", n)
	}
}

func TestSettingsSQL(t *testing.T) {
	var applied, want pool.ParamState
	applied.Set("application_name", "old")
	applied.Set("search_path", "a")
	want.Set("application_name", "it's")
	want.Set("DateStyle", `ISO, MDY`)
	want.Set("search_path", "a")
	got := settingsSQL(&applied, &want)
	const expect = `SELECT pg_catalog.set_config(E'application_name', E'it''s', false), pg_catalog.set_config(E'datestyle', E'ISO, MDY', false)`
	if got != expect {
		t.Fatalf("got  %s\nwant %s", got, expect)
	}
	want.Delete("search_path")
	if got := settingsSQL(&applied, &want); got[:len(`RESET "search_path"; `)] != `RESET "search_path"; ` {
		t.Fatalf("reset missing: %s", got)
	}
	if quoteLiteral(`a\b`) != `E'a\\b'` {
		t.Fatal("backslash not escaped")
	}
}

func TestParamStateFingerprint(t *testing.T) {
	var a, b pool.ParamState
	a.Set("x", "1")
	a.Set("y", "2")
	b.Set("Y", "2")
	b.Set("x", "1")
	if a.Fingerprint() != b.Fingerprint() {
		t.Fatal("same settings, different fingerprints")
	}
	b.Set("x", "3")
	if a.Fingerprint() == b.Fingerprint() {
		t.Fatal("different settings, same fingerprint")
	}
	b.Set("x", "1")
	if a.Fingerprint() != b.Fingerprint() {
		t.Fatal("fingerprint not restored")
	}
}

func TestParseOptions(t *testing.T) {
	got, err := parseOptions(`-c search_path=a,b --statement-timeout=5s -cwork_mem=4MB -c application_name=with\ space`)
	if err != nil {
		t.Fatal(err)
	}
	want := [][2]string{{"search_path", "a,b"}, {"statement_timeout", "5s"}, {"work_mem", "4MB"}, {"application_name", "with space"}}
	if len(got) != len(want) {
		t.Fatalf("%q", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("%q", got)
		}
	}
	if _, err := parseOptions("-x"); err == nil {
		t.Fatal("unsupported option accepted")
	}
}
