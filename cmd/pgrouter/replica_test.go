package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgrouter/pgrouter/internal/pgtest"
	"github.com/pgrouter/pgrouter/internal/pgtest/testenv"
)

// TestReplicaReads: a shard with a real streaming standby (pg_basebackup
// -R). Calls of a read_only function outside a transaction run on the
// standby; the same body declared without read_only, and read_only calls
// inside a read-write transaction, run on the primary; a READ ONLY
// transaction runs on the standby; SET pgrouter.target steers a session;
// SHOW SHARDS and /metrics show each host's role and replay lag; a standby
// whose replay is paused falls behind max_replica_lag and is skipped (or,
// with pgrouter.target = replica, the call fails) until it catches up.
func TestReplicaReads(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	primary := testenv.Servers(t, 1, pgtest.Options{})[0]
	const where = `AS $$ SELECT CASE WHEN pg_is_in_recovery() THEN 'replica' ELSE 'primary' END $$ LANGUAGE sql STABLE`
	if err := primary.Exec(ctx, "postgres", `CREATE FUNCTION where_ro(k text) RETURNS text `+where+`;
		CREATE FUNCTION where_rw(k text) RETURNS text `+where+`;
		CREATE TABLE ticks (n int)`); err != nil {
		t.Fatal(err)
	}
	replica, err := pgtest.StartReplica(ctx, primary)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = replica.Stop() })

	path := filepath.Join(t.TempDir(), "router.yaml")
	addr, metricsAddr := freeAddr(t), freeAddr(t)
	writeFile(t, path, fmt.Sprintf(`listen: %s
metrics_listen: %s
auth: {type: trust}
admin_users: [postgres]
log: {format: json}
health: {interval: 200ms}
max_replica_lag: 1s
default_route: s0
clusters:
  main:
    hash: hashtext
    shards:
      - {name: s0, dsn: %q, replicas: [%q]}
functions:
  - {name: where_ro, key: k, read_only: true}
  - {name: where_rw, key: k}
`, addr, metricsAddr, primary.DSN("postgres"), replica.DSN("postgres")))
	runRouter(ctx, t, path, addr)
	client, err := pgx.Connect(ctx, fmt.Sprintf("postgres://postgres@%s/main?sslmode=disable", addr))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close(ctx)
	adm, err := pgx.Connect(ctx, fmt.Sprintf("postgres://postgres@%s/pgrouter?sslmode=disable&default_query_exec_mode=simple_protocol", addr))
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close(ctx)
	call := func(fn string) string {
		t.Helper()
		var got string
		if err := client.QueryRow(ctx, "SELECT "+fn+"($1)", "key").Scan(&got); err != nil {
			t.Fatalf("%s: %v", fn, err)
		}
		return got
	}
	roles := func() map[string]map[string]any {
		out := map[string]map[string]any{}
		for _, row := range adminMaps(ctx, t, adm, "SHOW SHARDS") {
			out[row["shard"].(string)] = row
		}
		return out
	}
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); !ok(); time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s; SHOW SHARDS: %v", what, roles())
			}
		}
	}
	waitFor("the standby is never found up as a standby", func() bool {
		r := roles()
		return r["s0"]["role"] == "primary" && r["s0/r1"]["role"] == "standby" && r["s0/r1"]["state"] == "up"
	})
	defer func() { // SHOW SERVERS names each connection's role too
		servers := map[string]any{}
		for _, row := range adminMaps(ctx, t, adm, "SHOW SERVERS") {
			servers[row["shard"].(string)] = row["role"]
		}
		if servers["s0/r1"] != "standby" || servers["s0"] != "primary" {
			t.Errorf("SHOW SERVERS roles: %v", servers)
		}
	}()
	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`pgrouter_shard_standby{cluster="main",shard="s0"} 0`, `pgrouter_shard_standby{cluster="main",shard="s0/r1"} 1`, `pgrouter_shard_replay_lag_seconds{cluster="main",shard="s0/r1"}`} {
		if !strings.Contains(string(body), want) {
			t.Fatalf("/metrics lacks %s:\n%s", want, body)
		}
	}
	for range 3 {
		if got := call("where_ro"); got != "replica" {
			t.Fatalf("a read_only call ran on the %s", got)
		}
		if got := call("where_rw"); got != "primary" {
			t.Fatalf("a call not declared read_only ran on the %s", got)
		}
	}
	tx, err := client.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got string
	if err := tx.QueryRow(ctx, "SELECT where_ro($1)", "key").Scan(&got); err != nil || got != "primary" {
		t.Fatalf("a read_only call inside a transaction ran on the %s (%v)", got, err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	// A transaction begun READ ONLY runs on a replica, all of it (a call of
	// a function not declared read_only too: the transaction cannot write):
	// with the simple protocol, the extended one, and prepared statements
	// described before their first Bind.
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeExec, pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement} {
		tx, err = client.BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadOnly})
		if err != nil {
			t.Fatal(err)
		}
		for _, fn := range []string{"where_ro", "where_rw"} {
			if err := tx.QueryRow(ctx, "SELECT "+fn+"($1)", mode, "key").Scan(&got); err != nil || got != "replica" {
				t.Fatalf("%s inside BEGIN READ ONLY (%v) ran on the %s (%v)", fn, mode, got, err)
			}
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// SET pgrouter.target = primary keeps this session's reads on the primary.
	simple := func(sql string) error {
		_, err := client.Exec(ctx, sql, pgx.QueryExecModeSimpleProtocol)
		return err
	}
	if err := simple("SET pgrouter.target = primary"); err != nil {
		t.Fatal(err)
	}
	if got := call("where_ro"); got != "primary" {
		t.Fatalf("with pgrouter.target = primary a read_only call ran on the %s", got)
	}
	var target string
	if err := client.QueryRow(ctx, "SHOW pgrouter.target", pgx.QueryExecModeSimpleProtocol).Scan(&target); err != nil || target != "primary" {
		t.Fatalf("SHOW pgrouter.target: %q (%v)", target, err)
	}
	var pgErr *pgconn.PgError
	if err := simple("SET pgrouter.target = anywhere"); !errors.As(err, &pgErr) || pgErr.Code != "22023" {
		t.Fatalf("SET pgrouter.target = anywhere: %v", err)
	}
	if err := simple("RESET pgrouter.target"); err != nil {
		t.Fatal(err)
	}
	if got := call("where_ro"); got != "replica" {
		t.Fatalf("after RESET pgrouter.target a read_only call ran on the %s", got)
	}

	// Replay paused while the primary writes: the standby falls behind
	// max_replica_lag (1s) and is skipped; resumed, it serves again.
	if err := replica.Exec(ctx, "postgres", "SELECT pg_wal_replay_pause()"); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	writer := make(chan struct{})
	go func() {
		defer close(writer)
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
				_ = primary.Exec(ctx, "postgres", "INSERT INTO ticks VALUES (1)")
			}
		}
	}()
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		<-writer
	}()
	waitFor("the paused standby's lag never passed max_replica_lag", func() bool {
		lag, ok := roles()["s0/r1"]["replay_lag_ms"].(int64)
		return ok && lag > 1000
	})
	for range 3 {
		if got := call("where_ro"); got != "primary" {
			t.Fatalf("a read_only call ran on a standby %v behind: %s", roles()["s0/r1"]["replay_lag_ms"], got)
		}
	}
	// pgrouter.target = replica fails rather than read from the primary.
	if err := simple("SET pgrouter.target = replica"); err != nil {
		t.Fatal(err)
	}
	if err := client.QueryRow(ctx, "SELECT where_ro($1)", "key").Scan(&got); !errors.As(err, &pgErr) || pgErr.Code != "57P03" {
		t.Fatalf("pgrouter.target = replica with no replica in time: %v (%s)", err, got)
	}
	if err := simple("SET pgrouter.target = auto"); err != nil {
		t.Fatal(err)
	}
	close(stop)
	<-writer
	if err := replica.Exec(ctx, "postgres", "SELECT pg_wal_replay_resume()"); err != nil {
		t.Fatal(err)
	}
	waitFor("the resumed standby never caught up", func() bool {
		lag, ok := roles()["s0/r1"]["replay_lag_ms"].(int64)
		return ok && lag < 1000
	})
	if got := call("where_ro"); got != "replica" {
		t.Fatalf("after the standby caught up, a read_only call ran on the %s", got)
	}
}

