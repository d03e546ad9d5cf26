package proxy

import (
	"context"
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
		go func() {
			time.Sleep(200 * time.Millisecond)
			_ = c.PgConn().CancelRequest(context.Background())
		}()
		if _, err := c.Exec(ctx, "SELECT pg_sleep(10)"); pgCode(err) != "57014" {
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
