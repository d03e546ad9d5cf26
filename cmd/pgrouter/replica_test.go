package main

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgrouter/pgrouter/internal/pgtest"
	"github.com/pgrouter/pgrouter/internal/pgtest/testenv"
)

// TestReplicaReads: a shard with a real streaming standby (pg_basebackup
// -R). Calls of a read_only function outside a transaction run on the
// standby; the same body declared without read_only, and read_only calls
// inside a transaction, run on the primary; SHOW SHARDS shows each host's
// role and replay lag; a standby whose replay is paused falls behind
// max_replica_lag and is skipped until it catches up.
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
	addr := freeAddr(t)
	writeFile(t, path, fmt.Sprintf(`listen: %s
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
`, addr, primary.DSN("postgres"), replica.DSN("postgres")))
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
