package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgrouter/pgrouter/internal/pgtest"
	"github.com/pgrouter/pgrouter/internal/pgtest/testenv"
)

// fleet writes the router.yaml of n instances that list each other as
// peers, over one shard, and returns their paths and client addresses.
func fleet(t *testing.T, server *pgtest.Server, n int) (paths, addrs []string) {
	t.Helper()
	dir := t.TempDir()
	var peers []string
	for i := range n {
		addrs = append(addrs, freeAddr(t))
		peers = append(peers, fmt.Sprintf("%d: %q", i+1, addrs[i]))
	}
	for i := range n {
		path := filepath.Join(dir, fmt.Sprintf("router%d.yaml", i+1))
		writeFile(t, path, fmt.Sprintf(`listen: %s
auth: {type: trust}
admin_users: [postgres]
log: {level: debug, format: json}
pool: {mode: transaction, size: 4, query_wait_timeout: 10s}
peer_id: %d
peers: {%s}
default_route: s0
clusters:
  main:
    shards:
      - {name: s0, dsn: %q}
`, addrs[i], i+1, strings.Join(peers, ", "), server.DSN("postgres")))
		paths = append(paths, path)
	}
	return paths, addrs
}

// sendCancel sends a CancelRequest to addr as libpq does and waits for
// the instance to close the connection.
func sendCancel(t *testing.T, addr string, pid uint32, secret []byte) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	buf, err := (&pgproto3.CancelRequest{ProcessID: pid, SecretKey: secret}).Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write(buf); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, _ = conn.Read(make([]byte, 1))
}

// TestPeersForwardCancel: three real pgrouter processes that list each
// other as peers. A cancel request for a client of instance 1 sent to
// instance 2 or 3 (as a load balancer would) cancels that client's
// statement; one with a wrong secret cancels nothing.
func TestPeersForwardCancel(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	server := testenv.Servers(t, 1, pgtest.Options{})[0]
	paths, addrs := fleet(t, server, 3)
	for i := range paths {
		runRouter(ctx, t, paths[i], addrs[i])
	}
	client, err := pgx.Connect(ctx, fmt.Sprintf("postgres://postgres@%s/main?sslmode=disable", addrs[0]))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close(ctx)
	pid, secret := client.PgConn().PID(), client.PgConn().SecretKey()
	if pid>>17 != 1 {
		t.Fatalf("cancel key process id %#x does not carry peer_id 1 in bits 17-30", pid)
	}
	shard, err := pgx.Connect(ctx, server.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer shard.Close(ctx)

	// sleep runs pg_sleep on instance 1's client and waits until the shard
	// runs it; the returned channel gets the statement's outcome.
	sleep := func(seconds int) <-chan error {
		done := make(chan error, 1)
		go func() {
			_, err := client.Exec(ctx, fmt.Sprintf("SELECT pg_sleep(%d)", seconds))
			done <- err
		}()
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			var running int
			if err := shard.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%' AND state = 'active'").Scan(&running); err != nil {
				t.Fatal(err)
			}
			if running == 1 {
				return done
			}
			if time.Now().After(deadline) {
				t.Fatal("pg_sleep never started on the shard")
			}
		}
	}
	wantCanceled := func(done <-chan error, via string) {
		t.Helper()
		select {
		case err := <-done:
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != "57014" {
				t.Fatalf("cancel through %s: the statement ended with %v, want 57014", via, err)
			}
		case <-time.After(15 * time.Second):
			t.Fatalf("cancel through %s: the statement is still running", via)
		}
	}

	done := sleep(3)
	wrong := append([]byte(nil), secret...)
	wrong[3] ^= 1
	sendCancel(t, addrs[1], pid, wrong)
	sendCancel(t, addrs[2], pid^1, secret)
	if err := <-done; err != nil {
		t.Fatalf("a cancel with a wrong key cancelled the statement: %v", err)
	}

	done = sleep(30)
	sendCancel(t, addrs[1], pid, secret)
	wantCanceled(done, "instance 2")
	done = sleep(30)
	sendCancel(t, addrs[2], pid, secret)
	wantCanceled(done, "instance 3")
	done = sleep(30)
	sendCancel(t, addrs[0], pid, secret)
	wantCanceled(done, "instance 1 itself")

	// A request already forwarded once is not forwarded again: instance 2
	// drops a forwarded request for instance 1 instead of passing it on.
	done = sleep(2)
	sendCancel(t, addrs[1], pid|1<<16, secret)
	if err := <-done; err != nil {
		t.Fatalf("a cancel marked as forwarded was forwarded again: %v", err)
	}
}

