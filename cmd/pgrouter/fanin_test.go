package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgrouter/pgrouter/internal/pgtest"
	"github.com/pgrouter/pgrouter/internal/pgtest/testenv"
)

const faninShardSQL = `
CREATE TABLE users (id bigint PRIMARY KEY, name text NOT NULL, balance bigint NOT NULL DEFAULT 0, note text);
CREATE FUNCTION fi_add(i_id bigint, i_name text) RETURNS void LANGUAGE sql AS
  $$ INSERT INTO users (id, name) VALUES (i_id, i_name) ON CONFLICT (id) DO UPDATE SET name = excluded.name $$;
CREATE FUNCTION fi_bump(i_id bigint) RETURNS void LANGUAGE sql AS
  $$ UPDATE users SET balance = balance + 1, note = repeat(md5(i_id::text), 1 + (balance % 3)::int) WHERE id = i_id $$;
CREATE FUNCTION fi_del(i_id bigint) RETURNS void LANGUAGE sql AS $$ DELETE FROM users WHERE id = i_id $$;`

// faninChecksum is a table's rows in one md5, and their count.
const faninChecksum = `SELECT count(*), coalesce(md5(string_agg(concat_ws('|', id, name, balance, note), ',' ORDER BY id)), '') FROM users`

// TestFaninSurvivesKills: pgrouter fanin copies two shards into a target and
// keeps it current under a routed write load (inserts, updates, deletes
// through pgrouter serve) while it is SIGKILLed at 10 random points and one
// shard's server is stopped and started again; in the end the target holds
// exactly the union of the shards: same count, same md5 of every row.
func TestFaninSurvivesKills(t *testing.T) {
	ctx := context.Background()
	servers := testenv.Servers(t, 3, pgtest.Options{})
	var dsns []string
	for i, srv := range servers {
		if err := srv.Exec(ctx, "postgres", "CREATE DATABASE fan"); err != nil {
			t.Fatal(err)
		}
		if i < 2 {
			if err := srv.Exec(ctx, "fan", faninShardSQL); err != nil {
				t.Fatal(err)
			}
		}
		dsns = append(dsns, srv.DSN("fan"))
	}
	path := filepath.Join(t.TempDir(), "router.yaml")
	addr, metrics := freeAddr(t), freeAddr(t)
	writeFile(t, path, fmt.Sprintf(`listen: %s
metrics_listen: %s
admin_users: [admin]
health: {interval: 500ms}
auth: {type: trust}
log: {level: info}
pool: {size: 4, query_wait_timeout: 30s}
clusters:
  main:
    hash: hashtext
    partitions: 8
    shards:
      - {name: s0, dsn: %q, partitions: "0-3"}
      - {name: s1, dsn: %q, partitions: "4-7"}
functions:
  - {name: fi_add, key: i_id}
  - {name: fi_bump, key: i_id}
  - {name: fi_del, key: i_id}
fanin:
  target: %q
  tables: [users]
`, addr, metrics, dsns[0], dsns[1], dsns[2]))
	runRouter(ctx, t, path, addr)

	// Rows before fan-in starts, copied.
	load := func(n int, pace time.Duration, done *atomic.Int64) error {
		var wg sync.WaitGroup
		errs := make(chan error, 4)
		for w := range 4 {
			wg.Go(func() {
				conn, err := pgx.Connect(ctx, fmt.Sprintf("postgres://app@%s/main?sslmode=disable", addr))
				if err != nil {
					errs <- err
					return
				}
				defer conn.Close(ctx)
				for range n / 4 {
					id := rand.Int64N(3000)
					sql := "SELECT fi_bump($1)"
					switch rand.IntN(6) {
					case 0, 1:
						sql = fmt.Sprintf("SELECT fi_add($1, 'user %d')", w)
					case 2:
						sql = "SELECT fi_del($1)"
					}
					if _, err := conn.Exec(ctx, sql, id); err != nil {
						// A shard being restarted: the call did not happen.
						var pgErr *pgconn.PgError
						if errors.As(err, &pgErr) && (strings.HasPrefix(pgErr.Code, "08") || pgErr.Code == "57P01" || pgErr.Code == "53300") {
							time.Sleep(20 * time.Millisecond)
							continue
						}
						errs <- err
						return
					}
					done.Add(1)
					time.Sleep(pace)
				}
			})
		}
		wg.Wait()
		close(errs)
		return <-errs
	}
	var done atomic.Int64
	if err := load(4000, 0, &done); err != nil {
		t.Fatal(err)
	}

	proc := &faninProc{t: t, path: path}
	proc.start()
	defer func() {
		proc.stop()
		if t.Failed() {
			t.Log(proc.output())
		}
	}()
	type event struct {
		at   int64
		what string
	}
	done.Store(0)
	var events []event
	for range 10 {
		events = append(events, event{500 + rand.Int64N(15000), "kill"})
	}
	events = append(events, event{6000, "stop shard"}, event{8000, "start shard"})
	sort.Slice(events, func(i, j int) bool { return events[i].at < events[j].at })
	faults := make(chan error, 1)
	var finished atomic.Bool // the load ended: the remaining events run now
	go func() {
		for _, e := range events {
			for done.Load() < e.at && !finished.Load() {
				time.Sleep(5 * time.Millisecond)
			}
			switch e.what {
			case "kill":
				proc.kill()
				time.Sleep(time.Duration(rand.IntN(300)) * time.Millisecond)
				proc.start()
			case "stop shard":
				servers[1].Halt()
			case "start shard":
				if err := servers[1].Restart(ctx); err != nil {
					faults <- err
					return
				}
			}
		}
		faults <- nil
	}()
	err := load(16000, 2*time.Millisecond, &done)
	finished.Store(true)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-faults; err != nil {
		t.Fatal(err)
	}
	if proc.runs != 11 {
		t.Fatalf("fanin ran %d times, want 11 (10 kills)", proc.runs)
	}
	// Killed mid-stream, not only before the copy ended: most runs reached
	// a shard's stream (the stopped shard's worker retries meanwhile).
	streamed := 0
	for _, l := range proc.logs {
		if strings.Contains(l.String(), "streaming the shard into the target") {
			streamed++
		}
	}
	if streamed < 6 {
		t.Fatalf("only %d of 11 runs streamed a shard", streamed)
	}

	// The target equals the union of the shards: count and md5.
	union := `SELECT count(*), coalesce(md5(string_agg(concat_ws('|', id, name, balance, note), ',' ORDER BY id)), '') FROM (%s) u`
	deadline := time.Now().Add(2 * time.Minute)
	for {
		var want, got string
		var wantN, gotN int64
		// The shards' rows, read from each and merged by the target's server
		// as a VALUES list would be too large: compare per shard instead.
		for i := range 2 {
			var n int64
			var sum string
			if err := pgxQueryRow(ctx, dsns[i], faninChecksum, &n, &sum); err != nil {
				t.Fatal(err)
			}
			var tn int64
			var tsum string
			if err := pgxQueryRow(ctx, dsns[2], fmt.Sprintf(union, fmt.Sprintf("SELECT id, name, balance, note FROM users WHERE pgrouter_shard = 's%d'", i)), &tn, &tsum); err != nil {
				t.Fatal(err)
			}
			want += fmt.Sprintf("s%d:%d:%s ", i, n, sum)
			got += fmt.Sprintf("s%d:%d:%s ", i, tn, tsum)
			wantN += n
			gotN += tn
		}
		var all int64
		var ignored string
		if err := pgxQueryRow(ctx, dsns[2], faninChecksum, &all, &ignored); err != nil {
			t.Fatal(err)
		}
		if want == got && all == wantN {
			t.Logf("target equals the shards: %d rows (%s)", all, got)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the target does not equal the shards:\nshards %s\ntarget %s (all rows %d)", want, got, all)
		}
		time.Sleep(200 * time.Millisecond)
	}
	out, code := pgrouter(ctx, t, "fanin", "status", "-c", path)
	if code != 0 || strings.Count(out, "fanin_s") != 2 || strings.Contains(out, "copy not done") || strings.Contains(out, "  -  ") {
		t.Fatalf("fanin status (exit %d):\n%s", code, out)
	}
	t.Logf("fanin status:\n%s", out)

	// The router serving the same file shows each shard's fan-in lag.
	adm, err := pgx.Connect(ctx, fmt.Sprintf("postgres://admin@%s/pgrouter?sslmode=disable&default_query_exec_mode=simple_protocol", addr))
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close(ctx)
	deadline = time.Now().Add(30 * time.Second)
	for {
		lagged := 0
		for _, row := range adminMaps(ctx, t, adm, "SHOW SHARDS") {
			if row["fanin_lag_bytes"] != nil {
				lagged++
			}
		}
		fams := scrape(t, metrics)
		if fam := fams["pgrouter_fanin_lag_bytes"]; lagged == 2 && fam != nil && len(fam.GetMetric()) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("SHOW SHARDS shows fan-in lag for %d shards; /metrics has %v", lagged, fams["pgrouter_fanin_lag_bytes"])
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// pgxQueryRow runs one query on a fresh connection.
func pgxQueryRow(ctx context.Context, dsn, sql string, dest ...any) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	return conn.QueryRow(ctx, sql).Scan(dest...)
}

// faninProc is `pgrouter fanin` as a process that the test kills and
// starts again.
type faninProc struct {
	t       *testing.T
	path    string
	cmd     *exec.Cmd
	logs    []*syncBuffer
	exited  chan error
	runs    int
	running bool
}

func (p *faninProc) start() {
	cmd, logs, exited := startProcess(p.t, "fanin", "-c", p.path)
	p.cmd, p.exited, p.running = cmd, exited, true
	p.logs = append(p.logs, logs)
	p.runs++
}

func (p *faninProc) kill() {
	if !p.running {
		return
	}
	_ = p.cmd.Process.Kill()
	<-p.exited
	p.running = false
}

func (p *faninProc) stop() {
	if !p.running {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		p.running = false
	case <-time.After(30 * time.Second):
		p.kill()
	}
}

func (p *faninProc) output() string {
	var b strings.Builder
	for i, l := range p.logs {
		fmt.Fprintf(&b, "--- run %d\n%s", i+1, l.String())
	}
	return b.String()
}

// centralMatches compares the central copy of accounts with the shards:
// the same rows (all columns), each tagged with the shard that has it.
func centralMatches(ctx context.Context, t *testing.T, shards []string, target string) (bool, string) {
	t.Helper()
	read := func(dsn, sql string) (map[string]string, error) {
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			return nil, err
		}
		defer conn.Close(ctx)
		rows, err := conn.Query(ctx, sql)
		if err != nil {
			return nil, err
		}
		out := map[string]string{}
		for rows.Next() {
			var k, v string
			if err := rows.Scan(&k, &v); err != nil {
				return nil, err
			}
			out[k] = v
		}
		return out, rows.Err()
	}
	want := map[string]string{}
	for i, dsn := range shards {
		rows, err := read(dsn, "SELECT username, concat_ws('|', id, balance) FROM accounts")
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range rows {
			if prev, dup := want[k]; dup {
				return false, fmt.Sprintf("%s is on two shards (%s and s%d)", k, prev, i)
			}
			want[k] = fmt.Sprintf("%s|s%d", v, i)
		}
	}
	got, err := read(target, "SELECT username, concat_ws('|', id, balance, pgrouter_shard) FROM accounts")
	if err != nil {
		return false, err.Error()
	}
	diffs := 0
	var first string
	for k, v := range want {
		if got[k] != v {
			if diffs++; first == "" {
				first = fmt.Sprintf("%s: shards %q, target %q", k, v, got[k])
			}
		}
	}
	for k, v := range got {
		if _, ok := want[k]; !ok {
			if diffs++; first == "" {
				first = fmt.Sprintf("%s: only in the target (%q)", k, v)
			}
		}
	}
	return diffs == 0, fmt.Sprintf("%d rows on the shards, %d in the target, %d differ; first: %s", len(want), len(got), diffs, first)
}

