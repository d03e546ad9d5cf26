package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgrouter/pgrouter/internal/pgtest"
	"github.com/pgrouter/pgrouter/internal/pgtest/testenv"
	"github.com/pgrouter/pgrouter/shardmap"
)

// moveUsers is how many accounts the move tests load.
const moveUsers = 20000

// partitionOf is the partition of a username in a cluster of 8 partitions
// with hash: hashtext, as the router computes it.
func partitionOf(username string) int {
	return shardmap.Partition(shardmap.HashText.Text([]byte(username)), 8)
}

// moveCluster starts three shards (s0 holds 0-3, s1 4-7, s2 nothing), loads
// the accounts where the hash places them, and writes router.yaml files for
// n routers that are each other's peers. It returns the shards, the paths
// and the routers' addresses.
func moveCluster(t *testing.T, ctx context.Context, n int) ([]*pgtest.Server, []string, []string) {
	t.Helper()
	servers := testenv.Servers(t, 3, pgtest.Options{})
	const schema = `CREATE TABLE accounts (id bigint PRIMARY KEY, username text NOT NULL UNIQUE, balance bigint NOT NULL DEFAULT 0);
CREATE FUNCTION bump(i_username text) RETURNS bigint LANGUAGE sql AS
	$$ UPDATE accounts SET balance = balance + 1 WHERE username = i_username RETURNING balance $$;
CREATE FUNCTION add_account(i_username text, i_id bigint) RETURNS bigint LANGUAGE sql AS
	$$ INSERT INTO accounts (id, username) VALUES (i_id, i_username) RETURNING id $$;`
	var conns []*pgx.Conn
	for _, s := range servers {
		conn, err := pgx.Connect(ctx, s.DSN("postgres"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close(context.Background()) })
		if _, err := conn.Exec(ctx, schema); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, conn)
	}
	rows := [2][][]any{}
	for i := 1; i <= moveUsers; i++ {
		name := strconv.Itoa(i) // a text key pgbench can pass as a parameter
		shard := partitionOf(name) / 4
		rows[shard] = append(rows[shard], []any{int64(i), name})
	}
	for i := range 2 {
		if _, err := conns[i].CopyFrom(ctx, pgx.Identifier{"accounts"}, []string{"id", "username"}, pgx.CopyFromRows(rows[i])); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	var addrs, peerList, paths []string
	for i := range n {
		addrs = append(addrs, freeAddr(t))
		peerList = append(peerList, fmt.Sprintf("%d: %q", i+1, addrs[i]))
	}
	for i := range n {
		path := filepath.Join(dir, fmt.Sprintf("router%d.yaml", i+1))
		writeFile(t, path, fmt.Sprintf(`listen: %s
auth: {type: trust}
admin_users: [postgres]
log: {level: info, format: json}
health: {interval: 500ms}
pool: {mode: transaction, size: 4, query_wait_timeout: 20s}
peer_id: %d
peers: {%s}
clusters:
  main:
    hash: hashtext
    partitions: 8
    shards:
      - {name: s0, dsn: %q, partitions: "0-3"}
      - {name: s1, dsn: %q, partitions: "4-7"}
      - {name: s2, dsn: %q, partitions: ""}
    tables:
      - {name: accounts, key: username}
functions:
  - {name: bump, key: i_username}
  - {name: add_account, key: i_username}
`, addrs[i], i+1, strings.Join(peerList, ", "), servers[0].DSN("postgres"), servers[1].DSN("postgres"), servers[2].DSN("postgres")))
		paths = append(paths, path)
	}
	return servers, paths, addrs
}

// accountsOn counts a shard's accounts in and out of partitions 6-7, and
// sums all balances there.
func accountsOn(t *testing.T, ctx context.Context, s *pgtest.Server) (moved, others, balance int64) {
	t.Helper()
	conn, err := pgx.Connect(ctx, s.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, "SELECT username, balance FROM accounts")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var name string
		var b int64
		if err := rows.Scan(&name, &b); err != nil {
			t.Fatal(err)
		}
		if p := partitionOf(name); p == 6 || p == 7 {
			moved++
		} else {
			others++
		}
		balance += b
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return moved, others, balance
}