// TestPeersFleetCommands: PAUSE PEERS on one instance holds the clients of
// all three, RESUME PEERS from another releases them, SHOW PEERS reports
// every instance, RELOAD PEERS reloads them all; with one instance down,
// PAUSE PEERS fails naming it and pauses nobody.
func TestPeersFleetCommands(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	server := testenv.Servers(t, 1, pgtest.Options{})[0]
	paths, addrs := fleet(t, server, 3)
	runRouter(ctx, t, paths[0], addrs[0])
	runRouter(ctx, t, paths[1], addrs[1])
	third, thirdLogs, thirdExited := startRouter(ctx, t, paths[2], addrs[2])
	defer func() { _ = third.Process.Kill() }()

	connect := func(addr, db string) *pgx.Conn {
		t.Helper()
		cfg, err := pgx.ParseConfig(fmt.Sprintf("postgres://postgres@%s/%s?sslmode=disable", addr, db))
		if err != nil {
			t.Fatal(err)
		}
		cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
		conn, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close(context.Background()) })
		return conn
	}
	var admins, clients []*pgx.Conn
	for _, addr := range addrs {
		admins = append(admins, connect(addr, "pgrouter"))
		clients = append(clients, connect(addr, "main"))
	}

	peers := adminMaps(ctx, t, admins[0], "SHOW PEERS")
	if len(peers) != 3 {
		t.Fatalf("SHOW PEERS: %v", peers)
	}
	for i, p := range peers {
		if p["peer_id"] != int64(i+1) || p["address"] != addrs[i] || p["reachable"] != true || p["self"] != (i == 0) ||
			!strings.HasPrefix(fmt.Sprint(p["version"]), "pgrouter ") || p["config_generation"] != int64(1) || p["paused_shards"] != int64(0) {
			t.Fatalf("SHOW PEERS row %d: %v", i, p)
		}
	}

	if _, err := admins[0].Exec(ctx, "PAUSE PEERS"); err != nil {
		t.Fatalf("PAUSE PEERS: %v", err)
	}
	results := make(chan error, len(clients))
	for _, c := range clients {
		go func() {
			_, err := c.Exec(ctx, "SELECT 1")
			results <- err
		}()
	}
	select {
	case err := <-results:
		t.Fatalf("a client ran a statement while the fleet was paused (%v)", err)
	case <-time.After(700 * time.Millisecond):
	}
	for i, adm := range admins {
		if inst := adminMaps(ctx, t, adm, "SHOW INSTANCE"); inst[0]["paused_shards"] != int64(1) || inst[0]["peer_id"] != int64(i+1) {
			t.Fatalf("instance %d after PAUSE PEERS: %v", i+1, inst)
		}
	}
	if _, err := admins[1].Exec(ctx, "RESUME PEERS"); err != nil {
		t.Fatalf("RESUME PEERS: %v", err)
	}
	for range clients {
		select {
		case err := <-results:
			if err != nil {
				t.Fatalf("a held statement after RESUME PEERS: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a held statement did not run after RESUME PEERS")
		}
	}

	// RELOAD PEERS reloads every instance: instance 3's file changed.
	data, err := os.ReadFile(paths[2])
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, paths[2], string(data)+"# edited\n")
	if _, err := admins[0].Exec(ctx, "RELOAD PEERS"); err != nil {
		t.Fatalf("RELOAD PEERS: %v", err)
	}
	after := adminMaps(ctx, t, admins[1], "SHOW PEERS")
	for i, p := range after {
		if p["config_generation"] != int64(2) {
			t.Fatalf("instance %d after RELOAD PEERS: %v", i+1, p)
		}
	}
	if after[2]["config_hash"] == peers[2]["config_hash"] || after[1]["config_hash"] != peers[1]["config_hash"] {
		t.Fatalf("config hashes before %v and after %v the edit of instance 3's file", peers, after)
	}

	// Instance 3 goes away: PAUSE PEERS fails, names it, pauses nobody.
	_ = third.Process.Signal(syscall.SIGTERM)
	select {
	case <-thirdExited:
	case <-time.After(20 * time.Second):
		t.Fatalf("instance 3 did not stop\n%s", thirdLogs.String())
	}
	_, err = admins[0].Exec(ctx, "PAUSE PEERS")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "08006" || !strings.Contains(pgErr.Message, "peer 3 ("+addrs[2]+") cannot be reached") || !strings.Contains(pgErr.Message, "did nothing") {
		t.Fatalf("PAUSE PEERS with instance 3 down: %v", err)
	}
	for i := range 2 {
		if inst := adminMaps(ctx, t, admins[i], "SHOW INSTANCE"); inst[0]["paused_shards"] != int64(0) {
			t.Fatalf("instance %d paused by a PAUSE PEERS that failed: %v", i+1, inst)
		}
		var one int
		if err := clients[i].QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
			t.Fatal(err)
		}
	}
	if down := adminMaps(ctx, t, admins[0], "SHOW PEERS")[2]; down["reachable"] != false || !strings.Contains(fmt.Sprint(down["error"]), "cannot be reached") {
		t.Fatalf("SHOW PEERS row of the stopped instance: %v", down)
	}
}

