package proxy_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgrouter/pgrouter/pool"
)

// TestStatementMode: every statement gets a server and gives it back;
// prepared statements work; a statement that leaves a transaction open is
// rolled back with 0A000 and the client stays connected; a transaction that
// opens and closes within one query string is allowed, as in pgbouncer.
func TestStatementMode(t *testing.T) {
	shardExec(t, 0, "DROP TABLE IF EXISTS stmt_mode; CREATE TABLE stmt_mode (x int)")
	p := startProxy(t, proxyOpts{mode: "statement", size: 1})
	ctx := testContext(t, 30*time.Second)
	conn := p.connect(t, ctx)
	for i := range 5 {
		var v int
		if err := conn.QueryRow(ctx, "SELECT $1::int * 2", i).Scan(&v); err != nil || v != 2*i {
			t.Fatalf("prepared statement %d: %d, %v", i, v, err)
		}
	}
	_, err := conn.Begin(ctx)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "0A000" || pgErr.Severity != "ERROR" {
		t.Fatalf("BEGIN in statement mode: %v", err)
	}
	if _, err := conn.Exec(ctx, "INSERT INTO stmt_mode VALUES (1)"); err != nil {
		t.Fatalf("after a refused BEGIN: %v", err)
	}
	if _, err := conn.Exec(ctx, "BEGIN; INSERT INTO stmt_mode VALUES (2); COMMIT"); err != nil {
		t.Fatalf("a whole transaction in one query string: %v", err)
	}
	_, err = conn.Exec(ctx, "BEGIN; INSERT INTO stmt_mode VALUES (3)")
	if !errors.As(err, &pgErr) || pgErr.Code != "0A000" {
		t.Fatalf("a query string leaving a transaction open: %v", err)
	}
	if n := shardQueryInt(t, 0, "SELECT count(*) FROM stmt_mode"); n != 2 {
		t.Fatalf("%d rows, want 2 (the open transaction must be rolled back)", n)
	}
	other := p.connect(t, ctx) // the single server is free and clean
	var n int
	if err := other.QueryRow(ctx, "SELECT count(*) FROM stmt_mode").Scan(&n); err != nil || n != 2 {
		t.Fatalf("other client: %d, %v", n, err)
	}
}

// TestIdleTimeouts: a client idle inside a transaction past
// idle_transaction_timeout is disconnected with 25P03 and its locks are
// released; one idle outside a transaction past client_idle_timeout gets 57P05.
func TestIdleTimeouts(t *testing.T) {
	shardExec(t, 0, "DROP TABLE IF EXISTS idle_t; CREATE TABLE idle_t (id int PRIMARY KEY, v int); INSERT INTO idle_t VALUES (1, 0)")
	p := startProxy(t, proxyOpts{size: 2, extra: "  idle_transaction_timeout: 300ms\n  client_idle_timeout: 1s\n"})
	ctx := testContext(t, 30*time.Second)

	// Raw clients: the FATAL arrives on its own, without sending anything,
	// and nothing else will do (a connection reset would not tell why).
	holder := rawLogin(t, p)
	if got := holder.roundTrip(&pgproto3.Query{String: "BEGIN; UPDATE idle_t SET v = 1 WHERE id = 1"}); !strings.HasSuffix(got, "Ready(T)") {
		t.Fatal(got)
	}
	start := time.Now()
	holder.expectFatal("25P03")
	if waited := time.Since(start); waited < 250*time.Millisecond {
		t.Fatalf("idle transaction ended after %s; idle_transaction_timeout is 300ms", waited)
	}
	other := p.connect(t, ctx)
	lockCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := other.Exec(lockCtx, "UPDATE idle_t SET v = 2 WHERE id = 1"); err != nil {
		t.Fatalf("row still locked after the timeout: %v", err)
	}
	if n := shardQueryInt(t, 0, "SELECT v FROM idle_t"); n != 2 {
		t.Fatalf("v = %d: the timed-out transaction must not have committed", n)
	}

	idle := rawLogin(t, p)
	start = time.Now()
	idle.expectFatal("57P05")
	if waited := time.Since(start); waited < 900*time.Millisecond {
		t.Fatalf("idle client closed after %s; client_idle_timeout is 1s", waited)
	}
}

