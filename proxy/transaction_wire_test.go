package proxy_test

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgrouter/pgrouter/proxy"
)

// Golden wire tests: the message sequences drivers send for a transaction
// (recorded against PostgreSQL 15, see shared DRIVERS.md), sent by hand to
// plain PostgreSQL and to pgrouter on the four-shard routing cluster. Each
// step's replies must have the same shape from both (row values differ:
// rt_add_user returns the name of the shard it ran on), so pgrouter's
// unpinned transactions are held to PostgreSQL's own behaviour.

// wireStep is a group of frontend messages and the replies expected back.
type wireStep struct {
	send []pgproto3.FrontendMessage
	// want is the describe() of the replies, rows shown as "Row".
	want string
	// sameRows: the rows' values must equal PostgreSQL's too.
	sameRows bool
	// replies is how many replies to read when the step ends with Flush
	// (no ReadyForQuery); 0 reads up to ReadyForQuery.
	replies int
}

var rowRE = regexp.MustCompile(`Row\([^)]*\)`)

// runSteps runs the steps on a fresh connection to addr, returning each
// step's replies with row values hidden.
func runSteps(t *testing.T, addr, database string, steps []wireStep) (shapes []string, rows [][]string) {
	t.Helper()
	c := dialRaw(t, addr)
	c.login(map[string]string{"user": "postgres", "database": database})
	for i, st := range steps {
		c.send(st.send...)
		var got []pgproto3.BackendMessage
		if st.replies > 0 {
			for range st.replies {
				m, err := c.receive()
				if err != nil {
					t.Fatalf("step %d: %v after %s", i, err, describe(got))
				}
				got = append(got, m)
			}
		} else {
			got = c.untilReady()
		}
		d := describe(got)
		rows = append(rows, rowRE.FindAllString(d, -1))
		shapes = append(shapes, rowRE.ReplaceAllString(d, "Row"))
	}
	return shapes, rows
}

func bindText(stmt string, values ...string) *pgproto3.Bind {
	b := &pgproto3.Bind{PreparedStatement: stmt}
	for _, v := range values {
		b.Parameters = append(b.Parameters, []byte(v))
	}
	return b
}

func simpleStep(sql, want string) wireStep {
	return wireStep{send: []pgproto3.FrontendMessage{&pgproto3.Query{String: sql}}, want: want}
}

// extendedStep is psycopg 3's grouping: an unnamed statement parsed, bound,
// described and executed, then Sync.
func extendedStep(sql string, want string, values ...string) wireStep {
	return wireStep{send: []pgproto3.FrontendMessage{
		&pgproto3.Parse{Query: sql}, bindText("", values...), &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{},
	}, want: want}
}

