package proxy_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgrouter/pgrouter/internal/pgtest"
	"github.com/pgrouter/pgrouter/internal/pgtest/testenv"
	"github.com/pgrouter/pgrouter/proxy"
)

// TestShardFrozen: a shard stopped with SIGSTOP (backends included) does not
// hang its clients. A statement already sent there gets 57014 once
// server_read_timeout expires, a new connection gets 08001 after
// server_connect_timeout, the other shard keeps serving meanwhile, and after
// SIGCONT the pool serves the shard again without a restart of pgrouter and
// nothing of the timed-out statement is left running.
func TestShardFrozen(t *testing.T) {
	ctx := testContext(t, 2*time.Minute)
	own := testenv.Servers(t, 1, pgtest.Options{})[0]
	p := startProxy(t, proxyOpts{servers: []*pgtest.Server{own, shards[1]},
		extra: "  server_read_timeout: 1s\n  server_connect_timeout: 1s\n"})
	frozen := p.connect(t, ctx)
	other := p.connect(t, ctx)
	if _, err := other.Exec(ctx, "SET pgrouter.shard = 's1'"); err != nil {
		t.Fatal(err)
	}
	var one int
	if err := frozen.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil { // leaves an idle server of s0 in the pool
		t.Fatal(err)
	}

	thaw := testenv.Freeze(t, own)

	start := time.Now()
	stmtCtx, cancel := context.WithTimeout(ctx, 15*time.Second) // without server_read_timeout this would hang
	_, err := frozen.Exec(stmtCtx, "SELECT 2")
	cancel()
	if pgCode(err) != "57014" || !strings.Contains(err.Error(), "server_read_timeout") || !strings.Contains(err.Error(), "shard s0") {
		t.Fatalf("statement on the frozen shard: %v; want 57014 naming server_read_timeout and s0", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("the server_read_timeout of 1s fired after %s", took)
	} else {
		t.Logf("statement on the frozen shard: 57014 after %s", took.Round(time.Millisecond))
	}
	if err := other.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
		t.Fatalf("the other shard while s0 is frozen: %v", err)
	}
	start = time.Now()
	_, err = frozen.Exec(ctx, "SELECT 3") // needs a new server of s0: its login gets no answer
	if pgCode(err) != "08001" || time.Since(start) > 5*time.Second {
		t.Fatalf("new server connection to the frozen shard: %v after %s; want 08001 after server_connect_timeout", err, time.Since(start))
	}
	t.Logf("new server connection to the frozen shard: 08001 after %s", time.Since(start).Round(time.Millisecond))

	thaw()
	eventually(t, 20*time.Second, count(ctx, frozen, "SELECT 4", 4))
	// The statement that timed out is gone from the shard (its socket was
	// closed; the cancel could not reach a frozen server).
	eventually(t, 20*time.Second, count(ctx, frozen, "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT 2'", 0))
}

