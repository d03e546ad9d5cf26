package proxy_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// reloadYAML is a routing config over some of allShards: owners maps a
// shard index to its partitions.
func reloadYAML(owners map[int]string) string {
	var b strings.Builder
	b.WriteString("listen: 127.0.0.1:0\nauth:\n  type: trust\nadmin_users: [admin]\n")
	b.WriteString("pool:\n  mode: transaction\n  size: 4\n  query_wait_timeout: 10s\n")
	b.WriteString("clusters:\n  main:\n    hash: hashtext\n    partitions: 16\n    shards:\n")
	for i := range allShards {
		if parts, ok := owners[i]; ok {
			fmt.Fprintf(&b, "      - name: s%d\n        dsn: %s\n        partitions: %q\n", i, allShards[i].DSN("postgres"), parts)
		}
	}
	b.WriteString("default_route: error\n")
	b.WriteString(routingFunctions)
	return b.String()
}

// partitionsOf asks PostgreSQL for each key's partition (hashtext & 15).
func partitionsOf(t *testing.T, ctx context.Context, keys []string) map[string]int {
	t.Helper()
	conn, err := pgx.Connect(ctx, allShards[0].DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, "SELECT k, hashtext(k) & 15 FROM unnest($1::text[]) k", keys)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for rows.Next() {
		var k string
		var part int
		if err := rows.Scan(&k, &part); err != nil {
			t.Fatal(err)
		}
		out[k] = part
	}
	return out
}

// ownerIn returns the shard that owns a partition in a reloadYAML layout.
func ownerIn(layout map[int][]int, part int) string {
	for shard, parts := range layout {
		for _, p := range parts {
			if p == part {
				return fmt.Sprintf("s%d", shard)
			}
		}
	}
	return "nobody"
}