func TestDriverSequencesGolden(t *testing.T) {
	p := startRouting(t, proxyOpts{size: 2})
	key := func(name string) string { return "golden-" + name }
	const (
		add    = "select rt_add_user($1, $2)"
		get    = "select email from rt_get_user($1)"
		begin  = "ParseComplete BindComplete NoData Complete(BEGIN) Ready(T)"
		oneRow = "ParseComplete BindComplete RowDescription Row Complete(SELECT 1) Ready(T)"
	)
	sequences := map[string][]wireStep{
		"psycopg3": {
			extendedStep("BEGIN", begin),
			extendedStep("SET LOCAL statement_timeout = '5s'", "ParseComplete BindComplete NoData Complete(SET) Ready(T)"),
			extendedStep("SAVEPOINT a", "ParseComplete BindComplete NoData Complete(SAVEPOINT) Ready(T)"),
			extendedStep("SET LOCAL statement_timeout = '7s'", "ParseComplete BindComplete NoData Complete(SET) Ready(T)"),
			extendedStep("ROLLBACK TO SAVEPOINT a", "ParseComplete BindComplete NoData Complete(ROLLBACK) Ready(T)"),
			extendedStep("RELEASE a", "ParseComplete BindComplete NoData Complete(RELEASE) Ready(T)"),
			extendedStep("select typname from pg_catalog.pg_type where oid = 25", oneRow),
			extendedStep(add, oneRow, key("p1"), "e"),
			extendedStep(get, oneRow, key("p1")),
			func() wireStep {
				st := extendedStep("SHOW statement_timeout", "ParseComplete BindComplete RowDescription Row Complete(SHOW) Ready(T)")
				st.sameRows = true // 5s: the SET LOCAL kept, the one rolled back to the savepoint not
				return st
			}(),
			extendedStep("COMMIT", "ParseComplete BindComplete NoData Complete(COMMIT) Ready(I)"),
			extendedStep("BEGIN", begin),
			extendedStep(add, oneRow, key("p2"), "e"),
			extendedStep("ROLLBACK", "ParseComplete BindComplete NoData Complete(ROLLBACK) Ready(I)"),
			extendedStep("BEGIN ISOLATION LEVEL REPEATABLE READ", begin),
			extendedStep("COMMIT", "ParseComplete BindComplete NoData Complete(COMMIT) Ready(I)"),
		},
		"jdbc": {
			{send: []pgproto3.FrontendMessage{
				&pgproto3.Parse{Name: "S_1", Query: "BEGIN"}, bindText("S_1"), &pgproto3.Execute{},
				&pgproto3.Parse{Name: "S_2", Query: add}, bindText("S_2", key("j1"), "e"), &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{},
				&pgproto3.Sync{},
			}, want: "ParseComplete BindComplete Complete(BEGIN) ParseComplete BindComplete RowDescription Row Complete(SELECT 1) Ready(T)"},
			{send: []pgproto3.FrontendMessage{&pgproto3.Parse{Name: "S_3", Query: "COMMIT"}, bindText("S_3"), &pgproto3.Execute{}, &pgproto3.Sync{}},
				want: "ParseComplete BindComplete Complete(COMMIT) Ready(I)"},
			{send: []pgproto3.FrontendMessage{
				bindText("S_1"), &pgproto3.Execute{}, bindText("S_2", key("j2"), "e"), &pgproto3.Execute{}, &pgproto3.Sync{},
			}, want: "BindComplete Complete(BEGIN) BindComplete Row Complete(SELECT 1) Ready(T)"},
			{send: []pgproto3.FrontendMessage{bindText("S_3"), &pgproto3.Execute{}, &pgproto3.Sync{}},
				want: "BindComplete Complete(COMMIT) Ready(I)"},
		},
		"asyncpg": {
			simpleStep("BEGIN;", "Complete(BEGIN) Ready(T)"),
			{send: []pgproto3.FrontendMessage{&pgproto3.Parse{Name: "__asyncpg_stmt_1__", Query: add}, &pgproto3.Describe{ObjectType: 'S', Name: "__asyncpg_stmt_1__"}, &pgproto3.Flush{}},
				want: "ParseComplete ParameterDescription RowDescription", replies: 3},
			{send: []pgproto3.FrontendMessage{bindText("__asyncpg_stmt_1__", key("a1"), "e"), &pgproto3.Execute{}, &pgproto3.Sync{}},
				want: "BindComplete Row Complete(SELECT 1) Ready(T)"},
			simpleStep("COMMIT;", "Complete(COMMIT) Ready(I)"),
			{send: []pgproto3.FrontendMessage{&pgproto3.Parse{Name: "__asyncpg_stmt_2__", Query: "select rt_count_users()"}, &pgproto3.Describe{ObjectType: 'S', Name: "__asyncpg_stmt_2__"}, &pgproto3.Flush{}},
				want: "ParseComplete ParameterDescription RowDescription", replies: 3},
			{send: []pgproto3.FrontendMessage{bindText("__asyncpg_stmt_2__"), &pgproto3.Execute{MaxRows: 1}, &pgproto3.Sync{}},
				want: "BindComplete Row PortalSuspended Ready(I)"},
			simpleStep("BEGIN;", "Complete(BEGIN) Ready(T)"),
			{send: []pgproto3.FrontendMessage{bindText("__asyncpg_stmt_2__"), &pgproto3.Execute{}, &pgproto3.Sync{}},
				want: "BindComplete Row Complete(SELECT 1) Ready(T)"},
			simpleStep("ROLLBACK;", "Complete(ROLLBACK) Ready(I)"),
		},
		"node-postgres": {
			simpleStep("BEGIN", "Complete(BEGIN) Ready(T)"),
			extendedStep(add, oneRow, key("n1"), "e"),
			{send: []pgproto3.FrontendMessage{&pgproto3.Parse{Name: "g", Query: get}, bindText("g", key("n1")), &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{}},
				want: oneRow},
			simpleStep("COMMIT", "Complete(COMMIT) Ready(I)"),
		},
	}
	direct := fmt.Sprintf("%s:%d", allShards[0].Host, allShards[0].Port)
	viaPostgres := map[string][]string{}
	postgresRows := map[string][][]string{}
	for name, steps := range sequences {
		viaPostgres[name], postgresRows[name] = runSteps(t, direct, "postgres", steps)
	}
	shardExec(t, 0, "DELETE FROM rt_users WHERE username LIKE 'golden-%'") // keys of every shard
	for name, steps := range sequences {
		t.Run(name, func(t *testing.T) {
			viaPostgres := viaPostgres[name]
			viaRouter, rows := runSteps(t, p.addr, "main", steps)
			for i, st := range steps {
				if st.sameRows && fmt.Sprint(rows[i]) != fmt.Sprint(postgresRows[name][i]) {
					t.Errorf("step %d through pgrouter: rows %v, PostgreSQL: %v", i, rows[i], postgresRows[name][i])
				}
				if viaPostgres[i] != st.want {
					t.Errorf("step %d on PostgreSQL: %s\nwant %s", i, viaPostgres[i], st.want)
				}
				if viaRouter[i] != viaPostgres[i] {
					t.Errorf("step %d through pgrouter: %s\nPostgreSQL: %s", i, viaRouter[i], viaPostgres[i])
				}
			}
		})
	}
	for _, k := range []string{"p1", "j1", "j2", "a1", "n1"} {
		sh := shardIndex(t, key(k))
		if n := shardQueryInt(t, sh, "SELECT count(*) FROM rt_users WHERE username = "+proxy.QuoteLiteral(key(k))); n != 1 {
			t.Errorf("key %s: %d rows on its shard s%d, want 1", key(k), n, sh)
		}
	}
	if n := shardQueryInt(t, shardIndex(t, key("p2")), "SELECT count(*) FROM rt_users WHERE username = "+proxy.QuoteLiteral(key("p2"))); n != 0 {
		t.Error("a rolled-back row was committed")
	}
}

