package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/goleak"

	"github.com/pgrouter/pgrouter/config"
	"github.com/pgrouter/pgrouter/internal/pgtest"
)

// TestMain runs the test binary as pgrouter itself when asked to (so tests
// can signal a real pgrouter process), and checks for leaked goroutines
// otherwise.
func TestMain(m *testing.M) {
	if os.Getenv("PGROUTER_TEST_MAIN") == "1" {
		main()
		os.Exit(0)
	}
	goleak.VerifyTestMain(m)
}

// syncBuffer collects the demo's output while it runs.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestDemo runs `pgrouter demo` in-process: it must start its shards, accept
// the connection it prints (and a bare one with any database name), send
// statements to shard s0, and stop everything when its context ends.
func TestDemo(t *testing.T) {
	addr := freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out syncBuffer
	done := make(chan error, 1)
	go func() { done <- runDemo(ctx, &out, "", 2, 0, addr) }()

	host, port, _ := net.SplitHostPort(addr)
	deadline := time.Now().Add(90 * time.Second)
	var conn *pgx.Conn
	var err error
	for {
		conn, err = pgx.Connect(context.Background(), fmt.Sprintf("postgres://demo@%s:%s/demo?sslmode=disable", host, port))
		if err == nil {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("demo stopped: %v\n%s", err, out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("demo not reachable: %v\n%s", err, out.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !strings.Contains(out.String(), "psql -h "+host+" -p "+port+" -U demo demo") {
		t.Fatalf("demo does not print how to connect:\n%s", out.String())
	}
	var port0 int
	if err := conn.QueryRow(context.Background(), "SELECT inet_server_port()").Scan(&port0); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), fmt.Sprintf("shard s0  127.0.0.1:%d", port0)) {
		t.Fatalf("statement did not run on shard s0 (port %d):\n%s", port0, out.String())
	}
	checkSeqExamples(t, out.String())
	checkRefsyncExamples(t, out.String(), host, port)
	// Routed calls: users land on the shards that own them, the count sums all
	// shards, and no two users get the same id.
	ports, ids := map[string]bool{}, map[string]bool{}
	for i := range 40 {
		var where string
		if err := conn.QueryRow(context.Background(), "SELECT add_user($1, $2)", fmt.Sprintf("user%d", i), "x@example.com").Scan(&where); err != nil {
			t.Fatal(err)
		}
		id, port, ok := strings.Cut(where, " stored on port ")
		if !ok || ids[id] {
			t.Fatalf("add_user answered %q (ids so far %v)", where, ids)
		}
		ports[port], ids[id] = true, true
	}
	if len(ports) != 2 {
		t.Fatalf("40 users landed on %v; want both shards", ports)
	}
	var n int64
	if err := conn.QueryRow(context.Background(), "SELECT count_users()").Scan(&n); err != nil || n != 40 {
		t.Fatalf("count_users() = %d, %v", n, err)
	}
	conn.Close(context.Background())
	checkDefaultRouteNotice(t, host, port)
	checkDemoPgbench(t, out.String(), host, port)
	other, err := pgx.Connect(context.Background(), fmt.Sprintf("postgres://root@%s:%s/root?sslmode=disable", host, port))
	if err != nil {
		t.Fatalf("a bare psql-style connection (user root, database root) is refused: %v", err)
	}
	other.Close(context.Background())
	// The admin console the demo prints.
	if !strings.Contains(out.String(), "-U admin pgrouter") {
		t.Fatalf("demo does not print the admin console:\n%s", out.String())
	}
	adm, err := pgx.Connect(context.Background(), fmt.Sprintf("postgres://admin@%s:%s/pgrouter?sslmode=disable&default_query_exec_mode=simple_protocol", host, port))
	if err != nil {
		t.Fatalf("admin console: %v", err)
	}
	var shardRows int
	rows, err := adm.Query(context.Background(), "SHOW SHARDS")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		shardRows++
	}
	if rows.Close(); rows.Err() != nil || shardRows != 2 {
		t.Fatalf("SHOW SHARDS on the demo: %d rows, %v", shardRows, rows.Err())
	}
	adm.Close(context.Background())

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("demo did not stop")
	}
}

