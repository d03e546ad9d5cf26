package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgrouter/pgrouter/config"
	"github.com/pgrouter/pgrouter/internal/pgtest"
	"github.com/pgrouter/pgrouter/internal/pgtest/testenv"
	"github.com/pgrouter/pgrouter/shardmap"
)

// TestImportPLProxy: a real PL/Proxy database (Debian's plproxy) over two
// shards, four partitions, with functions run on hashtext and hashint8 of
// an argument, on all partitions and on any. pgrouter import-plproxy writes
// a router.yaml that validates, translates those, and marks what it cannot
// (RUN ON an expression, SPLIT) NOT TRANSLATED with exit status 2; pgrouter
// served from that file answers every translated function as PL/Proxy does.
func TestImportPLProxy(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	shards := testenv.Servers(t, 2, pgtest.Options{})
	const shardSchema = `CREATE TABLE users (id bigint PRIMARY KEY, username text UNIQUE NOT NULL);
CREATE FUNCTION get_user(i_username text) RETURNS SETOF users LANGUAGE sql AS $$ SELECT * FROM users WHERE username = i_username $$;
CREATE FUNCTION get_by_id(i_id bigint) RETURNS SETOF users LANGUAGE sql AS $$ SELECT * FROM users WHERE id = i_id $$;
CREATE FUNCTION count_users() RETURNS SETOF bigint LANGUAGE sql AS $$ SELECT count(*) FROM users $$;
CREATE FUNCTION any_one() RETURNS SETOF int LANGUAGE sql AS $$ SELECT 1 $$;
-- Which server answered, for the functions whose routing is compared directly.
CREATE FUNCTION served_ci(i_username text) RETURNS SETOF text LANGUAGE sql AS $$ SELECT inet_server_port() || ':' || i_username $$;
CREATE FUNCTION served_text(i_id bigint) RETURNS SETOF text LANGUAGE sql AS $$ SELECT inet_server_port() || ':' || i_id $$;
CREATE FUNCTION served_on(i_x text) RETURNS SETOF text LANGUAGE sql AS $$ SELECT inet_server_port() || ':' || i_x $$;
CREATE FUNCTION served_hash(i_id bigint, i_hash int) RETURNS SETOF text LANGUAGE sql AS $$ SELECT inet_server_port() || ':' || i_id || ':' || i_hash $$;
CREATE FUNCTION same_fn(a text) RETURNS SETOF text LANGUAGE sql AS $$ SELECT inet_server_port() || ':' || a $$;
CREATE FUNCTION same_fn(a text, b int) RETURNS SETOF text LANGUAGE sql AS $$ SELECT inet_server_port() || ':' || a || ':' || b $$;
CREATE FUNCTION get_users(i_names text[], OUT id bigint, OUT username text) RETURNS SETOF record LANGUAGE sql AS $$ SELECT * FROM users WHERE username = ANY(i_names) $$;
CREATE FUNCTION get_by_ids(i_ids bigint[], OUT id bigint, OUT username text) RETURNS SETOF record LANGUAGE sql AS $$ SELECT * FROM users WHERE id = ANY(i_ids) $$;
CREATE FUNCTION tag_users(i_names text[], i_tags text[], i_note text) RETURNS SETOF text LANGUAGE sql AS
  $$ SELECT inet_server_port() || ':' || n || ':' || coalesce(t, 'NULL') || ':' || i_note FROM unnest(i_names, i_tags) AS u(n, t) $$;
CREATE FUNCTION user_impl(i_username text, OUT id bigint, OUT username text) RETURNS SETOF record LANGUAGE sql AS $$ SELECT * FROM users WHERE username = i_username $$;`
	var conninfo []string
	for _, s := range shards {
		if err := s.Exec(ctx, "postgres", shardSchema); err != nil {
			t.Fatal(err)
		}
		conninfo = append(conninfo, fmt.Sprintf("host=%s port=%d dbname=postgres user=%s", s.Host, s.Port, pgtest.SuperUser))
	}
	// 4 partitions: 0-1 on the first shard, 2-3 on the second, placed by
	// hashtext of the username as PL/Proxy does; ids so that hashint8(id)
	// lands each user on the same shard as its name (for get_by_id).
	var loads [2][][]any
	id := int64(0)
	for i := range 400 {
		name := fmt.Sprintf("user%d", i)
		shard := shardmap.Partition(shardmap.HashText.Text([]byte(name)), 4) / 2
		for {
			id++
			if shardmap.Partition(shardmap.HashText.Int(id, 8), 4)/2 == shard {
				break
			}
		}
		loads[shard] = append(loads[shard], []any{id, name})
	}
	for i, s := range shards {
		conn, err := pgx.Connect(ctx, s.DSN("postgres"))
		if err != nil {
			t.Fatal(err)
		}
		_, err = conn.CopyFrom(ctx, pgx.Identifier{"users"}, []string{"id", "username"}, pgx.CopyFromRows(loads[i]))
		conn.Close(ctx)
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := shards[0].Exec(ctx, "postgres", "CREATE DATABASE plx"); err != nil {
		t.Fatal(err)
	}
	if err := shards[0].Exec(ctx, "plx", fmt.Sprintf(`CREATE EXTENSION plproxy;
CREATE SERVER cl FOREIGN DATA WRAPPER plproxy OPTIONS (p0 '%[1]s', p1 '%[1]s', p2 '%[2]s', p3 '%[2]s');
CREATE USER MAPPING FOR PUBLIC SERVER cl;
CREATE FUNCTION get_user(i_username text, OUT id bigint, OUT username text) RETURNS SETOF record LANGUAGE plproxy AS $$ CLUSTER 'cl'; RUN ON hashtext(i_username); $$;
CREATE FUNCTION get_by_id(i_id bigint, OUT id bigint, OUT username text) RETURNS SETOF record LANGUAGE plproxy AS $$ CLUSTER 'cl'; RUN ON hashint8($1); $$;
CREATE FUNCTION count_users() RETURNS SETOF bigint LANGUAGE plproxy AS $$ -- every partition
	CLUSTER 'cl'; RUN ON ALL; $$;
CREATE FUNCTION any_one() RETURNS SETOF int LANGUAGE plproxy AS $$ CLUSTER 'cl'; $$;
CREATE FUNCTION served_ci(i_username text) RETURNS SETOF text LANGUAGE plproxy AS $$ CLUSTER 'cl'; RUN ON hashtext(lower(i_username)); $$;
CREATE FUNCTION served_text(i_id bigint) RETURNS SETOF text LANGUAGE plproxy AS $$ CLUSTER 'cl'; RUN ON hashtext(i_id::text); $$;
CREATE FUNCTION get_users(i_names text[], OUT id bigint, OUT username text) RETURNS SETOF record LANGUAGE plproxy AS $$ CLUSTER 'cl'; SPLIT i_names; RUN ON hashtext(i_names); $$;
CREATE FUNCTION get_by_ids(i_ids bigint[], OUT id bigint, OUT username text) RETURNS SETOF record LANGUAGE plproxy AS $$ CLUSTER 'cl'; RUN ON hashint8(i_ids); SPLIT $1; $$;
CREATE FUNCTION tag_users(i_names text[], i_tags text[], i_note text) RETURNS SETOF text LANGUAGE plproxy AS $$ CLUSTER 'cl'; SPLIT ALL; RUN ON hashtext(i_names); $$;
CREATE FUNCTION find_user(i_username text, OUT id bigint, OUT username text) RETURNS SETOF record LANGUAGE plproxy AS $$ CLUSTER 'cl'; TARGET user_impl; RUN ON hashtext(i_username); $$;
CREATE FUNCTION user_count() RETURNS SETOF bigint LANGUAGE plproxy AS $$ CLUSTER 'cl'; TARGET count_users; RUN ON ALL; $$;
CREATE FUNCTION served_on(i_x text) RETURNS SETOF text LANGUAGE plproxy AS $$ CLUSTER 'cl'; RUN ON 2; $$;
CREATE FUNCTION served_hash(i_id bigint, i_hash int) RETURNS SETOF text LANGUAGE plproxy AS $$ CLUSTER 'cl'; RUN ON i_hash; $$;
CREATE FUNCTION same_fn(a text) RETURNS SETOF text LANGUAGE plproxy AS $$ CLUSTER 'cl'; RUN ON hashtext(a); $$;
CREATE FUNCTION same_fn(a text, b int) RETURNS SETOF text LANGUAGE plproxy AS $$ CLUSTER 'cl'; RUN ON hashtext(a); $$;
CREATE FUNCTION dup_fn(a text) RETURNS SETOF text LANGUAGE plproxy AS $$ CLUSTER 'cl'; RUN ON hashtext(a); $$;
CREATE FUNCTION dup_fn(a text, b int) RETURNS SETOF text LANGUAGE plproxy AS $$ CLUSTER 'cl'; RUN ON b; $$;
CREATE FUNCTION by_expr(i_username text) RETURNS SETOF text LANGUAGE plproxy AS $$ CLUSTER 'cl'; RUN ON hashtext(upper(i_username)); $$;`,
		conninfo[0], conninfo[1])); err != nil {
		t.Fatal(err)
	}

	path := filepath.Join(t.TempDir(), "router.yaml")
	out, code := pgrouter(ctx, t, "import-plproxy", "--from", shards[0].DSN("plx"), "-o", path)
	if code != 2 || !strings.Contains(out, "plproxy functions: 18, clusters: 1") ||
		!strings.Contains(out, "not translated: by_expr") || !strings.Contains(out, "not translated: dup_fn: its 2 overloads") || strings.Count(out, "not translated:") != 3 {
		t.Fatalf("import-plproxy (exit %d):\n%s", code, out)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse(path, data)
	if err != nil {
		t.Fatalf("the imported router.yaml: %v\n%s", err, data)
	}
	cl := cfg.Clusters["cl"]
	if cl == nil || cl.Hash != "hashtext" || cl.Partitions != 4 || len(cl.Shards) != 2 || cl.Shards[0].Partitions != "0-1" || cl.Shards[1].Partitions != "2-3" ||
		!strings.Contains(string(data), "# NOT TRANSLATED: by_expr") || len(cfg.Functions) != 14 {
		t.Fatalf("the imported router.yaml:\n%s", data)
	}
	t.Logf("imported:\n%s", data)

	// Served from that file, pgrouter answers as PL/Proxy does.
	addr := freeAddr(t)
	writeFile(t, path, strings.Replace(string(data), "listen: 127.0.0.1:6432", "listen: "+addr, 1))
	if out, code := pgrouter(ctx, t, "check", "-c", path); code != 0 || !strings.Contains(out, "14 functions") {
		t.Fatalf("pgrouter check of the imported file (exit %d):\n%s", code, out)
	}
	runRouter(ctx, t, path, addr)
	viaRouter, err := pgx.Connect(ctx, fmt.Sprintf("postgres://postgres@%s/cl?sslmode=disable", addr))
	if err != nil {
		t.Fatal(err)
	}
	defer viaRouter.Close(ctx)
	viaPLProxy, err := pgx.Connect(ctx, shards[0].DSN("plx"))
	if err != nil {
		t.Fatal(err)
	}
	defer viaPLProxy.Close(ctx)
	rowsOf := func(conn *pgx.Conn, sql string, args ...any) string {
		t.Helper()
		return sortedRows(ctx, t, conn, sql, args...)
	}
	for i := range 400 {
		name := fmt.Sprintf("user%d", i)
		if a, b := rowsOf(viaRouter, "SELECT * FROM get_user($1)", name), rowsOf(viaPLProxy, "SELECT * FROM get_user($1)", name); a != b || a == "" {
			t.Fatalf("get_user(%s): pgrouter %q, PL/Proxy %q", name, a, b)
		}
	}
	for id := int64(1); id <= 60; id++ {
		if a, b := rowsOf(viaRouter, "SELECT * FROM get_by_id($1)", id), rowsOf(viaPLProxy, "SELECT * FROM get_by_id($1)", id); a != b {
			t.Fatalf("get_by_id(%d): pgrouter %q, PL/Proxy %q", id, a, b)
		}
	}
	// RUN ON ALL runs once per database (PL/Proxy shares a connection
	// between partitions with one connect string), as run_on: all once per
	// shard: the same rows, in the order the shards answer.
	if a, b := rowsOf(viaRouter, "SELECT * FROM count_users() WHERE $1::int = 1", 1), rowsOf(viaPLProxy, "SELECT * FROM count_users() WHERE $1::int = 1", 1); a != b || strings.Count(a, "|") != 1 {
		t.Fatalf("count_users: pgrouter %q, PL/Proxy %q", a, b)
	}
	if a := rowsOf(viaRouter, "SELECT * FROM any_one() WHERE $1::int = 1", 1); a != "1" {
		t.Fatalf("any_one through pgrouter: %q", a)
	}
	comparePLProxy(ctx, t, viaRouter, viaPLProxy, addr, shards[0].DSN("plx"))

	// A PL/Proxy database configured by the plproxy.get_cluster_* functions
	// (before SQL/MED) imports to the same cluster, and answers as the one
	// pgrouter serves.
	if err := shards[0].Exec(ctx, "postgres", "CREATE DATABASE plx_fn"); err != nil {
		t.Fatal(err)
	}
	if err := shards[0].Exec(ctx, "plx_fn", fmt.Sprintf(`CREATE EXTENSION plproxy;
CREATE SCHEMA plproxy;
CREATE FUNCTION plproxy.get_cluster_version(cluster_name text) RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;
CREATE FUNCTION plproxy.get_cluster_partitions(cluster_name text) RETURNS SETOF text LANGUAGE sql AS
  $$ SELECT unnest(ARRAY['%[1]s', '%[1]s', '%[2]s', '%[2]s']) $$;
CREATE FUNCTION plproxy.get_cluster_config(IN cluster_name text, OUT key text, OUT val text) RETURNS SETOF record LANGUAGE sql AS
  $$ SELECT 'connection_lifetime'::text, '1800'::text $$;
CREATE FUNCTION get_user(i_username text, OUT id bigint, OUT username text) RETURNS SETOF record LANGUAGE plproxy AS $$ CLUSTER 'fcl'; RUN ON hashtext(i_username); $$;`,
		conninfo[0], conninfo[1])); err != nil {
		t.Fatal(err)
	}
	fnPath := filepath.Join(t.TempDir(), "router.yaml")
	if out, code := pgrouter(ctx, t, "import-plproxy", "--from", shards[0].DSN("plx_fn"), "-o", fnPath); code != 0 {
		t.Fatalf("import-plproxy of get_cluster_partitions (exit %d):\n%s", code, out)
	}
	data, err = os.ReadFile(fnPath)
	if err != nil {
		t.Fatal(err)
	}
	if cfg, err := config.Parse(fnPath, data); err != nil || cfg.Clusters["fcl"] == nil || len(cfg.Clusters["fcl"].Shards) != 2 ||
		cfg.Clusters["fcl"].Shards[0].DSN != conninfo[0] || cfg.Clusters["fcl"].Shards[1].Partitions != "2-3" {
		t.Fatalf("imported from get_cluster_partitions (%v):\n%s", err, data)
	}
	viaFn, err := pgx.Connect(ctx, shards[0].DSN("plx_fn"))
	if err != nil {
		t.Fatal(err)
	}
	defer viaFn.Close(ctx)
	for i := range 50 {
		name := fmt.Sprintf("user%d", i*7)
		if a, b := rowsOf(viaRouter, "SELECT * FROM get_user($1)", name), rowsOf(viaFn, "SELECT * FROM get_user($1)", name); a != b || a == "" {
			t.Fatalf("get_user(%s): pgrouter %q, PL/Proxy by get_cluster_partitions %q", name, a, b)
		}
	}
}

// comparePLProxy checks that the functions import-plproxy translated from
// SPLIT, TARGET and RUN ON expressions answer through pgrouter as through
// PL/Proxy: for many keys and key arrays, through pgx's extended protocol
// (arrays as binary parameters), pgx's simple protocol (arrays as
// '{...}' literals) and psql (ARRAY[...] constructors).
func comparePLProxy(ctx context.Context, t *testing.T, viaRouter, viaPLProxy *pgx.Conn, addr, plproxyDSN string) {
	rowsOf := func(conn *pgx.Conn, sql string, args ...any) string {
		t.Helper()
		return sortedRows(ctx, t, conn, sql, args...)
	}
	same := func(sql string, args ...any) {
		t.Helper()
		for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeSimpleProtocol} {
			a, b := rowsOf(viaRouter, sql, append([]any{mode}, args...)...), rowsOf(viaPLProxy, sql, append([]any{mode}, args...)...)
			if a != b {
				t.Fatalf("%s %v (mode %v):\npgrouter %q\nPL/Proxy %q", sql, args, mode, a, b)
			}
		}
	}
	shardsServing := map[string]bool{}
	for i := range 200 {
		// RUN ON hashtext(lower(x)): the database's ctype is C, so only
		// ASCII letters fold (lower_ascii); the rest hash as they are.
		for _, name := range []string{fmt.Sprintf("User%d", i), fmt.Sprintf("ÉLODIE%dX", i), fmt.Sprintf("zoë_%d", i)} {
			same("SELECT * FROM served_ci($1)", name)
		}
		// RUN ON hashtext(x::text) of a bigint.
		same("SELECT * FROM served_text($1)", int64(i*7919-500))
		port, _, _ := strings.Cut(rowsOf(viaRouter, "SELECT * FROM served_text($1)", int64(i)), ":")
		shardsServing[port] = true
		// TARGET user_impl.
		same("SELECT * FROM find_user($1)", fmt.Sprintf("user%d", i))
	}
	if len(shardsServing) != 2 {
		t.Fatalf("served_text ran on %d shards, want 2", len(shardsServing))
	}
	same("SELECT * FROM user_count()")
	// RUN ON i_hash: the argument is the hash.
	for h := int32(-9); h <= 9; h++ {
		same("SELECT * FROM served_hash($1, $2)", int64(h)*100, h)
	}
	// Two overloads routed alike: one declaration serves both.
	for _, k := range []string{"a", "b", "c", "d"} {
		same("SELECT * FROM same_fn($1)", k)
		same("SELECT * FROM same_fn($1, 7)", k)
	}
	// RUN ON 2: partition 2's database, whatever the argument.
	for _, x := range []string{"a", "b", "c"} {
		same("SELECT * FROM served_on($1)", x)
	}
	// SPLIT: arrays of 1 to 40 names and ids; some not there.
	for n := 0; n <= 40; n++ {
		var names, tags []string
		var ids []int64
		for k := range n {
			names = append(names, fmt.Sprintf("user%d", (n*37+k*11)%450))
			tags = append(tags, fmt.Sprintf("t%d", k))
			ids = append(ids, int64((n*13+k*7)%500))
		}
		same("SELECT * FROM get_users($1)", names)
		same("SELECT * FROM get_by_ids($1)", ids)
		same("SELECT * FROM tag_users($1, $2, $3)", names, tags, "note")
	}
	same("SELECT * FROM get_users($1)", nil)
	one, three := "1", "3"
	same("SELECT * FROM tag_users($1, $2, 'x')", []string{`a "quoted", \ name`, "NULL", "b"}, []*string{&one, nil, &three})
	// Split arrays of different lengths fail on both.
	if _, err := viaRouter.Exec(ctx, "SELECT * FROM tag_users($1, $2, 'x')", []string{"a", "b"}, []string{"c"}); err == nil || !strings.Contains(err.Error(), "identical lengths") {
		t.Fatalf("split arrays of different lengths: %v", err)
	}

	// psql's simple Query with ARRAY[...] constructors and '{...}' literals.
	psql := func(dsn, sql string) string {
		t.Helper()
		out, err := exec.CommandContext(ctx, "psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", dsn, "-c", sql).CombinedOutput()
		if err != nil {
			t.Fatalf("psql %s: %v\n%s", sql, err, out)
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		slices.Sort(lines)
		return strings.Join(lines, "\n")
	}
	for _, sql := range []string{
		"SELECT * FROM get_users(ARRAY['user1', 'user2', 'user3', 'user40', 'user77', 'nobody'])",
		"SELECT * FROM get_users('{user5,user6,\"user7\",user300}'::text[])",
		"SELECT * FROM tag_users(ARRAY['user1','user2','user3','user4'], ARRAY['a','b',NULL,'d'], 'psql')",
		"SELECT * FROM get_by_ids(ARRAY[1, 2, 3, 4, 5, 6, 7, 8]::bigint[])",
		"SELECT username FROM find_user('user9')",
	} {
		if a, b := psql(fmt.Sprintf("postgres://postgres@%s/cl?sslmode=disable", addr), sql), psql(plproxyDSN, sql); a != b || a == "" {
			t.Fatalf("psql %s:\npgrouter %q\nPL/Proxy %q", sql, a, b)
		}
	}
}

// sortedRows runs a query and returns its rows as text, sorted (PL/Proxy
// concatenates a fan-out in partition order, pgrouter as shards answer)
// and joined by "|".
func sortedRows(ctx context.Context, t *testing.T, conn *pgx.Conn, sql string, args ...any) string {
	t.Helper()
	rows, err := conn.Query(ctx, sql, args...)
	if err != nil {
		t.Fatalf("%s %v: %v", sql, args, err)
	}
	var out []string
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, fmt.Sprint(vals...))
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("%s %v: %v", sql, args, err)
	}
	slices.Sort(out)
	return strings.Join(out, "|")
}
