package proxy_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"golang.org/x/sync/errgroup"

	"github.com/pgrouter/pgrouter/proxy"
)

// The routing tests run a cluster of four real shards with 16 partitions
// (four per shard) hashed with hashtext, so PostgreSQL itself is the oracle
// for where a key belongs: on shard i, (hashtext(key) & 15) / 4 = i.

const routingSchema = `
DROP TABLE IF EXISTS rt_users, rt_counters, rt_shard CASCADE;
CREATE TABLE rt_shard AS SELECT '%[1]s'::text AS name;
CREATE TABLE rt_users (username text PRIMARY KEY, email text NOT NULL);
CREATE TABLE rt_counters (no bigint PRIMARY KEY, visits bigint NOT NULL DEFAULT 0);
CREATE OR REPLACE FUNCTION rt_add_user(i_username text, i_email text) RETURNS text LANGUAGE sql AS
  $$ INSERT INTO rt_users (username, email) VALUES (i_username, i_email) RETURNING (SELECT name FROM rt_shard) $$;
CREATE OR REPLACE FUNCTION rt_get_user(i_username text, OUT username text, OUT email text, OUT shard text) RETURNS SETOF record LANGUAGE sql AS
  $$ SELECT u.username, u.email, s.name FROM rt_users u, rt_shard s WHERE u.username = i_username $$;
CREATE OR REPLACE FUNCTION rt_where(i_username text) RETURNS text LANGUAGE sql AS $$ SELECT name FROM rt_shard $$;
CREATE OR REPLACE FUNCTION rt_where_no(i_no bigint) RETURNS text LANGUAGE sql AS $$ SELECT name FROM rt_shard $$;
CREATE OR REPLACE FUNCTION rt_add_counter(i_no bigint) RETURNS void LANGUAGE sql AS $$ INSERT INTO rt_counters (no) VALUES (i_no) $$;
CREATE OR REPLACE FUNCTION rt_visit(i_no bigint) RETURNS bigint LANGUAGE sql AS
  $$ UPDATE rt_counters SET visits = visits + 1 WHERE no = i_no RETURNING visits $$;
CREATE OR REPLACE FUNCTION rt_count_users() RETURNS bigint LANGUAGE sql AS $$ SELECT count(*) FROM rt_users $$;
CREATE OR REPLACE FUNCTION rt_total_visits() RETURNS numeric LANGUAGE sql AS $$ SELECT coalesce(sum(visits), 0) FROM rt_counters $$;
CREATE OR REPLACE FUNCTION rt_list_users() RETURNS SETOF text LANGUAGE sql AS $$ SELECT username FROM rt_users ORDER BY username $$;
CREATE OR REPLACE FUNCTION rt_all_have_users() RETURNS boolean LANGUAGE sql AS $$ SELECT count(*) > 0 FROM rt_users $$;
CREATE OR REPLACE FUNCTION rt_fail_on(i_shard text) RETURNS int LANGUAGE plpgsql AS
  $$ BEGIN IF (SELECT name FROM rt_shard) = i_shard THEN RAISE EXCEPTION 'boom on %%', i_shard USING ERRCODE = '22012'; END IF; RETURN 1; END $$;
CREATE OR REPLACE FUNCTION rt_by_part(i_part int) RETURNS text LANGUAGE sql AS $$ SELECT name FROM rt_shard $$;
CREATE OR REPLACE FUNCTION rt_any() RETURNS text LANGUAGE sql AS $$ SELECT name FROM rt_shard $$;
CREATE OR REPLACE FUNCTION rt_rows(i_n int, i_slow text, i_sleep float8) RETURNS SETOF text LANGUAGE plpgsql AS
  $$ BEGIN IF (SELECT name FROM rt_shard) = i_slow THEN PERFORM pg_sleep(i_sleep); END IF;
     RETURN QUERY SELECT repeat('x', 1000) FROM generate_series(1, i_n); END $$;
CREATE OR REPLACE FUNCTION rt_sum_series(i_n int) RETURNS SETOF bigint LANGUAGE sql AS $$ SELECT generate_series(1, i_n)::bigint $$;
CREATE OR REPLACE FUNCTION rt_rename_shards(i_name text) RETURNS bigint LANGUAGE sql AS $$ UPDATE rt_shard SET name = i_name; SELECT 1::bigint $$;
CREATE OR REPLACE FUNCTION rt_get_users(i_names text[], OUT username text, OUT shard text) RETURNS SETOF record LANGUAGE sql AS
  $$ SELECT u.username, s.name FROM rt_users u, rt_shard s WHERE u.username = ANY(i_names) $$;
CREATE OR REPLACE FUNCTION rt_add_users(i_names text[], i_emails text[]) RETURNS SETOF text LANGUAGE sql AS
  $$ INSERT INTO rt_users (username, email) SELECT * FROM unnest(i_names, i_emails) RETURNING username || '@' || (SELECT name FROM rt_shard) $$;
CREATE OR REPLACE FUNCTION rt_count_names(i_names text[]) RETURNS bigint LANGUAGE sql AS
  $$ SELECT count(*) FROM rt_users WHERE username = ANY(i_names) $$;
CREATE OR REPLACE FUNCTION rt_user_impl(i_username text) RETURNS text LANGUAGE sql AS $$ SELECT email FROM rt_users WHERE username = i_username $$;
`

