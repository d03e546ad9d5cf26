package proxy_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"
)

// TestNoSessionStateReachesTheNextClient: in transaction mode, what would
// stay on a shared server after a client's transaction (and reach the next
// client of that server) is refused with 0A000 naming the pooling mode,
// through the simple and the extended protocol; the transaction-scoped
// forms work; notifications for a LISTEN some function ran are dropped;
// and a client that vanishes mid-transaction leaves no session lock or
// temporary table behind. One server connection, so every client shares it.
func TestNoSessionStateReachesTheNextClient(t *testing.T) {
	p := startProxy(t, proxyOpts{size: 1})
	ctx := testContext(t, time.Minute)
	x := p.connect(t, ctx)
	refused := []string{
		"LISTEN ch",
		"SELECT pg_advisory_lock(42)",
		"SELECT pg_catalog.pg_try_advisory_lock_shared(1, 2)",
		"CREATE TEMP TABLE shadow (a int)",
		"CREATE TEMPORARY TABLE shadow (a int) ON COMMIT DELETE ROWS",
		"SELECT 1 AS a INTO TEMP shadow",
		"DECLARE c CURSOR WITH HOLD FOR SELECT 1",
		"SELECT set_config(lower('SEARCH_PATH'), 'evil', false)",
	}
	for _, sql := range refused {
		for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement} {
			_, err := x.Exec(ctx, sql, mode)
			if pgCode(err) != "0A000" || !strings.Contains(err.Error(), "transaction pooling mode") {
				t.Errorf("%s (%v): %v; want 0A000 naming the pooling mode", sql, mode, err)
			}
		}
	}
	// The transaction-scoped forms pool fine.
	tx, err := x.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, sql := range []string{
		"CREATE TEMP TABLE scratch (a int) ON COMMIT DROP",
		"SELECT pg_advisory_xact_lock(42)",
		"SELECT set_config('search_path', 'evil', true)",
		"DECLARE c CURSOR WITHOUT HOLD FOR SELECT 1",
	} {
		if _, err := tx.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}

	// A LISTEN run by a function: the next client must not get notified.
	if _, err := x.Exec(ctx, "DO $$ BEGIN EXECUTE 'LISTEN ch'; END $$"); err != nil {
		t.Fatal(err)
	}
	y := rawLogin(t, p)
	if got := y.roundTrip(&pgproto3.Query{String: "NOTIFY ch, 'leak'"}); got != "Complete(NOTIFY) Ready(I)" {
		t.Fatalf("a client that never listened: %s", got)
	}

	// A client that vanishes inside a transaction after a function took a
	// session lock and made a temporary table.
	z := dialRaw(t, p.addr)
	z.login(trustLogin)
	if got := z.roundTrip(&pgproto3.Query{String: "BEGIN; DO $$ BEGIN PERFORM pg_advisory_lock(7); EXECUTE 'CREATE TEMP TABLE left_behind (a int)'; END $$"}); !strings.HasSuffix(got, "Ready(T)") {
		t.Fatal(got)
	}
	_ = z.conn.Close()
	next := p.connect(t, ctx)
	eventually(t, 10*time.Second, func() error {
		var locks, temps, listening int
		err := next.QueryRow(ctx, `SELECT (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'),
			(SELECT count(*) FROM pg_class WHERE relpersistence = 't'),
			(SELECT count(*) FROM pg_listening_channels())`).Scan(&locks, &temps, &listening)
		if err != nil {
			return err
		}
		if locks != 0 || temps != 0 || listening != 0 {
			return fmt.Errorf("the next client finds %d advisory locks, %d temporary tables, %d channels listened to", locks, temps, listening)
		}
		return nil
	})
	var path string
	if err := next.QueryRow(ctx, "SHOW search_path").Scan(&path); err != nil || strings.Contains(path, "evil") {
		t.Fatalf("search_path %q, %v", path, err)
	}
}

// TestSessionModeKeepsSessionState: in session mode the server is the
// client's alone, so LISTEN and session locks work and notifications arrive.
func TestSessionModeKeepsSessionState(t *testing.T) {
	p := startProxy(t, proxyOpts{mode: "session", size: 2})
	ctx := testContext(t, time.Minute)
	a := p.connect(t, ctx)
	b := p.connect(t, ctx)
	for _, sql := range []string{"LISTEN ch", "SELECT pg_advisory_lock(1)", "CREATE TEMP TABLE mine (a int)"} {
		if _, err := a.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	if _, err := b.Exec(ctx, "NOTIFY ch, 'hello'"); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	n, err := a.WaitForNotification(wctx)
	if err != nil || n.Payload != "hello" {
		t.Fatalf("notification %+v, %v", n, err)
	}
}

// TestSetThenCopyInOneQuery: a SET and a COPY FROM STDIN in one Query. The
// read-back of the setting must wait for the Query's ReadyForQuery: sent
// with it, the server read it as COPY data ("unexpected message type 0x51")
// and the COPY failed.
func TestSetThenCopyInOneQuery(t *testing.T) {
	p := startProxy(t, proxyOpts{size: 1})
	ctx := testContext(t, time.Minute)
	conn := p.connect(t, ctx)
	if _, err := conn.Exec(ctx, "DROP TABLE IF EXISTS copy_after_set; CREATE TABLE copy_after_set (a int)"); err != nil {
		t.Fatal(err)
	}
	tag, err := conn.PgConn().CopyFrom(ctx, strings.NewReader("1\n2\n3\n"), "SET application_name = 'copier'; COPY copy_after_set FROM STDIN")
	if err != nil || tag.RowsAffected() != 3 {
		t.Fatalf("COPY after SET: %v, %v", tag, err)
	}
	var n int
	var app string
	if err := conn.QueryRow(ctx, "SELECT count(*), current_setting('application_name') FROM copy_after_set").Scan(&n, &app); err != nil || n != 3 || app != "copier" {
		t.Fatalf("after the COPY: %d rows, application_name %q, %v", n, app, err)
	}
}

// TestUntrackedStatementNamesAreRefusedWhenShared: with
// prepared_statements: 0 statement names reach servers as they are, where
// in transaction mode another client's statement of the same name would
// collide with them or run in their place: named ones are refused, with a
// hint; unnamed ones work.
func TestUntrackedStatementNamesAreRefusedWhenShared(t *testing.T) {
	p := startProxy(t, proxyOpts{size: 1, extra: "  prepared_statements: 0\n"})
	a := rawLogin(t, p)
	got := a.roundTrip(&pgproto3.Parse{Name: "q", Query: "SELECT 1"}, &pgproto3.Sync{})
	if !strings.Contains(got, "0A000") || !strings.Contains(got, "prepared_statements") {
		t.Fatalf("named Parse with prepared_statements 0: %s", got)
	}
	got = a.roundTrip(&pgproto3.Parse{Query: "SELECT 'unnamed'"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
	if !strings.Contains(got, "Row(unnamed)") {
		t.Fatalf("unnamed statement: %s", got)
	}
}
