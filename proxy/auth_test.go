package proxy_test

import (
	"crypto/md5"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/xdg-go/scram"
)

// usersFile has one user per secret form: plain, md5 and SCRAM.
func usersFile(t *testing.T) string {
	sum := md5.Sum([]byte("secret-b" + "bob"))
	empty := md5.Sum([]byte("" + "erin")) // what pg_shadow holds for a role without a password
	client, err := scram.SHA256.NewClient("", "secret-c", "")
	if err != nil {
		t.Fatal(err)
	}
	creds, _ := client.GetStoredCredentialsWithError(scram.KeyFactors{Salt: "0123456789abcdef", Iters: 4096})
	verifier := fmt.Sprintf("SCRAM-SHA-256$%d:%s$%s:%s", creds.Iters,
		base64.StdEncoding.EncodeToString([]byte(creds.Salt)),
		base64.StdEncoding.EncodeToString(creds.StoredKey),
		base64.StdEncoding.EncodeToString(creds.ServerKey))
	return fmt.Sprintf(`; pgbouncer-format users file
"alice" "secret-a"
"bob" "md5%s"
"carol" "%s"
"quote""d" "pa""ss"
"dave" ""
"erin" "md5%s"
`, hex.EncodeToString(sum[:]), verifier, hex.EncodeToString(empty[:]))
}

func TestAuthentication(t *testing.T) {
	users := usersFile(t)
	cases := []struct {
		auth, user, password, database, code string
	}{
		{"scram-sha-256", "alice", "secret-a", "main", ""},
		{"scram-sha-256", "carol", "secret-c", "main", ""},
		{"scram-sha-256", `quote"d`, `pa"ss`, "main", ""},
		{"scram-sha-256", "alice", "wrong", "main", "28P01"},
		{"scram-sha-256", "bob", "secret-b", "main", "28P01"}, // an md5 secret cannot do SCRAM
		{"scram-sha-256", "nobody", "secret-a", "main", "28P01"},
		{"scram-sha-256", "alice", "secret-a", "nodb", "3D000"},
		{"scram-sha-256", "alice", "wrong", "nodb", "28P01"},
		{"scram-sha-256", "nobody", "x", "nodb", "28P01"},
		{"md5", "alice", "secret-a", "main", ""},
		{"md5", "bob", "secret-b", "main", ""},
		{"md5", "bob", "wrong", "main", "28P01"},
		{"md5", "carol", "secret-c", "main", "28P01"}, // a SCRAM secret cannot answer md5
		{"md5", "nobody", "x", "main", "28P01"},
		// An empty password is no password: nobody logs in with it (audit finding 1).
		{"scram-sha-256", "dave", "", "main", "28P01"},
		{"scram-sha-256", "erin", "", "main", "28P01"},
		{"md5", "dave", "", "main", "28P01"},
		{"md5", "erin", "", "main", "28P01"},
		{"md5", "erin", "x", "main", "28P01"},
		{"trust", "alice", "", "main", ""},
		{"trust", "nobody", "", "main", "28P01"},
	}
	proxies := map[string]*testProxy{}
	for _, a := range []string{"scram-sha-256", "md5", "trust"} {
		proxies[a] = startProxy(t, proxyOpts{auth: a, users: users})
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("%s/%s/%s/%s", tc.auth, tc.user, tc.password, tc.database), func(t *testing.T) {
			p := proxies[tc.auth]
			ctx := testContext(t, 10*time.Second)
			host, port := p.hostPort()
			cc, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=%s dbname=%s sslmode=disable", host, port, tc.database))
			if err != nil {
				t.Fatal(err)
			}
			cc.User, cc.Password = tc.user, tc.password
			conn, err := pgx.ConnectConfig(ctx, cc)
			if tc.code == "" {
				if err != nil {
					t.Fatalf("pgx: %v", err)
				}
				var one int
				if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
					t.Fatal(err)
				}
				conn.Close(ctx)
			} else if got := pgCode(err); got != tc.code {
				t.Fatalf("pgx: got %v (SQLSTATE %q), want SQLSTATE %s", err, got, tc.code)
			}
			if tc.code == "28P01" && !strings.Contains(err.Error(), fmt.Sprintf("password authentication failed for user %q", tc.user)) {
				t.Fatalf("message gives away more than a wrong password would: %v", err)
			}
			// lib/pq speaks the same exchanges.
			db, err := sql.Open("postgres", fmt.Sprintf("host=%s port=%s dbname=%s user='%s' password='%s' sslmode=disable",
				host, port, tc.database, strings.ReplaceAll(tc.user, `'`, `\'`), tc.password))
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			err = db.PingContext(ctx)
			if tc.code == "" && err != nil {
				t.Fatalf("lib/pq: %v", err)
			}
			if tc.code != "" && (err == nil || !strings.Contains(err.Error(), tc.code)) {
				t.Fatalf("lib/pq: %v, want SQLSTATE %s", err, tc.code)
			}
		})
	}
	t.Run("psql", func(t *testing.T) {
		p := proxies["scram-sha-256"]
		host, port := p.hostPort()
		ctx := testContext(t, 10*time.Second)
		cmd := exec.CommandContext(ctx, "psql", "-X", "-At", "-h", host, "-p", port, "-U", "alice", "-d", "main", "-c", "SELECT 'in'")
		cmd.Env = append(os.Environ(), "PGPASSWORD=secret-a")
		out, err := cmd.CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != "in" {
			t.Fatalf("psql with password: %v: %s", err, out)
		}
		cmd = exec.CommandContext(ctx, "psql", "-X", "-h", host, "-p", port, "-U", "alice", "-d", "main", "-c", "SELECT 1")
		cmd.Env = append(os.Environ(), "PGPASSWORD=nope")
		out, _ = cmd.CombinedOutput()
		if !strings.Contains(string(out), `password authentication failed for user "alice"`) {
			t.Fatalf("psql with a wrong password: %s", out)
		}
	})
}

// TestPreAuthMessagesAreSmall: before login completes a client may send no
// message over 64 KB (a 100 KB "password" gets FATAL 08P01); after login,
// max_message_size applies again and a 100 KB query runs.
func TestPreAuthMessagesAreSmall(t *testing.T) {
	p := startProxy(t, proxyOpts{auth: "md5", users: usersFile(t)})
	c := dialRaw(t, p.addr)
	c.send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": "alice", "database": "main"}})
	m, err := c.receive()
	if _, ok := m.(*pgproto3.AuthenticationMD5Password); !ok || err != nil {
		t.Fatalf("first reply %#v, %v", m, err)
	}
	c.send(&pgproto3.PasswordMessage{Password: strings.Repeat("x", 100<<10)})
	if e := c.expectFatal("08P01"); !strings.Contains(e.Message, "exceeds the limit of 65536 bytes") {
		t.Fatalf("oversized password: %q", e.Message)
	}
	ctx := testContext(t, 10*time.Second)
	host, port := p.hostPort()
	conn, err := pgx.Connect(ctx, fmt.Sprintf("host=%s port=%s user=alice password=secret-a dbname=main sslmode=disable", host, port))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n int
	if err := conn.QueryRow(ctx, "SELECT length('"+strings.Repeat("y", 100<<10)+"')").Scan(&n); err != nil || n != 100<<10 {
		t.Fatalf("100 KB query after login: %d, %v", n, err)
	}
}