// checkSeqExamples runs the README's pgrouter seq examples against the demo's
// fresh shards (whose sequences the demo strided) and compares what the
// commands print with the README: a clean check, a check after a hand
// setval on s1, and the apply that repairs it.
func checkSeqExamples(t *testing.T, demoOut string) {
	t.Helper()
	m := regexp.MustCompile(`config    (\S+)`).FindStringSubmatch(demoOut)
	if m == nil {
		t.Fatalf("demo does not print its config file:\n%s", demoOut)
	}
	path := m[1]
	if !strings.Contains(demoOut, "pgrouter seq check -c "+path) {
		t.Fatalf("demo does not print how to check its sequences:\n%s", demoOut)
	}
	readme := docsText(t)
	run := func(f func(context.Context, io.Writer, string) error) string {
		var b strings.Builder
		if err := f(context.Background(), &b, path); err != nil {
			fmt.Fprintf(&b, "pgrouter: %v\n", err) // as main prints it
		}
		return b.String()
	}
	compare := func(marker, got string) {
		t.Helper()
		want := readmeExample(t, string(readme), marker)
		if want != got {
			t.Fatalf("README example %s differs from what the command prints.\nREADME:\n%s\nprinted:\n%s", marker, want, got)
		}
	}
	compare("seq-check", run(runSeqCheck))

	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	s1, err := pgx.Connect(context.Background(), cfg.Clusters[demoCluster].Shards[1].DSN)
	if err != nil {
		t.Fatal(err)
	}
	defer s1.Close(context.Background())
	if _, err := s1.Exec(context.Background(), "SELECT setval('users_id_seq', 1)"); err != nil {
		t.Fatal(err)
	}
	compare("seq-check-problem", run(runSeqCheck))
	compare("seq-apply", run(func(ctx context.Context, w io.Writer, path string) error { return runSeqApply(ctx, w, path, false) }))
}

// fencedBlock returns the body of the fenced block right after the line
// "<!-- marker -->" in doc (the fence's language, if any, skipped): the
// examples that README and docs/ mark for the tests to run.
func fencedBlock(t *testing.T, doc, marker string) string {
	t.Helper()
	_, rest, ok := strings.Cut(doc, "<!-- "+marker+" -->\n```")
	if !ok {
		t.Fatalf("no block marked %q", marker)
	}
	_, rest, _ = strings.Cut(rest, "\n") // the fence's language
	block, _, ok := strings.Cut(rest, "```\n")
	if !ok {
		t.Fatalf("the block marked %q is not closed", marker)
	}
	return block
}

// readmeExample returns the fenced block after "<!-- example: marker -->"
// in the README, without its first line (the command).
func readmeExample(t *testing.T, readme, marker string) string {
	t.Helper()
	_, output, _ := strings.Cut(fencedBlock(t, readme, "example: "+marker), "\n")
	return output
}

// checkRefsyncExamples runs the README's refsync examples on the demo with
// psql: every shard's copy of countries, then again after an update on the
// source the demo prints.
// docsText is the README and every document under docs/, where the
// examples the demo must reproduce live.
func docsText(t *testing.T) []byte {
	t.Helper()
	files, err := filepath.Glob("../../docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	var all []byte
	for _, f := range append([]string{"../../README.md"}, files...) {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, b...)
	}
	return all
}

// anyRowOrder sorts the rows of psql's table output: a run_on all call
// streams each shard's rows as they come, so shards interleave in any order.
func anyRowOrder(out string) string {
	lines := strings.Split(out, "\n")
	start, end := -1, -1
	for i, l := range lines {
		switch {
		case start < 0 && strings.HasPrefix(l, "---"):
			start = i + 1
		case start >= 0 && strings.HasPrefix(l, "(") && strings.HasSuffix(l, "rows)"):
			end = i
		}
	}
	if start >= 0 && end > start {
		sort.Strings(lines[start:end])
	}
	return strings.Join(lines, "\n")
}

