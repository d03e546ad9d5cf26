// Package bench is pgrouter's benchmark harness: a dataset placed on the
// shards as the router would place it, the same functions behind
// PL/Proxy, and workloads run against any number of targets (pgrouter,
// a shard directly, pgbouncer, PL/Proxy) in interleaved rounds, so that a
// noisy machine's drift falls on every target alike.
package bench

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgrouter/pgrouter/shardmap"
)

// Schema is created on every shard: users placed by username, and the
// functions the workloads call. Every shard has the same schema.
const Schema = `
CREATE TABLE IF NOT EXISTS bench_users (id bigserial UNIQUE, username text PRIMARY KEY, balance bigint NOT NULL DEFAULT 0, email text NOT NULL);
CREATE OR REPLACE FUNCTION bench_get_user(i_username text, OUT id bigint, OUT balance bigint, OUT email text) RETURNS SETOF record
	LANGUAGE sql STABLE AS $$ SELECT id, balance, email FROM bench_users WHERE username = i_username $$;
CREATE OR REPLACE FUNCTION bench_add_balance(i_username text, i_delta bigint) RETURNS SETOF bigint
	LANGUAGE sql AS $$ UPDATE bench_users SET balance = balance + i_delta WHERE username = i_username RETURNING balance $$;
CREATE OR REPLACE FUNCTION bench_count_users() RETURNS SETOF bigint
	LANGUAGE sql STABLE AS $$ SELECT count(*) FROM bench_users $$;
`

// Functions are the routes router.yaml needs for the workloads.
const Functions = `functions:
  - {name: bench_get_user, key: i_username}
  - {name: bench_add_balance, key: i_username}
  - {name: bench_count_users, run_on: all, merge: sum}
`

// MissingFunctions lists the benchmark's functions that the cluster does
// not route as the workloads need (Functions has the declarations), empty
// when it routes them all.
func MissingFunctions(cl *shardmap.Cluster) []string {
	want := []struct {
		name  string
		check func(f *shardmap.Function) bool
	}{
		{"bench_get_user", func(f *shardmap.Function) bool { return f.RunOn == shardmap.RunHash && f.KeyName == "i_username" }},
		{"bench_add_balance", func(f *shardmap.Function) bool { return f.RunOn == shardmap.RunHash && f.KeyName == "i_username" }},
		{"bench_count_users", func(f *shardmap.Function) bool { return f.RunOn == shardmap.RunAll && f.Merge == shardmap.MergeSum }},
	}
	var missing []string
	for _, w := range want {
		ok := false
		for _, f := range cl.Functions {
			if f.Schema == "public" && f.Name == w.name {
				ok = w.check(f)
			}
		}
		if !ok {
			missing = append(missing, w.name)
		}
	}
	return missing
}

// Failures reports the runs in which queries failed: a benchmark with
// errors measured something else than the workload (a missing function
// fails every query, and fast).
func Failures(rs []*Result) error {
	var lines []string
	for _, r := range rs {
		if r.Errors > 0 {
			lines = append(lines, fmt.Sprintf("target %s at %s: %d of %d queries failed (first: %s)", r.Target, clientsLabel(r.Clients), r.Errors, r.Queries+r.Errors, r.FirstErr))
		}
	}
	if len(lines) == 0 {
		return nil
	}
	return fmt.Errorf("the benchmark had errors, so its numbers do not measure the workload:\n  %s", strings.Join(lines, "\n  "))
}

// Username is the key of user i.
func Username(i int) string { return fmt.Sprintf("user%d", i) }

// Init creates the schema on every shard of the cluster and loads users
// 0..n-1, each on the shard the cluster's hash places its username on
// (one COPY per shard), replacing what a previous Init loaded.
func Init(ctx context.Context, cl *shardmap.Cluster, n int) error {
	rows := map[string][][]any{}
	for i := range n {
		name := Username(i)
		sh := cl.ShardOfHash(cl.Hash.Text([]byte(name)))
		rows[sh.Name] = append(rows[sh.Name], []any{name, fmt.Sprintf("%s@example.com", name)})
	}
	for _, sh := range cl.Shards {
		if err := load(ctx, sh, rows[sh.Name]); err != nil {
			return fmt.Errorf("shard %s: %w", sh.Name, err)
		}
	}
	return nil
}

