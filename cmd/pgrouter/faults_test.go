package main

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgrouter/pgrouter/internal/pgtest"
	"github.com/pgrouter/pgrouter/internal/pgtest/testenv"
)

// TestReloadAndKillUnderPgbench: a real pgrouter under a 50-client pgbench
// TPC-B load. First it is reloaded ten times (RELOAD on the console and
// SIGHUP, alternately, each time with a changed pool size) and pgbench must
// see no error at all. Then it is killed with SIGKILL: no transaction may
// be left open on the shard, every transaction pgbench saw committed must
// be there (at most one per client more: committed, but the reply died with
// pgrouter), none half done (the TPC-B balances agree), and a new pgrouter
// on the same address serves at once.
func TestReloadAndKillUnderPgbench(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	servers := testenv.Servers(t, 2, pgtest.Options{})
	pgbench, err := exec.LookPath("pgbench")
	if err != nil {
		t.Fatal("pgbench is not installed: .ci/run installs PostgreSQL's client programs")
	}
	host, port, _ := net.SplitHostPort(servers[0].Addr())
	if out, err := exec.CommandContext(ctx, pgbench, "-i", "-q", "-h", host, "-p", port, "-U", "postgres", "postgres").CombinedOutput(); err != nil {
		t.Fatalf("pgbench -i: %v\n%s", err, out)
	}
	addr := freeAddr(t)
	path := filepath.Join(t.TempDir(), "router.yaml")
	writeConfig := func(size int) {
		t.Helper()
		writeFile(t, path, fmt.Sprintf(`listen: %s
auth: {type: trust}
admin_users: [admin]
log: {level: info, format: json}
pool: {mode: transaction, size: %d, query_wait_timeout: 60s}
clusters:
  main:
    partitions: 2
    shards:
      - {name: s0, dsn: "%s", partitions: "0"}
      - {name: s1, dsn: "%s", partitions: "1"}
default_route: s0
`, addr, size, servers[0].DSN("postgres"), servers[1].DSN("postgres")))
	}
	writeConfig(10)
	router, logs, exited := startRouter(ctx, t, path, addr)
	defer func() { _ = router.Process.Kill() }()
	phost, pport, _ := net.SplitHostPort(addr)
	shard, err := pgx.Connect(ctx, servers[0].DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer shard.Close(ctx)
	runBench := func(args ...string) (*exec.Cmd, *syncBuffer) {
		cmd := exec.CommandContext(ctx, pgbench, append([]string{"-n", "-c", "50", "-j", "2", "-h", phost, "-p", pport, "-U", "postgres"}, append(args, "main")...)...)
		var out syncBuffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd, &out
	}

	// Reloads under load.
	bench, out := runBench("-T", "10")
	adm, err := pgx.Connect(ctx, fmt.Sprintf("postgres://admin@%s/pgrouter?sslmode=disable&default_query_exec_mode=simple_protocol", addr))
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close(ctx)
	time.Sleep(time.Second)
	for i := range 10 {
		writeConfig(10 + i%2*2)
		if i%2 == 0 {
			if _, err := adm.Exec(ctx, "RELOAD"); err != nil {
				t.Fatalf("RELOAD %d under load: %v", i, err)
			}
		} else if err := router.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		time.Sleep(700 * time.Millisecond)
	}
	if err := bench.Wait(); err != nil {
		t.Fatalf("pgbench during the reloads: %v\n%s", err, out.String())
	}
	processed := pgbenchProcessed(t, out.String())
	if reloads := strings.Count(logs.String(), "config reloaded"); reloads != 10 {
		t.Fatalf("%d reloads logged, want 10\n%s", reloads, logs.String())
	}
	if m := regexp.MustCompile(`number of failed transactions: (\d+)`).FindStringSubmatch(out.String()); m != nil && m[1] != "0" {
		t.Fatalf("pgbench saw failures during the reloads:\n%s", out.String())
	}
	before := tpcbCheck(ctx, t, shard)
	if before != int64(processed) {
		t.Fatalf("%d history rows after the reloads, pgbench committed %d", before, processed)
	}
	t.Logf("10 reloads under load: pgbench committed %d transactions, no error", processed)

	// SIGKILL under load.
	bench, out = runBench("-T", "60")
	time.Sleep(3 * time.Second)
	if err := router.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-exited
	_ = bench.Wait() // its clients lost their connections: pgbench exits 2
	processed = pgbenchProcessed(t, out.String())
	deadline := time.Now().Add(10 * time.Second) // backends notice their closed sockets
	for {
		var open int64
		if err := shard.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()").Scan(&open); err != nil {
			t.Fatal(err)
		}
		if open == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d connections still open on the shard 10 s after pgrouter was killed", open)
		}
		time.Sleep(50 * time.Millisecond)
	}
	after := tpcbCheck(ctx, t, shard) - before
	t.Logf("SIGKILL under load: pgbench counted %d committed transactions, the shard has %d", processed, after)
	if after < int64(processed) || after > int64(processed)+50 {
		t.Fatalf("%d transactions on the shard, pgbench counted %d committed (at most 50 more may have committed unacknowledged)", after, processed)
	}

	router, logs, exited = startRouter(ctx, t, path, addr)
	defer func() {
		_ = router.Process.Signal(syscall.SIGTERM)
		<-exited
		if t.Failed() {
			t.Log(logs.String())
		}
	}()
	if out, err := exec.CommandContext(ctx, pgbench, "-n", "-c", "4", "-t", "20", "-h", phost, "-p", pport, "-U", "postgres", "main").CombinedOutput(); err != nil {
		t.Fatalf("pgbench through the restarted pgrouter: %v\n%s", err, out)
	}
}

// pgbenchProcessed reads pgbench's count of committed transactions.
func pgbenchProcessed(t *testing.T, out string) int {
	t.Helper()
	m := regexp.MustCompile(`number of transactions actually processed: (\d+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no pgbench summary:\n%s", out)
	}
	n, _ := strconv.Atoi(m[1])
	if n < 100 {
		t.Fatalf("pgbench committed only %d transactions:\n%s", n, out)
	}
	return n
}

// tpcbCheck checks that the TPC-B balances agree with the history (no
// transaction half done) and returns the number of history rows.
func tpcbCheck(ctx context.Context, t *testing.T, conn *pgx.Conn) int64 {
	t.Helper()
	var history, deltas, accounts, tellers, branches int64
	if err := conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM pgbench_history), (SELECT coalesce(sum(delta), 0) FROM pgbench_history),
		(SELECT sum(abalance) FROM pgbench_accounts), (SELECT sum(tbalance) FROM pgbench_tellers), (SELECT sum(bbalance) FROM pgbench_branches)`).
		Scan(&history, &deltas, &accounts, &tellers, &branches); err != nil {
		t.Fatal(err)
	}
	if accounts != deltas || tellers != deltas || branches != deltas {
		t.Fatalf("TPC-B balances disagree: history %d accounts %d tellers %d branches %d", deltas, accounts, tellers, branches)
	}
	return history
}