// longestTransaction reads pgbench's per-transaction logs (--log) in dir
// and returns the longest transaction, retries included.
func longestTransaction(t *testing.T, dir string) time.Duration {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "tx*"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no pgbench transaction log in %s (%v)", dir, err)
	}
	var longest int64
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(data), "\n") {
			fields := strings.Fields(line)
			if len(fields) < 3 {
				continue
			}
			if us, err := strconv.ParseInt(fields[2], 10, 64); err == nil && us > longest {
				longest = us
			}
		}
	}
	return time.Duration(longest) * time.Microsecond
}

// TestMoveUnderLoad moves partitions 6-7 of 8 (about 5,000 of 20,000
// accounts) from s1 to an empty s2 while pgbench calls a routed increment
// through one of two pgrouter peers, retrying 40001: no account is lost
// or doubled, the balances add up to the transactions pgbench committed,
// both peers route to s2 after the move, a router that was not told (not a
// peer) is refused by s1's guard and then routes right, and a router
// started from the same router.yaml routes to s2.
func TestMoveUnderLoad(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	servers, paths, addrs := moveCluster(t, ctx, 2)
	runRouter(ctx, t, paths[0], addrs[0])
	runRouter(ctx, t, paths[1], addrs[1])
	// A router that is nobody's peer: its map goes stale.
	stalePath := filepath.Join(t.TempDir(), "stale.yaml")
	staleAddr := freeAddr(t)
	data, err := os.ReadFile(paths[0])
	if err != nil {
		t.Fatal(err)
	}
	stale := regexp.MustCompile(`(?m)^(peer_id|peers):.*\n`).ReplaceAllString(strings.Replace(string(data), addrs[0], staleAddr, 1), "")
	writeFile(t, stalePath, stale)
	runRouter(ctx, t, stalePath, staleAddr)

	pgbench, err := exec.LookPath("pgbench")
	if err != nil {
		t.Fatal("pgbench is not installed")
	}
	script := filepath.Join(t.TempDir(), "bump.sql")
	writeFile(t, script, fmt.Sprintf("\\set n random(1, %d)\nSELECT bump(:n);\n", moveUsers))
	host, port, _ := net.SplitHostPort(addrs[0])
	logDir := t.TempDir()
	bench := exec.CommandContext(ctx, pgbench, "-n", "-M", "extended", "-f", script, "-c", "8", "-j", "2", "-T", "10", "--max-tries", "20",
		"--log", "--log-prefix", filepath.Join(logDir, "tx"), "-h", host, "-p", port, "-U", "postgres", "main")
	var benchOut syncBuffer
	bench.Stdout, bench.Stderr = &benchOut, &benchOut
	if err := bench.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	out, code := pgrouter(ctx, t, "move", "-c", paths[0], "--cluster", "main", "--partitions", "6-7", "--to", "s2")
	if code != 0 || !strings.Contains(out, "moved partitions 6-7 of cluster main from s1 to s2") {
		t.Fatalf("pgrouter move (exit %d):\n%s", code, out)
	}
	t.Logf("move:\n%s", out)
	if err := bench.Wait(); err != nil {
		t.Fatalf("pgbench: %v\n%s", err, benchOut.String())
	}
	processed := pgbenchProcessed(t, benchOut.String())
	if m := regexp.MustCompile(`number of failed transactions: (\d+)`).FindStringSubmatch(benchOut.String()); m == nil || m[1] != "0" {
		t.Fatalf("pgbench saw failed transactions:\n%s", benchOut.String())
	}
	retried := regexp.MustCompile(`number of transactions retried: .*`).FindString(benchOut.String())
	longest := longestTransaction(t, logDir)
	t.Logf("pgbench: %d transactions; %s; the longest took %s", processed, retried, longest)
	if longest > 5*time.Second {
		t.Fatalf("a transaction took %s across the move: clients should see a short pause only", longest)
	}

	var total, balance int64
	for i, s := range servers {
		moved, others, b := accountsOn(t, ctx, s)
		switch {
		case i == 2 && others != 0:
			t.Fatalf("s2 holds %d accounts of partitions it does not own", others)
		case i < 2 && moved != 0:
			t.Fatalf("s%d still holds %d accounts of partitions 6-7", i, moved)
		}
		total += moved + others
		balance += b
	}
	if total != moveUsers || balance != int64(processed) {
		t.Fatalf("after the move: %d accounts (want %d), balances add up to %d (pgbench committed %d)", total, moveUsers, balance, processed)
	}

	// Every router sends partition 6's keys to s2: the peers at once, the
	// router that was not told after s1's guard refuses its first write
	// there, a router started from the same router.yaml at once.
	s2, err := pgx.Connect(ctx, servers[2].DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close(ctx)
	var victim string
	for i := 1; victim == ""; i++ {
		if name := strconv.Itoa(i); partitionOf(name) == 6 {
			victim = name
		}
	}
	balanceOnS2 := func() int64 {
		var b int64
		if err := s2.QueryRow(ctx, "SELECT balance FROM accounts WHERE username = $1", victim).Scan(&b); err != nil {
			t.Fatal(err)
		}
		return b
	}
	call := func(addr, sql string, args ...any) error {
		conn, err := pgx.Connect(ctx, fmt.Sprintf("postgres://postgres@%s/main?sslmode=disable", addr))
		if err != nil {
			return err
		}
		defer conn.Close(ctx)
		var v int64
		return conn.QueryRow(ctx, sql, args...).Scan(&v)
	}
	for _, addr := range addrs {
		before := balanceOnS2()
		if err := call(addr, "SELECT bump($1)", victim); err != nil {
			t.Fatalf("a peer after the move: %v", err)
		}
		if after := balanceOnS2(); after != before+1 {
			t.Fatalf("a bump through a peer: balance on s2 %d -> %d", before, after)
		}
	}
	newcomer := ""
	for i := moveUsers + 1; newcomer == ""; i++ {
		if name := strconv.Itoa(i); partitionOf(name) == 7 {
			newcomer = name
		}
	}
	err = call(staleAddr, "SELECT add_account($1, 999999)", newcomer)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "40001" || !strings.HasPrefix(pgErr.Message, "pgrouter: partition 7 of cluster main is not on shard s1") {
		t.Fatalf("the stale router's first write after the move: %v (want 40001 from s1's guard)", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for err = call(staleAddr, "SELECT add_account($1, 999999)", newcomer); err != nil && time.Now().Before(deadline); err = call(staleAddr, "SELECT add_account($1, 999999)", newcomer) {
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("the stale router after a refusal: %v", err)
	}
	var n int
	if err := s2.QueryRow(ctx, "SELECT count(*) FROM accounts WHERE username = $1", newcomer).Scan(&n); err != nil || n != 1 {
		t.Fatalf("the account the stale router added is not on s2 (%d, %v)", n, err)
	}
	restarted := freeAddr(t)
	writeFile(t, stalePath, strings.Replace(stale, staleAddr, restarted, 1))
	runRouter(ctx, t, stalePath, restarted)
	before := balanceOnS2()
	if err := call(restarted, "SELECT bump($1)", victim); err != nil {
		t.Fatalf("a router started from the same router.yaml after the move: %v", err)
	}
	if after := balanceOnS2(); after != before+1 {
		t.Fatalf("a bump through a router started after the move: balance on s2 %d -> %d", before, after)
	}
	if out, code := pgrouter(ctx, t, "check", "-c", paths[0]); code != 0 {
		t.Fatalf("pgrouter check after the move (exit %d):\n%s", code, out)
	}
}

// startBump runs pgbench calling bump through addr for d, retrying 40001.
func startBump(ctx context.Context, t *testing.T, addr string, d time.Duration) (*exec.Cmd, *syncBuffer) {
	t.Helper()
	pgbench, err := exec.LookPath("pgbench")
	if err != nil {
		t.Fatal("pgbench is not installed")
	}
	script := filepath.Join(t.TempDir(), "bump.sql")
	writeFile(t, script, fmt.Sprintf("\\set n random(1, %d)\nSELECT bump(:n);\n", moveUsers))
	host, port, _ := net.SplitHostPort(addr)
	bench := exec.CommandContext(ctx, pgbench, "-n", "-M", "extended", "-f", script, "-c", "4", "-j", "2", "-T", strconv.Itoa(int(d.Seconds())),
		"--max-tries", "50", "-h", host, "-p", port, "-U", "postgres", "main")
	out := &syncBuffer{}
	bench.Stdout, bench.Stderr = out, out
	if err := bench.Start(); err != nil {
		t.Fatal(err)
	}
	return bench, out
}

// checkAccounts checks that the shards hold every account once, partitions
// 6-7 on want and the others where they were, with balances adding up to
// the transactions pgbench committed.
func checkAccounts(t *testing.T, ctx context.Context, servers []*pgtest.Server, want int, committed int) {
	t.Helper()
	var total, balance int64
	for i, s := range servers {
		moved, others, b := accountsOn(t, ctx, s)
		if (i == want) != (moved > 0) && !(i == want && moved == 0) || (i == 2 && others != 0) {
			t.Fatalf("s%d holds %d accounts of partitions 6-7 and %d others (they belong on s%d)", i, moved, others, want)
		}
		total += moved + others
		balance += b
	}
	if total != moveUsers || balance != int64(committed) {
		t.Fatalf("%d accounts (want %d), balances add up to %d (pgbench committed %d)", total, moveUsers, balance, committed)
	}
}

// TestMoveAbortedWhenAPeerIsDown: with one of the two routers under peers:
// down, the move copies and catches up but does not start its cut-over; it
// says which peer, the routers keep writing, and --abort puts everything
// back (the partitions on s1 only, s2 empty). With both routers up, the
// move then completes.
func TestMoveAbortedWhenAPeerIsDown(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	servers, paths, addrs := moveCluster(t, ctx, 2)
	runRouter(ctx, t, paths[0], addrs[0])
	// --dry-run prints the plan and changes nothing.
	out, code := pgrouter(ctx, t, "move", "-c", paths[0], "--partitions", "6-7", "--to", "s2", "--dry-run")
	moved, _, _ := accountsOn(t, ctx, servers[1])
	if code != 0 || !strings.Contains(out, "move partitions 6-7 of cluster main from s1 to s2") ||
		!strings.Contains(out, fmt.Sprintf("public.accounts (key username, primary key id): %d rows to copy", moved)) {
		t.Fatalf("move --dry-run (exit %d):\n%s", code, out)
	}
	probe, err := pgx.Connect(ctx, servers[1].DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	var installed bool
	if err := probe.QueryRow(ctx, "SELECT to_regclass('pgrouter.partitions') IS NOT NULL").Scan(&installed); err != nil || installed {
		t.Fatalf("--dry-run installed the ownership tables (%v)", err)
	}
	probe.Close(ctx)
	bench, benchOut := startBump(ctx, t, addrs[0], 8*time.Second)
	time.Sleep(time.Second)
	out, code = pgrouter(ctx, t, "move", "-c", paths[0], "--partitions", "6-7", "--to", "s2")
	if code != 1 || !strings.Contains(out, "the cut-over did not start") || !strings.Contains(out, "peer 2 ("+addrs[1]+") cannot be reached") {
		t.Fatalf("move with a peer down (exit %d):\n%s", code, out)
	}
	out, code = pgrouter(ctx, t, "move", "-c", paths[0], "--partitions", "6-7", "--to", "s2")
	if code != 1 || !strings.Contains(out, "in progress (phase catchup): run pgrouter move --resume") {
		t.Fatalf("a second move while one is in progress (exit %d):\n%s", code, out)
	}
	// SHOW SHARDS shows the move in progress on its source and target rows.
	adm, err := pgx.Connect(ctx, fmt.Sprintf("postgres://postgres@%s/pgrouter?sslmode=disable&default_query_exec_mode=simple_protocol", addrs[0]))
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close(ctx)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		moves := map[string]string{}
		for _, row := range adminMaps(ctx, t, adm, "SHOW SHARDS") {
			moves[row["shard"].(string)] = fmt.Sprint(row["move"])
		}
		if strings.HasPrefix(moves["s1"], "6-7 from s1 to s2: catchup") && moves["s1"] == moves["s2"] && moves["s0"] == "<nil>" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("SHOW SHARDS during the move: %v", moves)
		}
	}
	out, code = pgrouter(ctx, t, "move", "-c", paths[0], "--abort")
	if code != 0 || !strings.Contains(out, "aborted: partitions 6-7 stay on s1") {
		t.Fatalf("move --abort (exit %d):\n%s", code, out)
	}
	if moved, _, _ := accountsOn(t, ctx, servers[2]); moved != 0 {
		t.Fatalf("s2 holds %d accounts of partitions 6-7 after --abort", moved)
	}
	runRouter(ctx, t, paths[1], addrs[1])
	out, code = pgrouter(ctx, t, "move", "-c", paths[0], "--partitions", "6-7", "--to", "s2")
	if code != 0 {
		t.Fatalf("move with both peers up (exit %d):\n%s", code, out)
	}
	if err := bench.Wait(); err != nil {
		t.Fatalf("pgbench: %v\n%s", err, benchOut.String())
	}
	if m := regexp.MustCompile(`number of failed transactions: (\d+)`).FindStringSubmatch(benchOut.String()); m == nil || m[1] != "0" {
		t.Fatalf("pgbench saw failed transactions:\n%s", benchOut.String())
	}
	checkAccounts(t, ctx, servers, 2, pgbenchProcessed(t, benchOut.String()))
}

// TestMoveKilledAndResumed: under a pgbench write load, pgrouter move is
// killed (SIGKILL) at spread-out moments, each time finished with --resume
// (or started again when it had not recorded itself yet) and killed again:
// in the end every account is once on the right shard, the balances add up
// to the transactions committed, and no move state or logged key is left.
func TestMoveKilledAndResumed(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	servers, paths, addrs := moveCluster(t, ctx, 1)
	runRouter(ctx, t, paths[0], addrs[0])
	bench, benchOut := startBump(ctx, t, addrs[0], 15*time.Second)
	time.Sleep(time.Second)

	moveArgs := []string{"move", "-c", paths[0], "--partitions", "6-7", "--to", "s2"}
	resumeArgs := []string{"move", "-c", paths[0], "--resume"}
	args, kills, finished := moveArgs, 0, false
	// Each run is killed the moment its log shows it reached a later step:
	// the snapshot copy, the catch-up, the freeze, the new owner recorded,
	// the source's rows removed.
	for _, marker := range []string{"copied public.accounts", "catch-up:", "frozen on s1", "s2 owns partitions", "removed"} {
		cmd, logs, exited := startProcess(t, args...)
		var err error
	wait:
		for {
			select {
			case err = <-exited:
				break wait
			case <-time.After(time.Millisecond):
				if strings.Contains(logs.String(), marker) {
					_ = cmd.Process.Kill()
					err = <-exited
					kills++
					break wait
				}
			}
		}
		out := logs.String()
		switch {
		case err == nil || strings.Contains(out, "done: partitions 6-7"): // done before the kill landed
			finished = true
		case strings.Contains(out, "no move of cluster main is in progress"):
			args = moveArgs // killed before it recorded itself: start over
		default:
			args = resumeArgs
		}
		t.Logf("killed at %q: done=%t (%v)\n%s", marker, finished, err, out)
		if finished {
			break
		}
	}
	for attempt := 0; !finished; attempt++ {
		out, code := pgrouter(ctx, t, args...)
		t.Logf("last run (exit %d):\n%s", code, out)
		switch {
		case code == 0 || strings.Contains(out, "partition 6 is on s2 already"): // the last kill came after the end
			finished = true
		case strings.Contains(out, "no move of cluster main is in progress"):
			args = moveArgs
		case attempt > 2:
			t.Fatalf("move after %d kills (exit %d):\n%s", kills, code, out)
		default:
			args = resumeArgs
		}
	}
	t.Logf("the move was killed %d times", kills)
	if kills < 3 {
		t.Fatalf("the move was killed only %d times: the test did not interrupt it", kills)
	}
	if err := bench.Wait(); err != nil {
		t.Fatalf("pgbench: %v\n%s", err, benchOut.String())
	}
	if m := regexp.MustCompile(`number of failed transactions: (\d+)`).FindStringSubmatch(benchOut.String()); m == nil || m[1] != "0" {
		t.Fatalf("pgbench saw failed transactions:\n%s", benchOut.String())
	}
	checkAccounts(t, ctx, servers, 2, pgbenchProcessed(t, benchOut.String()))
	for i, s := range servers {
		conn, err := pgx.Connect(ctx, s.DSN("postgres"))
		if err != nil {
			t.Fatal(err)
		}
		var moves, logged int
		err = conn.QueryRow(ctx, "SELECT (SELECT count(*) FROM pgrouter.moves), (SELECT count(*) FROM pgrouter.move_log)").Scan(&moves, &logged)
		conn.Close(ctx)
		if err != nil || moves != 0 || logged != 0 {
			t.Fatalf("s%d keeps %d moves and %d logged keys after the move (%v)", i, moves, logged, err)
		}
	}
}
