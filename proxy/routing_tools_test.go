package proxy_test

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestRoutingPgbench runs pgbench with routed calls for 30 s at 32 clients
// and checks the shards: every counter on the shard hashint8 names, and the
// visits recorded equal the transactions pgbench reports.
func TestRoutingPgbench(t *testing.T) {
	p := startRouting(t, proxyOpts{size: 8})
	ctx := testContext(t, 2*time.Minute)
	conn := p.connect(t, ctx)
	const counters = 10000
	for no := 1; no <= counters; no++ {
		if _, err := conn.Exec(ctx, "SELECT rt_add_counter($1)", no); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	script := dir + "/routed.sql"
	writeFile(t, script, "\\set n random(1, 10000)\nSELECT rt_visit(:n);\nSELECT rt_where_no(:n);\n")
	out := p.tool(t, ctx, "", "pgbench", "-n", "-M", "prepared", "-c", "32", "-j", "2", "-T", "30", "-f", script)
	m := regexp.MustCompile(`number of transactions actually processed: (\d+)`).FindStringSubmatch(out)
	if m == nil || !strings.Contains(out, "number of failed transactions: 0") {
		t.Fatalf("pgbench:\n%s", out)
	}
	txns, _ := strconv.ParseInt(m[1], 10, 64)
	var visits int64
	for i := range allShards {
		visits += shardQueryInt(t, i, "SELECT coalesce(sum(visits), 0) FROM rt_counters")
		if bad := misplaced(t, i, "rt_counters", "no", "hashint8"); bad != 0 {
			t.Errorf("shard %d: %d misplaced counters", i, bad)
		}
	}
	if visits != txns {
		t.Fatalf("shards recorded %d visits; pgbench processed %d transactions", visits, txns)
	}
	var total string
	if err := conn.QueryRow(ctx, "SELECT rt_total_visits()").Scan(&total); err != nil || total != strconv.FormatInt(txns, 10) {
		t.Fatalf("rt_total_visits() = %s %v, want %d", total, err, txns)
	}
	t.Logf("pgbench: %d routed transactions, tps line: %s", txns, tpsLine(out))
	// The simple protocol too, briefly.
	out = p.tool(t, ctx, "", "pgbench", "-n", "-M", "simple", "-c", "8", "-j", "2", "-T", "3", "-f", script)
	if !strings.Contains(out, "number of failed transactions: 0") {
		t.Fatalf("pgbench simple:\n%s", out)
	}
}

func tpsLine(out string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "tps") {
			return l
		}
	}
	return ""
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestRoutingMatchesPLProxy sends the same keys through PL/Proxy (RUN ON
// hashtext(key) and RUN ON hashint8(key), over a cluster whose partitions
// are the same 16 connection strings) and through pgrouter, and checks that
// both reach the same shard for every key.
func TestRoutingMatchesPLProxy(t *testing.T) {
	if shardQueryInt(t, 0, "SELECT count(*) FROM pg_available_extensions WHERE name = 'plproxy'") == 0 {
		t.Skip("the plproxy extension is not installed (apt-get install postgresql-15-plproxy; .ci/run does)")
	}
	p := startRouting(t, proxyOpts{size: 2})
	ctx := testContext(t, 2*time.Minute)
	var opts []string
	for part := range 16 {
		sh := allShards[part/4]
		opts = append(opts, fmt.Sprintf("p%d 'host=%s port=%d dbname=postgres user=postgres'", part, sh.Host, sh.Port))
	}
	setup := fmt.Sprintf(`
CREATE EXTENSION IF NOT EXISTS plproxy;
DROP SERVER IF EXISTS rt_cluster CASCADE;
CREATE SERVER rt_cluster FOREIGN DATA WRAPPER plproxy OPTIONS (%s);
CREATE USER MAPPING FOR PUBLIC SERVER rt_cluster;
CREATE OR REPLACE FUNCTION plp_where(i_username text) RETURNS text LANGUAGE plproxy AS
  $$ CLUSTER 'rt_cluster'; RUN ON hashtext(i_username); SELECT rt_where(i_username); $$;
CREATE OR REPLACE FUNCTION plp_where_no(i_no bigint) RETURNS text LANGUAGE plproxy AS
  $$ CLUSTER 'rt_cluster'; RUN ON hashint8(i_no); SELECT rt_where_no(i_no); $$;
`, strings.Join(opts, ", "))
	shardExec(t, 0, setup)
	direct, err := pgx.Connect(ctx, allShards[0].DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close(context.Background())
	conn := p.connect(t, ctx)
	perShard := map[string]int{}
	for i := range 2000 {
		key := userName(i)
		var viaPLProxy, viaRouter string
		if err := direct.QueryRow(ctx, "SELECT plp_where($1)", key).Scan(&viaPLProxy); err != nil {
			t.Fatal(err)
		}
		if err := conn.QueryRow(ctx, "SELECT rt_where($1)", key).Scan(&viaRouter); err != nil {
			t.Fatal(err)
		}
		if viaPLProxy != viaRouter {
			t.Fatalf("key %q: PL/Proxy runs it on %s, pgrouter on %s", key, viaPLProxy, viaRouter)
		}
		perShard[viaRouter]++
		no := int64(i)*7919 - 5000
		if err := direct.QueryRow(ctx, "SELECT plp_where_no($1)", no).Scan(&viaPLProxy); err != nil {
			t.Fatal(err)
		}
		if err := conn.QueryRow(ctx, "SELECT rt_where_no($1)", no).Scan(&viaRouter); err != nil {
			t.Fatal(err)
		}
		if viaPLProxy != viaRouter {
			t.Fatalf("key %d: PL/Proxy runs it on %s, pgrouter on %s", no, viaPLProxy, viaRouter)
		}
	}
	if len(perShard) != 4 {
		t.Fatalf("keys reached only %v", perShard)
	}
}