// TestTwoShardTransactionRefusedOnTheWire: whichever protocol, the second
// shard of a transaction gets 0A000, the transaction is aborted (E) as
// PostgreSQL aborts it, and nothing reaches the second shard.
func TestTwoShardTransactionRefusedOnTheWire(t *testing.T) {
	p := startRouting(t, proxyOpts{size: 2})
	a, b := "wire-x0", ""
	for i := 1; b == ""; i++ {
		if k := "wire-x" + strconv.Itoa(i); expectShard(t, k) != expectShard(t, a) {
			b = k
		}
	}
	const add = "select rt_add_user($1, $2)"
	oneRow := "ParseComplete BindComplete RowDescription Row Complete(SELECT 1) Ready(T)"
	shapes, _ := runSteps(t, p.addr, "main", []wireStep{
		extendedStep("BEGIN", "ParseComplete BindComplete NoData Complete(BEGIN) Ready(T)"),
		extendedStep(add, oneRow, a, "e"),
		extendedStep(add, "", b, "e"),
		extendedStep("ROLLBACK", ""),
	})
	if want := "Error(ERROR 0A000: pgrouter: this transaction runs on shard " + expectShard(t, a) + "; the statement belongs to shard " + expectShard(t, b) + ") Ready(E)"; shapes[2] != "ParseComplete "+want {
		t.Errorf("second shard: %s", shapes[2])
	}
	if shapes[3] != "ParseComplete BindComplete NoData Complete(ROLLBACK) Ready(I)" {
		t.Errorf("rollback: %s", shapes[3])
	}
	for _, k := range []string{a, b} {
		if n := shardQueryInt(t, shardIndex(t, k), "SELECT count(*) FROM rt_users WHERE username = "+proxy.QuoteLiteral(k)); n != 0 {
			t.Errorf("%s was written", k)
		}
	}
}

