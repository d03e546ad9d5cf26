package proxy_test

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgrouter/pgrouter/internal/pgtest"
)

// columns returns a console command's column names and its rows' first
// column.
func columns(t *testing.T, ctx context.Context, conn *pgx.Conn, cmd string) (cols, keys []string) {
	t.Helper()
	rows, err := conn.Query(ctx, cmd)
	if err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
	defer rows.Close()
	for _, fd := range rows.FieldDescriptions() {
		cols = append(cols, fd.Name)
	}
	for rows.Next() {
		keys = append(keys, string(rows.RawValues()[0]))
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
	return cols, keys
}

// TestConsolePgbouncerColumns: the console answers as database pgbouncer,
// and its pgbouncer commands have a real pgbouncer's column names (and, for
// SHOW LISTS and SHOW TOTALS, its row names); the columns the existing
// commands share with pgbouncer's are named as pgbouncer names them. A
// script written for pgbouncer's console runs unchanged with psql against
// both.
func TestConsolePgbouncerColumns(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p := startProxy(t, proxyOpts{topLevel: "admin_users: [admin, postgres]\n"})
	s0 := allShards[0]
	bouncer, err := pgtest.StartPgBouncer(ctx, map[string]string{
		"main": fmt.Sprintf("host=%s port=%d dbname=postgres user=%s", s0.Host, s0.Port, pgtest.SuperUser),
	}, 2)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(bouncer.Stop)
	console := func(dsn string) *pgx.Conn {
		conn, err := pgx.Connect(ctx, dsn+"&default_query_exec_mode=simple_protocol")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close(context.Background()) })
		return conn
	}
	ours, theirs := console(p.url("admin", "pgbouncer")), console(bouncer.DSN("pgbouncer"))
	// A client of each, so the client and server lists have rows.
	for _, dsn := range []string{p.url("postgres", "main"), bouncer.DSN("main")} {
		conn := console(dsn)
		if _, err := conn.Exec(ctx, "SELECT 1"); err != nil {
			t.Fatal(err)
		}
	}

	for _, cmd := range []string{"SHOW DATABASES", "SHOW LISTS", "SHOW USERS", "SHOW STATS_TOTALS", "SHOW STATS_AVERAGES", "SHOW TOTALS", "SHOW MEM"} {
		want, wantKeys := columns(t, ctx, theirs, cmd)
		got, gotKeys := columns(t, ctx, ours, cmd)
		for _, c := range want {
			if !slices.Contains(got, c) {
				t.Errorf("%s: pgbouncer has column %q, pgrouter has %v", cmd, c, got)
			}
		}
		if cmd == "SHOW LISTS" || cmd == "SHOW TOTALS" {
			for _, k := range wantKeys {
				if !slices.Contains(gotKeys, k) {
					t.Errorf("%s: pgbouncer has row %q, pgrouter has %v", cmd, k, gotKeys)
				}
			}
		}
	}
	// The columns monitoring tools read from the commands pgrouter had.
	shared := map[string][]string{
		"SHOW POOLS":   {"database", "user", "cl_active", "cl_waiting", "sv_active", "sv_idle", "sv_login", "maxwait", "maxwait_us", "pool_mode"},
		"SHOW CLIENTS": {"type", "user", "database", "state", "addr", "port", "local_addr", "local_port", "connect_time", "request_time", "wait", "wait_us", "link", "remote_pid", "tls", "application_name"},
		"SHOW SERVERS": {"type", "user", "database", "state", "addr", "port", "local_addr", "local_port", "connect_time", "request_time", "link", "remote_pid", "tls", "close_needed"},
		"SHOW STATS": {"database", "total_xact_count", "total_query_count", "total_received", "total_sent", "total_xact_time", "total_query_time",
			"total_wait_time", "avg_xact_count", "avg_query_count", "avg_recv", "avg_sent", "avg_xact_time", "avg_query_time", "avg_wait_time"},
	}
	for cmd, names := range shared {
		want, _ := columns(t, ctx, theirs, cmd)
		got, _ := columns(t, ctx, ours, cmd)
		for _, c := range names {
			if !slices.Contains(want, c) || !slices.Contains(got, c) {
				t.Errorf("%s: column %q: pgbouncer has %v, pgrouter %v", cmd, c, want, got)
			}
		}
	}

	psql, err := exec.LookPath("psql")
	if err != nil {
		t.Fatal("psql is not installed: .ci/run installs PostgreSQL's client programs")
	}
	script := []string{"SHOW DATABASES", "SHOW POOLS", "SHOW STATS", "SHOW LISTS", "SHOW CLIENTS", "SHOW SERVERS", "RECONNECT", "WAIT_CLOSE", "DISABLE main", "ENABLE main", "SHOW VERSION"}
	for name, dsn := range map[string]string{"pgbouncer": bouncer.DSN("pgbouncer"), "pgrouter": p.url("postgres", "pgbouncer")} {
		args := []string{"-X", "-v", "ON_ERROR_STOP=1", "-d", dsn}
		for _, c := range script {
			args = append(args, "-c", c)
		}
		if out, err := exec.CommandContext(ctx, psql, args...).CombinedOutput(); err != nil {
			t.Errorf("a pgbouncer console script against %s: %v\n%s", name, err, out)
		}
	}
}

