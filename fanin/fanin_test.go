package fanin

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"

	"github.com/pgrouter/pgrouter/config"
	"github.com/pgrouter/pgrouter/internal/pgtest"
	"github.com/pgrouter/pgrouter/internal/pgtest/testenv"
	"github.com/pgrouter/pgrouter/logical"
)

var servers []*pgtest.Server // two shards and the target

func TestMain(m *testing.M) {
	testenv.Main(m, 3, pgtest.Options{}, func(s []*pgtest.Server) { servers = s })
}

const usersSQL = `CREATE TABLE users (id bigint PRIMARY KEY, name text NOT NULL, balance int NOT NULL DEFAULT 0, note text)`

// setup creates a database per shard and one for the target, the users
// table on the shards with rows, and returns the configuration.
func setup(t *testing.T, db string, rows int) *config.Config {
	t.Helper()
	ctx := context.Background()
	for i, s := range servers {
		if err := s.Exec(ctx, "postgres", "CREATE DATABASE "+db); err != nil {
			t.Fatal(err)
		}
		if i == 2 {
			continue
		}
		seed := fmt.Sprintf("INSERT INTO users (id, name, balance) SELECT g * 2 + %d, 'user ' || g, g %% 100 FROM generate_series(1, %d) g", i, rows)
		if err := s.Exec(ctx, db, usersSQL+"; "+seed); err != nil {
			t.Fatal(err)
		}
	}
	return faninConfig(t, db, 2)
}