// TestFanoutInUnpinnedTransactionIsReadOnly: a run_on all call before the
// transaction's first routed call runs on every shard in a READ ONLY
// transaction of its own: one that writes fails there (25006, naming the
// shard), aborts the client's transaction as any error would, and changes
// nothing; outside a transaction the same call writes.
func TestFanoutInUnpinnedTransactionIsReadOnly(t *testing.T) {
	p := startRouting(t, proxyOpts{size: 2})
	ctx := testContext(t, time.Minute)
	conn := p.connect(t, ctx)
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, err = tx.Exec(ctx, "select rt_rename_shards($1)", "renamed")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "25006" || !strings.HasPrefix(pgErr.Message, "shard s") {
		t.Fatalf("writing fan-out in an unpinned transaction: %v, want 25006 naming the shard", err)
	}
	if _, err := tx.Exec(ctx, "select rt_where($1)", "k"); !errors.As(err, &pgErr) || pgErr.Code != "25P02" {
		t.Fatalf("after the failed fan-out: %v, want 25P02", err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	for i := range allShards {
		if n := shardQueryInt(t, i, "SELECT count(*) FROM rt_shard WHERE name = 'renamed'"); n != 0 {
			t.Fatalf("shard s%d was written by a read-only fan-out", i)
		}
	}
	var n int64
	if err := conn.QueryRow(ctx, "select rt_rename_shards($1)", "renamed").Scan(&n); err != nil || n != int64(len(allShards)) {
		t.Fatalf("fan-out outside a transaction: %d, %v", n, err)
	}
	for i := range allShards {
		if n := shardQueryInt(t, i, "SELECT count(*) FROM rt_shard WHERE name = 'renamed'"); n != 1 {
			t.Fatalf("shard s%d: the fan-out outside a transaction did not write", i)
		}
	}
}

// TestUnpinnedSavepoints: savepoints before the pin are kept by pgrouter,
// and ROLLBACK TO recovers an unpinned transaction that an error aborted,
// as PostgreSQL would; an unknown savepoint is 3B001.
func TestUnpinnedSavepoints(t *testing.T) {
	p := startRouting(t, proxyOpts{size: 2})
	k := "savepoint-key"
	shapes, _ := runSteps(t, p.addr, "main", []wireStep{
		simpleStep("BEGIN", ""),
		simpleStep("SAVEPOINT a", ""),
		simpleStep("SELECT rt_where(NULL)", ""),
		simpleStep("SELECT 1", ""),
		simpleStep("ROLLBACK TO a", ""),
		simpleStep("RELEASE nope", ""),
		simpleStep("ROLLBACK TO SAVEPOINT a", ""),
		simpleStep("SELECT rt_add_user("+proxy.QuoteLiteral(k)+", 'e')", ""),
		simpleStep("COMMIT", ""),
	})
	want := []string{
		"Complete(BEGIN) Ready(T)",
		"Complete(SAVEPOINT) Ready(T)",
		"Error(ERROR 22004: pgrouter: shard key i_username of public.rt_where is NULL) Ready(E)",
		"Error(ERROR 25P02: current transaction is aborted, commands ignored until end of transaction block) Ready(E)",
		"Complete(ROLLBACK) Ready(T)",
		`Error(ERROR 3B001: savepoint "nope" does not exist) Ready(E)`,
		"Complete(ROLLBACK) Ready(T)",
		"RowDescription Row Complete(SELECT 1) Ready(T)",
		"Complete(COMMIT) Ready(I)",
	}
	for i := range want {
		if shapes[i] != want[i] {
			t.Errorf("step %d: %s\nwant %s", i, shapes[i], want[i])
		}
	}
	if n := shardQueryInt(t, shardIndex(t, k), "SELECT count(*) FROM rt_users WHERE username = "+proxy.QuoteLiteral(k)); n != 1 {
		t.Fatalf("%d rows after ROLLBACK TO and COMMIT, want 1", n)
	}
}

func TestMaybeLocalText(t *testing.T) {
	for q, want := range map[string]bool{
		"BEGIN": true, " begin isolation level serializable": true, "START TRANSACTION": true, "COMMIT": true,
		"end": true, "Rollback to a": true, "SET LOCAL x = 1": true, "reset all": true, "SAVEPOINT a": true,
		"release a": true, "/* c */ BEGIN": true, "-- c\nBEGIN": true,
		"select rt_add_user($1, $2)": false, "insert into t values (1)": false, "": false, "   ": false,
	} {
		if got := proxy.MaybeLocalText([]byte(q)); got != want {
			t.Errorf("%q: %v, want %v", q, got, want)
		}
	}
}