// TestConsolePgbouncerCommands: each of pgbouncer's commands against real
// shards, checked by its effect.
func TestConsolePgbouncerCommands(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p := startProxy(t, proxyOpts{topLevel: adminTopLevel, size: 2})
	adm, err := pgx.Connect(ctx, p.url("admin", "pgbouncer")+"&default_query_exec_mode=simple_protocol")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = adm.Close(context.Background()) })
	exec := func(cmd string) {
		t.Helper()
		if _, err := adm.Exec(ctx, cmd); err != nil {
			t.Fatalf("%s: %v", cmd, err)
		}
	}
	login := func(app string) (*pgx.Conn, error) {
		return pgx.Connect(ctx, p.url("postgres", "main")+"&application_name="+app)
	}
	backendPID := func(c *pgx.Conn) int64 {
		t.Helper()
		var pid int64
		if err := c.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
			t.Fatal(err)
		}
		return pid
	}
	gone := func(pid int64) func() error {
		return func() error {
			if shardQueryInt(t, 0, fmt.Sprintf("SELECT count(*) FROM pg_stat_activity WHERE pid = %d", pid)) != 0 {
				return fmt.Errorf("backend %d is still on the shard", pid)
			}
			return nil
		}
	}

	// DISABLE refuses logins to the cluster (or to the clusters of a
	// shard), as pgbouncer does; ENABLE lets them in again. Clients already
	// in stay.
	c1 := p.connect(t, ctx)
	for _, target := range []string{"main", "s1"} {
		exec("DISABLE " + target)
		if row := rowWhere(t, adminRows(t, ctx, adm, "SHOW DATABASES"), "name", target); row["disabled"] != int64(1) {
			t.Fatalf("SHOW DATABASES after DISABLE %s: %v", target, row)
		}
		_, err := login("disabled")
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "08P01" || pgErr.Message != "database does not allow connections: main" {
			t.Fatalf("login after DISABLE %s: %v", target, err)
		}
		backendPID(c1)
		exec("ENABLE " + target)
		c, err := login("enabled")
		if err != nil {
			t.Fatalf("login after ENABLE %s: %v", target, err)
		}
		c.Close(ctx)
	}

	// RECONNECT replaces the server connections: an idle one at once, one in
	// a transaction when the transaction ends, and WAIT_CLOSE returns only
	// then.
	idlePID := backendPID(c1)
	c2 := p.connect(t, ctx)
	tx, err := c2.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	busyPID := backendPID(c2)
	exec("RECONNECT main")
	waited := make(chan error, 1)
	go func() {
		_, err := adm.Exec(ctx, "WAIT_CLOSE main")
		waited <- err
	}()
	select {
	case err := <-waited:
		t.Fatalf("WAIT_CLOSE returned (%v) while a marked server was in a transaction", err)
	case <-time.After(400 * time.Millisecond):
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-waited:
		if err != nil {
			t.Fatalf("WAIT_CLOSE: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("WAIT_CLOSE did not return once the transaction ended")
	}
	for _, pid := range []int64{idlePID, busyPID} {
		eventually(t, 5*time.Second, gone(pid))
	}
	if pid := backendPID(c1); pid == idlePID || pid == busyPID {
		t.Fatalf("after RECONNECT the client got the old backend %d", pid)
	}

	// KILL_CLIENT disconnects one client; the others go on.
	victim, err := login("victim")
	if err != nil {
		t.Fatal(err)
	}
	defer victim.Close(ctx)
	backendPID(victim)
	id := rowWhere(t, adminRows(t, ctx, adm, "SHOW CLIENTS"), "application_name", "victim")["id"]
	exec(fmt.Sprintf("KILL_CLIENT %v", id))
	if _, err := victim.Exec(ctx, "SELECT 1"); err == nil {
		t.Fatal("the killed client could still run a statement")
	}
	backendPID(c1)

	// KILL disconnects the cluster's clients, idle ones included, closes
	// its servers, and holds it paused until RESUME.
	serverPID := backendPID(c1)
	exec("KILL main")
	if _, err := c1.Exec(ctx, "SELECT 1"); err == nil {
		t.Fatal("an idle client of a killed cluster could still run a statement")
	}
	eventually(t, 5*time.Second, gone(serverPID))
	if row := rowWhere(t, adminRows(t, ctx, adm, "SHOW DATABASES"), "name", "main"); row["paused"] != int64(1) {
		t.Fatalf("SHOW DATABASES after KILL: %v", row)
	}
	exec("RESUME")
	c3 := p.connect(t, ctx)
	backendPID(c3)

	// SUSPEND holds everything until RESUME; SHOW STATE says so.
	exec("SUSPEND")
	state := map[string]any{}
	for _, r := range adminRows(t, ctx, adm, "SHOW STATE") {
		state[r["key"].(string)] = r["value"]
	}
	if state["suspended"] != "yes" || state["active"] != "no" {
		t.Fatalf("SHOW STATE after SUSPEND: %v", state)
	}
	held := make(chan error, 1)
	go func() {
		_, err := c3.Exec(ctx, "SELECT 1")
		held <- err
	}()
	select {
	case err := <-held:
		t.Fatalf("a statement ran while suspended (%v)", err)
	case <-time.After(300 * time.Millisecond):
	}
	exec("RESUME")
	if err := <-held; err != nil {
		t.Fatal(err)
	}
	if r := rowWhere(t, adminRows(t, ctx, adm, "SHOW STATE"), "key", "active"); r["value"] != "yes" {
		t.Fatalf("SHOW STATE after RESUME: %v", r)
	}

	// What pgrouter does not have is said so; unknown targets are named.
	for cmd, code := range map[string]string{"SHOW SOCKETS": "0A000", "SHOW FDS": "0A000", "KILL nosuch": "42704", "KILL_CLIENT 999999": "42704", "DISABLE nosuch": "42704"} {
		_, err := adm.Exec(ctx, cmd)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != code || !strings.Contains(pgErr.Hint, "SHOW") {
			t.Errorf("%s: %v, want %s with a hint", cmd, err, code)
		}
	}
}
