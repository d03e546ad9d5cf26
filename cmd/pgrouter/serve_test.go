package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/pgrouter/pgrouter/internal/pgtest"
	"github.com/pgrouter/pgrouter/internal/pgtest/testenv"
)

// TestSIGTERMUnderPgbench runs a real pgrouter process under a 50-client
// pgbench TPC-B load and sends it SIGTERM: it must exit 0, every
// transaction pgbench saw committed must be on the shard and no other (the
// history rows equal pgbench's count, and the TPC-B balances agree, so no
// transaction is half done), and nothing is left open on the shard.
func TestSIGTERMUnderPgbench(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	servers := testenv.Servers(t, 2, pgtest.Options{})
	pgbench := pgbenchInit(ctx, t, servers[0])

	addr, metricsAddr := freeAddr(t), freeAddr(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "router.yaml")
	yaml := fmt.Sprintf(`listen: %s
metrics_listen: %s
auth: {type: trust}
shutdown_timeout: 60s
log: {level: info, format: json}
pool: {mode: transaction, size: 10, query_wait_timeout: 60s}
clusters:
  main:
    partitions: 2
    shards:
      - {name: s0, dsn: "%s", partitions: "0"}
      - {name: s1, dsn: "%s", partitions: "1"}
default_route: s0
`, addr, metricsAddr, servers[0].DSN("postgres"), servers[1].DSN("postgres"))
	if err := os.WriteFile(path, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	router, logBuf, exited := startRouter(ctx, t, path, addr)
	defer func() { _ = router.Process.Kill() }()
	phost, pport, _ := net.SplitHostPort(addr)

	bench := exec.CommandContext(ctx, pgbench, "-n", "-c", "50", "-j", "2", "-T", "60", "-h", phost, "-p", pport, "-U", "postgres", "main")
	var benchOut syncBuffer
	bench.Stdout, bench.Stderr = &benchOut, &benchOut
	if err := bench.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(4 * time.Second)
	// /metrics over HTTP, as Prometheus scrapes it, moves with the load.
	if n := scrapeRequests(t, metricsAddr); n < 100 {
		t.Fatalf("/metrics counts %v requests on s0 under pgbench", n)
	}
	if err := router.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("pgrouter after SIGTERM: %v\n%s", err, logBuf.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("pgrouter did not exit within 30 s of SIGTERM\n%s", logBuf.String())
	}
	_ = bench.Wait() // clients told 57P01 abort: pgbench exits 2
	out := benchOut.String()
	processed := pgbenchProcessed(t, out)
	if !strings.Contains(out, "57P01") && !strings.Contains(out, "administrator command") {
		t.Fatalf("pgbench was not told 57P01:\n%s", out)
	}

	conn, err := pgx.Connect(ctx, servers[0].DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	history := tpcbCheck(ctx, t, conn)
	t.Logf("pgbench committed %d transactions before SIGTERM ended them; %d history rows", processed, history)
	if history != int64(processed) {
		t.Fatalf("%d history rows, pgbench counted %d committed transactions: a transaction was lost or half done\n%s", history, processed, out)
	}
	waitNoBackends(ctx, t, conn, 5*time.Second)
}

// startRouter runs `pgrouter serve -c path` as a real process (this test
// binary, which TestMain turns into pgrouter) and waits until it accepts
// clients on addr. exited receives the process's exit.
func startRouter(ctx context.Context, t *testing.T, path, addr string) (cmd *exec.Cmd, logs *syncBuffer, exited chan error) {
	t.Helper()
	cmd, logs, exited = startProcess(t, "serve", "-c", path)
	for {
		conn, err := pgx.Connect(ctx, fmt.Sprintf("postgres://postgres@%s/main?sslmode=disable", addr))
		var pgErr *pgconn.PgError
		if err == nil || errors.As(err, &pgErr) { // answering, if only to refuse this probe's login
			if conn != nil {
				conn.Close(ctx)
			}
			return cmd, logs, exited
		}
		select {
		case err := <-exited:
			t.Fatalf("pgrouter exited: %v\n%s", err, logs.String())
		case <-ctx.Done():
			_ = cmd.Process.Kill()
			t.Fatalf("pgrouter did not start: %v\n%s", err, logs.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// runRouter is startRouter for tests that only need a router running: it
// is stopped (SIGTERM) when the test ends, and its output is logged if the
// test failed.
func runRouter(ctx context.Context, t *testing.T, path, addr string) *exec.Cmd {
	t.Helper()
	cmd, logs, exited := startRouter(ctx, t, path, addr)
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		<-exited
		if t.Failed() {
			t.Log(logs.String())
		}
	})
	return cmd
}

// startProcess starts a pgrouter subcommand as a real process, its output
// collected in logs; exited receives its exit.
func startProcess(t *testing.T, args ...string) (cmd *exec.Cmd, logs *syncBuffer, exited chan error) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	logs = &syncBuffer{}
	cmd = exec.Command(self, args...)
	cmd.Env = append(os.Environ(), "PGROUTER_TEST_MAIN=1")
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited = make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	return cmd, logs, exited
}

// pgrouter runs a pgrouter subcommand as a real process and returns its
// output and exit status.
func pgrouter(ctx context.Context, t *testing.T, args ...string) (string, int) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, self, args...)
	cmd.Env = append(os.Environ(), "PGROUTER_TEST_MAIN=1")
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return string(out), 0
	case errors.As(err, &exit):
		return string(out), exit.ExitCode()
	default:
		t.Fatalf("pgrouter %v: %v\n%s", args, err, out)
		return "", -1
	}
}

// scrape fetches /metrics and parses it as Prometheus text.
func scrape(t *testing.T, addr string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("/metrics is not Prometheus text: %v", err)
	}
	return fams
}

// scrapeRequests fetches /metrics, parses it as Prometheus text and returns
// the request count on shard s0.
func scrapeRequests(t *testing.T, addr string) float64 {
	t.Helper()
	var n float64
	for _, m := range scrape(t, addr)["pgrouter_request_duration_seconds"].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "shard" && l.GetValue() == "s0" {
				n += float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return n
}

// freeAddr returns a loopback address nothing listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestPortInUse: serve and demo whose port is taken say so, and only that:
// serve logs nothing before the error (no shard was read), and the demo
// starts no shard and never says it is ready.
func TestPortInUse(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	addr := taken.Addr().String()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// Nothing listens on port 1: a shard read before the listen would log an error.
	path := filepath.Join(t.TempDir(), "router.yaml")
	writeFile(t, path, fmt.Sprintf("listen: %s\nauth: {type: trust}\nsequences: {}\nclusters:\n  main:\n    shards:\n      - {name: s0, dsn: \"postgres://u@127.0.0.1:1/db\"}\n", addr))
	out, code := pgrouter(ctx, t, "serve", "-c", path)
	if code == 0 || !strings.Contains(out, "cannot serve clients on "+addr) || !strings.Contains(out, "address already in use") ||
		!strings.Contains(out, "change listen in router.yaml") || strings.Contains(out, `"level":"error"`) || strings.Contains(out, "sequences") {
		t.Fatalf("serve on a port in use: exit %d\n%s", code, out)
	}

	dir := t.TempDir()
	out, code = pgrouter(ctx, t, "demo", "--dir", dir, "--listen", addr)
	if code == 0 || !strings.Contains(out, "cannot serve clients on "+addr) || !strings.Contains(out, "change --listen") || strings.Contains(out, "demo is ready") {
		t.Fatalf("demo on a port in use: exit %d\n%s", code, out)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("the demo started something before finding its port taken: %v", entries)
	}
}
