package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgrouter/pgrouter/internal/pgtest"
	"github.com/pgrouter/pgrouter/internal/pgtest/testenv"
)

const checkGetUser = `CREATE FUNCTION get_user(i_username text) RETURNS text LANGUAGE sql AS $$ SELECT i_username $$`

// TestCheck runs `pgrouter check` in-process against two real shards: it
// passes while they agree and fails, naming the shard and the reason, on a
// bad config, an unreachable shard, a differing signature and a missing
// function.
func TestCheck(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	servers := testenv.Servers(t, 2, pgtest.Options{})
	for _, s := range servers {
		if err := s.Exec(ctx, "postgres", checkGetUser); err != nil {
			t.Fatal(err)
		}
	}
	s0, s1 := servers[0].DSN("postgres"), servers[1].DSN("postgres")
	good := writeCheckConfig(t, 2, s0, s1)

	t.Run("ok", func(t *testing.T) {
		out, err := runCheckCmd(ctx, good)
		if err != nil {
			t.Fatalf("check failed: %v\n%s", err, out)
		}
		for _, want := range []string{
			"ok   main/s0  " + servers[0].Addr() + "/postgres  PostgreSQL ",
			"ok   main/s1  " + servers[1].Addr() + "/postgres  PostgreSQL ",
			"1 function\n",
			"2 shards in 1 cluster: all ok\n",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("output lacks %q:\n%s", want, out)
			}
		}
	})

	t.Run("bad config", func(t *testing.T) {
		out, err := runCheckCmd(ctx, writeCheckConfig(t, 3, s0, s1))
		if err == nil || !strings.Contains(err.Error(), "clusters.main.partitions: 3 is not a power of two") {
			t.Fatalf("err = %v; want the config error\n%s", err, out)
		}
	})

	t.Run("unreachable shard", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		closed := fmt.Sprintf("postgres://postgres@%s/postgres?sslmode=disable", ln.Addr())
		ln.Close()
		out, err := runCheckCmd(ctx, writeCheckConfig(t, 2, s0, closed))
		if err == nil {
			t.Fatalf("check passed with an unreachable shard:\n%s", out)
		}
		if !strings.Contains(out, "ok   main/s0") || !strings.Contains(out, "FAIL main/s1  127.0.0.1:") ||
			!strings.Contains(out, "unreachable") || !strings.Contains(out, "1 failed") {
			t.Errorf("output does not report s1 unreachable:\n%s", out)
		}
	})

	t.Run("offline", func(t *testing.T) {
		// The file is valid whatever the shards: nothing listens on port 1.
		path := writeCheckConfig(t, 2, s0, "postgres://u@127.0.0.1:1/db")
		out, code := pgrouter(ctx, t, "check", "--offline", "-c", path)
		if code != 0 || out != path+" is valid: 2 shards in 1 cluster, 1 routed function (no shard contacted)\n" {
			t.Fatalf("check --offline (exit %d):\n%s", code, out)
		}
		out, code = pgrouter(ctx, t, "check", "--offline", "-c", writeCheckConfig(t, 3, s0, s1))
		if code != 1 || !strings.Contains(out, "clusters.main.partitions: 3 is not a power of two") {
			t.Fatalf("check --offline of an invalid file (exit %d):\n%s", code, out)
		}
	})

	t.Run("signature differs", func(t *testing.T) {
		if err := servers[1].Exec(ctx, "postgres", "DROP FUNCTION get_user(text); "+
			strings.Replace(checkGetUser, "i_username text", "i_username varchar", 1)); err != nil {
			t.Fatal(err)
		}
		out, err := runCheckCmd(ctx, good)
		if err == nil {
			t.Fatalf("check passed with differing signatures:\n%s", out)
		}
		want := "FAIL main/s1  " + servers[1].Addr() + "/postgres: public.get_user differs from s0: " +
			"public.get_user(i_username character varying) here, public.get_user(i_username text) on s0\n"
		if !strings.Contains(out, want) || !strings.Contains(out, "ok   main/s0") {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	})

	t.Run("function missing", func(t *testing.T) {
		if err := servers[1].Exec(ctx, "postgres", "DROP FUNCTION get_user"); err != nil {
			t.Fatal(err)
		}
		out, err := runCheckCmd(ctx, good)
		if err == nil || !strings.Contains(out, "FAIL main/s1  "+servers[1].Addr()+"/postgres: function public.get_user does not exist\n") {
			t.Errorf("err = %v; output does not report get_user missing on s1:\n%s", err, out)
		}
	})
}

// runCheckCmd runs `pgrouter check -c path` and returns what it printed.
func runCheckCmd(ctx context.Context, path string) (string, error) {
	cmd := checkCmd()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SilenceUsage, cmd.SilenceErrors = true, true // as the root command does
	cmd.SetArgs([]string{"-c", path})
	err := cmd.ExecuteContext(ctx)
	return out.String(), err
}

// writeCheckConfig writes a router.yaml with one cluster, main, whose shards
// s0 and s1 own partitions 0 and 1, and the routed function get_user.
func writeCheckConfig(t *testing.T, partitions int, dsn0, dsn1 string) string {
	t.Helper()
	config := fmt.Sprintf(`auth:
  type: trust
pool:
  server_connect_timeout: 5s
clusters:
  main:
    partitions: %d
    shards:
      - name: s0
        dsn: %s
        partitions: "0"
      - name: s1
        dsn: %s
        partitions: "1"
functions:
  - name: get_user
    run_on: hash
    key: i_username
`, partitions, dsn0, dsn1)
	path := filepath.Join(t.TempDir(), "router.yaml")
	if err := os.WriteFile(path, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}
