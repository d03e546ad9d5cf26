package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgrouter/pgrouter/bench"
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
	pgbench := pgbenchInit(ctx, t, servers[0])
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
	waitNoBackends(ctx, t, shard, 10*time.Second)
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

// pgbenchInit finds pgbench and initializes its TPC-B tables in the
// server's postgres database.
func pgbenchInit(ctx context.Context, t *testing.T, s *pgtest.Server) string {
	t.Helper()
	pgbench, err := exec.LookPath("pgbench")
	if err != nil {
		t.Fatal("pgbench is not installed: .ci/run installs PostgreSQL's client programs")
	}
	host, port, _ := net.SplitHostPort(s.Addr())
	if out, err := exec.CommandContext(ctx, pgbench, "-i", "-q", "-h", host, "-p", port, "-U", "postgres", "postgres").CombinedOutput(); err != nil {
		t.Fatalf("pgbench -i: %v\n%s", err, out)
	}
	return pgbench
}

// waitNoBackends waits until the shard has no client connection but conn:
// once pgrouter is gone, its server connections must be too (backends take
// a moment to notice a closed socket).
func waitNoBackends(ctx context.Context, t *testing.T, conn *pgx.Conn, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		var open int64
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()").Scan(&open); err != nil {
			t.Fatal(err)
		}
		if open == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d connections still open on the shard %s after pgrouter went away", open, d)
		}
		time.Sleep(50 * time.Millisecond)
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

// TestClientFlood: 10,000 clients try to log in to a real pgrouter with
// max_client_conn 5,000, 2,000 at a time. Exactly 5,000 are held and the
// other 5,000 get FATAL 53300; the refused ones do not grow pgrouter's
// memory; once the flood leaves, clients log in again.
func TestClientFlood(t *testing.T) {
	const limit, attempts, parallel = 5000, 10000, 2000
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	if rl.Cur < rl.Max { // the pgrouter process inherits it
		rl.Cur = rl.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
			t.Fatal(err)
		}
	}
	if rl.Cur < limit+2000 {
		t.Fatalf("open-files limit %d: the flood needs %d (raise the hard limit: ulimit -Hn)", rl.Cur, limit+2000)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	servers := testenv.Servers(t, 1, pgtest.Options{})
	addr, metricsAddr := freeAddr(t), freeAddr(t)
	path := filepath.Join(t.TempDir(), "router.yaml")
	writeFile(t, path, fmt.Sprintf(`listen: %s
metrics_listen: %s
auth: {type: trust}
log: {level: error, format: json}
pool: {mode: transaction, size: 4, max_client_conn: %d}
clusters:
  main:
    shards:
      - {name: s0, dsn: "%s"}
default_route: s0
`, addr, metricsAddr, limit, servers[0].DSN("postgres")))
	gauge := func(name string) float64 {
		var v float64
		for _, m := range scrape(t, metricsAddr)[name].GetMetric() {
			v += m.GetGauge().GetValue()
		}
		return v
	}
	router := runRouter(ctx, t, path, addr)
	rssBefore := processRSS(t, router.Process.Pid)

	dsn := fmt.Sprintf("postgres://postgres@%s/main?sslmode=disable&connect_timeout=60", addr)
	var held []*pgconn.PgConn
	defer func() {
		for _, c := range held {
			_ = c.Close(context.Background())
		}
	}()
	// flood makes n login attempts, parallel at a time, and sorts them.
	flood := func(n int) (refused int) {
		var (
			mu     sync.Mutex
			others []string
			work   = make(chan int)
			wg     sync.WaitGroup
		)
		for range parallel {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range work {
					c, err := pgconn.Connect(ctx, dsn)
					mu.Lock()
					var pgErr *pgconn.PgError
					switch {
					case err == nil:
						held = append(held, c)
					case errors.As(err, &pgErr) && pgErr.Code == "53300" && pgErr.Severity == "FATAL":
						refused++
					default:
						others = append(others, err.Error())
					}
					mu.Unlock()
				}
			}()
		}
		for i := range n {
			work <- i
		}
		close(work)
		wg.Wait()
		if len(others) > 0 {
			t.Fatalf("%d logins failed otherwise than 53300, the first: %s", len(others), others[0])
		}
		return refused
	}
	start := time.Now()
	refused := flood(attempts)
	took := time.Since(start)
	if len(held) != limit || refused != attempts-limit {
		t.Fatalf("%d clients held and %d refused, want %d and %d", len(held), refused, limit, attempts-limit)
	}
	rssFull, goroutinesFull := processRSS(t, router.Process.Pid), gauge("go_goroutines")
	if clients := gauge("pgrouter_clients"); clients != limit {
		t.Fatalf("pgrouter_clients %v with %d held", clients, limit)
	}
	// Refused clients leave nothing behind: 5,000 more against the full
	// pgrouter leave its goroutines where they were.
	if refused := flood(limit); refused != limit {
		t.Fatalf("%d of %d more clients refused", refused, limit)
	}
	rssAfter := processRSS(t, router.Process.Pid)
	t.Logf("%d logins in %s: %d held, %d refused with 53300; pgrouter resident %.0f MB before, %.0f MB with the clients held, %.0f MB after %d more were refused",
		attempts, took.Round(time.Millisecond), limit, attempts-limit, float64(rssBefore)/1e6, float64(rssFull)/1e6, float64(rssAfter)/1e6, limit)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) { // refused handlers may still be exiting
		g := gauge("go_goroutines")
		if g <= goroutinesFull+50 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%v goroutines 10 s after the refused clients left, %v before them", g, goroutinesFull)
		}
	}
	budget := int64(32 << 10) // per held client; the race detector's shadow memory multiplies it
	if raceEnabled {
		budget *= 8
	}
	if rssAfter-rssBefore > limit*budget {
		t.Fatalf("pgrouter grew by %d MB for %d clients held and as many refused (budget %d KB per held client)", (rssAfter-rssBefore)>>20, limit, budget>>10)
	}
	// Still full: one more is refused. Then the flood leaves and a client gets in.
	if _, err := pgconn.Connect(ctx, dsn); err == nil || !strings.Contains(err.Error(), "53300") {
		t.Fatalf("client %d: %v, want 53300", limit+1, err)
	}
	for _, c := range held {
		_ = c.Close(ctx)
	}
	held = nil
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := pgconn.Connect(ctx, dsn)
		if err == nil {
			_ = c.Close(ctx)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no login 30 s after the flood left: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// processRSS is bench.ProcessRSS for a test.
func processRSS(t *testing.T, pid int) int64 {
	t.Helper()
	rss, err := bench.ProcessRSS(pid)
	if err != nil {
		t.Fatal(err)
	}
	return rss
}
