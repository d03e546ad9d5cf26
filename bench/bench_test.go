package bench

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgrouter/pgrouter/config"
	"github.com/pgrouter/pgrouter/internal/pgtest"
	"github.com/pgrouter/pgrouter/internal/pgtest/testenv"
	"github.com/pgrouter/pgrouter/shardmap"
)

var servers []*pgtest.Server

func TestMain(m *testing.M) {
	testenv.Main(m, 2, pgtest.Options{}, func(s []*pgtest.Server) { servers = s })
}

// testCluster creates two shard databases named prefix0 and prefix1 (one on
// each server) and returns their cluster (hash: hashtext, 8 partitions).
func testCluster(t *testing.T, prefix string) *shardmap.Cluster {
	t.Helper()
	ctx := context.Background()
	var dsns []string
	for i, s := range servers {
		db := fmt.Sprintf("%s%d", prefix, i)
		if err := s.Exec(ctx, "postgres", "CREATE DATABASE "+db); err != nil {
			t.Fatal(err)
		}
		dsns = append(dsns, s.DSN(db))
	}
	cfg, err := config.Parse("router.yaml", []byte(fmt.Sprintf(`auth: {type: trust}
clusters:
  main:
    hash: hashtext
    partitions: 8
    shards:
      - {name: s0, dsn: %q, partitions: "0-3"}
      - {name: s1, dsn: %q, partitions: "4-7"}
%s`, dsns[0], dsns[1], Functions)))
	if err != nil {
		t.Fatal(err)
	}
	m, err := shardmap.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return m.Clusters()[0]
}

func queryInt(t *testing.T, dsn, sql string) int64 {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var n int64
	if err := conn.QueryRow(context.Background(), sql).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// TestInitPlacesUsersAsPostgreSQLHashes: every user is on the shard that
// owns hashtext(username) & 7 by PostgreSQL's own hashtext (so PL/Proxy
// and the router find it there), and a second Init replaces the first.
func TestInitPlacesUsersAsPostgreSQLHashes(t *testing.T) {
	cl := testCluster(t, "place")
	for range 2 {
		if err := Init(context.Background(), cl, 2000); err != nil {
			t.Fatal(err)
		}
	}
	var total int64
	for _, sh := range cl.Shards {
		n := queryInt(t, sh.DSN, "SELECT count(*) FROM bench_users")
		misplaced := queryInt(t, sh.DSN, fmt.Sprintf("SELECT count(*) FROM bench_users WHERE hashtext(username) & 7 NOT BETWEEN %d AND %d",
			sh.Partitions[0], sh.Partitions[len(sh.Partitions)-1]))
		if n == 0 || misplaced != 0 {
			t.Fatalf("shard %s holds %d users, %d of them another shard's", sh.Name, n, misplaced)
		}
		total += n
	}
	if total != 2000 {
		t.Fatalf("%d users loaded, want 2000", total)
	}
}

// TestRunThroughPLProxy: the same functions behind PL/Proxy find every
// user; a point run compares two targets; a write run's successful
// queries are exactly the balance it added.
func TestRunThroughPLProxy(t *testing.T) {
	ctx := context.Background()
	cl := testCluster(t, "viaproxy")
	if err := Init(ctx, cl, 500); err != nil {
		t.Fatal(err)
	}
	if err := servers[0].Exec(ctx, "postgres", "CREATE DATABASE plproxy_bench"); err != nil {
		t.Fatal(err)
	}
	proxyDSN := servers[0].DSN("plproxy_bench")
	if err := InitPLProxy(ctx, proxyDSN, cl); err != nil {
		t.Fatal(err)
	}
	if n := queryInt(t, proxyDSN, "SELECT sum(n)::bigint FROM bench_count_users() n"); n != 500 {
		t.Fatalf("PL/Proxy counts %d users, want 500", n)
	}
	if n := queryInt(t, proxyDSN, "SELECT count(*) FROM generate_series(0, 499) i, bench_get_user('user' || i)"); n != 500 {
		t.Fatalf("PL/Proxy finds %d of 500 users", n)
	}

	opts := Options{Targets: []Target{{Name: "direct", DSN: cl.Shards[0].DSN}, {Name: "plproxy", DSN: proxyDSN}}, Workload: "point",
		Clients: []int{2}, Duration: 400 * time.Millisecond, Rounds: 2, Protocol: "extended", Users: 500}
	rs, err := Run(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 2 || rs[0].Ratio != 1 || rs[1].Ratio <= 0 {
		t.Fatalf("results %+v", rs)
	}
	for _, r := range rs {
		if r.Queries == 0 || r.P50us <= 0 || r.MaxUs < r.P99us || r.Seconds < 0.35 {
			t.Fatalf("%s: %+v", r.Target, r)
		}
	}
	// PL/Proxy finds every user; shard 0 alone only its own half: a key
	// looked up on the wrong shard counts as an error, not a fast success.
	if rs[1].Errors != 0 {
		t.Fatalf("PL/Proxy: %d errors, the first: %s", rs[1].Errors, rs[1].FirstErr)
	}
	if share := float64(rs[0].Errors) / float64(rs[0].Errors+rs[0].Queries); share < 0.25 || share > 0.75 || !strings.Contains(rs[0].FirstErr, "returned 0 rows") {
		t.Fatalf("shard 0 alone: %d errors of %d (%s); want about half, as missing rows", rs[0].Errors, rs[0].Errors+rs[0].Queries, rs[0].FirstErr)
	}

	// lookup is the same call without the row check: shard 0 alone runs it
	// without errors, as the baseline of a routed call against one shard.
	direct := opts
	direct.Targets, direct.Workload = opts.Targets[:1], "lookup"
	if rs, err = Run(ctx, direct); err != nil || rs[0].Errors != 0 || rs[0].Queries == 0 {
		t.Fatalf("lookup on shard 0 alone: %+v, %v", rs, err)
	}

	opts.Targets, opts.Workload, opts.Protocol = opts.Targets[1:], "write", "prepared"
	rs, err = Run(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	var added int64
	for _, sh := range cl.Shards {
		added += queryInt(t, sh.DSN, "SELECT sum(balance)::bigint FROM bench_users")
	}
	if rs[0].Errors != 0 || added != rs[0].Queries {
		t.Fatalf("write run: %d queries, %d errors, balances grew by %d", rs[0].Queries, rs[0].Errors, added)
	}
}

// TestRunRefusesBadOptions: mistakes are errors before anything runs.
func TestRunRefusesBadOptions(t *testing.T) {
	for _, o := range []Options{
		{Workload: "nope", Protocol: "simple", Users: 1},
		{Workload: "point", Protocol: "binary", Users: 1},
		{Workload: "point", Protocol: "simple"},
	} {
		if _, err := Run(context.Background(), o); err == nil {
			t.Errorf("%+v: no error", o)
		}
	}
}