// TestReloadMovesPartitions: a RELOAD that adds a shard and moves half the
// partitions to it sends new calls there at once, while connected clients
// stay connected and a transaction begun before the reload finishes on its
// shard. A bad file changes nothing and says why. Removing the shard again
// drains its pool once its last transaction ends.
func TestReloadMovesPartitions(t *testing.T) {
	ctx := testContext(t, 3*time.Minute)
	for i := range allShards {
		shardExec(t, i, fmt.Sprintf(routingSchema, fmt.Sprintf("s%d", i)))
	}
	path := filepath.Join(t.TempDir(), "router.yaml")
	v1 := map[int]string{0: "0-7", 1: "8-15"}
	writeFile(t, path, reloadYAML(v1))
	p := startProxyFile(t, path, false)
	adm := p.admin(t, ctx)

	keys := make([]string, 300)
	for i := range keys {
		keys[i] = userName(i)
	}
	parts := partitionsOf(t, ctx, keys)
	before := map[int][]int{0: {0, 1, 2, 3, 4, 5, 6, 7}, 1: {8, 9, 10, 11, 12, 13, 14, 15}}
	after := map[int][]int{0: {0, 1, 2, 3}, 1: {8, 9, 10, 11}, 2: {4, 5, 6, 7, 12, 13, 14, 15}}
	clients := make([]*pgx.Conn, 8)
	for i := range clients {
		clients[i] = p.connect(t, ctx)
	}
	checkAll := func(layout map[int][]int) {
		t.Helper()
		for i, k := range keys {
			var got string
			if err := clients[i%len(clients)].QueryRow(ctx, "SELECT rt_where($1)", k).Scan(&got); err != nil {
				t.Fatalf("rt_where(%q): %v", k, err)
			}
			if want := ownerIn(layout, parts[k]); got != want {
				t.Fatalf("rt_where(%q) (partition %d) ran on %s, want %s", k, parts[k], got, want)
			}
		}
	}
	checkAll(before)

	var moved string // a key whose partition moves from s0 to s2
	for _, k := range keys {
		if p := parts[k]; p >= 4 && p <= 7 {
			moved = k
			break
		}
	}
	tx, err := clients[0].Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var where string
	if err := tx.QueryRow(ctx, "SELECT rt_where($1)", moved).Scan(&where); err != nil || where != "s0" {
		t.Fatalf("before the reload: %q %v", where, err)
	}
	idsBefore := clientIDs(t, ctx, adm)

	writeFile(t, path, reloadYAML(map[int]string{0: "0-3", 1: "8-11", 2: "4-7,12-15"}))
	if _, err := adm.Exec(ctx, "RELOAD"); err != nil {
		t.Fatalf("RELOAD: %v", err)
	}
	// The open transaction stays on the shard it began on.
	if err := tx.QueryRow(ctx, "SELECT rt_where($1)", moved).Scan(&where); err != nil || where != "s0" {
		t.Fatalf("transaction across the reload: %q %v", where, err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	checkAll(after)
	if idsAfter := clientIDs(t, ctx, adm); !sameIDs(idsBefore, idsAfter) {
		t.Fatalf("clients before the reload %v, after %v: someone was disconnected", idsBefore, idsAfter)
	}
	shardRows := adminRows(t, ctx, adm, "SHOW SHARDS")
	if len(shardRows) != 3 || rowWhere(t, shardRows, "shard", "s2")["partitions"] != "4-7,12-15" {
		t.Fatalf("SHOW SHARDS after the reload: %v", shardRows)
	}

	// A bad file: the error names the problem; nothing changes.
	writeFile(t, path, strings.Replace(reloadYAML(v1), "partitions: 16", "partitions: 12", 1))
	_, err = adm.Exec(ctx, "RELOAD")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "F0000" || !strings.Contains(pgErr.Message, "clusters.main.partitions: 12 is not a power of two") {
		t.Fatalf("RELOAD of a bad file: %v; want F0000 naming the key", err)
	}
	if n := len(adminRows(t, ctx, adm, "SHOW SHARDS")); n != 3 {
		t.Fatalf("a failed reload changed the shards: %d", n)
	}
	checkAll(after)

	// Removing s2 drains it: its transaction in flight finishes there, then
	// its server connections close.
	tx, err = clients[1].Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.QueryRow(ctx, "SELECT rt_where($1)", moved).Scan(&where); err != nil || where != "s2" {
		t.Fatalf("on s2: %q %v", where, err)
	}
	writeFile(t, path, reloadYAML(v1))
	if _, err := adm.Exec(ctx, "RELOAD"); err != nil {
		t.Fatalf("RELOAD: %v", err)
	}
	if err := tx.QueryRow(ctx, "SELECT rt_where($1)", moved).Scan(&where); err != nil || where != "s2" {
		t.Fatalf("draining transaction: %q %v", where, err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	checkAll(before)
	deadline := time.Now().Add(10 * time.Second)
	for shardQueryInt(t, 2, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()") > 0 {
		if time.Now().After(deadline) {
			t.Fatal("the removed shard still has connections from pgrouter")
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, r := range adminRows(t, ctx, adm, "SHOW POOLS") {
		if r["shard"] == "s2" {
			t.Fatalf("SHOW POOLS still lists the removed shard: %v", r)
		}
	}

	// The move procedure: PAUSE, RELOAD the new map, RESUME. A call that
	// waited on the paused shard for a key that moved is not run there: it
	// gets 40001 (nothing ran), and its retry lands on the new owner.
	if _, err := adm.Exec(ctx, "PAUSE s0"); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() {
		var where string
		err := clients[2].QueryRow(ctx, "SELECT rt_where($1)", moved).Scan(&where)
		if err == nil {
			err = fmt.Errorf("ran on %s", where)
		}
		waited <- err
	}()
	for rowWhere(t, adminRows(t, ctx, adm, "SHOW POOLS"), "shard", "s0")["cl_waiting"] != int64(1) {
		time.Sleep(20 * time.Millisecond)
	}
	writeFile(t, path, reloadYAML(map[int]string{0: "0-3", 1: "8-11", 2: "4-7,12-15"}))
	if _, err := adm.Exec(ctx, "RELOAD"); err != nil {
		t.Fatalf("RELOAD: %v", err)
	}
	if _, err := adm.Exec(ctx, "RESUME s0"); err != nil {
		t.Fatal(err)
	}
	if err := <-waited; pgCode(err) != "40001" {
		t.Fatalf("a call held across a partition move: %v; want 40001 (not run)", err)
	}
	if err := clients[2].QueryRow(ctx, "SELECT rt_where($1)", moved).Scan(&where); err != nil || where != "s2" {
		t.Fatalf("retry after the move: %q %v; want s2", where, err)
	}
}

func clientIDs(t *testing.T, ctx context.Context, adm *pgx.Conn) []int64 {
	var ids []int64
	for _, r := range adminRows(t, ctx, adm, "SHOW CLIENTS") {
		ids = append(ids, r["id"].(int64))
	}
	return ids
}

func sameIDs(a, b []int64) bool {
	return fmt.Sprint(a) == fmt.Sprint(b)
}

// TestPauseResume: PAUSE waits for the transaction running on the shard,
// holds a new one (visible as cl_waiting), and RESUME releases it. PAUSE
// that cannot drain in time says so and leaves the shard paused, and a
// client held past query_wait_timeout is told the shard is paused.
func TestPauseResume(t *testing.T) {
	ctx := testContext(t, 2*time.Minute)
	p := startProxy(t, proxyOpts{topLevel: adminTopLevel, extra: "  query_wait_timeout: 3s\n"})
	adm := p.admin(t, ctx)
	a, b := p.connect(t, ctx), p.connect(t, ctx)
	tx, err := a.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	paused := make(chan error, 1)
	go func() {
		_, err := adm.Exec(ctx, "PAUSE s0")
		paused <- err
	}()
	select {
	case err := <-paused:
		t.Fatalf("PAUSE returned while a transaction runs: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatalf("the running transaction must finish: %v", err)
	}
	if err := <-paused; err != nil {
		t.Fatalf("PAUSE: %v", err)
	}
	held := make(chan error, 1)
	go func() {
		var one int
		held <- b.QueryRow(ctx, "SELECT 1").Scan(&one)
	}()
	adm2 := p.admin(t, ctx)
	deadline := time.Now().Add(2 * time.Second)
	for {
		r := rowWhere(t, adminRows(t, ctx, adm2, "SHOW POOLS"), "shard", "s0")
		if r["cl_waiting"] == int64(1) && r["paused"] == true {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("SHOW POOLS while a client waits on a paused shard: %v", r)
		}
		time.Sleep(20 * time.Millisecond)
	}
	select {
	case err := <-held:
		t.Fatalf("a query ran on a paused shard: %v", err)
	default:
	}
	if _, err := adm2.Exec(ctx, "RESUME s0"); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-held:
		if err != nil {
			t.Fatalf("held query after RESUME: %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("RESUME did not release the held query")
	}

	// A transaction that does not end: PAUSE gives up waiting (the shard
	// stays paused), and a client waiting past query_wait_timeout is told why.
	tx, err = a.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	if _, err := adm.Exec(ctx, "PAUSE"); pgCode(err) != "55006" {
		t.Fatalf("PAUSE with a transaction left open: %v; want 55006", err)
	}
	var one int
	err = b.QueryRow(ctx, "SELECT 1").Scan(&one)
	if pgCode(err) != "53300" || !strings.Contains(err.Error(), "paused") {
		t.Fatalf("query on a paused shard past query_wait_timeout: %v; want 53300 saying paused", err)
	}
	if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatalf("the open transaction keeps working while paused: %v", err)
	}
	_ = tx.Rollback(ctx)
	if _, err := adm.Exec(ctx, "RESUME"); err != nil {
		t.Fatal(err)
	}
	if err := b.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
		t.Fatal(err)
	}
}

// TestShutdownLetsTransactionsFinish: SHUTDOWN tells an idle client 57P01
// at once, lets a client inside a transaction commit (then tells it 57P01),
// refuses new connections and ends the server.
func TestShutdownLetsTransactionsFinish(t *testing.T) {
	ctx := testContext(t, time.Minute)
	shardExec(t, 0, "DROP TABLE IF EXISTS shut_t; CREATE TABLE shut_t (v int)")
	p := startProxy(t, proxyOpts{topLevel: adminTopLevel + "shutdown_timeout: 20s\n"})
	idle, busy := p.connect(t, ctx), p.connect(t, ctx)
	tx, err := busy.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "INSERT INTO shut_t VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	adm := p.admin(t, ctx)
	if _, err := adm.Exec(ctx, "SHUTDOWN"); err != nil {
		t.Fatalf("SHUTDOWN: %v", err)
	}
	var one int
	if err := idle.QueryRow(ctx, "SELECT 1").Scan(&one); pgCode(err) != "57P01" {
		t.Fatalf("idle client after SHUTDOWN: %v; want FATAL 57P01", err)
	}
	if _, err := pgx.Connect(ctx, p.url("postgres", "main")); err == nil {
		t.Fatal("a new connection was accepted during shutdown")
	}
	if _, err := tx.Exec(ctx, "INSERT INTO shut_t VALUES (2)"); err != nil {
		t.Fatalf("the running transaction must go on: %v", err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatalf("COMMIT during shutdown: %v", err)
	}
	select {
	case <-p.srv.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the server did not stop after its last transaction")
	}
	if n := shardQueryInt(t, 0, "SELECT count(*) FROM shut_t"); n != 2 {
		t.Fatalf("%d rows committed, want 2", n)
	}
}

// TestReloadTellsWhatTheShardsLack: a RELOAD whose file declares a function
// the shards do not have (a misspelling) succeeds but warns, naming it; a
// call of the real function then fails with a message naming that function
// as undeclared, not a generic one. Under default_route: error, SELECTs of
// built-ins (now()) and psql's \d still run on any shard.
func TestReloadTellsWhatTheShardsLack(t *testing.T) {
	ctx := testContext(t, time.Minute)
	for i := range allShards[:2] {
		shardExec(t, i, fmt.Sprintf(routingSchema, fmt.Sprintf("s%d", i)))
	}
	path := filepath.Join(t.TempDir(), "router.yaml")
	good := reloadYAML(map[int]string{0: "0-7", 1: "8-15"})
	writeFile(t, path, good)
	p := startProxyFile(t, path, false)
	var mu sync.Mutex
	var warnings []string
	cc, err := pgx.ParseConfig(p.url("admin", "pgrouter") + "&default_query_exec_mode=simple_protocol")
	if err != nil {
		t.Fatal(err)
	}
	cc.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
		mu.Lock()
		warnings = append(warnings, n.Severity+": "+n.Message)
		mu.Unlock()
	}
	adm, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close(ctx)

	writeFile(t, path, strings.Replace(good, "{name: rt_where, key", "{name: rt_wher, key", 1))
	if _, err := adm.Exec(ctx, "RELOAD"); err != nil {
		t.Fatalf("RELOAD of a file with a missing function: %v (it must load, and warn)", err)
	}
	mu.Lock()
	got := strings.Join(warnings, "\n")
	mu.Unlock()
	if !strings.Contains(got, "WARNING: cluster main: function public.rt_wher does not exist") || !strings.Contains(got, "check the name in router.yaml") {
		t.Fatalf("RELOAD warnings:\n%s", got)
	}

	// serve started from that file says so in its log, at start.
	core, logs := observer.New(zap.WarnLevel)
	startProxyLog(t, path, zap.New(core))
	found := false
	for _, e := range logs.All() {
		if errText, _ := e.ContextMap()["error"].(string); strings.Contains(errText, "function public.rt_wher does not exist") {
			found = true
		}
	}
	if !found {
		t.Fatalf("a proxy started with a function the shards lack logged no warning naming it: %v", logs.All())
	}

	conn := p.connect(t, ctx)
	_, err = conn.Exec(ctx, "SELECT rt_where('bob')")
	if pgCode(err) != "0A000" || !strings.Contains(err.Error(), "function rt_where is not declared in router.yaml") {
		t.Fatalf("call of the function the file no longer declares: %v", err)
	}
	var now time.Time
	if err := conn.QueryRow(ctx, "SELECT now()").Scan(&now); err != nil || time.Since(now) > time.Minute {
		t.Fatalf("SELECT now() under default_route: error: %v %v", now, err)
	}
	if out := p.tool(t, ctx, "", "psql", "-X", "-c", `\d`); !strings.Contains(out, "rt_users") {
		t.Fatalf("psql \\d under default_route: error:\n%s", out)
	}
}