// TestClientStopsReading: a client that sends a query with a large result
// and stops reading is disconnected after client_write_timeout; its server
// connection is cancelled and closed (the pool of one serves the next
// client) and pgrouter never buffers more than a flush worth of the result.
// server_read_timeout is set too, shorter: time spent blocked on the
// client is not a server that sent nothing, and must not keep
// client_write_timeout from firing.
func TestClientStopsReading(t *testing.T) {
	certs, err := pgtest.WriteCerts(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	own := testenv.Servers(t, 1, pgtest.Options{})[0]
	for _, sslmode := range []string{"disable", "require"} { // under TLS the raw socket is what is watched and closed
		t.Run("sslmode="+sslmode, func(t *testing.T) {
			ctx := testContext(t, 2*time.Minute)
			p := startProxy(t, proxyOpts{servers: []*pgtest.Server{own, shards[1]}, size: 1,
				extra:    "  client_write_timeout: 1s\n  server_read_timeout: 500ms\n",
				topLevel: fmt.Sprintf("tls:\n  mode: allow\n  cert: %s\n  key: %s\n", certs.Cert, certs.Key)})
			var before runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)

			host, port := p.hostPort()
			pc, err := pgconn.Connect(ctx, fmt.Sprintf("host=%s port=%s user=postgres dbname=main sslmode=%s", host, port, sslmode))
			if err != nil {
				t.Fatal(err)
			}
			hc, err := pc.Hijack() // speak by hand from here: send, never read
			if err != nil {
				t.Fatal(err)
			}
			defer hc.Conn.Close()
			if _, isTLS := hc.Conn.(*tls.Conn); isTLS != (sslmode == "require") {
				t.Fatalf("TLS %v with sslmode=%s", isTLS, sslmode)
			}
			// 200 MB of rows, far more than the socket buffers hold.
			if _, err := hc.Conn.Write(proxy.EncodeAll(&pgproto3.Query{String: "SELECT repeat('x', 1000) FROM generate_series(1, 200000)"})); err != nil {
				t.Fatal(err)
			}
			var grew int64 // the most the heap grew while the client did not read
			for range 16 {
				time.Sleep(50 * time.Millisecond)
				var during runtime.MemStats
				runtime.ReadMemStats(&during)
				grew = max(grew, int64(during.HeapAlloc)-int64(before.HeapAlloc))
			}
			if grew > 32<<20 {
				t.Errorf("heap grew by %d MB while the client did not read", grew>>20)
			}

			// The pool has one server: the next client gets it only once the
			// stuck one was let go.
			start := time.Now()
			next := p.connect(t, ctx)
			var n int
			if err := next.QueryRow(ctx, "SELECT 1").Scan(&n); err != nil {
				t.Fatalf("next client: %v", err)
			}
			if took := time.Since(start); took > 8*time.Second {
				t.Fatalf("next client served after %s; client_write_timeout is 1s", took)
			} else {
				t.Logf("heap grew %.1f MB while the client did not read 200 MB; the pool's one server served the next client after %s", float64(grew)/1e6, took.Round(time.Millisecond))
			}
			// The stuck client's connection is closed: draining it ends.
			_ = hc.Conn.SetReadDeadline(time.Now().Add(20 * time.Second))
			if _, err := io.Copy(io.Discard, hc.Conn); err != nil && strings.Contains(err.Error(), "timeout") {
				t.Fatalf("the client that stopped reading is still connected: %v", err)
			}
			eventually(t, 20*time.Second, count(ctx, next, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%generate_series(1, 200000)%' AND pid <> pg_backend_pid()", 0))
		})
	}
}

// TestFanoutShardFrozen: a run_on all call with one shard frozen gets 57014
// naming that shard once server_read_timeout expires, instead of hanging,
// and works again after SIGCONT.
func TestFanoutShardFrozen(t *testing.T) {
	p := startRouting(t, proxyOpts{size: 2, extra: "  server_read_timeout: 1s\n"})
	ctx := testContext(t, time.Minute)
	conn := p.connect(t, ctx)
	var n int64
	if err := conn.QueryRow(ctx, "SELECT * FROM rt_count_users()").Scan(&n); err != nil {
		t.Fatal(err)
	}
	thaw := testenv.Freeze(t, allShards[2])
	start := time.Now()
	stmtCtx, cancel := context.WithTimeout(ctx, 15*time.Second)
	err := conn.QueryRow(stmtCtx, "SELECT * FROM rt_count_users()").Scan(&n)
	cancel()
	if pgCode(err) != "57014" || !strings.Contains(err.Error(), "shard s2") || time.Since(start) > 5*time.Second {
		t.Fatalf("fan-out with s2 frozen: %v after %s; want 57014 naming s2 after about 1s", err, time.Since(start))
	}
	t.Logf("fan-out with a frozen shard: 57014 after %s", time.Since(start).Round(time.Millisecond))
	thaw()
	eventually(t, 20*time.Second, func() error { return conn.QueryRow(ctx, "SELECT * FROM rt_count_users()").Scan(&n) })
}

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
	if _, err := tx.Exec(ctx, "CREATE TEMP TABLE t (x int) ON COMMIT DROP"); err != nil {
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
	eventually(t, 20*time.Second, count(ctx, idle, "SELECT 5", 5))
	fresh := p.connect(t, ctx)
	if err := fresh.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
		t.Fatalf("a new client after the restart: %v", err)
	}
}

// eventually polls check until it returns nil, for at most d.
func eventually(t *testing.T, d time.Duration, check func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %v", d, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// count returns a check that query, which counts something, counts want.
func count(ctx context.Context, conn *pgx.Conn, query string, want int) func() error {
	return func() error {
		var n int
		if err := conn.QueryRow(ctx, query).Scan(&n); err != nil {
			return err
		}
		if n != want {
			return fmt.Errorf("%s: %d, want %d", query, n, want)
		}
		return nil
	}
}
