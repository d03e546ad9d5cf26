package proxy_test

import (
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/lib/pq"

	"github.com/pgrouter/pgrouter/sqlstate"
)

// TestRoutingSplit: a split call (PL/Proxy's SPLIT) sends each element of
// its arrays to the shard of its key element, once per shard, and the
// results come back as one; PostgreSQL's hashtext is the oracle. Arrays
// come as pgx's binary parameters, its simple protocol's '{...}' literals,
// lib/pq's text parameters and ARRAY[...] in the text.
func TestRoutingSplit(t *testing.T) {
	p := startRouting(t, proxyOpts{size: 4})
	ctx := testContext(t, 2*time.Minute)
	conn := p.connect(t, ctx)
	host, port := p.hostPort()
	db, err := sql.Open("postgres", fmt.Sprintf("host=%s port=%s user=postgres dbname=main sslmode=disable", host, port))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()

	names := func(prefix string, n int) ([]string, []string) {
		var ns, es []string
		for i := range n {
			k := prefix + userName(i)
			ns, es = append(ns, k), append(es, email(k))
		}
		return ns, es
	}
	// checkAdded checks "name@shard" rows against hashtext.
	checkAdded := func(what string, got, want []string) {
		t.Helper()
		if len(got) != len(want) {
			t.Fatalf("%s: %d rows, want %d", what, len(got), len(want))
		}
		slices.Sort(got)
		for _, row := range got {
			name, shard, _ := strings.Cut(row, "@")
			if !slices.Contains(want, name) || shard != expectShard(t, name) {
				t.Fatalf("%s: %s added on %s, hashtext says %s", what, name, shard, expectShard(t, name))
			}
		}
	}
	collect := func(rows pgx.Rows, err error) []string {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		out, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		return out
	}

	// Writes: every element on its shard, one call per shard.
	ns, es := names("x-", 120)
	checkAdded("pgx extended", collect(conn.Query(ctx, "SELECT * FROM rt_add_users($1, $2)", ns, es)), ns)
	ns, es = names("y-", 120)
	checkAdded("pgx simple", collect(conn.Query(ctx, "SELECT * FROM rt_add_users($1, $2)", pgx.QueryExecModeSimpleProtocol, ns, es)), ns)
	ns, es = names("z-", 60)
	rows, err := db.QueryContext(ctx, "SELECT * FROM rt_add_users($1, $2)", pq.Array(ns), pq.Array(es))
	if err != nil {
		t.Fatal(err)
	}
	var added []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		added = append(added, s)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	checkAdded("lib/pq", added, ns)
	quoted := []string{"'w-a'", "'w-b'", "'w-c'", "'w-d'", "'w-e'", "'w-f'"}
	emails := []string{"'1'", "'2'", "'3'", "'4'", "'5'", "'6'"}
	checkAdded("ARRAY[...] in the text", collect(conn.Query(ctx, "SELECT * FROM rt_add_users(ARRAY["+strings.Join(quoted, ",")+"], ARRAY["+strings.Join(emails, ",")+"])", pgx.QueryExecModeSimpleProtocol)),
		[]string{"w-a", "w-b", "w-c", "w-d", "w-e", "w-f"})
	for i := range allShards {
		if n := misplaced(t, i, "rt_users", "username", "hashtext"); n != 0 {
			t.Fatalf("shard s%d holds %d users of other shards", i, n)
		}
	}

	// Reads: all found, each from its own shard.
	all, _ := names("x-", 120)
	want := append(slices.Clone(all), "x-nobody")
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeExec, pgx.QueryExecModeSimpleProtocol} {
		rows, err := conn.Query(ctx, "SELECT username || '@' || shard FROM rt_get_users($1)", mode, want)
		checkAdded(fmt.Sprintf("rt_get_users (%v)", mode), collect(rows, err), all)
	}

	// A merge reduces the shards' answers to one row: every name found once.
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeSimpleProtocol} {
		var n int64
		if err := conn.QueryRow(ctx, "SELECT rt_count_names($1)", mode, want).Scan(&n); err != nil || n != int64(len(all)) {
			t.Fatalf("rt_count_names (merge: sum, %v) = %d, %v; want %d", mode, n, err, len(all))
		}
	}

	// In a transaction: a read runs READ ONLY on each shard and leaves the
	// transaction free; a write over several shards is refused, over one
	// it pins the transaction there like any call.
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	checkAdded("rt_get_users in a transaction", collect(tx.Query(ctx, "SELECT username || '@' || shard FROM rt_get_users($1)", want)), all)
	_, err = tx.Exec(ctx, "SELECT * FROM rt_add_users($1, $2)", []string{"t-1", "t-2", "t-3", "t-4", "t-5"}, []string{"1", "2", "3", "4", "5"})
	if code(err) != sqlstate.FeatureNotSupported || !strings.Contains(err.Error(), "cannot run inside a transaction") {
		t.Fatalf("a split write over several shards in a transaction: %v", err)
	}
	_ = tx.Rollback(ctx)
	one := []string{"t-one"}
	for i := 0; len(one) < 3; i++ {
		if k := fmt.Sprintf("t-one%d", i); expectShard(t, k) == expectShard(t, one[0]) {
			one = append(one, k)
		}
	}
	tx, err = conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	checkAdded("a one-shard split in a transaction", collect(tx.Query(ctx, "SELECT * FROM rt_add_users($1, $2)", one, one)), one)
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}

	// Bad arrays get clear errors, and the connection goes on.
	for _, tc := range []struct {
		names, emails any
		code, msg     string
	}{
		{[]string{"a", "b"}, []string{"a"}, sqlstate.InvalidParameterValue, "identical lengths"},
		{[]*string{nil, ptr("b")}, []string{"a", "b"}, sqlstate.NullValueNotAllowed, "NULL"},
		{[][]string{{"a"}, {"b"}}, [][]string{{"a"}, {"b"}}, sqlstate.FeatureNotSupported, "multi-dimensional"},
	} {
		_, err := conn.Exec(ctx, "SELECT * FROM rt_add_users($1, $2)", tc.names, tc.emails)
		if code(err) != tc.code || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("rt_add_users(%v, %v): %v; want %s %q", tc.names, tc.emails, err, tc.code, tc.msg)
		}
	}
	// Empty and NULL arrays: one call on any shard, no rows.
	for _, arg := range []any{[]string{}, nil} {
		if got := collect(conn.Query(ctx, "SELECT username FROM rt_get_users($1)", arg)); len(got) != 0 {
			t.Errorf("rt_get_users(%v): %q", arg, got)
		}
	}
	// Each shard runs the whole statement on its elements, as for run_on
	// all: an aggregate around the call counts per shard (through PL/Proxy
	// it would count the combined rows: docs/routing.md says so).
	if got := collect(conn.Query(ctx, "SELECT count(*)::text FROM rt_get_users($1)", all[:10])); len(got) < 2 {
		t.Fatalf("after the errors: %q, want one count per shard", got)
	}
}

