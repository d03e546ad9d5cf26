package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgrouter/pgrouter/config"
	"github.com/pgrouter/pgrouter/internal/pgtest"
	"github.com/pgrouter/pgrouter/internal/pgtest/testenv"
	"github.com/pgrouter/pgrouter/refsync"
)

// refsyncProc is a real `pgrouter refsync` process that the test kills
// and restarts; logs collects the output of every incarnation.
type refsyncProc struct {
	t      *testing.T
	path   string
	cmd    *exec.Cmd
	exited chan error // nil while no process runs
	logs   []*syncBuffer
}

func (p *refsyncProc) start() {
	var logs *syncBuffer
	p.cmd, logs, p.exited = startProcess(p.t, "refsync", "-c", p.path)
	p.logs = append(p.logs, logs)
}

// stop signals the running process (if any) and returns how it exited.
func (p *refsyncProc) stop(sig syscall.Signal) error {
	if p.exited == nil {
		return nil
	}
	_ = p.cmd.Process.Signal(sig)
	err := <-p.exited
	p.exited = nil
	return err
}

func (p *refsyncProc) kill() { _ = p.stop(syscall.SIGKILL) }

func (p *refsyncProc) output() string {
	var sb strings.Builder
	for i, l := range p.logs {
		fmt.Fprintf(&sb, "--- refsync run %d\n%s", i+1, l.String())
	}
	return sb.String()
}

