package proxy_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// tool runs a PostgreSQL client program against the proxy.
func (p *testProxy) tool(t *testing.T, ctx context.Context, stdin string, name string, args ...string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is not installed: .ci/run installs PostgreSQL's client programs", name)
	}
	host, port := p.hostPort()
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Env = append(os.Environ(), "PGHOST="+host, "PGPORT="+port, "PGUSER=postgres", "PGDATABASE=main", "PGSSLMODE=disable", "PGCONNECT_TIMEOUT=10")
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestPsql runs psql through the proxy: queries, transactions, an error that
// stops a script, and COPY both ways with \copy.
func TestPsql(t *testing.T) {
	for _, mode := range bothModes {
		t.Run(mode, func(t *testing.T) {
			p := startProxy(t, proxyOpts{mode: mode, size: 2})
			ctx := testContext(t, time.Minute)
			table := "psql_" + mode
			out := p.tool(t, ctx, "", "psql", "-X", "-v", "ON_ERROR_STOP=1", "-At", "-c",
				fmt.Sprintf("DROP TABLE IF EXISTS %[1]s; CREATE TABLE %[1]s (id int, name text)", table))
			_ = out
			var data strings.Builder
			for i := range 1000 {
				fmt.Fprintf(&data, "%d\tname %d\n", i, i)
			}
			p.tool(t, ctx, data.String(), "psql", "-X", "-v", "ON_ERROR_STOP=1", "-c", `\copy `+table+` from stdin`)
			out = p.tool(t, ctx, "", "psql", "-X", "-At", "-c", "SELECT count(*), sum(id) FROM "+table)
			if strings.TrimSpace(out) != "1000|499500" {
				t.Fatalf("after \\copy in: %q", out)
			}
			out = p.tool(t, ctx, "", "psql", "-X", "-v", "ON_ERROR_STOP=1", "-c", `\copy (SELECT * FROM `+table+` ORDER BY id) to stdout`)
			if out != data.String() {
				t.Fatalf("\\copy out differs: %d bytes, want %d", len(out), data.Len())
			}
			script := fmt.Sprintf(`BEGIN;
UPDATE %[1]s SET name = 'changed' WHERE id = 1;
ROLLBACK;
SELECT name FROM %[1]s WHERE id = 1;
\set ON_ERROR_STOP 0
SELECT 1/0;
SELECT 'still here';
`, table)
			cmd := exec.CommandContext(ctx, "psql", "-X", "-At")
			host, port := p.hostPort()
			cmd.Env = append(os.Environ(), "PGHOST="+host, "PGPORT="+port, "PGUSER=postgres", "PGDATABASE=main")
			cmd.Stdin = strings.NewReader(script)
			res, _ := cmd.CombinedOutput()
			got := string(res)
			for _, want := range []string{"name 1\n", "division by zero", "still here"} {
				if !strings.Contains(got, want) {
					t.Fatalf("psql script output lacks %q:\n%s", want, got)
				}
			}
		})
	}
}

var (
	tpsRE    = regexp.MustCompile(`tps = ([0-9.]+)`)
	failedRE = regexp.MustCompile(`number of failed transactions: (\d+)`)
	xactsRE  = regexp.MustCompile(`number of transactions actually processed: (\d+)`)
)

// TestPgbench runs pgbench at 32 clients through both pool modes in its
// simple, extended and prepared protocol modes, read-only and TPC-B-like,
// then checks TPC-B's invariant: every balance moved is accounted for.
func TestPgbench(t *testing.T) {
	p := startProxy(t, proxyOpts{mode: "transaction", size: 4})
	ctx := testContext(t, 5*time.Minute)
	p.tool(t, ctx, "", "pgbench", "-i", "-q", "-s", "2")
	for _, mode := range bothModes {
		pp := p
		if mode == "session" {
			pp = startProxy(t, proxyOpts{mode: mode, size: 40})
		}
		for _, proto := range []string{"simple", "extended", "prepared"} {
			for _, script := range []string{"select-only", "tpcb-like"} {
				t.Run(mode+"/"+proto+"/"+script, func(t *testing.T) {
					out := pp.tool(t, ctx, "", "pgbench", "-n", "-c", "32", "-j", "2", "-T", "2", "-M", proto, "-b", script)
					if m := failedRE.FindStringSubmatch(out); m != nil && m[1] != "0" {
						t.Fatalf("%s failed transactions:\n%s", m[1], out)
					}
					m := xactsRE.FindStringSubmatch(out)
					if m == nil {
						t.Fatalf("no transaction count in output:\n%s", out)
					}
					if n, _ := strconv.Atoi(m[1]); n < 100 {
						t.Fatalf("only %d transactions:\n%s", n, out)
					}
					if m := tpsRE.FindStringSubmatch(out); m != nil {
						t.Logf("tps %s", m[1])
					}
				})
			}
		}
	}
	// TPC-B's consistency check: the same deltas reached history, accounts,
	// tellers and branches.
	sums := []string{
		"SELECT coalesce(sum(delta), 0) FROM pgbench_history",
		"SELECT sum(abalance) FROM pgbench_accounts",
		"SELECT sum(tbalance) FROM pgbench_tellers",
		"SELECT sum(bbalance) FROM pgbench_branches",
	}
	want := shardQueryInt(t, 0, sums[0])
	for _, q := range sums[1:] {
		if got := shardQueryInt(t, 0, q); got != want {
			t.Fatalf("%s = %d, history says %d", q, got, want)
		}
	}
	if n := shardQueryInt(t, 0, "SELECT count(*) FROM pgbench_history"); n == 0 {
		t.Fatal("no TPC-B transaction reached the shard")
	}
}
