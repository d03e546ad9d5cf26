package pgtest

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

func TestStartServesQueriesAndRestarts(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	servers, err := StartN(ctx, 2, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, s := range servers {
			_ = s.Stop()
		}
	}()
	if servers[0].Port == servers[1].Port {
		t.Fatalf("both servers on port %d", servers[0].Port)
	}
	for _, s := range servers {
		conn, err := pgconn.Connect(ctx, s.DSN("postgres"))
		if err != nil {
			t.Fatal(err)
		}
		res, err := conn.Exec(ctx, "SHOW wal_level").ReadAll()
		conn.Close(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if got := string(res[0].Rows[0][0]); got != "logical" {
			t.Fatalf("wal_level = %q, want logical", got)
		}
	}
	s := servers[0]
	if err := s.Exec(ctx, "postgres", "CREATE TABLE kept (x int); INSERT INTO kept VALUES (7)"); err != nil {
		t.Fatal(err)
	}
	s.Crash()
	if err := s.Exec(ctx, "postgres", "SELECT 1"); err == nil {
		t.Fatal("crashed server still answers")
	}
	if err := s.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	conn, err := pgconn.Connect(ctx, s.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	res, err := conn.Exec(ctx, "SELECT x FROM kept").ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if got := string(res[0].Rows[0][0]); got != "7" {
		t.Fatalf("after restart x = %q, want 7", got)
	}
}

// TestPortTakenIsAnError: a server whose port another server holds must fail
// to start, not report ready because the other one answers there (which once
// gave two test shards the same database when parallel packages drew the same
// free port).
func TestPortTakenIsAnError(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	first, err := Start(ctx, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer first.Stop()
	second, err := Start(ctx, Options{Port: first.Port})
	if err == nil {
		_ = second.Stop()
		t.Fatalf("a second server on port %d started", first.Port)
	}
	t.Logf("second server on a taken port: %v", err)
}

// TestSignalFreezesBackends: SIGSTOP freezes the connections already open
// (backends live in their own sessions, outside the postmaster's group),
// and SIGCONT thaws them.
func TestSignalFreezesBackends(t *testing.T) {
	ctx := context.Background()
	s, err := Start(ctx, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	conn, err := pgconn.Connect(ctx, s.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	kept, err := pgconn.Connect(ctx, s.DSN("postgres")) // idle through the freeze; its backend must thaw too
	if err != nil {
		t.Fatal(err)
	}
	defer kept.Close(ctx)
	if err := s.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	frozen, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	_, err = conn.Exec(frozen, "SELECT 1").ReadAll()
	cancel()
	if err == nil {
		t.Fatal("a query on a frozen server answered")
	}
	if err := s.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	thawed, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := kept.Exec(thawed, "SELECT 1").ReadAll(); err != nil {
		t.Fatalf("a connection kept through the freeze, after SIGCONT: %v", err)
	}
	again, err := pgconn.Connect(thawed, s.DSN("postgres"))
	if err != nil {
		t.Fatalf("after SIGCONT: %v", err)
	}
	again.Close(ctx)
}
