package proxy_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/pgrouter/pgrouter/console"
	"github.com/pgrouter/pgrouter/internal/pgtest"
	"github.com/pgrouter/pgrouter/internal/pgtest/testenv"
)

const adminTopLevel = "admin_users: [admin]\n"

// admin opens an admin console connection (simple protocol, as psql).
func (p *testProxy) admin(t testing.TB, ctx context.Context) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(ctx, p.url("admin", "pgrouter")+"&default_query_exec_mode=simple_protocol")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

// adminRows runs a console command and returns its rows by column name.
func adminRows(t testing.TB, ctx context.Context, conn *pgx.Conn, cmd string) []map[string]any {
	t.Helper()
	rows, err := conn.Query(ctx, cmd)
	if err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
	defer rows.Close()
	var out []map[string]any
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			t.Fatalf("%s: %v", cmd, err)
		}
		row := map[string]any{}
		for i, fd := range rows.FieldDescriptions() {
			row[fd.Name] = vals[i]
		}
		out = append(out, row)
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
	return out
}

// rowWhere returns the row whose column col equals val.
func rowWhere(t testing.TB, rows []map[string]any, col string, val any) map[string]any {
	t.Helper()
	for _, r := range rows {
		if r[col] == val {
			return r
		}
	}
	t.Fatalf("no row with %s = %v in %v", col, val, rows)
	return nil
}

// scrape fetches /metrics and parses it as Prometheus text.
func scrape(t testing.TB, h http.Handler) map[string]*dtoFamily {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("/metrics: %d %s", rec.Code, rec.Body)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(io.Reader(rec.Body))
	if err != nil {
		t.Fatalf("/metrics is not Prometheus text: %v", err)
	}
	return fams
}

// metricValue sums a family's samples whose labels include want (counters,
// gauges, and histogram counts).
func metricValue(fams map[string]*dtoFamily, name string, want map[string]string) float64 {
	f := fams[name]
	if f == nil {
		return -1
	}
	var sum float64
	for _, m := range f.GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		ok := true
		for k, v := range want {
			ok = ok && labels[k] == v
		}
		if !ok {
			continue
		}
		switch {
		case m.Counter != nil:
			sum += m.Counter.GetValue()
		case m.Gauge != nil:
			sum += m.Gauge.GetValue()
		case m.Histogram != nil:
			sum += float64(m.Histogram.GetSampleCount())
		}
	}
	return sum
}