// TestFaninFollowsMoves: partitions move between shards while fan-in runs
// (under a routed update load), and while it is stopped with new rows
// written into the moving partitions on the old shard: in the end the
// central copy has every row once, as the shards have it, tagged with the
// shard that owns it, whatever order the two shards' streams arrived in.
func TestFaninFollowsMoves(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	servers, paths, addrs := moveCluster(t, ctx, 1)
	if err := servers[2].Exec(ctx, "postgres", "CREATE DATABASE central"); err != nil {
		t.Fatal(err)
	}
	target := servers[2].DSN("central")
	data, err := os.ReadFile(paths[0])
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, paths[0], string(data)+fmt.Sprintf("fanin: {target: %q, tables: [accounts]}\n", target))
	runRouter(ctx, t, paths[0], addrs[0])
	var shards []string
	for _, s := range servers {
		shards = append(shards, s.DSN("postgres"))
	}
	proc := &faninProc{t: t, path: paths[0]}
	proc.start()
	defer func() {
		proc.stop()
		if t.Failed() {
			t.Log(proc.output())
		}
	}()
	converge := func(what string) {
		t.Helper()
		deadline := time.Now().Add(90 * time.Second)
		for {
			ok, why := centralMatches(ctx, t, shards, target)
			if ok {
				t.Logf("%s: %s", what, why)
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: the central copy does not match the shards: %s", what, why)
			}
			time.Sleep(300 * time.Millisecond)
		}
	}
	converge("copied")

	// 1. A move under load while fan-in runs.
	bench, benchOut := startBump(ctx, t, addrs[0], 8*time.Second)
	time.Sleep(time.Second)
	if out, code := pgrouter(ctx, t, "move", "-c", paths[0], "--cluster", "main", "--partitions", "6-7", "--to", "s2"); code != 0 {
		t.Fatalf("pgrouter move (exit %d):\n%s", code, out)
	}
	if err := bench.Wait(); err != nil {
		t.Fatalf("pgbench: %v\n%s", err, benchOut.String())
	}
	converge("after a move under load")

	// 2. Fan-in stopped; new accounts in partitions 6-7 on s2, then a move
	// of 6-7 back to s1 (copy, catch-up, cut-over, cleanup), then fan-in
	// again: s2's stream has the inserts and the cleanup's deletes, s1's the
	// copies, and either may be applied first.
	proc.kill()
	router, err := pgx.Connect(ctx, fmt.Sprintf("postgres://postgres@%s/main?sslmode=disable", addrs[0]))
	if err != nil {
		t.Fatal(err)
	}
	defer router.Close(ctx)
	addAccounts(ctx, t, router, moveUsers+1, 300)
	if out, code := pgrouter(ctx, t, "move", "-c", paths[0], "--cluster", "main", "--partitions", "6-7", "--to", "s1"); code != 0 {
		t.Fatalf("pgrouter move back (exit %d):\n%s", code, out)
	}
	proc.start()
	converge("after a move while fan-in was stopped")

	// 3. The new owner's stream applied first: fan-in restarted with the
	// old shard unreachable (a wrong DSN in its own copy of the file) after
	// new accounts in 6-7 on s1 and a move of 6-7 to s2; s2's worker must
	// wait at the cut-over for s1's stream, which goes on once SIGHUP gives
	// fan-in the right DSN.
	proc.kill()
	addAccounts(ctx, t, router, moveUsers+5000, 300)
	if out, code := pgrouter(ctx, t, "move", "-c", paths[0], "--cluster", "main", "--partitions", "6-7", "--to", "s2"); code != 0 {
		t.Fatalf("pgrouter move again (exit %d):\n%s", code, out)
	}
	good, err := os.ReadFile(paths[0])
	if err != nil {
		t.Fatal(err)
	}
	faninPath := filepath.Join(t.TempDir(), "fanin.yaml")
	writeFile(t, faninPath, strings.Replace(string(good), fmt.Sprintf("%q", shards[1]), `"host=127.0.0.1 port=1 dbname=postgres user=postgres connect_timeout=1"`, 1))
	late := &faninProc{t: t, path: faninPath}
	late.start()
	defer func() {
		late.stop()
		if t.Failed() {
			t.Log(late.output())
		}
	}()
	time.Sleep(3 * time.Second) // s2's worker streams up to the cut-over and waits there
	if ok, why := centralMatches(ctx, t, shards, target); ok {
		t.Fatalf("the central copy matches while s1's stream is not read: %s", why)
	}
	writeFile(t, faninPath, string(good))
	if err := late.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	converge("after a move with the new shard's stream first")
	if !strings.Contains(late.output(), "waiting") && !strings.Contains(late.output(), "passed the cut-over") {
		t.Fatalf("s2's worker did not wait for s1's stream at the cut-over:\n%s", late.output())
	}
}

// addAccounts adds n accounts in partitions 6-7 through the router, ids
// (and names) from first on.
func addAccounts(ctx context.Context, t *testing.T, router *pgx.Conn, first, n int) {
	t.Helper()
	for i, added := first, 0; added < n; i++ {
		name := strconv.Itoa(i)
		if p := partitionOf(name); p != 6 && p != 7 {
			continue
		}
		if _, err := router.Exec(ctx, "SELECT add_account($1, $2)", name, int64(i)); err != nil {
			t.Fatal(err)
		}
		added++
	}
}
