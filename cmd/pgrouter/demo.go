package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/pgrouter/pgrouter/config"
	"github.com/pgrouter/pgrouter/internal/pgtest"
	"github.com/pgrouter/pgrouter/refsync"
	"github.com/pgrouter/pgrouter/seqalloc"
	"github.com/pgrouter/pgrouter/shardmap"
)

// demoCluster is the database name clients use in the demo.
const demoCluster = "demo"

func demoCmd() *cobra.Command {
	var (
		dir      string
		shards   int
		replicas int
		listen   string
	)
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Start local PostgreSQL shards and serve them on 127.0.0.1:6432",
		Long: `demo starts throwaway PostgreSQL servers (initdb, one per shard), writes a
router.yaml for them and runs pgrouter in front of them until Ctrl-C, then
stops everything. With --dir the shards' data is kept there and reused.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if shards < 1 || shards > 16 {
				return fmt.Errorf("--shards must be between 1 and 16")
			}
			if replicas < 0 || replicas > 3 {
				return fmt.Errorf("--replicas must be between 0 and 3")
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return runDemo(ctx, cmd.OutOrStdout(), dir, shards, replicas, listen)
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "keep shard data and router.yaml in this folder (default: a temporary folder, removed at exit)")
	cmd.Flags().IntVar(&shards, "shards", 2, "number of shards")
	cmd.Flags().IntVar(&replicas, "replicas", 0, "hot standbys of each shard (streaming replication; made afresh at each start): read_only calls go to them")
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:6432", "address to serve on")
	return cmd
}

func runDemo(ctx context.Context, out io.Writer, dir string, n, replicas int, listen string) error {
	log, err := newLogger("info", "auto")
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()

	// The port first: a demo that cannot serve must not start shards, nor
	// say it is ready.
	ln, err := listenClients(listen, "--listen", false)
	if err != nil {
		return err
	}
	defer ln.Close() // serve closes it too; this covers a failed start

	temp := dir == ""
	if temp {
		if dir, err = os.MkdirTemp("", "pgrouter-demo-"); err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		if err := os.Chmod(dir, 0o755); err != nil { // the shards may run as another user
			return err
		}
	}
	if dir, err = filepath.Abs(dir); err != nil {
		return err
	}
	fmt.Fprintf(out, "Starting %d PostgreSQL shards in %s ...\n", n, dir)
	servers := make([]*pgtest.Server, 0, n)
	defer func() {
		for _, s := range servers {
			_ = s.Stop()
		}
	}()
	startCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	for i := range n {
		s, err := pgtest.Start(startCtx, pgtest.Options{Dir: filepath.Join(dir, fmt.Sprintf("s%d", i))})
		if err != nil {
			return fmt.Errorf("start shard s%d: %w", i, err)
		}
		servers = append(servers, s)
	}

	central, err := pgtest.Start(startCtx, pgtest.Options{Dir: filepath.Join(dir, "central")})
	if err != nil {
		return fmt.Errorf("start the reference source: %w", err)
	}
	defer func() { _ = central.Stop() }()
	if err := central.Exec(startCtx, "postgres", demoCountries+demoCountryRows); err != nil {
		return fmt.Errorf("create the reference table on the source: %w", err)
	}

	for i, s := range servers {
		if err := s.Exec(startCtx, "postgres", demoSchema); err != nil {
			return fmt.Errorf("create the demo schema on shard s%d: %w", i, err)
		}
	}
	standbys := make([][]*pgtest.Server, n)
	defer func() {
		for _, rs := range standbys {
			for _, r := range rs {
				_ = r.Stop()
			}
		}
	}()
	for i, s := range servers {
		for range replicas {
			r, err := pgtest.StartReplica(startCtx, s)
			if err != nil {
				return fmt.Errorf("start a standby of shard s%d: %w", i, err)
			}
			standbys[i] = append(standbys[i], r)
		}
	}
	path := filepath.Join(dir, "router.yaml")
	if err := os.WriteFile(path, []byte(demoConfig(servers, standbys, central, ln.Addr().String())), 0o644); err != nil {
		return err
	}
	cfg, err := config.Load(path)
	if err != nil {
		return fmt.Errorf("demo config: %w", err)
	}
	// Stride the shards' sequences, so user ids never collide.
	shardMap, err := shardmap.New(cfg)
	if err != nil {
		return fmt.Errorf("demo config: %w", err)
	}
	for _, cl := range shardMap.Clusters() {
		if _, err := seqalloc.Apply(startCtx, cl, seqalloc.OptionsFrom(cfg), false); err != nil {
			return fmt.Errorf("stride the demo's sequences: %w", err)
		}
	}
	// refsync runs in-process: it copies countries to every shard, then
	// streams the source's changes until the demo stops.
	refsyncCtx, stopRefsync := context.WithCancel(ctx)
	refsyncDone := make(chan error, 1)
	go func() { refsyncDone <- refsync.Run(refsyncCtx, cfg, refsync.Options{Log: log.Named("refsync")}) }()
	defer func() {
		stopRefsync()
		if err := <-refsyncDone; err != nil {
			log.Error("refsync stopped", zap.Error(err))
		}
	}()
	if err := waitCopied(startCtx, cfg, refsyncDone); err != nil {
		return err
	}

	host, port, _ := strings.Cut(cfg.Listen, ":")
	fmt.Fprintf(out, "\npgrouter demo is ready.\n\n")
	for i, s := range servers {
		fmt.Fprintf(out, "  shard s%d  %s  (data %s)\n", i, s.Addr(), s.DataDir)
		for j, r := range standbys[i] {
			fmt.Fprintf(out, "  standby %s  %s  (streaming from s%d)\n", shardmap.ReplicaName(fmt.Sprintf("s%d", i), j+1), r.Addr(), i)
		}
	}
	fmt.Fprintf(out, "  source    %s  (data %s)\n", central.Addr(), central.DataDir)
	fmt.Fprintf(out, "  config    %s\n\n", path)
	fmt.Fprintf(out, "Connect:    psql -h %s -p %s -U demo %s\n", host, port, demoCluster)
	fmt.Fprintf(out, "Try:        SELECT add_user('bob', 'bob@example.com');   -- runs on the shard that owns 'bob'\n")
	fmt.Fprintf(out, "            SELECT * FROM get_user('bob');\n")
	fmt.Fprintf(out, "            SELECT count_users();                          -- runs on every shard, summed\n")
	fmt.Fprintf(out, "            SELECT count(*) FROM users;                    -- no routed function: s0 only (a NOTICE says so)\n")
	if replicas > 0 {
		fmt.Fprintf(out, "            SELECT served_by('bob');                       -- read_only: answered by a standby of bob's shard\n")
	}
	fmt.Fprintf(out, "Bench:      routed lookups over every shard, as the README shows:\n")
	fmt.Fprintf(out, "            pgbench -h %s -p %s -U demo -n -M prepared -c 32 -j 2 -T 10 -f - %s <<'EOF'\n%sEOF\n", host, port, demoCluster, demoPgbenchScript)
	var starts []string
	for i := range min(n, 2) {
		starts = append(starts, fmt.Sprintf("s%d: %d, %d, ...", i, i+1, int64(i+1)+cfg.Sequences.Stride))
	}
	fmt.Fprintf(out, "Ids:        user ids step by %d from each shard's own start (%s)\n", cfg.Sequences.Stride, strings.Join(starts, "; "))
	fmt.Fprintf(out, "            pgrouter seq check -c %s\n", path)
	fmt.Fprintf(out, "Reference:  countries is written on the source and copied to every shard by refsync:\n")
	fmt.Fprintf(out, "            SELECT * FROM country_everywhere('SE');        -- every shard's copy\n")
	fmt.Fprintf(out, "            psql -h %s -p %d -U %s postgres -c \"UPDATE countries SET name = 'Sverige' WHERE code = 'SE'\"\n",
		central.Host, central.Port, pgtest.SuperUser)
	fmt.Fprintf(out, "            pgrouter refsync status -c %s\n", path)
	fmt.Fprintf(out, "Admin:      psql -h %s -p %s -U admin pgrouter     -- then SHOW SHARDS; SHOW POOLS; SHOW HELP;\n", host, port)
	fmt.Fprintf(out, "Stop:       Ctrl-C\n\n")

	return serve(ctx, nil, cfg, log, ln)
}

// waitCopied waits until refsync has copied the reference tables to every
// shard, so the examples the demo prints work at once.
func waitCopied(ctx context.Context, cfg *config.Config, refsyncDone <-chan error) error {
	for {
		st := refsync.ReadStatus(ctx, cfg)
		copied := st.SourceErr == nil
		for _, s := range st.Shards {
			copied = copied && s.Err == nil && s.Copied
		}
		if copied {
			return nil
		}
		select {
		case err := <-refsyncDone:
			return fmt.Errorf("refsync stopped: %w", err)
		case <-ctx.Done():
			return fmt.Errorf("refsync did not copy the reference tables in time: %w", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// demoCountries is the reference table, on the source and (so the shards'
// functions can use it from the start) on every shard; refsync fills it.
const demoCountries = `
CREATE TABLE IF NOT EXISTS countries (code text PRIMARY KEY, name text NOT NULL, currency text NOT NULL);
`

const demoCountryRows = `INSERT INTO countries VALUES ('DE', 'Germany', 'EUR'), ('EE', 'Estonia', 'EUR'),
  ('FR', 'France', 'EUR'), ('JP', 'Japan', 'JPY'), ('SE', 'Sweden', 'SEK'), ('US', 'United States', 'USD')
  ON CONFLICT DO NOTHING;
`

// demoSchema is the same on every shard: users placed by username, with
// the functions that reach them, and the reference table.
const demoSchema = demoCountries + `
SET check_function_bodies = off; -- pgrouter.seq_slot comes with the stride sequences, after this
CREATE OR REPLACE FUNCTION country_everywhere(i_code text, OUT shard text, OUT name text) RETURNS SETOF record
  LANGUAGE sql AS $$ SELECT (SELECT s.shard FROM pgrouter.seq_slot s), c.name FROM countries c WHERE c.code = i_code $$;
CREATE TABLE IF NOT EXISTS users (id bigserial UNIQUE, username text PRIMARY KEY, email text NOT NULL, created timestamptz NOT NULL DEFAULT now());
ALTER TABLE users ADD COLUMN IF NOT EXISTS id bigserial UNIQUE; -- a --dir kept from an older demo
CREATE OR REPLACE FUNCTION add_user(i_username text, i_email text) RETURNS text LANGUAGE sql AS
  $$ INSERT INTO users (username, email) VALUES (i_username, i_email) RETURNING 'id ' || id || ' stored on port ' || inet_server_port() $$;
CREATE OR REPLACE FUNCTION get_user(i_username text, OUT username text, OUT email text, OUT created timestamptz) RETURNS SETOF record
  LANGUAGE sql AS $$ SELECT username, email, created FROM users WHERE username = i_username $$;
CREATE OR REPLACE FUNCTION count_users() RETURNS bigint LANGUAGE sql AS $$ SELECT count(*) FROM users $$;
CREATE OR REPLACE FUNCTION served_by(i_username text) RETURNS text LANGUAGE sql STABLE AS
  $$ SELECT 'port ' || inet_server_port() || CASE WHEN pg_is_in_recovery() THEN ', a standby' ELSE ', the primary' END $$;
`

// demoPgbenchScript is the pgbench script of the README: a routed point
// lookup of a random key, so the load spreads over every shard. It runs
// with -M prepared: the key is a parameter, as an application's would be
// (in the simple protocol pgbench pastes :n into the text as a number).
const demoPgbenchScript = `\set n random(1, 100000)
SELECT * FROM get_user(:n);   -- the key is a parameter: looked up on the shard that owns it
`

const demoFunctions = `functions:
  - {name: add_user, key: i_username}
  - {name: get_user, key: i_username, read_only: true}
  - {name: served_by, key: i_username, read_only: true}
  - {name: count_users, run_on: all, merge: sum}
  - {name: country_everywhere, run_on: all}
`

// demoConfig writes the demo's router.yaml: trust auth on loopback, one
// cluster over every shard, statements without a routing key to s0 with a
// NOTICE saying so, any
// database name accepted so that a bare `psql -h 127.0.0.1 -p 6432` works,
// stride sequences and the reference table.
func demoConfig(servers []*pgtest.Server, standbys [][]*pgtest.Server, central *pgtest.Server, listen string) string {
	n := len(servers)
	partitions := 16
	var b strings.Builder
	fmt.Fprintf(&b, "# Written by pgrouter demo.\nlisten: %s\n", listen)
	b.WriteString("auth:\n  type: trust\nadmin_users: [admin]\npool:\n  mode: transaction\n  size: 10\nhealth:\n  interval: 1s\n")
	fmt.Fprintf(&b, "clusters:\n  %s:\n    partitions: %d\n    shards:\n", demoCluster, partitions)
	per := partitions / n
	for i, s := range servers {
		lo, hi := i*per, (i+1)*per-1
		if i == n-1 {
			hi = partitions - 1
		}
		fmt.Fprintf(&b, "      - name: s%d\n        dsn: %s\n        partitions: \"%d-%d\"\n", i, s.DSN("postgres"), lo, hi)
		if i < len(standbys) && len(standbys[i]) > 0 {
			b.WriteString("        replicas:\n")
			for _, r := range standbys[i] {
				fmt.Fprintf(&b, "          - %s\n", r.DSN("postgres"))
			}
		}
	}
	// Unrouted statements (select * from users) go to s0, and say so.
	fmt.Fprintf(&b, "default_route: s0\ndefault_route_notice: true\nfallback_cluster: %s\n", demoCluster)
	b.WriteString("sequences:\n  stride: 1024\n  schemas: [public]\n")
	b.WriteString(demoFunctions)
	fmt.Fprintf(&b, "reference:\n  source: %s\n  tables: [countries]\n", central.DSN("postgres"))
	return b.String()
}