// TestAdminConsole uses the console as the oracle for what clients do:
// counters and pool occupancy move as a client works, SHOW CLIENTS and SHOW
// SERVERS link the client to its server inside a transaction, and /metrics
// moves with them. It also checks who may log in and what bad commands get.
func TestAdminConsole(t *testing.T) {
	ctx := testContext(t, 2*time.Minute)
	p := startProxy(t, proxyOpts{topLevel: adminTopLevel})

	// Who may log in, and what the console refuses.
	_, err := pgx.Connect(ctx, p.url("postgres", "pgrouter"))
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "42501" || !strings.Contains(pgErr.Hint, "admin_users") {
		t.Fatalf("non-admin user: %v; want 42501 with a hint naming admin_users", err)
	}
	if c, err := pgx.Connect(ctx, p.url("admin", "pgrouter")); err != nil {
		t.Fatal(err)
	} else {
		var v string
		err := c.QueryRow(ctx, "SHOW VERSION").Scan(&v) // pgx prepares it: extended protocol
		if pgCode(err) != "0A000" || !strings.Contains(err.Error(), "simple query protocol") {
			t.Fatalf("extended protocol on the console: %v; want 0A000", err)
		}
		if err := c.QueryRow(ctx, "SHOW VERSION", pgx.QueryExecModeSimpleProtocol).Scan(&v); err != nil || !strings.HasPrefix(v, "pgrouter ") {
			t.Fatalf("after a refused Parse the console goes on: %q %v", v, err)
		}
		c.Close(ctx)
	}
	adm := p.admin(t, ctx)
	_, err = adm.Exec(ctx, "SHOW NONSENSE")
	if pgCode(err) != "42601" || !strings.Contains(err.Error(), "unknown admin console command") {
		t.Fatalf("unknown command: %v; want 42601", err)
	}
	if _, err := adm.Exec(ctx, "SELECT 1"); pgCode(err) != "42601" {
		t.Fatalf("SQL on the console: %v; want 42601 (it never reaches a shard)", err)
	}
	if _, err := adm.Exec(ctx, "PAUSE nosuch"); pgCode(err) != "42704" {
		t.Fatalf("PAUSE of an unknown shard: %v; want 42704", err)
	}
	help := adminRows(t, ctx, adm, "show help")
	if len(help) != len(console.Commands) {
		t.Fatalf("SHOW HELP: %d rows", len(help))
	}
	cfgRows := adminRows(t, ctx, adm, "SHOW CONFIG")
	if r := rowWhere(t, cfgRows, "key", "pool.size"); r["value"] != "4" || r["default"] != "20" {
		t.Fatalf("SHOW CONFIG pool.size: %v", r)
	}
	rowWhere(t, cfgRows, "key", "clusters.main.shards[0].dsn")

	before := rowWhere(t, adminRows(t, ctx, adm, "SHOW SHARDS"), "shard", "s0")
	if before["cluster"] != "main" || before["partitions"] != "0" || before["paused"] != false {
		t.Fatalf("SHOW SHARDS s0: %v", before)
	}
	metrics := p.metrics
	reqsBefore := metricValue(scrape(t, metrics), "pgrouter_request_duration_seconds", map[string]string{"shard": "s0"})

	client := p.connect(t, ctx, func(cc *pgx.ConnConfig) { cc.RuntimeParams["application_name"] = "console-test" })
	const n = 50
	for i := range n {
		var v int
		if err := client.QueryRow(ctx, "SELECT $1::int", i).Scan(&v); err != nil || v != i {
			t.Fatalf("query %d: %v", i, err)
		}
	}
	after := rowWhere(t, adminRows(t, ctx, adm, "SHOW SHARDS"), "shard", "s0")
	if got := after["query_count"].(int64) - before["query_count"].(int64); got < n {
		t.Fatalf("SHOW SHARDS query_count moved by %d after %d queries", got, n)
	}
	if after["xact_count"].(int64)-before["xact_count"].(int64) < n || after["sv_idle"].(int64) < 1 || after["sv_active"].(int64) != 0 {
		t.Fatalf("SHOW SHARDS after the queries: %v", after)
	}
	stats := rowWhere(t, adminRows(t, ctx, adm, "SHOW STATS"), "shard", "s0")
	if stats["total_query_count"].(int64) < n || stats["total_received"].(int64) == 0 || stats["total_sent"].(int64) == 0 {
		t.Fatalf("SHOW STATS: %v", stats)
	}
	fams := scrape(t, metrics)
	if got := metricValue(fams, "pgrouter_request_duration_seconds", map[string]string{"shard": "s0"}) - reqsBefore; got < n {
		t.Fatalf("/metrics request count moved by %v after %d queries", got, n)
	}
	if metricValue(fams, "pgrouter_pool_server_idle", map[string]string{"shard": "s0", "user": "postgres"}) < 1 ||
		metricValue(fams, "pgrouter_clients", nil) < 2 || metricValue(fams, "process_cpu_seconds_total", nil) <= 0 {
		t.Fatal("/metrics gauges do not match the load")
	}

	// Inside a transaction the client holds a server: both views link them.
	tx, err := client.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var pid int64
	if err := tx.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	cl := rowWhere(t, adminRows(t, ctx, adm, "SHOW CLIENTS"), "application_name", "console-test")
	if cl["state"] != "active" || cl["database"] != "main" || cl["user"] != "postgres" || cl["remote_pid"] != pid || cl["shard"] != "s0" {
		t.Fatalf("SHOW CLIENTS in a transaction: %v (backend pid %d)", cl, pid)
	}
	sv := rowWhere(t, adminRows(t, ctx, adm, "SHOW SERVERS"), "remote_pid", pid)
	if sv["state"] != "active" || sv["link"] != cl["id"] || sv["shard"] != "s0" {
		t.Fatalf("SHOW SERVERS: %v; client %v", sv, cl["id"])
	}
	poolRows := adminRows(t, ctx, adm, "SHOW POOLS")
	pools := rowWhere(t, poolRows, "shard", "s0")
	if pools["sv_active"] != int64(1) || pools["cl_active"] != int64(1) || pools["pool_mode"] != "transaction" {
		t.Fatalf("SHOW POOLS in a transaction: %v", pools)
	}
	// The client holds a server of s0 only: s1's pool has no client.
	if other := rowWhere(t, poolRows, "shard", "s1"); other["cl_active"] != int64(0) {
		t.Fatalf("SHOW POOLS s1 while the client is in a transaction on s0: %v", other)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	cl = rowWhere(t, adminRows(t, ctx, adm, "SHOW CLIENTS"), "application_name", "console-test")
	if cl["state"] != "idle" || cl["link"] != nil {
		t.Fatalf("SHOW CLIENTS after commit: %v", cl)
	}
	// Several commands in one query, as psql -c sends them.
	out := p.tool(t, ctx, "", "psql", "-U", "admin", "-d", "pgrouter", "-X", "-c", "SHOW VERSION; SHOW SHARDS")
	if !strings.Contains(out, "pgrouter") || !strings.Contains(out, "(2 rows)") {
		t.Fatalf("psql on the console:\n%s", out)
	}
}

// TestAdminShowFunctionsAndSequences checks the routing and sequence views
// against the shards' catalogs.
func TestAdminShowFunctionsAndSequences(t *testing.T) {
	ctx := testContext(t, time.Minute)
	for i := range allShards {
		shardExec(t, i, "DROP SEQUENCE IF EXISTS adm_seq; CREATE SEQUENCE adm_seq INCREMENT BY 7")
		shardExec(t, i, fmt.Sprintf("SELECT setval('adm_seq', %d)", 100+i))
	}
	p := startRouting(t, proxyOpts{topLevel: adminTopLevel})
	adm := p.admin(t, ctx)
	fn := rowWhere(t, adminRows(t, ctx, adm, "SHOW FUNCTIONS"), "function", "public.rt_get_user")
	if fn["run_on"] != "hash" || fn["key"] != "i_username" || fn["loaded"] != true || !strings.Contains(fn["signatures"].(string), "i_username text") {
		t.Fatalf("SHOW FUNCTIONS rt_get_user: %v", fn)
	}
	fn = rowWhere(t, adminRows(t, ctx, adm, "SHOW FUNCTIONS"), "function", "public.rt_count_users")
	if fn["run_on"] != "all" || fn["merge"] != "sum" {
		t.Fatalf("SHOW FUNCTIONS rt_count_users: %v", fn)
	}
	fn = rowWhere(t, adminRows(t, ctx, adm, "SHOW FUNCTIONS"), "function", "public.rt_add_users")
	if fn["split"] != "i_names, i_emails" || fn["merge"] != "concat" || fn["loaded"] != true {
		t.Fatalf("SHOW FUNCTIONS rt_add_users: %v", fn)
	}
	fn = rowWhere(t, adminRows(t, ctx, adm, "SHOW FUNCTIONS"), "function", "public.rt_lookup")
	if fn["target"] != "public.rt_user_impl" || !strings.Contains(fn["signatures"].(string), "i_username text") {
		t.Fatalf("SHOW FUNCTIONS rt_lookup: %v", fn)
	}
	// SHOW CONFIG: a merge only where run_on is all (concat when not
	// written), and defaults for a cluster's keys.
	cfgRows := adminRows(t, ctx, adm, "SHOW CONFIG")
	for key, want := range map[string]string{"functions[1].merge": "", "functions[6].merge": "sum", "functions[8].merge": "concat"} {
		if r := rowWhere(t, cfgRows, "key", key); r["value"] != want {
			t.Errorf("SHOW CONFIG %s: %v, want value %q", key, r, want)
		}
	}
	if r := rowWhere(t, cfgRows, "key", "clusters.main.hash"); r["default"] != "xxhash64" {
		t.Errorf("SHOW CONFIG clusters.main.hash: %v, want default xxhash64", r)
	}
	top := rowWhere(t, cfgRows, "key", "default_route")["value"]
	if r := rowWhere(t, cfgRows, "key", "clusters.main.default_route"); r["default"] != top {
		t.Errorf("SHOW CONFIG clusters.main.default_route: %v, want the top-level default_route as default", r)
	}
	seqs := 0
	for _, r := range adminRows(t, ctx, adm, "SHOW SEQUENCES") {
		if r["sequence"] != "public.adm_seq" {
			continue
		}
		seqs++
		shard := r["shard"].(string)
		if r["increment"] != int64(7) || r["last_value"] != int64(100+int(shard[1]-'0')) {
			t.Fatalf("SHOW SEQUENCES: %v", r)
		}
	}
	if seqs != len(allShards) {
		t.Fatalf("SHOW SEQUENCES listed adm_seq on %d shards, want %d", seqs, len(allShards))
	}
}

type dtoFamily = dto.MetricFamily

// TestShardHealthInShowShards stops a shard: SHOW SHARDS and /metrics mark
// it down within its check interval times the failures allowed (plus the
// check timeout), the other shard keeps serving, and the shard is up again
// after a restart and serves its clients.
func TestShardHealthInShowShards(t *testing.T) {
	ctx := testContext(t, 2*time.Minute)
	own := testenv.Servers(t, 1, pgtest.Options{})[0]
	const interval, timeout, failures = 200 * time.Millisecond, 500 * time.Millisecond, 2
	p := startProxy(t, proxyOpts{servers: []*pgtest.Server{shards[0], own}, topLevel: adminTopLevel +
		fmt.Sprintf("health:\n  interval: %s\n  timeout: %s\n  failures: %d\n", interval, timeout, failures)})
	adm := p.admin(t, ctx)
	state := func(shard string) string {
		return rowWhere(t, adminRows(t, ctx, adm, "SHOW SHARDS"), "shard", shard)["state"].(string)
	}
	waitFor := func(shard, want string, limit time.Duration) time.Duration {
		t.Helper()
		start := time.Now()
		for state(shard) != want {
			if time.Since(start) > limit {
				t.Fatalf("shard %s not %s after %s: %v", shard, want, limit, rowWhere(t, adminRows(t, ctx, adm, "SHOW SHARDS"), "shard", shard))
			}
			time.Sleep(20 * time.Millisecond)
		}
		return time.Since(start)
	}
	waitFor("s0", "up", 5*time.Second)
	waitFor("s1", "up", 5*time.Second)
	client := p.connect(t, ctx)

	own.Halt()
	took := waitFor("s1", "down", failures*interval+timeout+2*time.Second)
	t.Logf("s1 marked down %s after it stopped", took)
	if state("s0") != "up" {
		t.Fatal("s0 not up while s1 is down")
	}
	var one int
	if err := client.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil { // default route s0
		t.Fatalf("s0 while s1 is down: %v", err)
	}
	fams := scrape(t, p.metrics)
	if metricValue(fams, "pgrouter_shard_up", map[string]string{"shard": "s1"}) != 0 || metricValue(fams, "pgrouter_shard_up", map[string]string{"shard": "s0"}) != 1 {
		t.Fatal("/metrics pgrouter_shard_up does not match SHOW SHARDS")
	}
	if err := own.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor("s1", "up", 5*time.Second)
	if _, err := client.Exec(ctx, "SET pgrouter.shard = s1"); err != nil {
		t.Fatal(err)
	}
	var port int
	if err := client.QueryRow(ctx, "SELECT inet_server_port()", pgx.QueryExecModeSimpleProtocol).Scan(&port); err != nil || port != own.Port {
		t.Fatalf("s1 after its restart: port %d %v; want %d", port, err, own.Port)
	}
}