// TestServerCheckQuery: a connection idle past server_check_delay runs
// server_check_query before reuse (observed through a sequence); one whose
// check fails is replaced.
func TestServerCheckQuery(t *testing.T) {
	shardExec(t, 0, "DROP SEQUENCE IF EXISTS check_seq; CREATE SEQUENCE check_seq")
	p := startProxy(t, proxyOpts{size: 1, extra: "  server_check_delay: 200ms\n  server_check_query: SELECT nextval('check_seq')\n"})
	ctx := testContext(t, 30*time.Second)
	conn := p.connect(t, ctx)
	pid := func() int {
		var v int
		if err := conn.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	first := pid()
	if n := shardQueryInt(t, 0, "SELECT last_value FROM check_seq WHERE is_called UNION ALL SELECT 0 LIMIT 1"); n != 0 {
		t.Fatalf("checked before the delay: %d", n)
	}
	time.Sleep(400 * time.Millisecond)
	if second := pid(); second != first {
		t.Fatal("a healthy connection was replaced")
	}
	if n := shardQueryInt(t, 0, "SELECT last_value FROM check_seq"); n != 1 {
		t.Fatalf("check query ran %d times, want 1", n)
	}
	shardExec(t, 0, "DROP SEQUENCE check_seq") // the check now fails
	time.Sleep(400 * time.Millisecond)
	if third := pid(); third == first {
		t.Fatal("a connection whose check failed was reused")
	}
}

// TestReservePool: with the pool busy, a client that has waited
// reserve_pool_timeout gets one of the reserve connections.
func TestReservePool(t *testing.T) {
	p := startProxy(t, proxyOpts{size: 1, extra: "  reserve_pool_size: 1\n  reserve_pool_timeout: 200ms\n"})
	ctx := testContext(t, 30*time.Second)
	holder := p.connect(t, ctx)
	if _, err := holder.Exec(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	waiter := p.connect(t, ctx)
	start := time.Now()
	if _, err := waiter.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 150*time.Millisecond || d > 3*time.Second {
		t.Fatalf("reserve connection after %s, want about 200ms", d)
	}
	if _, err := holder.Exec(ctx, "COMMIT"); err != nil {
		t.Fatal(err)
	}
}

// TestMinIdleWarmUp: min_idle connections are open shortly after start,
// before any client.
func TestMinIdleWarmUp(t *testing.T) {
	p := startProxy(t, proxyOpts{size: 4, extra: "  min_idle: 3\n"})
	deadline := time.Now().Add(5 * time.Second)
	for {
		idle := 0
		for _, pl := range p.srv.Pools().Pools() {
			if pl.Shard() == "s0" {
				idle = pl.Stats().Idle
			}
		}
		if idle == 3 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d idle connections to s0 after 5s, want min_idle 3", idle)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestPoolCounters: queries, transactions, bytes and waits show up in the
// pool's counters, which the admin console will report.
func TestPoolCounters(t *testing.T) {
	p := startProxy(t, proxyOpts{size: 1})
	ctx := testContext(t, 30*time.Second)
	conn := p.connect(t, ctx)
	for i := range 10 {
		if _, err := conn.Exec(ctx, "SELECT $1::int", i); err != nil {
			t.Fatal(err)
		}
	}
	err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		for range 3 {
			if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var s0 *pool.Pool
	for _, pl := range p.srv.Pools().Pools() {
		if pl.Shard() == "s0" {
			s0 = pl
		}
	}
	c := s0.Counters()
	// pgx prepares the first statement (Parse/Describe/Sync: one request),
	// then 10 executions, then BEGIN, 3 statements and COMMIT: 16 requests;
	// every request outside a transaction counts as one, as in pgbouncer: 12.
	if c.QueryCount != 16 || c.XactCount != 12 || c.Received == 0 || c.Sent == 0 || c.QueryTime <= 0 || c.XactTime < c.QueryTime/2 {
		t.Fatalf("counters %+v", c)
	}
}