// TestReplicaPromotion: a shard whose DSN lists its primary and its standby
// (target_session_attrs=read-write) under a write load through pgrouter.
// The primary is killed (SIGKILL) and the standby promoted: writes resume
// without restarting pgrouter, every write acknowledged after the
// promotion is on the new primary, and read_only calls stop using it as a
// replica. The old primary's address then comes back as a standby of the
// new one: writes keep going to the new primary.
func TestReplicaPromotion(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	primary := testenv.Servers(t, 1, pgtest.Options{})[0]
	const where = `AS $$ SELECT CASE WHEN pg_is_in_recovery() THEN 'replica' ELSE 'primary' END $$ LANGUAGE sql STABLE`
	if err := primary.Exec(ctx, "postgres", `CREATE FUNCTION where_ro(k text) RETURNS text `+where+`;
		CREATE TABLE ticks (n bigint PRIMARY KEY);
		CREATE FUNCTION add_tick(k text, i bigint) RETURNS bigint LANGUAGE sql AS $$ INSERT INTO ticks VALUES (i) RETURNING i $$`); err != nil {
		t.Fatal(err)
	}
	replica, err := pgtest.StartReplica(ctx, primary)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = replica.Stop() })
	path := filepath.Join(t.TempDir(), "router.yaml")
	addr := freeAddr(t)
	both := fmt.Sprintf("host=127.0.0.1,127.0.0.1 port=%d,%d user=postgres dbname=postgres sslmode=disable target_session_attrs=read-write", primary.Port, replica.Port)
	writeFile(t, path, fmt.Sprintf(`listen: %s
auth: {type: trust}
admin_users: [postgres]
log: {format: json}
health: {interval: 200ms, timeout: 1s, failures: 1}
pool: {size: 4, server_connect_timeout: 2s, query_wait_timeout: 30s}
default_route: s0
clusters:
  main:
    hash: hashtext
    shards:
      - {name: s0, dsn: %q, replicas: [%q]}
functions:
  - {name: where_ro, key: k, read_only: true}
  - {name: add_tick, key: k}
`, addr, both, replica.DSN("postgres")))
	runRouter(ctx, t, path, addr)
	url := fmt.Sprintf("postgres://postgres@%s/main?sslmode=disable", addr)

	// The load: 4 writers, each with its own numbers, reconnecting as needed.
	type ack struct {
		n  int64
		at time.Time
	}
	acks := make(chan ack, 1<<16)
	stop := make(chan struct{})
	done := make(chan struct{})
	const writers = 4
	for w := range writers {
		go func() {
			defer func() { done <- struct{}{} }()
			var conn *pgx.Conn
			defer func() {
				if conn != nil {
					conn.Close(context.Background())
				}
			}()
			for i := int64(w); ; i += writers {
				select {
				case <-stop:
					return
				default:
				}
				if conn == nil || conn.IsClosed() {
					var err error
					if conn, err = pgx.Connect(ctx, url); err != nil {
						conn = nil
						time.Sleep(20 * time.Millisecond)
						continue
					}
				}
				var got int64
				if err := conn.QueryRow(ctx, "SELECT add_tick('k', $1)", i).Scan(&got); err != nil {
					time.Sleep(20 * time.Millisecond)
					continue
				}
				acks <- ack{got, time.Now()}
			}
		}()
	}
	time.Sleep(time.Second)
	killed := time.Now()
	primary.Crash()
	if err := replica.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	promoted := time.Now()
	time.Sleep(2 * time.Second)
	close(stop)
	for range writers {
		<-done
	}
	close(acks)
	// The outage is the longest time without an acknowledged write; the
	// writes acknowledged once the promotion returned went to the new
	// primary (earlier ones the old primary may have taken and not shipped:
	// replication is asynchronous).
	var all []time.Time
	var before, after []int64
	for a := range acks {
		all = append(all, a.at)
		switch {
		case a.at.Before(killed):
			before = append(before, a.n)
		case a.at.After(promoted):
			after = append(after, a.n)
		}
	}
	if len(before) == 0 || len(after) == 0 {
		t.Fatalf("%d writes before the primary was killed, %d after it was replaced: writes did not resume", len(before), len(after))
	}
	slices.SortFunc(all, func(a, b time.Time) int { return a.Compare(b) })
	var gap time.Duration
	for i := 1; i < len(all); i++ {
		gap = max(gap, all[i].Sub(all[i-1]))
	}
	t.Logf("writes: %d before the kill, %d after the promotion; longest time without an acknowledged write: %s (the promotion took %s)",
		len(before), len(after), gap.Round(time.Millisecond), promoted.Sub(killed).Round(time.Millisecond))
	conn, err := pgx.Connect(ctx, replica.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var missing int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM unnest($1::bigint[]) n WHERE NOT EXISTS (SELECT 1 FROM ticks WHERE ticks.n = n)", after).Scan(&missing); err != nil || missing != 0 {
		t.Fatalf("%d writes acknowledged after the promotion are not on the new primary (%v)", missing, err)
	}

	// The promoted standby is a primary now: not read as a replica.
	client, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close(ctx)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		var got string
		if err := client.QueryRow(ctx, "SELECT where_ro('k')").Scan(&got); err == nil && got == "primary" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("read_only calls still go to the promoted standby as a replica (or fail)")
		}
	}

	// The old primary's address comes back as a standby of the new primary:
	// target_session_attrs=read-write skips it, writes go on.
	rejoined, err := pgtest.StartReplica(ctx, replica, primary.Port)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rejoined.Stop() })
	for i := range 20 {
		var got int64
		if err := client.QueryRow(ctx, "SELECT add_tick('k', $1)", int64(1_000_000+i)).Scan(&got); err != nil {
			t.Fatalf("a write with the old primary's address back as a standby: %v", err)
		}
	}
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM ticks WHERE n >= 1000000").Scan(&n); err != nil || n != 20 {
		t.Fatalf("%d of 20 writes on the new primary (%v)", n, err)
	}

	// A router whose shard DSN names only the old primary's address, now a
	// standby: nothing is sent there, the client is told why.
	stalePath := filepath.Join(t.TempDir(), "router.yaml")
	staleAddr := freeAddr(t)
	writeFile(t, stalePath, fmt.Sprintf(`listen: %s
auth: {type: trust}
log: {format: json}
default_route: s0
clusters:
  main:
    hash: hashtext
    shards:
      - {name: s0, dsn: %q}
functions:
  - {name: add_tick, key: k}
`, staleAddr, rejoined.DSN("postgres")))
	runRouter(ctx, t, stalePath, staleAddr)
	// The login itself needs the shard's parameters from its primary: it is
	// refused (08001) and says why; had it got them earlier, the write would
	// be refused (25006) and say the same.
	var pgErr *pgconn.PgError
	stale, err := pgx.Connect(ctx, fmt.Sprintf("postgres://postgres@%s/main?sslmode=disable", staleAddr))
	if err == nil {
		defer stale.Close(ctx)
		var got int64
		err = stale.QueryRow(ctx, "SELECT add_tick('k', 2000000)").Scan(&got)
	}
	if !errors.As(err, &pgErr) || (pgErr.Code != "25006" && pgErr.Code != "08001") || !strings.Contains(pgErr.Message, "is a standby, not its primary") {
		t.Fatalf("a write through a router whose primary is now a standby: %v", err)
	}
	if n := 0; conn.QueryRow(ctx, "SELECT count(*) FROM ticks WHERE n = 2000000").Scan(&n) != nil || n != 0 {
		t.Fatal("the write reached the new primary through the stale router's standby")
	}
}
