package proxy_test

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/pgrouter/pgrouter/config"
	"github.com/pgrouter/pgrouter/proxy"
)

// TestLoginStallsMidAuth: a client that starts a password exchange (md5 or
// SCRAM) and then says nothing is disconnected at client_login_timeout,
// like one that never sends its startup packet.
func TestLoginStallsMidAuth(t *testing.T) {
	users := usersFile(t)
	for _, tc := range []struct{ auth, user string }{{config.AuthMD5, "bob"}, {config.AuthSCRAM, "carol"}} {
		t.Run(tc.auth, func(t *testing.T) {
			p := startProxy(t, proxyOpts{auth: tc.auth, users: users, extra: "  client_login_timeout: 500ms\n"})
			c := dialRaw(t, p.addr)
			c.send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": tc.user, "database": "main"}})
			m, err := c.receive()
			if err != nil {
				t.Fatal(err)
			}
			switch m.(type) {
			case *pgproto3.AuthenticationMD5Password, *pgproto3.AuthenticationSASL:
			default:
				t.Fatalf("got %T, want a password request", m)
			}
			start := time.Now()
			_ = c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := c.conn.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
				t.Fatalf("stalled login: %v after %s; want the connection closed", err, time.Since(start))
			}
			if took := time.Since(start); took > 3*time.Second {
				t.Fatalf("closed after %s; client_login_timeout is 500ms", took)
			}
		})
	}
}