const routingFunctions = `functions:
  - {name: rt_add_user, key: i_username}
  - {name: rt_get_user, key: i_username}
  - {name: rt_where, key: i_username}
  - {name: rt_where_no, key: 1}
  - {name: rt_add_counter, key: i_no}
  - {name: rt_visit, key: i_no}
  - {name: rt_count_users, run_on: all, merge: sum}
  - {name: rt_total_visits, run_on: all, merge: sum}
  - {name: rt_list_users, run_on: all}
  - {name: rt_all_have_users, run_on: all, merge: bool_and}
  - {name: rt_fail_on, run_on: all}
  - {name: rt_by_part, run_on: partition, key: i_part}
  - {name: rt_any, run_on: any}
  - {name: rt_rename_shards, run_on: all, merge: sum}
  - {name: rt_rows, run_on: all}
  - {name: rt_sum_series, run_on: all, merge: sum}
  - {name: rt_get_users, key: i_names, split: [i_names], read_only: true}
  - {name: rt_add_users, key: i_names, split: [i_names, i_emails]}
  - {name: rt_lookup, key: i_username, target: rt_user_impl}
  - {name: rt_count_names, key: i_names, split: [i_names], merge: sum}
`

// startRouting creates the routing schema on the four shards and starts a
// proxy over them.
func startRouting(t *testing.T, o proxyOpts) *testProxy {
	t.Helper()
	for i := range allShards {
		shardExec(t, i, fmt.Sprintf(routingSchema, "s"+strconv.Itoa(i)))
	}
	o.servers = allShards
	o.partitions = 16
	o.hash = "hashtext"
	if o.defaultRoute == "" {
		o.defaultRoute = "error"
	}
	o.topLevel += routingFunctions
	return startProxy(t, o)
}

// misplaced counts a shard's rows whose key hashes to another shard.
func misplaced(t *testing.T, i int, table, key, hashFn string) int64 {
	return shardQueryInt(t, i, fmt.Sprintf("SELECT count(*) FROM %s WHERE (%s(%s) & 15) / 4 <> %d", table, hashFn, key, i))
}

func userName(i int) string {
	switch i % 3 {
	case 1:
		return fmt.Sprintf("ユーザー%d", i)
	case 2:
		return fmt.Sprintf("Zoë-%d", i)
	}
	return fmt.Sprintf("user%d", i)
}