func checkRefsyncExamples(t *testing.T, demoOut, host, port string) {
	t.Helper()
	readme := docsText(t)
	bin, err := pgtest.BinDir()
	if err != nil {
		t.Fatal(err)
	}
	psql := func(args ...string) string {
		out, err := exec.Command(filepath.Join(bin, "psql"), append([]string{"-X"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("psql %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	query := func() string {
		return psql("-h", host, "-p", port, "-U", "demo", "demo", "-c", "SELECT * FROM country_everywhere('SE')")
	}
	if got, want := query(), readmeExample(t, string(readme), "refsync-before"); anyRowOrder(got) != anyRowOrder(want) {
		t.Fatalf("README example refsync-before differs.\nREADME:\n%s\npsql:\n%s", want, got)
	}
	m := regexp.MustCompile(`psql -h (\S+) -p (\d+) -U (\S+) postgres -c "(UPDATE countries [^"]+)"`).FindStringSubmatch(demoOut)
	if m == nil {
		t.Fatalf("demo does not print how to update countries on the source:\n%s", demoOut)
	}
	psql("-h", m[1], "-p", m[2], "-U", m[3], "postgres", "-c", m[4])
	want := readmeExample(t, string(readme), "refsync-after")
	deadline := time.Now().Add(20 * time.Second)
	for got := query(); anyRowOrder(got) != anyRowOrder(want); got = query() {
		if time.Now().After(deadline) {
			t.Fatalf("README example refsync-after differs.\nREADME:\n%s\npsql:\n%s", want, got)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// checkDefaultRouteNotice: in the demo a statement without a routed call
// runs on s0 and says so in a NOTICE; routed calls and statements any shard
// answers alike get none.
func checkDefaultRouteNotice(t *testing.T, host, port string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cc, err := pgx.ParseConfig(fmt.Sprintf("postgres://demo@%s:%s/demo?sslmode=disable", host, port))
	if err != nil {
		t.Fatal(err)
	}
	var notices []string
	cc.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) { notices = append(notices, n.Message) }
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for _, sql := range []string{"SELECT count_users()", "SELECT now()", "SELECT * FROM get_user('user1')"} {
		if _, err := conn.Exec(ctx, sql); err != nil || len(notices) != 0 {
			t.Fatalf("%s: %v, notices %q; want none", sql, err, notices)
		}
	}
	var users int64
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM users").Scan(&users); err != nil {
		t.Fatal(err)
	}
	if len(notices) != 1 || !strings.Contains(notices[0], "runs on shard s0 (default_route) and sees only that shard's rows") {
		t.Fatalf("SELECT count(*) FROM users (%d of 40 users): notices %q", users, notices)
	}
	// The simple protocol (psql's), and inside a transaction pgrouter began
	// for the client, which the statement then pins to s0.
	for _, sql := range []string{"SELECT count(*) FROM users", "BEGIN; SELECT count(*) FROM users; COMMIT"} {
		notices = nil
		if _, err := conn.Exec(ctx, sql, pgx.QueryExecModeSimpleProtocol); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
		if len(notices) != 1 || !strings.Contains(notices[0], "runs on shard s0 (default_route)") {
			t.Fatalf("%s in the simple protocol: notices %q", sql, notices)
		}
	}
}

// checkDemoPgbench runs the README's demo pgbench block (shortened to 2 s)
// and checks that it is the script the demo prints and that every shard
// served its lookups (SHOW STATS before and after).
func checkDemoPgbench(t *testing.T, demoOut, host, port string) {
	t.Helper()
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	script, _, ok := strings.Cut(fencedBlock(t, string(readme), "example: demo-pgbench"), "\nEOF\n")
	if !ok {
		t.Fatal("README's demo-pgbench example has no EOF line")
	}
	script += "\nEOF\n"
	_, body, _ := strings.Cut(script, "\n")
	if !strings.Contains(demoOut, body) {
		t.Fatalf("the demo prints another pgbench script than the README's:\n%s\nREADME:\n%s", demoOut, body)
	}
	script = strings.Replace(strings.Replace(script, "-p 6432", "-p "+port, 1), "-T 10", "-T 2", 1)
	script = strings.Replace(script, "-h 127.0.0.1", "-h "+host, 1)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	adm, err := pgx.Connect(ctx, fmt.Sprintf("postgres://admin@%s:%s/pgrouter?sslmode=disable&default_query_exec_mode=simple_protocol", host, port))
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close(ctx)
	xacts := func() map[string]int64 {
		out := map[string]int64{}
		for _, r := range adminMaps(ctx, t, adm, "SHOW STATS") {
			out[r["shard"].(string)] = r["total_xact_count"].(int64)
		}
		return out
	}
	before := xacts()
	cmd := exec.CommandContext(ctx, "sh", "-c", script)
	cmd.Env = append(os.Environ(), "PGSSLMODE=disable")
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "tps = ") {
		t.Fatalf("the README's demo pgbench: %v\n%s", err, out)
	}
	after := xacts()
	for _, shard := range []string{"s0", "s1"} {
		if moved := after[shard] - before[shard]; moved < 100 {
			t.Fatalf("the README's demo pgbench ran %d transactions on %s (before %v, after %v); want every shard busy", moved, shard, before, after)
		}
	}
}

// TestDemoReplicas: pgrouter demo --replicas 1 starts a standby of each
// shard, prints it, and a read_only call is answered by it.
func TestDemoReplicas(t *testing.T) {
	addr := freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	var out syncBuffer
	done := make(chan error, 1)
	go func() { done <- runDemo(ctx, &out, "", 1, 1, addr) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("demo: %v", err)
		}
	}()
	deadline := time.Now().Add(90 * time.Second)
	for !strings.Contains(out.String(), "pgrouter demo is ready") {
		if time.Now().After(deadline) {
			t.Fatalf("demo not ready:\n%s", out.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !strings.Contains(out.String(), "standby s0/r1") || !strings.Contains(out.String(), "SELECT served_by('bob')") {
		t.Fatalf("the demo does not show its standby:\n%s", out.String())
	}
	host, port, _ := net.SplitHostPort(addr)
	conn, err := pgx.Connect(context.Background(), fmt.Sprintf("postgres://demo@%s:%s/demo?sslmode=disable", host, port))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var got string
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if err := conn.QueryRow(context.Background(), "SELECT served_by('bob')").Scan(&got); err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(got, "a standby") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("served_by('bob') answered %q: no standby served it", got)
		}
	}
}
