package proxy_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/pgrouter/pgrouter/config"
	"github.com/pgrouter/pgrouter/console"
	"github.com/pgrouter/pgrouter/internal/pgtest"
	"github.com/pgrouter/pgrouter/internal/pgtest/testenv"
	"github.com/pgrouter/pgrouter/metrics"
	"github.com/pgrouter/pgrouter/monitor"
	"github.com/pgrouter/pgrouter/proxy"
)

// allShards are real PostgreSQL servers shared by every test of the
// package; most tests use the first two (shards), the routing tests all four.
var allShards, shards []*pgtest.Server

func TestMain(m *testing.M) {
	testenv.Main(m, 4, pgtest.Options{}, func(s []*pgtest.Server) { allShards, shards = s, s[:2] })
}

// proxyOpts tweak the YAML of a test proxy.
type proxyOpts struct {
	mode     string      // pool.mode (default transaction)
	size     int         // pool.size (default 4)
	auth     string      // auth.type (default trust)
	users    string      // users file content
	extra    string      // extra lines appended under pool:
	topLevel string      // extra top-level YAML
	quiet    bool        // discard the proxy's log (fuzzing)
	log      *zap.Logger // the proxy's logger instead (a test reading the log)
	// servers replaces the shared shards (s0, s1, ...) when set.
	servers []*pgtest.Server
	// dsnQuery replaces every shard DSN's query string (sslmode=disable).
	dsnQuery string
	// partitions is the cluster's partition count (default one per shard),
	// split into equal ranges; hash is clusters.main.hash.
	partitions int
	hash       string
	// defaultRoute is default_route (default s0).
	defaultRoute string
}

// testProxy is a running router in front of the shared shards: the proxy
// with its console and pollers, assembled as pgrouter serve assembles them.
type testProxy struct {
	srv     *proxy.Server
	metrics http.Handler // what metrics_listen serves at /metrics
	addr    string
	cfg     *config.Config
}

// startProxy starts a proxy whose cluster "main" has both shards, with
// statements going to s0 by default.
func startProxy(t testing.TB, o proxyOpts) *testProxy {
	t.Helper()
	if o.mode == "" {
		o.mode = string(config.ModeTransaction)
	}
	if o.size == 0 {
		o.size = 4
	}
	if o.auth == "" {
		o.auth = config.AuthTrust
	}
	dir := t.TempDir()
	var b strings.Builder
	fmt.Fprintf(&b, "listen: 127.0.0.1:0\nauth:\n  type: %s\n", o.auth)
	if o.users != "" {
		if err := os.WriteFile(dir+"/users.txt", []byte(o.users), 0o600); err != nil {
			t.Fatal(err)
		}
		b.WriteString("  users_file: users.txt\n")
	}
	fmt.Fprintf(&b, "pool:\n  mode: %s\n  size: %d\n%s", o.mode, o.size, o.extra)
	if !strings.Contains(o.extra, "query_wait_timeout") {
		b.WriteString("  query_wait_timeout: 10s\n")
	}
	servers := shards
	if o.servers != nil {
		servers = o.servers
	}
	if o.partitions == 0 {
		o.partitions = len(servers)
	}
	if o.hash == "" {
		o.hash = "xxhash64"
	}
	if o.defaultRoute == "" {
		o.defaultRoute = "s0"
	}
	fmt.Fprintf(&b, "clusters:\n  main:\n    hash: %s\n    partitions: %d\n    shards:\n", o.hash, o.partitions)
	per := o.partitions / len(servers)
	for i, s := range servers {
		dsn := s.DSN("postgres")
		if o.dsnQuery != "" {
			dsn = strings.Replace(dsn, "?sslmode=disable", "?"+o.dsnQuery, 1)
		}
		fmt.Fprintf(&b, "      - name: s%d\n        dsn: %s\n        partitions: \"%d-%d\"\n", i, dsn, i*per, (i+1)*per-1)
	}
	fmt.Fprintf(&b, "default_route: %s\n", o.defaultRoute)
	b.WriteString(o.topLevel)
	path := dir + "/router.yaml"
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if o.log != nil {
		return startProxyLog(t, path, o.log)
	}
	return startProxyFile(t, path, o.quiet)
}

// startProxyFile starts a proxy from a config file.
func startProxyFile(t testing.TB, path string, quiet bool) *testProxy {
	t.Helper()
	cfg, err := config.Load(path)
	if err != nil {
		data, _ := os.ReadFile(path)
		t.Fatalf("config: %v\n%s", err, data)
	}
	log := zap.NewNop()
	if !quiet {
		log = zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	}
	return startProxyConfig(t, cfg, log)
}

// startProxyLog starts a proxy from a config file with the given logger.
func startProxyLog(t testing.TB, path string, log *zap.Logger) *testProxy {
	t.Helper()
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	return startProxyConfig(t, cfg, log)
}

// startProxyConfig starts a proxy for a loaded config.
func startProxyConfig(t testing.TB, cfg *config.Config, log *zap.Logger) *testProxy {
	t.Helper()
	srv, err := proxy.NewServer(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	mon := monitor.Start(srv, log)
	srv.SetConsole(console.New(srv, mon))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		_ = srv.Close()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
		mon.Close()
	})
	return &testProxy{srv: srv, metrics: metrics.Handler(srv, mon), addr: ln.Addr().String(), cfg: cfg}
}

// url returns a connection URL through the proxy.
func (p *testProxy) url(user, database string) string {
	host, port, _ := net.SplitHostPort(p.addr)
	return fmt.Sprintf("postgres://%s@%s:%s/%s?sslmode=disable", user, host, port, database)
}

func (p *testProxy) hostPort() (string, string) {
	host, port, _ := net.SplitHostPort(p.addr)
	return host, port
}

// connect opens a pgx connection through the proxy to cluster main.
func (p *testProxy) connect(t testing.TB, ctx context.Context, mods ...func(*pgx.ConnConfig)) *pgx.Conn {
	t.Helper()
	cc, err := pgx.ParseConfig(p.url("postgres", "main"))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range mods {
		m(cc)
	}
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

// shardExec runs SQL directly on shard i.
func shardExec(t testing.TB, i int, sql string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := allShards[i].Exec(ctx, "postgres", sql); err != nil {
		t.Fatalf("shard %d: %s: %v", i, sql, err)
	}
}

// shardQueryInt runs a query returning one integer directly on shard i.
func shardQueryInt(t testing.TB, i int, sql string) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, allShards[i].DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var v int64
	if err := conn.QueryRow(ctx, sql).Scan(&v); err != nil {
		t.Fatalf("shard %d: %s: %v", i, sql, err)
	}
	return v
}

func testContext(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