// writeRefsyncConfig writes a router.yaml whose cluster has the shards.
// A pgrouter serving it listens on addr (metrics on metrics).
func writeRefsyncConfig(t *testing.T, path, source string, shards []string, addr, metrics string) {
	t.Helper()
	var sb strings.Builder
	fmt.Fprintf(&sb, `listen: %s
metrics_listen: %s
admin_users: [admin]
health: {interval: 200ms}
auth: {type: trust}
log: {level: info, format: json}
clusters:
  main:
    partitions: 16
    shards:
`, addr, metrics)
	per := 16 / len(shards)
	for i, dsn := range shards {
		last := (i+1)*per - 1
		if i == len(shards)-1 {
			last = 15
		}
		fmt.Fprintf(&sb, "      - {name: s%d, dsn: %q, partitions: \"%d-%d\"}\n", i, dsn, i*per, last)
	}
	fmt.Fprintf(&sb, "reference:\n  source: %q\n  tables: [countries, public.plans]\n", source)
	if err := os.WriteFile(path, []byte(sb.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestRefsyncSurvivesKills: 50,000 rows copied to 3 shards, then 5,000
// mixed source transactions while refsync is SIGKILLed and restarted at 10
// random points and one shard is stopped and started; every shard ends
// equal to the source, at the source's position, and no change was applied
// twice or lost. A real pgrouter shows the lag; the apply rate of a backlog
// of 5,000 transactions is measured. Last, a fourth shard added by SIGHUP
// mid-stream ends equal too.
func TestRefsyncSurvivesKills(t *testing.T) {
	ctx := context.Background()
	servers := testenv.Servers(t, 3, pgtest.Options{})
	source, onA, onB := servers[0], servers[1], servers[2]
	if err := source.Exec(ctx, "postgres", "CREATE DATABASE central"); err != nil {
		t.Fatal(err)
	}
	if err := source.Exec(ctx, "central", `
		CREATE TABLE countries (id bigint PRIMARY KEY, code text NOT NULL, name text, payload jsonb, price numeric(12,2), seen timestamptz, blob bytea);
		INSERT INTO countries SELECT i, 'c' || i, 'country ' || i || E' \\ \t ''x''', jsonb_build_object('i', i, 'tags', jsonb_build_array('a', i % 7)),
			i / 100.0, timestamptz '2020-01-01 00:00+00' + i * interval '1 minute', decode(md5(i::text), 'hex')
		FROM generate_series(1, 50000) i;
		CREATE TABLE plans (id int PRIMARY KEY, title text);
		INSERT INTO plans SELECT i, 'plan ' || i FROM generate_series(1, 100) i;`); err != nil {
		t.Fatal(err)
	}
	src := source.DSN("central")
	var shards []string
	for i, srv := range []*pgtest.Server{onA, onA, onB, onA} {
		db := fmt.Sprintf("shard%d", i)
		if err := srv.Exec(ctx, "postgres", "CREATE DATABASE "+db); err != nil {
			t.Fatal(err)
		}
		shards = append(shards, srv.DSN(db))
	}
	path := filepath.Join(t.TempDir(), "router.yaml")
	addr, metrics := freeAddr(t), freeAddr(t)
	writeRefsyncConfig(t, path, src, shards[:3], addr, metrics)
	proc := &refsyncProc{t: t, path: path}
	proc.start()
	defer func() {
		_ = proc.stop(syscall.SIGTERM)
		if t.Failed() {
			t.Log(proc.output())
		}
	}()
	start := time.Now()
	testenv.WaitEqual(t, src, shards[:3], 2*time.Minute, "countries", "plans")
	t.Logf("initial copy of 50,000 rows to 3 shards: %s", time.Since(start).Round(time.Millisecond))

	// 5,000 transactions; refsync killed at 10 random points, shard 2 (the
	// only one on its server) stopped for a while.
	var done atomic.Int64
	type event struct {
		at   int64
		what string
	}
	var events []event
	for range 10 {
		events = append(events, event{200 + rand.Int64N(4600), "kill"})
	}
	events = append(events, event{2500, "stop shard"}, event{3300, "start shard"})
	sort.Slice(events, func(i, j int) bool { return events[i].at < events[j].at })
	faults := make(chan error, 1)
	go func() {
		for _, e := range events {
			for done.Load() < e.at {
				time.Sleep(5 * time.Millisecond)
			}
			switch e.what {
			case "kill":
				proc.kill()
				time.Sleep(time.Duration(rand.IntN(300)) * time.Millisecond)
				proc.start()
			case "stop shard":
				onB.Halt()
			case "start shard":
				if err := onB.Restart(ctx); err != nil {
					faults <- err
					return
				}
			}
		}
		faults <- nil
	}()
	sourceWorkload(t, src, 5000, 4, 2*time.Millisecond, &done, nil)
	if err := <-faults; err != nil {
		t.Fatal(err)
	}
	if len(proc.logs) != 11 {
		t.Fatalf("refsync ran %d times, want 11 (10 kills)", len(proc.logs))
	}
	testenv.WaitEqual(t, src, shards[:3], 3*time.Minute, "countries", "plans")
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	waitAtSourcePosition(t, cfg)
	if out := proc.output(); strings.Contains(out, "found no row") || strings.Contains(out, "duplicate key") {
		t.Fatalf("a change was applied twice or found its row missing:\n%s", out)
	}
	statusOut, code := pgrouter(ctx, t, "refsync", "status", "-c", path)
	if code != 0 || !strings.Contains(statusOut, "refsync streaming") || strings.Count(statusOut, "streaming\n") != 4 {
		t.Fatalf("refsync status (exit %d):\n%s", code, statusOut)
	}

	// A pgrouter serving the same file shows each shard's lag.
	runRouter(ctx, t, path, addr)
	adm, err := pgx.Connect(ctx, fmt.Sprintf("postgres://admin@%s/pgrouter?sslmode=disable&default_query_exec_mode=simple_protocol", addr))
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close(ctx)
	const current = 64 << 10 // a shard that holds everything trails by what was written since its last mark
	waitLag(ctx, t, adm, "every shard current", func(bytes, ms int64) bool { return bytes < current })

	// Apply rate: a backlog of 5,000 single-row transactions built while
	// refsync is stopped, then timed until every shard holds it.
	if err := proc.stop(syscall.SIGTERM); err != nil {
		t.Fatalf("refsync did not exit cleanly on SIGTERM: %v", err)
	}
	done.Store(0)
	sourceWorkload(t, src, 5000, 4, 0, &done, []string{"update"})
	waitLag(ctx, t, adm, "every shard behind by the backlog", func(bytes, ms int64) bool { return bytes > 512<<10 && ms > 0 })
	fams := scrape(t, metrics)
	if fam := fams["pgrouter_refsync_lag_bytes"]; fam == nil || len(fam.GetMetric()) != 3 || fam.GetMetric()[0].GetGauge().GetValue() < 512<<10 {
		t.Fatalf("/metrics pgrouter_refsync_lag_bytes: %v", fam)
	}
	cfg, err = config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	proc.start()
	waitAtSourcePosition(t, cfg)
	took := time.Since(start)
	t.Logf("apply rate: 5,000 source transactions to 3 shards in %s = %.0f transactions/s (refsync start included)",
		took.Round(time.Millisecond), 5000/took.Seconds())
	testenv.WaitEqual(t, src, shards[:3], time.Minute, "countries", "plans")
	waitLag(ctx, t, adm, "every shard current again", func(bytes, ms int64) bool { return bytes < current })

	// A fourth shard joins by SIGHUP while transactions flow.
	done.Store(0)
	go func() {
		for done.Load() < 300 {
			time.Sleep(5 * time.Millisecond)
		}
		writeRefsyncConfig(t, path, src, shards, addr, metrics)
		_ = proc.cmd.Process.Signal(syscall.SIGHUP)
	}()
	sourceWorkload(t, src, 1000, 4, 2*time.Millisecond, &done, nil)
	testenv.WaitEqual(t, src, shards, 2*time.Minute, "countries", "plans")
}

// waitLag waits until SHOW SHARDS reports, for every shard, a refsync lag
// that ok accepts.
func waitLag(ctx context.Context, t *testing.T, adm *pgx.Conn, what string, ok func(bytes, ms int64) bool) {
	t.Helper()
	waitShards(ctx, t, adm, what, func(rows []map[string]any) bool {
		for _, r := range rows {
			bytes, isInt := r["refsync_lag_bytes"].(int64)
			ms, _ := r["refsync_lag_ms"].(int64)
			if !isInt || !ok(bytes, ms) {
				return false
			}
		}
		return len(rows) > 0
	})
}

// waitAtSourcePosition waits until every shard and the slot are at or past
// the source's WAL position when it is called.
func waitAtSourcePosition(t *testing.T, cfg *config.Config) {
	t.Helper()
	ctx := context.Background()
	target := refsync.ReadStatus(ctx, cfg)
	if target.SourceErr != nil {
		t.Fatal(target.SourceErr)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		st := refsync.ReadStatus(ctx, cfg)
		behind := ""
		if st.Slot == nil || st.Slot.Confirmed < target.SourceLSN {
			behind = fmt.Sprintf("slot %+v", st.Slot)
		}
		for _, s := range st.Shards {
			if s.Err != nil || !s.Copied || s.LSN < target.SourceLSN {
				behind = fmt.Sprintf("shard %s at %s (copied %v, err %v)", s.Shard, s.LSN, s.Copied, s.Err)
			}
		}
		if behind == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not at the source's position %s: %s", target.SourceLSN, behind)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// sourceWorkload commits n transactions on the source from several
// clients, each working on its own ids (so they never conflict): updates,
// inserts, deletes, key changes, multi-statement transactions and one
// truncate. ops, when given, limits the kinds.
func sourceWorkload(t *testing.T, dsn string, n int64, clients int, pause time.Duration, done *atomic.Int64, ops []string) {
	t.Helper()
	ctx := context.Background()
	if len(ops) == 0 {
		ops = []string{"update", "update", "update", "insert", "insert", "delete", "multi", "rekey"}
	}
	var truncated atomic.Bool
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := pgx.Connect(ctx, dsn)
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close(ctx)
			rng := rand.New(rand.NewPCG(uint64(c), uint64(time.Now().UnixNano())))
			own := func() int64 { return int64(rng.IntN(50000/clients))*int64(clients) + int64(c) + 1 }
			fresh := func() int64 { return 1_000_000_000 + rng.Int64N(1_000_000_000)*int64(clients) + int64(c) }
			for done.Load() < n {
				var sql string
				switch op := ops[rng.IntN(len(ops))]; {
				case c == 0 && done.Load() > n/2 && len(ops) > 1 && truncated.CompareAndSwap(false, true):
					sql = "BEGIN; TRUNCATE plans; INSERT INTO plans SELECT i, 'after truncate ' || i FROM generate_series(1, 50) i; COMMIT"
				case op == "update":
					sql = fmt.Sprintf("UPDATE countries SET name = 'n%d', price = %d.25, payload = payload || '{\"u\": %d}' WHERE id = %d", rng.Int(), rng.IntN(1000), rng.IntN(100), own())
				case op == "insert":
					sql = fmt.Sprintf("INSERT INTO countries (id, code, name, seen) VALUES (%d, 'new', NULL, now()) ON CONFLICT DO NOTHING", fresh())
				case op == "delete":
					sql = fmt.Sprintf("DELETE FROM countries WHERE id = %d", own())
				case op == "rekey":
					sql = fmt.Sprintf("UPDATE countries SET id = %d WHERE id = %d", fresh(), own())
				default:
					sql = fmt.Sprintf(`BEGIN; INSERT INTO countries (id, code) VALUES (%[1]d, 'multi') ON CONFLICT DO NOTHING;
						UPDATE countries SET code = 'changed' WHERE id = %[1]d; DELETE FROM countries WHERE id = %[2]d;
						UPDATE plans SET title = 'p%[3]d' WHERE id = %[4]d; COMMIT`, fresh(), own(), rng.Int(), 1+rng.IntN(50))
				}
				if _, err := conn.Exec(ctx, sql); err != nil {
					errs <- fmt.Errorf("%s: %w", sql, err)
					return
				}
				done.Add(1)
				time.Sleep(pause)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}
