package proxy

import (
	"syscall"
	"testing"
	"time"

	"github.com/pgrouter/pgrouter/internal/pgtest"
	"github.com/pgrouter/pgrouter/internal/pgtest/testenv"
)

// TestShardKilledMidTransaction: SIGKILL of a shard's postmaster and
// backends while a client is inside a transaction there. That client gets a
// FATAL 08006 (its transaction is gone), a client outside a transaction gets
// an ERROR and keeps its connection, the other shard serves throughout, and
// after the restart the pool reconnects by itself.
func TestShardKilledMidTransaction(t *testing.T) {
	ctx := testContext(t, 2*time.Minute)
	own := testenv.Servers(t, 1, pgtest.Options{})[0]
	p := startProxy(t, proxyOpts{servers: []*pgtest.Server{own, shards[1]}})
	inTx := p.connect(t, ctx)
	idle := p.connect(t, ctx)
	other := p.connect(t, ctx)
	if _, err := other.Exec(ctx, "SET pgrouter.shard = 's1'"); err != nil {
		t.Fatal(err)
	}
	var one int
	if err := idle.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
		t.Fatal(err)
	}
	tx, err := inTx.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "CREATE TEMP TABLE t (x int)"); err != nil {
		t.Fatal(err)
	}

	if err := own.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_, err = tx.Exec(ctx, "INSERT INTO t VALUES (1)")
	if code := pgCode(err); code != "08006" && code != "57P01" {
		t.Fatalf("in a transaction on the killed shard: %v; want 08006", err)
	}
	if !inTx.IsClosed() {
		if _, err := inTx.Exec(ctx, "SELECT 1"); err == nil {
			t.Fatal("the client whose transaction died can still run statements")
		}
	}
	if err := other.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
		t.Fatalf("the other shard: %v", err)
	}
	_, err = idle.Exec(ctx, "SELECT 1")
	if code := pgCode(err); code != "08006" && code != "08001" {
		t.Fatalf("outside a transaction on the killed shard: %v; want ERROR 08006 or 08001", err)
	}
	if idle.IsClosed() {
		t.Fatal("a client outside a transaction lost its connection")
	}

	if err := own.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, func() (int, error) {
		var n int
		err := idle.QueryRow(ctx, "SELECT 5").Scan(&n)
		return n, err
	}, 5)
	fresh := p.connect(t, ctx)
	if err := fresh.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
		t.Fatalf("a new client after the restart: %v", err)
	}
}

// eventually polls query until it returns want, for at most d.
func eventually(t *testing.T, d time.Duration, query func() (int, error), want int) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		got, err := query()
		if err == nil && got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: got %d (%v), want %d", d, got, err, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
