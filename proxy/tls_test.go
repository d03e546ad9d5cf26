package proxy_test

import (
	"crypto/tls"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgrouter/pgrouter/internal/pgtest"
	"github.com/pgrouter/pgrouter/internal/pgtest/testenv"
)

// TestClientTLS: with tls.mode require, pgx with sslmode=verify-full (the
// test CA) and psql with sslmode=require connect over TLS, and a client
// without TLS is refused with 28000; with allow, both kinds connect.
func TestClientTLS(t *testing.T) {
	certs, err := pgtest.WriteCerts(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	tlsYAML := func(mode string) string {
		return fmt.Sprintf("tls:\n  mode: %s\n  cert: %s\n  key: %s\n", mode, certs.Cert, certs.Key)
	}
	ctx := testContext(t, time.Minute)

	p := startProxy(t, proxyOpts{topLevel: tlsYAML("require")})
	_, port := p.hostPort()
	conn, err := pgx.Connect(ctx, fmt.Sprintf("host=localhost port=%s user=postgres dbname=main sslmode=verify-full sslrootcert=%s", port, certs.CA))
	if err != nil {
		t.Fatalf("pgx verify-full: %v", err)
	}
	if _, ok := conn.PgConn().Conn().(*tls.Conn); !ok {
		t.Fatal("pgx connection is not TLS")
	}
	var one int
	if err := conn.QueryRow(ctx, "SELECT $1::int", 1).Scan(&one); err != nil || one != 1 {
		t.Fatalf("query over TLS: %v", err)
	}
	conn.Close(ctx)

	cmd := exec.CommandContext(ctx, "psql", "-X", "-At", "-c", `\conninfo`, "-c", "SELECT 'over tls'")
	cmd.Env = append(os.Environ(), "PGHOST=127.0.0.1", "PGPORT="+port, "PGUSER=postgres", "PGDATABASE=main", "PGSSLMODE=require")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "SSL connection") || !strings.Contains(string(out), "over tls") {
		t.Fatalf("psql sslmode=require: %v\n%s", err, out)
	}

	_, err = pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%s user=postgres dbname=main sslmode=disable", port))
	if pgCode(err) != "28000" {
		t.Fatalf("plain client with tls.mode require: %v; want 28000", err)
	}

	allow := startProxy(t, proxyOpts{topLevel: tlsYAML("allow")})
	_, port = allow.hostPort()
	for _, mode := range []string{"disable", "require"} {
		c, err := pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%s user=postgres dbname=main sslmode=%s", port, mode))
		if err != nil {
			t.Fatalf("tls.mode allow, sslmode=%s: %v", mode, err)
		}
		_, isTLS := c.PgConn().Conn().(*tls.Conn)
		if isTLS != (mode == "require") {
			t.Fatalf("sslmode=%s: TLS %v", mode, isTLS)
		}
		// Cancel requests work over TLS clients too.
		done := make(chan error, 1)
		go func() {
			_, err := c.Exec(ctx, "SELECT pg_sleep(10)")
			done <- err
		}()
		waitRunning(t, "SELECT pg_sleep(10)")
		if err := c.PgConn().CancelRequest(ctx); err != nil {
			t.Fatal(err)
		}
		if err := <-done; pgCode(err) != "57014" {
			t.Fatalf("cancel with sslmode=%s: %v", mode, err)
		}
		c.Close(ctx)
	}
}

// TestServerTLSThroughDSN: a shard DSN with sslmode=require makes pgrouter's
// server connections TLS (pgconn does it), as the shard itself reports.
func TestServerTLSThroughDSN(t *testing.T) {
	ctx := testContext(t, time.Minute)
	s := testenv.Servers(t, 1, pgtest.Options{TLS: true})[0]
	p := startProxy(t, proxyOpts{servers: []*pgtest.Server{s}, dsnQuery: "sslmode=verify-full&sslrootcert=" + s.Certs.CA})
	conn := p.connect(t, ctx)
	var ssl bool
	if err := conn.QueryRow(ctx, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&ssl); err != nil || !ssl {
		t.Fatalf("server connection uses TLS: %v, %v", ssl, err)
	}
}

// TestSCRAMChannelBinding: over TLS, SCRAM-SHA-256-PLUS with
// tls-server-end-point binding is offered, and pgx and psql requiring
// channel binding log in with it (their binding data, computed from the
// certificate they received, must match pgrouter's); a wrong password still
// fails; without TLS only plain SCRAM-SHA-256 is offered.
func TestSCRAMChannelBinding(t *testing.T) {
	certs, err := pgtest.WriteCerts(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	p := startProxy(t, proxyOpts{auth: "scram-sha-256", users: usersFile(t),
		topLevel: fmt.Sprintf("tls:\n  mode: allow\n  cert: %s\n  key: %s\n", certs.Cert, certs.Key)})
	_, port := p.hostPort()
	ctx := testContext(t, time.Minute)
	for _, tc := range []struct{ user, password, want string }{
		{"alice", "secret-a", ""}, // plain secret in the users file
		{"carol", "secret-c", ""}, // SCRAM verifier
		{"alice", "wrong", "28P01"},
	} {
		dsn := fmt.Sprintf("host=localhost port=%s user=%s password=%s dbname=main sslmode=verify-full sslrootcert=%s channel_binding=require", port, tc.user, tc.password, certs.CA)
		conn, err := pgx.Connect(ctx, dsn)
		if (tc.want == "" && err != nil) || pgCode(err) != tc.want {
			t.Fatalf("%s/%s with channel_binding=require: %v; want %q", tc.user, tc.password, err, tc.want)
		}
		if err == nil {
			conn.Close(ctx)
		}
	}
	cmd := exec.CommandContext(ctx, "psql", "-X", "-At", "-c", "SELECT 'bound'")
	cmd.Env = append(os.Environ(), "PGHOST=127.0.0.1", "PGPORT="+port, "PGUSER=alice", "PGPASSWORD=secret-a", "PGDATABASE=main", "PGSSLMODE=require", "PGCHANNELBINDING=require")
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "bound") {
		t.Fatalf("psql with PGCHANNELBINDING=require: %v\n%s", err, out)
	}
	// Without TLS there is nothing to bind to: require fails in the client,
	// and a client that merely prefers it logs in with plain SCRAM.
	plain := fmt.Sprintf("host=127.0.0.1 port=%s user=alice password=secret-a dbname=main sslmode=disable channel_binding=", port)
	if _, err := pgx.Connect(ctx, plain+"require"); err == nil || !strings.Contains(err.Error(), "channel binding") {
		t.Fatalf("channel_binding=require without TLS: %v; want the client to refuse", err)
	}
	conn, err := pgx.Connect(ctx, plain+"prefer")
	if err != nil {
		t.Fatalf("channel_binding=prefer without TLS: %v", err)
	}
	conn.Close(ctx)
}