// TestRollingRestart: with listen_reuseport, a second pgrouter starts on
// the port of a first under a pgbench load that connects for every
// transaction (-C), and the first is sent SIGTERM: pgbench sees no failed
// connection or transaction, every transaction it counted is on the shard,
// and the first exits 0 once its clients are done.
func TestRollingRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// Connections queued on the closing socket move to the new one rather
	// than being reset (Linux 5.14+; per network namespace).
	if old, err := os.ReadFile(migrateReqPath); err == nil && strings.TrimSpace(string(old)) == "0" {
		if err := os.WriteFile(migrateReqPath, []byte("1"), 0o644); err != nil {
			t.Logf("cannot set %s (%v): a connection queued at the moment the old instance closes its socket could be reset", migrateReqPath, err)
		} else {
			t.Cleanup(func() { _ = os.WriteFile(migrateReqPath, old, 0o644) })
		}
	}
	server := testenv.Servers(t, 1, pgtest.Options{})[0]
	pgbench := pgbenchInit(ctx, t, server)
	addr := freeAddr(t)
	path := filepath.Join(t.TempDir(), "router.yaml")
	writeFile(t, path, fmt.Sprintf(`listen: %s
listen_reuseport: true
auth: {type: trust}
shutdown_timeout: 30s
log: {level: info, format: json}
pool: {mode: transaction, size: 8}
default_route: s0
clusters:
  main:
    shards:
      - {name: s0, dsn: %q}
`, addr, server.DSN("postgres")))
	old, oldLogs, oldExited := startRouter(ctx, t, path, addr)
	defer func() { _ = old.Process.Kill() }()

	host, port, _ := net.SplitHostPort(addr)
	bench := exec.CommandContext(ctx, pgbench, "-n", "-C", "-c", "8", "-j", "2", "-T", "8", "-h", host, "-p", port, "-U", "postgres", "main")
	var benchOut syncBuffer
	bench.Stdout, bench.Stderr = &benchOut, &benchOut
	if err := bench.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	newer, newerLogs, newerExited := startProcess(t, "serve", "-c", path)
	defer func() {
		_ = newer.Process.Signal(syscall.SIGTERM)
		<-newerExited
		if t.Failed() {
			t.Log(newerLogs.String())
		}
	}()
	for deadline := time.Now().Add(20 * time.Second); !strings.Contains(newerLogs.String(), `"listening"`); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the second instance did not start listening beside the first:\n%s", newerLogs.String())
		}
	}
	time.Sleep(time.Second) // both serve
	if err := old.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-oldExited:
		if err != nil {
			t.Fatalf("the first instance after SIGTERM: %v\n%s", err, oldLogs.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("the first instance did not exit within 30 s of SIGTERM\n%s", oldLogs.String())
	}
	err := bench.Wait()
	out := benchOut.String()
	if err != nil || strings.Contains(out, "aborted") || strings.Contains(out, "error") {
		t.Fatalf("pgbench across the rolling restart (%v):\n%s\nfirst instance:\n%s", err, out, oldLogs.String())
	}
	processed := pgbenchProcessed(t, out)
	conn, err := pgx.Connect(ctx, server.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if history := tpcbCheck(ctx, t, conn); history != int64(processed) {
		t.Fatalf("%d history rows, pgbench counted %d transactions\n%s", history, processed, out)
	}
	t.Logf("pgbench: %d transactions, none failed, across the restart", processed)
}