// TestCancelKeys: every client gets its own random cancel key, and a
// CancelRequest with a client's pid but a wrong secret cancels nothing
// (the right one does).
func TestCancelKeys(t *testing.T) {
	ctx := testContext(t, time.Minute)
	p := startProxy(t, proxyOpts{size: 2})
	seen := map[string]bool{}
	pids := map[uint32]bool{}
	for range 200 {
		c := p.connect(t, ctx)
		key := fmt.Sprintf("%d/%x", c.PgConn().PID(), c.PgConn().SecretKey())
		if seen[key] {
			t.Fatalf("cancel key %s handed out twice", key)
		}
		seen[key] = true
		pids[c.PgConn().PID()] = true
		c.Close(ctx)
	}
	if len(pids) < 199 {
		t.Fatalf("only %d distinct pids in 200 clients", len(pids))
	}

	busy := p.connect(t, ctx)
	shard, err := pgx.Connect(ctx, shards[0].DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer shard.Close(ctx)
	send := func(secret []byte) {
		c := dialRaw(t, p.addr)
		c.write(proxy.EncodeAll(&pgproto3.CancelRequest{ProcessID: busy.PgConn().PID(), SecretKey: secret}))
		_, _ = c.conn.Read(make([]byte, 1)) // pgrouter closes it once handled
	}
	for _, right := range []bool{false, true} {
		secret := append([]byte(nil), busy.PgConn().SecretKey()...)
		if !right {
			secret[0] ^= 1
		}
		done := make(chan error, 1)
		go func() {
			_, err := busy.Exec(ctx, "SELECT pg_sleep(1.5)")
			done <- err
		}()
		// Running on the shard: a cancel now has something to hit.
		eventually(t, 10*time.Second, count(ctx, shard, "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(1.5)' AND state = 'active'", 1))
		send(secret)
		err := <-done
		if right && pgCode(err) != "57014" {
			t.Fatalf("cancel with the right key: %v, want 57014", err)
		}
		if !right && err != nil {
			t.Fatalf("a cancel with a wrong secret reached the statement: %v", err)
		}
	}
}

// TestPasswordsNeverLogged: with everything logged (debug), logins with
// right and wrong passwords of every kind, a shard DSN and a reference
// source carrying passwords, and SHOW CONFIG, no password appears in the
// log or on the console.
func TestPasswordsNeverLogged(t *testing.T) {
	ctx := testContext(t, time.Minute)
	core, logs := observer.New(zap.DebugLevel)
	users := usersFile(t) + "\"admin\" \"admin-pw-3141\"\n"
	p := startProxy(t, proxyOpts{auth: config.AuthSCRAM, users: users, log: zap.New(core),
		dsnQuery: "sslmode=disable&password=dsn-pw-2718",
		topLevel: "admin_users: [admin]\nreference: {source: \"postgres://ref:ref-pw-1618@127.0.0.1:1/src\", tables: [countries]}\n"})
	secrets := []string{"secret-a", "secret-b", "secret-c", "admin-pw-3141", "dsn-pw-2718", "ref-pw-1618", "wrong-pw-5772"}
	for _, login := range []struct {
		user, password string
		ok             bool
	}{ // bob's md5 secret cannot serve SCRAM: refused like a wrong password
		{"alice", "secret-a", true}, {"alice", "wrong-pw-5772", false}, {"bob", "secret-b", false}, {"bob", "wrong-pw-5772", false},
		{"carol", "secret-c", true}, {"carol", "wrong-pw-5772", false}, {"nobody", "wrong-pw-5772", false},
	} {
		cfg, err := pgx.ParseConfig(p.url(login.user, "main"))
		if err != nil {
			t.Fatal(err)
		}
		cfg.Password = login.password
		c, err := pgx.ConnectConfig(ctx, cfg)
		if (err == nil) != login.ok {
			t.Fatalf("%s with %s: %v", login.user, login.password, err)
		}
		if err == nil {
			c.Close(ctx)
		}
	}
	cfg, err := pgx.ParseConfig(p.url("admin", "pgrouter") + "&default_query_exec_mode=simple_protocol")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Password = "admin-pw-3141"
	adm, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close(ctx)
	rows, err := adm.Query(ctx, "SHOW CONFIG")
	if err != nil {
		t.Fatal(err)
	}
	var console strings.Builder
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintln(&console, vals...)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(console.String(), "reference.source") || !strings.Contains(console.String(), "dsn") {
		t.Fatalf("SHOW CONFIG lacks the DSNs:\n%s", console.String())
	}
	var logged strings.Builder
	refused := 0
	for _, e := range logs.All() {
		fmt.Fprintln(&logged, e.Message, e.ContextMap())
		if e.Message == "login refused" {
			refused++
		}
	}
	if refused < 5 {
		t.Fatalf("%d refused logins logged, want 5 (the test would not see a leak):\n%s", refused, logged.String())
	}
	for _, s := range secrets {
		if strings.Contains(logged.String(), s) {
			t.Errorf("password %q in the log:\n%s", s, logged.String())
		}
		if strings.Contains(console.String(), s) {
			t.Errorf("password %q in SHOW CONFIG:\n%s", s, console.String())
		}
	}
}

// TestConsoleNeverReachesShards: whatever is typed on the admin console,
// including SQL that would leave a trace, never runs on a shard.
func TestConsoleNeverReachesShards(t *testing.T) {
	ctx := testContext(t, time.Minute)
	p := startProxy(t, proxyOpts{topLevel: "admin_users: [admin]\n"})
	adm := p.admin(t, ctx)
	for _, sql := range []string{
		"CREATE TABLE console_probe (x int)",
		"SELECT 1; CREATE TABLE console_probe (x int)",
		"SHOW SHARDS; CREATE TABLE console_probe (x int)",
		"/* SHOW SHARDS */ CREATE TABLE console_probe (x int)",
		"SET pgrouter.shard = 's0'",
		"RELOAD; DROP TABLE IF EXISTS pgbench_accounts",
	} {
		if _, err := adm.Exec(ctx, sql); err == nil || (pgCode(err) != "42601" && pgCode(err) != "0A000") {
			t.Errorf("console ran %q: %v", sql, err)
		}
	}
	for _, s := range shards {
		conn, err := pgx.Connect(ctx, s.DSN("postgres"))
		if err != nil {
			t.Fatal(err)
		}
		var n int
		err = conn.QueryRow(ctx, "SELECT count(*) FROM pg_class WHERE relname = 'console_probe'").Scan(&n)
		conn.Close(ctx)
		if err != nil || n != 0 {
			t.Fatalf("console_probe on %s: %d (%v)", s.Addr(), n, err)
		}
	}
}

// TestTrustWithoutUsersIsAnnounced: trust without a users file admits
// anyone under any name, the admin console included: pgrouter says so at
// start, and not when a users file limits who may log in.
func TestTrustWithoutUsersIsAnnounced(t *testing.T) {
	for _, withUsers := range []bool{false, true} {
		core, logs := observer.New(zap.WarnLevel)
		o := proxyOpts{log: zap.New(core)}
		if withUsers {
			o.users = usersFile(t)
		}
		startProxy(t, o)
		n := logs.FilterMessageSnippet("ANY client can log in under ANY user name").Len()
		if (n == 1) != !withUsers {
			t.Fatalf("users file %v: %d warnings about trust; want one without a users file only", withUsers, n)
		}
	}
}