func load(ctx context.Context, sh *shardmap.Shard, rows [][]any) error {
	conn, err := pgx.Connect(ctx, sh.DSN)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, Schema+"TRUNCATE bench_users;"); err != nil {
			return fmt.Errorf("create the schema: %w", err)
		}
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"bench_users"}, []string{"username", "email"}, pgx.CopyFromRows(rows)); err != nil {
			return fmt.Errorf("load users: %w", err)
		}
		_, err := tx.Exec(ctx, "ANALYZE bench_users")
		return err
	})
}

// InitPLProxy creates, in the database at dsn, a PL/Proxy cluster whose
// partitions are the cluster's (each partition's connect string is its
// shard's DSN) and the same three functions as proxy functions. Data
// placement only matches the router's with hash: hashtext, which is what
// PL/Proxy hashes with.
func InitPLProxy(ctx context.Context, dsn string, cl *shardmap.Cluster) error {
	if cl.Hash != shardmap.HashText {
		return fmt.Errorf("cluster %s hashes with %s, PL/Proxy with hashtext: set hash: hashtext so both place users alike", cl.Name, cl.Hash)
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var parts []string
	for p := range cl.Partitions {
		ci, err := connInfo(cl.ShardOf(p).DSN)
		if err != nil {
			return fmt.Errorf("shard %s: %w", cl.ShardOf(p).Name, err)
		}
		parts = append(parts, fmt.Sprintf("p%d %s", p, quote(ci)))
	}
	sql := fmt.Sprintf(`CREATE EXTENSION IF NOT EXISTS plproxy;
DROP SERVER IF EXISTS bench_cluster CASCADE;
CREATE SERVER bench_cluster FOREIGN DATA WRAPPER plproxy OPTIONS (connection_lifetime '1800', %s);
CREATE USER MAPPING FOR PUBLIC SERVER bench_cluster;
CREATE OR REPLACE FUNCTION bench_get_user(i_username text, OUT id bigint, OUT balance bigint, OUT email text) RETURNS SETOF record
	LANGUAGE plproxy AS $$ CLUSTER 'bench_cluster'; RUN ON hashtext(i_username); $$;
CREATE OR REPLACE FUNCTION bench_add_balance(i_username text, i_delta bigint) RETURNS SETOF bigint
	LANGUAGE plproxy AS $$ CLUSTER 'bench_cluster'; RUN ON hashtext(i_username); $$;
CREATE OR REPLACE FUNCTION bench_count_users() RETURNS SETOF bigint
	LANGUAGE plproxy AS $$ CLUSTER 'bench_cluster'; RUN ON ALL; $$;`, strings.Join(parts, ", "))
	if _, err := conn.Exec(ctx, sql); err != nil {
		return fmt.Errorf("create the PL/Proxy cluster and functions (is postgresql-NN-plproxy installed where %s runs?): %w", dsn, err)
	}
	return nil
}

// connInfo writes a DSN as libpq key=value pairs: PL/Proxy appends its own
// settings to a partition's connect string, which a URL cannot take.
func connInfo(dsn string) (string, error) {
	cc, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return "", err
	}
	value := func(v string) string {
		return "'" + strings.ReplaceAll(strings.ReplaceAll(v, `\`, `\\`), "'", `\'`) + "'"
	}
	ci := fmt.Sprintf("host=%s port=%d dbname=%s user=%s", value(cc.Host), cc.Port, value(cc.Database), value(cc.User))
	if cc.Password != "" {
		ci += " password=" + value(cc.Password)
	}
	ci += " sslmode=" + sslMode(cc)
	return ci, nil
}

// sslMode recovers the sslmode libpq needs from a parsed config: TLS
// required, TLS tried with a plain fallback (prefer, the default), or none.
func sslMode(cc *pgconn.Config) string {
	if cc.TLSConfig == nil {
		return "disable"
	}
	for _, fb := range cc.Fallbacks {
		if fb.TLSConfig == nil {
			return "prefer"
		}
	}
	return "require"
}

func quote(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }
