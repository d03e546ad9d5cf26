package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgrouter/pgrouter/bench"
	"github.com/pgrouter/pgrouter/internal/pgtest"
	"github.com/pgrouter/pgrouter/internal/pgtest/testenv"
)

// TestBenchEndToEnd: `pgrouter bench init` loads two shards and a PL/Proxy
// database, and `pgrouter bench run` measures a real pgrouter and PL/Proxy
// behind a real pgbouncer side by side with the mixed workload, each with
// its own protocol, without errors, with table, JSON and chart.
func TestBenchEndToEnd(t *testing.T) {
	ctx := context.Background()
	servers := testenv.Servers(t, 2, pgtest.Options{})
	var dsns []string
	for _, s := range servers {
		if err := s.Exec(ctx, "postgres", "CREATE DATABASE bench"); err != nil {
			t.Fatal(err)
		}
		dsns = append(dsns, s.DSN("bench"))
	}
	if err := servers[0].Exec(ctx, "postgres", "CREATE DATABASE plproxy"); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "router.yaml")
	addr := freeAddr(t)
	writeFile(t, path, fmt.Sprintf(`listen: %s
auth: {type: trust}
log: {format: json}
pool: {mode: transaction, size: 8}
sequences: {stride: 64}
default_route: s0
clusters:
  main:
    hash: hashtext
    partitions: 16
    shards:
      - {name: s0, dsn: %q, partitions: "0-7"}
      - {name: s1, dsn: %q, partitions: "8-15"}
%s`, addr, dsns[0], dsns[1], bench.Functions))
	proxyDSN := servers[0].DSN("plproxy")
	out, code := pgrouter(ctx, t, "bench", "init", "-c", path, "--users", "1000", "--plproxy", proxyDSN)
	if code != 0 || !strings.Contains(out, "main: 1000 users loaded on 2 shards") || !strings.Contains(out, "main: sequences strided by 64") ||
		!strings.Contains(out, "PL/Proxy functions created over 16 partitions") {
		t.Fatalf("bench init (exit %d):\n%s", code, out)
	}
	residues := map[int64]bool{}
	for i, dsn := range dsns { // the users' id sequence strides by 64, each shard in its own slot
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		var inc, next int64
		err = conn.QueryRow(ctx, "SELECT increment_by, nextval('bench_users_id_seq') FROM pg_sequences WHERE sequencename = 'bench_users_id_seq'").Scan(&inc, &next)
		conn.Close(ctx)
		if err != nil || inc != 64 || residues[next%64] {
			t.Fatalf("shard %d sequence: increment %d, next %d, residues so far %v (%v)", i, inc, next, residues, err)
		}
		residues[next%64] = true
	}
	router := runRouter(ctx, t, path, addr)
	bouncer, err := pgtest.StartPgBouncer(ctx, map[string]string{
		"plproxy": fmt.Sprintf("host=%s port=%d dbname=plproxy user=%s", servers[0].Host, servers[0].Port, pgtest.SuperUser),
	}, 4)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(bouncer.Stop)
	jsonPath := filepath.Join(dir, "bench.json")
	out, code = pgrouter(ctx, t, "bench", "run", "--target", fmt.Sprintf("pgrouter=postgres://bench@%s/main?sslmode=disable", addr),
		"--target", "plproxy="+bouncer.DSN("plproxy"), "--protocol", "prepared", "--protocol", "plproxy=extended", "--workload", "mixed", "--clients", "1,4", "--duration", "600ms", "--rounds", "2",
		"--users", "1000", "--json", jsonPath, "--chart", filepath.Join(dir, "bench.png"), "--cpu", fmt.Sprintf("pgrouter=%d", router.Process.Pid), "--cpu", fmt.Sprintf("plproxy=%d", bouncer.PID()))
	if code != 0 {
		t.Fatalf("bench run (exit %d):\n%s", code, out)
	}
	var doc struct {
		Results []bench.Result `json:"results"`
	}
	data, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	if len(doc.Results) != 4 {
		t.Fatalf("%d results, want 2 targets × 2 client counts:\n%s", len(doc.Results), out)
	}
	for _, r := range doc.Results {
		want := map[string]string{"pgrouter": "prepared", "plproxy": "extended"}[r.Target]
		if r.Queries == 0 || r.Errors != 0 || (r.Target == "pgrouter") != (r.Ratio == 1) || r.Protocol != want {
			t.Fatalf("result %+v\n%s", r, out)
		}
	}
	if !strings.Contains(out, "ratio") || !strings.Contains(out, "cpu µs/query") || strings.Count(out, "pgrouter") != 2 || strings.Count(out, "plproxy") != 2 {
		t.Fatalf("bench run table:\n%s", out)
	}
	for _, r := range doc.Results {
		if r.Target == "pgrouter" && r.CPUPerQus <= 0 {
			t.Fatalf("no CPU per query measured for pgrouter: %+v", r)
		}
	}
	if img, err := os.ReadFile(filepath.Join(dir, "bench.png")); err != nil || !bytes.HasPrefix(img, []byte("\x89PNG\r\n")) {
		t.Fatalf("chart: %v", err)
	}
	t.Logf("\n%s", out)
	svgPath := filepath.Join(dir, "again.svg")
	if out, code := pgrouter(ctx, t, "bench", "chart", "--json", jsonPath, "--chart", svgPath); code != 0 {
		t.Fatalf("bench chart (exit %d):\n%s", code, out)
	}
	if svg, err := os.ReadFile(svgPath); err != nil || strings.Count(string(svg), "<title>") != 4+8 || !strings.Contains(string(svg), "mixed workload") {
		t.Fatalf("chart drawn again from the JSON (%v):\n%s", err, svg)
	}

	out, code = pgrouter(ctx, t, "bench", "idle", "--target", fmt.Sprintf("postgres://bench@%s/main?sslmode=disable", addr),
		"--clients", "300", "--pid", fmt.Sprint(router.Process.Pid), "--hold", "100ms")
	if code != 0 || !strings.Contains(out, "300 clients logged in and ran a query each") || !strings.Contains(out, "KB per client") {
		t.Fatalf("bench idle (exit %d):\n%s", code, out)
	}
	t.Logf("\n%s", out)
}

// TestBenchSaysWhatIsMissing: with a router.yaml that does not declare the
// benchmark's functions, `bench init` loads the data, prints the
// declarations to add and exits 1; `bench run` against that router, whose
// every query fails, prints its table and exits 1 saying why.
func TestBenchSaysWhatIsMissing(t *testing.T) {
	ctx := context.Background()
	server := testenv.Servers(t, 1, pgtest.Options{})[0]
	path := filepath.Join(t.TempDir(), "router.yaml")
	addr := freeAddr(t)
	writeFile(t, path, fmt.Sprintf("listen: %s\nauth: {type: trust}\nlog: {format: json}\ndefault_route: error\nclusters:\n  main:\n    shards:\n      - {name: s0, dsn: %q}\n",
		addr, server.DSN("postgres")))
	out, code := pgrouter(ctx, t, "bench", "init", "-c", path, "--users", "100")
	if code != 1 || !strings.Contains(out, "main: 100 users loaded on 1 shards") ||
		!strings.Contains(out, "does not route bench_get_user, bench_add_balance, bench_count_users") ||
		!strings.Contains(out, bench.Functions) {
		t.Fatalf("bench init without the functions declared (exit %d):\n%s", code, out)
	}
	runRouter(ctx, t, path, addr)
	out, code = pgrouter(ctx, t, "bench", "run", "--target", fmt.Sprintf("r=postgres://postgres@%s/main?sslmode=disable", addr),
		"--workload", "point", "--clients", "1", "--duration", "1s", "--rounds", "1")
	if code != 1 || !strings.Contains(out, "the benchmark had errors") || !strings.Contains(out, "target r at 1 client:") || !strings.Contains(out, "tps") ||
		!strings.Contains(out, "bench_get_user is not declared in router.yaml") {
		t.Fatalf("bench run with every query failing (exit %d):\n%s", code, out)
	}
}

// TestBenchEqualConnections: `bench run --admin` counts the server
// connections each pooler holds from its own admin console (pgrouter's and
// a real pgbouncer's SHOW POOLS), and --equal-connections passes when they
// hold as many and fails, naming the counts, when they do not.
func TestBenchEqualConnections(t *testing.T) {
	ctx := context.Background()
	server := testenv.Servers(t, 1, pgtest.Options{})[0]
	path := filepath.Join(t.TempDir(), "router.yaml")
	addr := freeAddr(t)
	writeFile(t, path, fmt.Sprintf("listen: %s\nauth: {type: trust}\nadmin_users: [%s]\nlog: {format: json}\npool: {mode: transaction, size: 2}\ndefault_route: s0\nclusters:\n  main:\n    shards:\n      - {name: s0, dsn: %q}\n",
		addr, pgtest.SuperUser, server.DSN("postgres")))
	runRouter(ctx, t, path, addr)
	bouncers := map[int]*pgtest.PgBouncer{}
	for _, size := range []int{2, 3} {
		b, err := pgtest.StartPgBouncer(ctx, map[string]string{
			"main": fmt.Sprintf("host=%s port=%d dbname=postgres user=%s", server.Host, server.Port, pgtest.SuperUser),
		}, size)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(b.Stop)
		bouncers[size] = b
	}
	run := func(size int) (string, int, []bench.Result) {
		jsonPath := filepath.Join(t.TempDir(), "bench.json")
		b := bouncers[size]
		out, code := pgrouter(ctx, t, "bench", "run", "--workload", "passthrough", "--clients", "8", "--duration", "1s", "--rounds", "1", "--json", jsonPath,
			"--target", "pgbouncer="+b.DSN("main"), "--admin", "pgbouncer="+b.DSN("pgbouncer"),
			"--target", fmt.Sprintf("pgrouter=postgres://%s@%s/main?sslmode=disable", pgtest.SuperUser, addr),
			"--admin", fmt.Sprintf("pgrouter=postgres://%s@%s/pgrouter?sslmode=disable", pgtest.SuperUser, addr), "--equal-connections")
		var doc struct {
			Results []bench.Result `json:"results"`
		}
		if data, err := os.ReadFile(jsonPath); err == nil {
			_ = json.Unmarshal(data, &doc)
		}
		return out, code, doc.Results
	}
	out, code, rs := run(2)
	t.Logf("\n%s", out)
	if code != 0 || len(rs) != 2 || rs[0].ServerConns != 2 || rs[1].ServerConns != 2 || !strings.Contains(out, "server conns") {
		t.Fatalf("8 clients on 2 server connections each (exit %d) %+v:\n%s", code, rs, out)
	}
	out, code, rs = run(3)
	if code != 1 || len(rs) != 2 || rs[0].ServerConns != 3 || rs[1].ServerConns != 2 ||
		!strings.Contains(out, "different numbers of server connections (at 8 clients: pgbouncer 3, pgrouter 2)") {
		t.Fatalf("pgbouncer on 3 server connections, pgrouter on 2 (exit %d) %+v:\n%s", code, rs, out)
	}
	out, code = pgrouter(ctx, t, "bench", "run", "--workload", "passthrough", "--clients", "1", "--duration", "1s",
		"--target", "pgbouncer="+bouncers[2].DSN("main"), "--equal-connections")
	if code == 0 || !strings.Contains(out, "target pgbouncer has no --admin pgbouncer=DSN") {
		t.Fatalf("--equal-connections without --admin (exit %d):\n%s", code, out)
	}
}
