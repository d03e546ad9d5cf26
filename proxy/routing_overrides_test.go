package proxy_test

import (
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestRoutingOverridesAndTransactions covers SET pgrouter.shard/key, the
// comment override, partition and any routing, a transaction pinned by its
// first call with its SET LOCAL carried along, and the error of a BEGIN
// that the shard refuses.
func TestRoutingOverridesAndTransactions(t *testing.T) {
	for _, mode := range []string{"transaction", "session"} {
		t.Run(mode, func(t *testing.T) {
			p := startRouting(t, proxyOpts{mode: mode, size: 2})
			ctx := testContext(t, time.Minute)
			conn := p.connect(t, ctx)
			one := func(sql string, args ...any) string {
				t.Helper()
				var v string
				if err := conn.QueryRow(ctx, sql, args...).Scan(&v); err != nil {
					t.Fatalf("%s: %v", sql, err)
				}
				return v
			}
			must := func(sql string) {
				t.Helper()
				if _, err := conn.Exec(ctx, sql); err != nil {
					t.Fatalf("%s: %v", sql, err)
				}
			}
			must("SET pgrouter.shard = 's2'")
			if got := one("SELECT name FROM rt_shard"); got != "s2" {
				t.Fatalf("SET pgrouter.shard: ran on %s", got)
			}
			if got := one("SHOW pgrouter.shard", pgx.QueryExecModeSimpleProtocol); got != "s2" {
				t.Fatalf("SHOW pgrouter.shard = %q", got)
			}
			rows, _ := conn.Query(ctx, "SET pgrouter.shard = 's1'") // Query always uses the extended protocol
			rows.Close()
			if err := rows.Err(); pgCode(err) != "0A000" {
				t.Fatalf("SET pgrouter.shard through the extended protocol: %v; want 0A000", err)
			}
			if got := one("/* pgrouter: shard=s3 */ SELECT name FROM rt_shard"); got != "s3" {
				t.Fatalf("comment override ran on %s", got)
			}
			must("RESET pgrouter.shard")
			must("SET pgrouter.key = 'user42'")
			if got, want := one("SELECT name FROM rt_shard"), expectShard(t, "user42"); got != want {
				t.Fatalf("SET pgrouter.key ran on %s, want %s", got, want)
			}
			must("RESET pgrouter.key")
			if got := one("/* pgrouter: key=user7 */ SELECT name FROM rt_shard"); got != expectShard(t, "user7") {
				t.Fatalf("key comment ran on %s", got)
			}
			if got := one("SELECT rt_by_part(5)"); got != "s1" {
				t.Fatalf("partition 5 ran on %s, want s1", got)
			}
			if got := one("SELECT rt_by_part($1)", 13); got != "s3" {
				t.Fatalf("partition 13 ran on %s, want s3", got)
			}
			if got := one("SELECT rt_any()"); !regexp.MustCompile(`^s[0-3]$`).MatchString(got) {
				t.Fatalf("any ran on %q", got)
			}
			// An int8 key routes by value: literal, text constant, binary
			// parameter and text parameter all reach hashint8(42)'s shard.
			want42 := "s" + strconv.FormatInt(shardQueryInt(t, 0, "SELECT (hashint8(42) & 15) / 4"), 10)
			for _, q := range []struct {
				sql  string
				args []any
			}{
				{"SELECT rt_where_no(42)", nil},
				{"SELECT rt_where_no('42')", nil},
				{"SELECT rt_where_no($1)", []any{int64(42)}},                                  // binary int8
				{"SELECT rt_where_no($1::text::bigint)", []any{"42"}},                         // a text parameter, cast
				{"SELECT rt_where_no($1)", []any{pgx.QueryExecModeSimpleProtocol, int64(42)}}, // inlined by pgx
				{"SELECT rt_where_no(i_no => $1)", []any{pgx.QueryExecModeExec, "42"}},        // text format
			} {
				if got := one(q.sql, q.args...); got != want42 {
					t.Fatalf("%s %v ran on %s, want %s", q.sql, q.args, got, want42)
				}
			}

			// A transaction pinned by its first routed statement.
			key := "pinned-user"
			want := expectShard(t, key)
			must("BEGIN")
			must("SET LOCAL statement_timeout = '7s'")
			if got := one("SELECT rt_add_user($1, 'p@x')", key); got != want {
				t.Fatalf("pinned insert ran on %s, want %s", got, want)
			}
			if got := one("SHOW statement_timeout"); got != "7s" {
				t.Fatalf("SET LOCAL before the pin: statement_timeout = %q", got)
			}
			if got := one("SELECT name FROM rt_shard"); got != want {
				t.Fatalf("unrouted statement in the pinned transaction ran on %s", got)
			}
			must("COMMIT")
			if n := userCount(t, key); n != 1 {
				t.Fatalf("committed user found %d times", n)
			}
			if got := one("SHOW statement_timeout"); got != "0" {
				t.Fatalf("SET LOCAL outlived its transaction: %q", got)
			}
			// ROLLBACK of a pinned transaction undoes it.
			must("BEGIN")
			one("SELECT rt_add_user($1, 'q@x')", "rolled-back")
			must("ROLLBACK")
			if n := userCount(t, "rolled-back"); n != 0 {
				t.Fatal("rolled back insert is there")
			}
			// An unpinned transaction commits locally; a SET in it survives COMMIT.
			must("BEGIN")
			must("SET application_name = 'routed-app'")
			must("COMMIT")
			if got := one("SHOW application_name"); got != "routed-app" {
				t.Fatalf("SET in a committed transaction: application_name = %q", got)
			}
			// A BEGIN the shard refuses fails at its first statement, with its own error.
			must("BEGIN ISOLATION LEVEL sideways")
			_, err := conn.Exec(ctx, "SELECT rt_where('x')")
			if pgCode(err) != "42601" {
				t.Fatalf("bad BEGIN: %v; want 42601", err)
			}
			must("ROLLBACK")
			if got := one("SELECT rt_where($1)", "x"); got != expectShard(t, "x") {
				t.Fatalf("after bad BEGIN: %s", got)
			}
			// An error in an unpinned transaction aborts it, as PostgreSQL would.
			must("BEGIN")
			if _, err := conn.Exec(ctx, "SELECT rt_where(NULL)"); pgCode(err) != "22004" {
				t.Fatalf("NULL key: %v", err)
			}
			if _, err := conn.Exec(ctx, "SELECT rt_where('x')"); pgCode(err) != "25P02" {
				t.Fatalf("in an aborted transaction: %v; want 25P02", err)
			}
			if _, err := conn.Exec(ctx, "COMMIT"); err != nil {
				t.Fatal(err)
			}
		})
	}
}