// TestRoutingTarget: a function declared with a target (PL/Proxy's
// TARGET) is called by its own name and runs the target on the key's
// shard, whatever the protocol; pgrouter check-style signature loading
// reads the target's.
func TestRoutingTarget(t *testing.T) {
	p := startRouting(t, proxyOpts{size: 4})
	ctx := testContext(t, time.Minute)
	conn := p.connect(t, ctx)
	for i := range 40 {
		k := "tg-" + userName(i)
		if _, err := conn.Exec(ctx, "SELECT rt_add_user($1, $2)", k, email(k)); err != nil {
			t.Fatal(err)
		}
		for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeDescribeExec, pgx.QueryExecModeSimpleProtocol} {
			var got string
			if err := conn.QueryRow(ctx, "SELECT rt_lookup($1)", mode, k).Scan(&got); err != nil || got != email(k) {
				t.Fatalf("rt_lookup(%s) (%v) = %q, %v", k, mode, got, err)
			}
		}
		// Named statements through the extended protocol: prepared under
		// the rewritten text.
		var got string
		if err := conn.QueryRow(ctx, "SELECT public.rt_lookup(i_username => $1) AS email", k).Scan(&got); err != nil || got != email(k) {
			t.Fatalf("public.rt_lookup(i_username => %s) = %q, %v", k, got, err)
		}
	}
	// The function does not exist on the shards under its own name: only
	// the rewrite reaches them.
	for i := range allShards {
		if n := shardQueryInt(t, i, "SELECT count(*) FROM pg_proc WHERE proname = 'rt_lookup'"); n != 0 {
			t.Fatalf("shard s%d has rt_lookup", i)
		}
	}
}

func ptr[T any](v T) *T { return &v }

// code returns an error's SQLSTATE.
func code(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}