// TestRoutingPlacesEveryKey inserts 10,000 users by key through pgx (in its
// default statement-cache mode), then checks on the shards themselves that
// each landed where PostgreSQL's hashtext puts it, finds every one again
// through pgx, lib/pq and psql, and counts them with a run_on all call.
func TestRoutingPlacesEveryKey(t *testing.T) {
	p := startRouting(t, proxyOpts{size: 4})
	ctx := testContext(t, 3*time.Minute)
	const users = 10000
	overUsers(t, ctx, p, users, func(ctx context.Context, conn *pgx.Conn, i int) error {
		var shard string
		if err := conn.QueryRow(ctx, "SELECT rt_add_user($1, $2)", userName(i), fmt.Sprintf("u%d@example.com", i)).Scan(&shard); err != nil {
			return fmt.Errorf("add %s: %w", userName(i), err)
		}
		return nil
	})
	var total int64
	for i := range allShards {
		n := shardQueryInt(t, i, "SELECT count(*) FROM rt_users")
		if n == 0 {
			t.Errorf("shard %d got no users", i)
		}
		total += n
		if bad := misplaced(t, i, "rt_users", "username", "hashtext"); bad != 0 {
			t.Errorf("shard %d holds %d users that hashtext places elsewhere", i, bad)
		}
	}
	if total != users {
		t.Fatalf("shards hold %d users, want %d", total, users)
	}

	// Every user is found again, on the shard hashtext names.
	overUsers(t, ctx, p, users, func(ctx context.Context, conn *pgx.Conn, i int) error {
		var name, email, shard string
		if err := conn.QueryRow(ctx, "SELECT username, email, shard FROM rt_get_user(i_username => $1)", userName(i)).Scan(&name, &email, &shard); err != nil {
			return fmt.Errorf("get %s: %w", userName(i), err)
		}
		if name != userName(i) || email != fmt.Sprintf("u%d@example.com", i) {
			return fmt.Errorf("get %s: got %s %s", userName(i), name, email)
		}
		return nil
	})

	// lib/pq: prepared statements and one-off queries.
	host, port := p.hostPort()
	db, err := sql.Open("postgres", fmt.Sprintf("host=%s port=%s user=postgres dbname=main sslmode=disable", host, port))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	stmt, err := db.PrepareContext(ctx, "SELECT email FROM rt_get_user($1)")
	if err != nil {
		t.Fatal(err)
	}
	defer stmt.Close()
	for i := 0; i < users; i += 7 {
		var email string
		if err := stmt.QueryRowContext(ctx, userName(i)).Scan(&email); err != nil || email != fmt.Sprintf("u%d@example.com", i) {
			t.Fatalf("lib/pq prepared get %s: %q %v", userName(i), email, err)
		}
		var count int64
		if i%70 == 0 {
			if err := db.QueryRowContext(ctx, "SELECT rt_count_users()").Scan(&count); err != nil || count != users {
				t.Fatalf("lib/pq count: %d %v", count, err)
			}
		}
	}

	// run_on all: sum merge over text (simple protocol) and binary (pgx).
	conn := p.connect(t, ctx)
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec} {
		var n int64
		if err := conn.QueryRow(ctx, "SELECT rt_count_users()", mode).Scan(&n); err != nil || n != users {
			t.Fatalf("count (%v): %d %v", mode, n, err)
		}
		var all bool
		if err := conn.QueryRow(ctx, "SELECT rt_all_have_users()", mode).Scan(&all); err != nil || !all {
			t.Fatalf("bool_and (%v): %v %v", mode, all, err)
		}
	}
	// Concatenated rows: every user once, shard after shard.
	rows, err := conn.Query(ctx, "SELECT * FROM rt_list_users()")
	if err != nil {
		t.Fatal(err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil || len(names) != users {
		t.Fatalf("list: %d rows, %v", len(names), err)
	}
	seen := map[string]bool{}
	for _, n := range names {
		seen[n] = true
	}
	if len(seen) != users {
		t.Fatalf("list: %d distinct users", len(seen))
	}
	ct, err := conn.Exec(ctx, "SELECT * FROM rt_list_users()", pgx.QueryExecModeSimpleProtocol)
	if err != nil || ct.RowsAffected() != users {
		t.Fatalf("list tag: %v %v", ct, err)
	}

	// psql: a routed call and a fan-out.
	out := p.tool(t, ctx, "SELECT rt_where('user42');\nSELECT rt_count_users();\n", "psql", "-X", "-At", "-v", "ON_ERROR_STOP=1")
	want := fmt.Sprintf("%s\n%d\n", expectShard(t, "user42"), users)
	if out != want {
		t.Fatalf("psql printed %q, want %q", out, want)
	}
}

// overUsers runs fn for users 0..n-1 over 8 pgx connections in parallel.
func overUsers(t *testing.T, ctx context.Context, p *testProxy, n int, fn func(ctx context.Context, conn *pgx.Conn, i int) error) {
	t.Helper()
	const workers = 8
	g, gctx := errgroup.WithContext(ctx)
	for w := range workers {
		g.Go(func() error {
			conn, err := pgx.Connect(gctx, p.url("postgres", "main"))
			if err != nil {
				return err
			}
			defer conn.Close(context.Background())
			for i := w; i < n; i += workers {
				if err := fn(gctx, conn, i); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
}

// expectShard asks PostgreSQL which shard hashtext puts a key on.
func expectShard(t *testing.T, key string) string {
	t.Helper()
	h := shardQueryInt(t, 0, fmt.Sprintf("SELECT (hashtext(%s) & 15) / 4", proxy.QuoteLiteral(key)))
	return "s" + strconv.FormatInt(h, 10)
}

// twoKeysOnDifferentShards returns usernames that hash to different shards.
func twoKeysOnDifferentShards(t *testing.T) (string, string) {
	a := "alice"
	for i := range 100 {
		b := fmt.Sprintf("bob%d", i)
		if expectShard(t, b) != expectShard(t, a) {
			return a, b
		}
	}
	t.Fatal("no two keys on different shards")
	return "", ""
}

// userCount counts a username on every shard.
func userCount(t *testing.T, names ...string) int64 {
	var n int64
	for i := range allShards {
		for _, name := range names {
			n += shardQueryInt(t, i, "SELECT count(*) FROM rt_users WHERE username = "+proxy.QuoteLiteral(name))
		}
	}
	return n
}

// TestRoutingRefusesCrossShard checks that transactions and pipelines that
// would span shards fail with 0A000 and leave nothing behind, and the other
// routing errors: NULL key, expression key, unroutable statement, unknown
// shard, fan-out inside a transaction, partition out of range.
func TestRoutingRefusesCrossShard(t *testing.T) {
	for _, mode := range []string{"transaction", "session"} {
		t.Run(mode, func(t *testing.T) {
			p := startRouting(t, proxyOpts{mode: mode, size: 2})
			ctx := testContext(t, time.Minute)
			conn := p.connect(t, ctx)
			a, b := twoKeysOnDifferentShards(t)

			tx, err := conn.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec(ctx, "SELECT rt_add_user($1, 'a@x')", a); err != nil {
				t.Fatal(err)
			}
			_, err = tx.Exec(ctx, "SELECT rt_add_user($1, 'b@x')", b)
			if pgCode(err) != "0A000" || !strings.Contains(err.Error(), "belongs to shard") {
				t.Fatalf("second shard in a transaction: %v; want 0A000", err)
			}
			if err := tx.Commit(ctx); !errors.Is(err, pgx.ErrTxCommitRollback) {
				t.Fatalf("commit after 0A000: %v; want rollback", err)
			}
			if n := userCount(t, a, b); n != 0 {
				t.Fatalf("%d rows left by the refused transaction", n)
			}

			// A pipeline (one Sync) over two shards.
			batch := &pgx.Batch{}
			batch.Queue("SELECT rt_add_user($1, 'a@x')", a)
			batch.Queue("SELECT rt_add_user($1, 'b@x')", b)
			err = conn.SendBatch(ctx, batch).Close()
			if pgCode(err) != "0A000" {
				t.Fatalf("pipeline over two shards: %v; want 0A000", err)
			}
			if n := userCount(t, a, b); n != 0 {
				t.Fatalf("%d rows left by the refused pipeline", n)
			}
			// One simple Query over two shards.
			_, err = conn.Exec(ctx, fmt.Sprintf("SELECT rt_add_user(%s, 'a@x'); SELECT rt_add_user(%s, 'b@x')", proxy.QuoteLiteral(a), proxy.QuoteLiteral(b)))
			if pgCode(err) != "0A000" {
				t.Fatalf("query over two shards: %v; want 0A000", err)
			}
			if n := userCount(t, a, b); n != 0 {
				t.Fatalf("%d rows left by the refused query", n)
			}
			// The same pipeline on one shard works, and lands there.
			batch = &pgx.Batch{}
			batch.Queue("SELECT rt_add_user($1, 'a@x')", a)
			batch.Queue("SELECT rt_where($1)", a)
			if err := conn.SendBatch(ctx, batch).Close(); err != nil {
				t.Fatal(err)
			}
			want := expectShard(t, a)
			idx, _ := strconv.Atoi(want[1:])
			if n := shardQueryInt(t, idx, "SELECT count(*) FROM rt_users WHERE username = "+proxy.QuoteLiteral(a)); n != 1 {
				t.Fatalf("%s not on %s", a, want)
			}
			shardExec(t, idx, "DELETE FROM rt_users WHERE username = "+proxy.QuoteLiteral(a))

			expectCode := func(code, contains, sql string, args ...any) {
				t.Helper()
				_, err := conn.Exec(ctx, sql, args...)
				if pgCode(err) != code || !strings.Contains(err.Error(), contains) {
					t.Fatalf("%s: %v; want %s mentioning %q", sql, err, code, contains)
				}
			}
			expectCode("22004", "i_username", "SELECT rt_where($1)", nil)
			expectCode("22004", "i_username", "SELECT rt_where(NULL)")
			expectCode("0A000", "i_username", "SELECT rt_where('a' || 'b')")
			expectCode("0A000", "default_route", "SELECT count(*) FROM rt_users")
			expectCode("42704", "nope", "SET pgrouter.shard = 'nope'")
			var pgErr *pgconn.PgError
			if _, err := conn.Exec(ctx, "SET pgrouter.shard = 'nope'"); !errors.As(err, &pgErr) || pgErr.Hint != "Its shards are s0, s1, s2, s3." {
				t.Fatalf("an unknown shard's hint must list the shards: %v", err)
			}
			expectCode("22003", "out of range", "SELECT rt_by_part(16)")
			tx, err = conn.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			// A fan-out before the transaction's first routed call runs (read
			// only, outside it); after that call pins the transaction, it is refused.
			var users int64
			if err := tx.QueryRow(ctx, "SELECT rt_count_users()").Scan(&users); err != nil {
				t.Fatalf("fan-out in an unpinned transaction: %v", err)
			}
			if _, err := tx.Exec(ctx, "SELECT rt_where($1)", a); err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec(ctx, "SELECT rt_count_users()"); pgCode(err) != "0A000" || !strings.Contains(err.Error(), "already runs on shard "+want) {
				t.Fatalf("fan-out in a pinned transaction: %v", err)
			}
			_ = tx.Rollback(ctx)
			// The connection is still good.
			var s string
			if err := conn.QueryRow(ctx, "SELECT rt_where($1)", a).Scan(&s); err != nil || s != want {
				t.Fatalf("after errors: %q %v", s, err)
			}
		})
	}
}