// faninConfig is a cluster of the first n shards' databases db (n is 1 or
// 2) fanned into the target's.
func faninConfig(t testing.TB, db string, n int) *config.Config {
	t.Helper()
	shards := fmt.Sprintf(`      - {name: s0, dsn: %q, partitions: "0-1"}`, servers[0].DSN(db))
	if n == 2 {
		shards = fmt.Sprintf("      - {name: s0, dsn: %q, partitions: \"0\"}\n      - {name: s1, dsn: %q, partitions: \"1\"}", servers[0].DSN(db), servers[1].DSN(db))
	}
	yaml := fmt.Sprintf(`auth: {type: trust}
clusters:
  main:
    hash: hashtext
    partitions: 2
    shards:
%s
fanin:
  target: %q
  tables: [users]
  slot: fanin_%s
  publication: fanin_%s
`, shards, servers[2].DSN(db), db, db)
	cfg, err := config.Parse("router.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// start runs fan-in until the test ends; reload (may be nil) delivers
// new configurations.
func start(t *testing.T, cfg *config.Config, reload <-chan *config.Config, progress func(logical.Progress)) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = Run(ctx, cfg, Options{Log: zaptest.NewLogger(t), StatusInterval: 100 * time.Millisecond, RetryMin: 100 * time.Millisecond, RetryMax: time.Second,
			Reload: reload, Progress: progress})
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
}

// rowsOf reads a database's rows as sorted text lines.
func rowsOf(t *testing.T, dsn, query string) []string {
	t.Helper()
	out, err := tryRows(dsn, query)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func tryRows(dsn, query string) ([]string, error) {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return nil, err
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, query)
	if err != nil {
		return nil, err
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	slices.Sort(out)
	return out, err
}

const shardRows = `SELECT concat_ws('|', id, name, balance, coalesce(note, 'NULL')) FROM users`

// union is every shard's rows, each tagged with its shard.
func union(t *testing.T, db string) []string {
	var all []string
	for i, s := range servers[:2] {
		for _, r := range rowsOf(t, s.DSN(db), shardRows) {
			all = append(all, fmt.Sprintf("%s|s%d", r, i))
		}
	}
	slices.Sort(all)
	return all
}

const centralRows = `SELECT concat_ws('|', id, name, balance, coalesce(note, 'NULL'), pgrouter_shard) FROM users`

// waitEqual waits until the target holds exactly the shards' rows.
func waitEqual(t *testing.T, db string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		want := union(t, db)
		got, err := tryRows(servers[2].DSN(db), centralRows)
		if err == nil && slices.Equal(want, got) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the target has %d rows (%v), the shards %d; first difference: %s", len(got), err, len(want), firstDiff(want, got))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func firstDiff(want, got []string) string {
	for i := range min(len(want), len(got)) {
		if want[i] != got[i] {
			return fmt.Sprintf("shards %q, target %q", want[i], got[i])
		}
	}
	return fmt.Sprintf("%d vs %d rows", len(want), len(got))
}

// load writes to both shards until stop closes: inserts, updates (keys
// too) and deletes, each its own transaction or a few in one.
func load(t *testing.T, db string, stop <-chan struct{}) *sync.WaitGroup {
	var wg sync.WaitGroup
	for i, s := range servers[:2] {
		wg.Go(func() {
			ctx := context.Background()
			conn, err := pgx.Connect(ctx, s.DSN(db))
			if err != nil {
				t.Error(err)
				return
			}
			defer conn.Close(ctx)
			next := int64(1_000_000 + i)
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				var sql string
				switch rand.IntN(5) {
				case 0:
					sql = fmt.Sprintf("INSERT INTO users (id, name, note) VALUES (%d, 'new %d', 'x')", next, n)
					if n%2 == 1 { // many rows in one transaction: one multi-row upsert in the target
						sql = fmt.Sprintf("INSERT INTO users (id, name, note) SELECT g, 'bulk %d', CASE WHEN g %% 3 = 0 THEN NULL ELSE 'b' END FROM generate_series(%d, %d, 2) g", n, next, next+98)
						next += 100
					}
					next += 2
				case 1:
					sql = "DELETE FROM users WHERE id = (SELECT id FROM users ORDER BY random() LIMIT 1)"
				case 2:
					sql = "BEGIN; UPDATE users SET balance = balance + 1 WHERE id IN (SELECT id FROM users ORDER BY random() LIMIT 3); UPDATE users SET note = repeat('n', 50) WHERE id = (SELECT min(id) FROM users); COMMIT"
				case 3:
					sql = fmt.Sprintf("UPDATE users SET id = %d WHERE id = (SELECT id FROM users ORDER BY random() LIMIT 1)", next)
					next += 2
				default:
					sql = "UPDATE users SET name = name || '+' WHERE id = (SELECT id FROM users ORDER BY random() LIMIT 1)"
				}
				if _, err := conn.Exec(ctx, sql); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	return &wg
}

// TestFaninCopyThenStream: the shards' rows are copied into the target,
// then kept current under writes of every kind on both shards; the target
// equals the union of the shards, each row tagged with its shard, and
// refuses writes of its own.
func TestFaninCopyThenStream(t *testing.T) {
	before := goleak.IgnoreCurrent()
	// After fan-in stops (cleanups run last first); the restarted shard
	// server's waiter is pgtest's, not fan-in's.
	t.Cleanup(func() {
		goleak.VerifyNone(t, before, goleak.IgnoreAnyFunction("github.com/pgrouter/pgrouter/internal/pgtest.spawn.func1"))
	})
	cfg := setup(t, "stream", 2000)
	var mu sync.Mutex
	copied := map[string]int64{}
	start(t, cfg, nil, func(p logical.Progress) {
		mu.Lock()
		defer mu.Unlock()
		if p.Done {
			copied[p.Shard+" "+p.Table.String()] = p.Rows
		}
	})
	waitEqual(t, "stream", 30*time.Second)
	mu.Lock()
	if len(copied) != 2 || copied["s0 public.users"] != 2000 || copied["s1 public.users"] != 2000 {
		t.Errorf("copy progress reported done: %v", copied)
	}
	mu.Unlock()

	stop := make(chan struct{})
	wg := load(t, "stream", stop)
	time.Sleep(3 * time.Second)
	close(stop)
	wg.Wait()
	waitEqual(t, "stream", 30*time.Second)

	// A shard that is down delays only its own rows: s0's next change
	// reaches the target while s1 is stopped.
	servers[1].Halt()
	if err := servers[0].Exec(context.Background(), "stream", "INSERT INTO users (id, name) VALUES (7777777776, 'while s1 is down')"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		got, _ := tryRows(servers[2].DSN("stream"), "SELECT name FROM users WHERE id = 7777777776")
		if len(got) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("s0's change did not reach the target while s1 was down")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := servers[1].Restart(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitEqual(t, "stream", 30*time.Second)

	// A TRUNCATE on one shard removes that shard's rows only.
	if err := servers[1].Exec(context.Background(), "stream", "TRUNCATE users"); err != nil {
		t.Fatal(err)
	}
	waitEqual(t, "stream", 30*time.Second)

	ctx := context.Background()
	st, err := Status(ctx, cfg)
	if err != nil || len(st) != 2 || !st[0].Copied || st[0].CopiedRows != 2000 || st[0].LagBytes < 0 {
		t.Fatalf("status: %+v, %v", st, err)
	}
	conn, err := pgx.Connect(ctx, servers[2].DSN("stream"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, "DELETE FROM users")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "25006" || !strings.Contains(pgErr.Message, "central copy") {
		t.Fatalf("a write to the central table: %v", err)
	}
}

// TestFaninAddShard: a shard added to the configuration (a reload) is
// copied in and streamed while the shard already there goes on, neither
// copied again nor stopped.
func TestFaninAddShard(t *testing.T) {
	before := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, before) })
	both := setup(t, "addshard", 500)
	one := faninConfig(t, "addshard", 1) // the same cluster with only s0 at first
	reload := make(chan *config.Config)
	start(t, one, reload, nil)
	ctx := context.Background()
	target := servers[2].DSN("addshard")
	waitRows := func(want int) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			got, err := tryRows(target, "SELECT count(*)::text FROM users")
			if err == nil && len(got) == 1 && got[0] == fmt.Sprint(want) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("the target has %v rows (%v), want %d", got, err, want)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	waitRows(500)
	copiedAt := rowsOf(t, target, "SELECT copied_at::text FROM pgrouter.fanin_state WHERE shard = 's0'")
	reload <- both
	waitEqual(t, "addshard", 30*time.Second)
	if err := servers[0].Exec(ctx, "addshard", "INSERT INTO users (id, name) VALUES (100000, 'after the reload')"); err != nil {
		t.Fatal(err)
	}
	waitEqual(t, "addshard", 30*time.Second)
	if again := rowsOf(t, target, "SELECT copied_at::text FROM pgrouter.fanin_state WHERE shard = 's0'"); !slices.Equal(again, copiedAt) {
		t.Fatalf("s0 was copied again by the reload: %v, then %v", copiedAt, again)
	}
}
