package refsync

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/pgrouter/pgrouter/config"
	"github.com/pgrouter/pgrouter/internal/pgtest"
	"github.com/pgrouter/pgrouter/internal/pgtest/testenv"
	"github.com/pgrouter/pgrouter/logical"
)

// cluster is a source database and shard databases for one test.
type cluster struct {
	src    string // source DSN
	shards []string
	slot   string
}

// newCluster creates a source database on the shared source server and n
// shard databases on server.
func newCluster(t *testing.T, name string, server *pgtest.Server, n int, sourceSQL string) *cluster {
	t.Helper()
	ctx := context.Background()
	if err := source.Exec(ctx, "postgres", "CREATE DATABASE "+name); err != nil {
		t.Fatal(err)
	}
	if err := source.Exec(ctx, name, sourceSQL); err != nil {
		t.Fatal(err)
	}
	c := &cluster{src: source.DSN(name), slot: name}
	for i := range n {
		c.shards = append(c.shards, c.addShard(t, server, fmt.Sprintf("%s_s%d", name, i)))
	}
	return c
}

func (c *cluster) addShard(t *testing.T, server *pgtest.Server, db string) string {
	t.Helper()
	if err := server.Exec(context.Background(), "postgres", "CREATE DATABASE "+db); err != nil {
		t.Fatal(err)
	}
	return server.DSN(db)
}

// config builds a router.yaml for the cluster's shards and tables.
func (c *cluster) config(t *testing.T, tables ...string) *config.Config {
	t.Helper()
	var sb strings.Builder
	fmt.Fprintf(&sb, "auth: {type: trust}\nclusters:\n  main:\n    partitions: %d\n    shards:\n", 16)
	per := 16 / len(c.shards)
	for i, dsn := range c.shards {
		last := (i+1)*per - 1
		if i == len(c.shards)-1 {
			last = 15
		}
		fmt.Fprintf(&sb, "      - {name: s%d, dsn: %q, partitions: \"%d-%d\"}\n", i, dsn, i*per, last)
	}
	fmt.Fprintf(&sb, "reference:\n  source: %q\n  slot: %s\n  publication: %s\n  tables: [%s]\n", c.src, c.slot, c.slot, strings.Join(tables, ", "))
	cfg, err := config.Parse("router.yaml", []byte(sb.String()))
	if err != nil {
		t.Fatalf("%v\n%s", err, sb.String())
	}
	return cfg
}

// refsyncRun is Run in a goroutine, stopped when the test ends.
type refsyncRun struct {
	reload chan *config.Config
	cancel context.CancelFunc
	done   chan error
}

func startRun(t *testing.T, cfg *config.Config, adjust ...func(*Options)) *refsyncRun {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &refsyncRun{reload: make(chan *config.Config), cancel: cancel, done: make(chan error, 1)}
	opts := Options{Log: zaptest.NewLogger(t), Reload: r.reload, StatusInterval: 200 * time.Millisecond,
		RetryMin: 100 * time.Millisecond, RetryMax: time.Second}
	for _, f := range adjust {
		f(&opts)
	}
	go func() { r.done <- Run(ctx, cfg, opts) }()
	t.Cleanup(r.stop)
	return r
}

func (r *refsyncRun) stop() {
	r.cancel()
	if err := <-r.done; err != nil && !errors.Is(err, context.Canceled) {
		panic(fmt.Sprintf("refsync.Run: %v", err))
	}
	r.done <- nil // stop is idempotent
}

// waitEqual waits until every shard's tables equal the source's.
func waitEqual(t *testing.T, c *cluster, timeout time.Duration, tables ...string) {
	t.Helper()
	testenv.WaitEqual(t, c.src, c.shards, timeout, tables...)
}

func execOn(t *testing.T, dsn, sql string) error {
	t.Helper()
	conn, err := pgconn.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(context.Background(), sql).ReadAll()
	return err
}

func mustExec(t *testing.T, dsn, sql string) {
	t.Helper()
	if err := execOn(t, dsn, sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// TestChangesReachEveryShard: the initial copy creates the tables, then
// inserts, updates (of the key, with an unchanged TOAST value), deletes and
// a truncate arrive on every shard, which refuse writes from anyone else.
func TestChangesReachEveryShard(t *testing.T) {
	shards := testenv.Servers(t, 1, pgtest.Options{})[0]
	c := newCluster(t, "changes", shards, 2, `
		CREATE TYPE mood AS ENUM ('sad', 'happy');
		CREATE TABLE countries (code text PRIMARY KEY, name text NOT NULL, notes text, mood mood, born date, up int GENERATED ALWAYS AS (length(name)) STORED);
		ALTER TABLE countries ALTER notes SET STORAGE EXTERNAL;
		INSERT INTO countries (code, name, born) SELECT 'c' || i, 'country ' || i, date '2000-01-01' + i FROM generate_series(1, 1000) i;
		CREATE TABLE plans (a int, b int, price numeric, PRIMARY KEY (a, b));`)
	for _, dsn := range c.shards { // user types must exist on shards; tables need not
		mustExec(t, dsn, "CREATE TYPE mood AS ENUM ('sad', 'happy')")
	}
	var mu sync.Mutex
	done := map[string]int64{} // shard table -> rows reported when its copy ended
	startRun(t, c.config(t, "countries", "public.plans"), func(o *Options) {
		o.Progress = func(p Progress) {
			mu.Lock()
			defer mu.Unlock()
			if p.Done {
				done[p.Shard+" "+p.Table.String()] = p.Rows
			}
		}
	})
	waitEqual(t, c, 30*time.Second, "countries", "plans")
	mu.Lock()
	want := map[string]int64{"s0 public.countries": 1000, "s0 public.plans": 0, "s1 public.countries": 1000, "s1 public.plans": 0}
	if fmt.Sprint(done) != fmt.Sprint(want) {
		t.Errorf("copy progress reported %v, want %v", done, want)
	}
	mu.Unlock()

	big := strings.Repeat("x", 10000) // stored out of line: an update of other columns sends it as unchanged
	mustExec(t, c.src, `
		INSERT INTO plans SELECT i, i % 3, i * 1.5 FROM generate_series(1, 100) i;
		UPDATE countries SET notes = '`+big+`', mood = 'happy' WHERE code = 'c1';
		UPDATE countries SET name = 'renamed' WHERE code = 'c1';
		UPDATE countries SET code = 'k2' WHERE code = 'c2';
		DELETE FROM countries WHERE code IN ('c3', 'c4');
		UPDATE plans SET b = 7 WHERE a = 5;
		INSERT INTO countries (code, name, notes) VALUES ('q"''\n', 'quotes	and tabs', NULL);`)
	waitEqual(t, c, 30*time.Second, "countries", "plans")
	mustExec(t, c.src, `BEGIN; TRUNCATE plans; INSERT INTO plans VALUES (1, 1, 1); COMMIT;`)
	waitEqual(t, c, 30*time.Second, "countries", "plans")

	err := execOn(t, c.shards[0], "UPDATE countries SET name = 'local' WHERE code = 'c5'")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "25006" || !strings.Contains(pgErr.Hint, "reference source") {
		t.Fatalf("a local write on a shard: %v, want 25006 telling where to write", err)
	}
	if err := execOn(t, c.shards[1], "TRUNCATE plans"); err == nil {
		t.Fatal("a local TRUNCATE on a shard succeeded")
	}
}

// TestShardsComeAndGo: a shard that is down catches up when it returns, so
// does every shard after the source restarts, a
// shard added by a reload gets its copy while the others keep streaming, a
// table added is copied and joins the stream, and the status shows every
// shard at the source's position.
func TestShardsComeAndGo(t *testing.T) {
	ctx := context.Background()
	servers := testenv.Servers(t, 2, pgtest.Options{})
	c := newCluster(t, "comego", servers[0], 2, `
		CREATE TABLE countries (code text PRIMARY KEY, name text);
		INSERT INTO countries SELECT 'c' || i, 'country ' || i FROM generate_series(1, 500) i;
		CREATE TABLE currencies (code text PRIMARY KEY, rate numeric);
		INSERT INTO currencies VALUES ('EUR', 1), ('USD', 1.1);`)
	c.shards = append(c.shards, c.addShard(t, servers[1], "comego_b"))
	run := startRun(t, c.config(t, "countries"))
	waitEqual(t, c, 30*time.Second, "countries")

	servers[1].Halt()
	for i := range 50 {
		mustExec(t, c.src, fmt.Sprintf("UPDATE countries SET name = 'down %d' WHERE code = 'c%d'", i, i+1))
	}
	testenv.WaitEqual(t, c.src, c.shards[:2], 30*time.Second, "countries")
	if err := servers[1].Restart(ctx); err != nil {
		t.Fatal(err)
	}
	waitEqual(t, c, 60*time.Second, "countries")

	// A restart of the source ends the stream; refsync reconnects.
	if err := source.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	mustExec(t, c.src, "UPDATE countries SET name = 'after the source restarted' WHERE code = 'c7'")
	waitEqual(t, c, 60*time.Second, "countries")

	c.shards = append(c.shards, c.addShard(t, servers[0], "comego_new"))
	run.reload <- c.config(t, "countries")
	mustExec(t, c.src, "INSERT INTO countries VALUES ('new', 'after the reload')")
	waitEqual(t, c, 30*time.Second, "countries")

	run.reload <- c.config(t, "countries", "currencies")
	waitEqual(t, c, 30*time.Second, "countries", "currencies")
	mustExec(t, c.src, "UPDATE currencies SET rate = 2 WHERE code = 'USD'; DELETE FROM countries WHERE code = 'new'")
	waitEqual(t, c, 30*time.Second, "countries", "currencies")

	// Every shard records the source's position once it is idle.
	cfg := c.config(t, "countries", "currencies")
	at := ReadStatus(ctx, cfg).SourceLSN
	if at == 0 {
		t.Fatal("no source position")
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		st := ReadStatus(ctx, cfg)
		behind := ""
		if st.SourceErr != nil {
			t.Fatal(st.SourceErr)
		}
		if st.Slot == nil || !st.Slot.Active {
			behind = "slot not active"
		}
		for _, s := range st.Shards {
			if s.Err != nil || !s.Copied || s.Tables != 2 || s.LSN < at {
				behind = fmt.Sprintf("%+v", s)
			}
		}
		if behind == "" && st.Slot.Confirmed >= at {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not at the source's position %s: %s (slot %+v)", at, behind, st.Slot)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestApplierPreparedCache: when the statement cache fills, it is emptied
// between batches, never while one is built (a name in the batch must keep
// meaning its statement).
func TestApplierPreparedCache(t *testing.T) {
	ctx := context.Background()
	if err := source.Exec(ctx, "postgres", "CREATE DATABASE prepcache"); err != nil {
		t.Fatal(err)
	}
	var ddl strings.Builder
	var tables []config.TableName
	rels := map[string]*logical.Relation{}
	for i := range 6 {
		name := fmt.Sprintf("t%d", i)
		fmt.Fprintf(&ddl, "CREATE TABLE %s (id int PRIMARY KEY, v text);", name)
		tn := config.TableName{Schema: "public", Name: name}
		tables = append(tables, tn)
		rels[name] = &logical.Relation{Table: tn, Columns: []string{"id", "v"}, KeyCols: []int{0}}
	}
	if err := source.Exec(ctx, "prepcache", ddl.String()); err != nil {
		t.Fatal(err)
	}
	conn, err := connect(ctx, source.DSN("prepcache"), map[string]string{"pgrouter.refsync": "on"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := setupShard(ctx, conn, "cache", tables); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "INSERT INTO pgrouter.refsync_state (slot, lsn) VALUES ('cache', '0/10')"); err != nil {
		t.Fatal(err)
	}
	a := &applier{conn: conn, slot: "cache", log: zaptest.NewLogger(t), lsn: 0x10, prepared: map[string]string{}, maxPrep: 2,
		tables: map[tableKey]pglogrepl.LSN{}}
	for _, tn := range tables {
		a.tables[tableKey(tn)] = 0x10
	}
	row := func(vals ...string) []logical.Value {
		var out []logical.Value
		for _, v := range vals {
			out = append(out, logical.Value{Kind: 't', Text: []byte(v)})
		}
		return out
	}
	lsn := pglogrepl.LSN(0x20)
	for round := range 3 {
		tx := &logical.Txn{CommitLSN: lsn, EndLSN: lsn + 8, Time: time.Now()}
		for i := range 6 {
			rel := rels[fmt.Sprintf("t%d", i)]
			tx.Changes = append(tx.Changes, logical.Change{Kind: 'I', Rel: rel, Row: row(fmt.Sprint(round), fmt.Sprintf("%s round %d", rel.Table.Name, round))})
			if round > 0 {
				tx.Changes = append(tx.Changes, logical.Change{Kind: 'D', Rel: rel, Old: row(fmt.Sprint(round-1), "")})
			}
		}
		if err := a.apply(ctx, []*logical.Txn{tx}); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		lsn += 0x10
		// The cache (limit 2) is emptied before each batch that finds it
		// full: the server holds only this batch's statements, never more.
		var onServer int
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'refsync\\_%'").Scan(&onServer); err != nil {
			t.Fatal(err)
		}
		if inBatch := 6 + min(round, 1)*6; onServer != len(a.prepared) || onServer != inBatch {
			t.Fatalf("round %d: %d refsync statements on the server, %d cached, want %d (this batch's)", round, onServer, len(a.prepared), inBatch)
		}
	}
	if a.named != 6+12+12 { // rounds 1 and 2 prepared everything again after the cache was emptied
		t.Fatalf("%d statements prepared in all, want 30", a.named)
	}
	for i := range 6 {
		var got string
		if err := conn.QueryRow(ctx, fmt.Sprintf("SELECT string_agg(id || ':' || v, ',') FROM t%d", i)).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf("2:t%d round 2", i); got != want {
			t.Errorf("t%d holds %q, want %q", i, got, want)
		}
	}
}

// TestFrozenShard: a shard frozen with SIGSTOP (backends included) holds
// the others up for at most QueueWait; thawed, it catches up.
func TestFrozenShard(t *testing.T) {
	servers := testenv.Servers(t, 2, pgtest.Options{})
	c := newCluster(t, "frozen", servers[0], 2, `CREATE TABLE plans (id int PRIMARY KEY, v int);
		INSERT INTO plans SELECT i, 0 FROM generate_series(1, 100) i;`)
	c.shards = append(c.shards, c.addShard(t, servers[1], "frozen_b"))
	startRun(t, c.config(t, "plans"), func(o *Options) { o.QueueWait, o.ApplyTimeout = time.Second, 3*time.Second })
	waitEqual(t, c, 30*time.Second, "plans")

	thaw := testenv.Freeze(t, servers[1])
	// More transactions than a shard's queue holds, one by one.
	conn, err := pgconn.Connect(context.Background(), c.src)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 1500 {
		if _, err := conn.Exec(context.Background(), fmt.Sprintf("UPDATE plans SET v = %d WHERE id = %d", i, i%100+1)).ReadAll(); err != nil {
			t.Fatal(err)
		}
	}
	conn.Close(context.Background())
	testenv.WaitEqual(t, c.src, c.shards[:2], 30*time.Second, "plans")
	thaw()
	waitEqual(t, c, 60*time.Second, "plans")
}

// TestOneSessionPerShard: the same database listed twice (under two DSN
// spellings) is applied to once; the second worker says why it waits.
func TestOneSessionPerShard(t *testing.T) {
	servers := testenv.Servers(t, 1, pgtest.Options{})
	c := newCluster(t, "twice", servers[0], 1, `CREATE TABLE plans (id int PRIMARY KEY, v int);
		INSERT INTO plans SELECT i, 0 FROM generate_series(1, 10) i;`)
	c.shards = append(c.shards, fmt.Sprintf("host=%s port=%d user=%s dbname=twice_s0 sslmode=disable", servers[0].Host, servers[0].Port, pgtest.SuperUser))
	core, logs := observer.New(zap.InfoLevel)
	startRun(t, c.config(t, "plans"), func(o *Options) { o.Log = zap.New(core) })
	waitEqual(t, c, 30*time.Second, "plans")
	for i := range 200 { // inserts too: applied twice, they would hit a duplicate key (updates would not show)
		mustExec(t, c.src, fmt.Sprintf("UPDATE plans SET v = v + 1 WHERE id = %d; INSERT INTO plans VALUES (%d, %d)", i%10+1, 100+i, i))
	}
	waitEqual(t, c, 30*time.Second, "plans")
	for _, e := range logs.All() {
		if strings.Contains(fmt.Sprint(e.Message, e.ContextMap()), "duplicate key") {
			t.Fatalf("a change was applied twice: %s %v", e.Message, e.ContextMap())
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for logs.FilterMessageSnippet("not being kept current").FilterFieldKey("error").Len() == 0 ||
		!strings.Contains(fmt.Sprint(logs.FilterMessageSnippet("not being kept current").All()[0].ContextMap()["error"]), "another session holds refsync's lock") {
		if time.Now().After(deadline) {
			t.Fatalf("the second worker on the same database did not say why it waits: %v", logs.All())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestPublicationMadeByHand: a publication that publishes only inserts is
// corrected; one that filters rows is refused with what to do.
func TestPublicationMadeByHand(t *testing.T) {
	servers := testenv.Servers(t, 1, pgtest.Options{})
	c := newCluster(t, "byhand", servers[0], 1, `CREATE TABLE plans (id int PRIMARY KEY, v int);
		INSERT INTO plans SELECT i, 0 FROM generate_series(1, 10) i;
		CREATE PUBLICATION byhand FOR TABLE plans WITH (publish = 'insert');
		CREATE PUBLICATION filtered FOR TABLE plans WHERE (id > 5);`)
	startRun(t, c.config(t, "plans"))
	waitEqual(t, c, 30*time.Second, "plans")
	mustExec(t, c.src, "UPDATE plans SET v = 7 WHERE id = 3; DELETE FROM plans WHERE id = 4")
	waitEqual(t, c, 30*time.Second, "plans")

	cfg := c.config(t, "plans")
	cfg.Reference.Publication = "filtered"
	r := &run{opts: Options{}, log: zaptest.NewLogger(t), cfg: cfg, ref: cfg.Reference}
	_, _, err := r.prepareSource(context.Background())
	if err == nil || !strings.Contains(err.Error(), "publishes only some rows or columns of plans") {
		t.Fatalf("a filtering publication: %v", err)
	}
}

// TestSlotMovedPastShards: a slot advanced by hand past the shards (the
// changes in between are gone from the source) makes refsync copy them
// again instead of losing those changes.
func TestSlotMovedPastShards(t *testing.T) {
	servers := testenv.Servers(t, 1, pgtest.Options{})
	c := newCluster(t, "moved", servers[0], 2, `CREATE TABLE plans (id int PRIMARY KEY, v int);
		INSERT INTO plans SELECT i, 0 FROM generate_series(1, 10) i;`)
	run := startRun(t, c.config(t, "plans"))
	waitEqual(t, c, 30*time.Second, "plans")
	run.stop()
	mustExec(t, c.src, "UPDATE plans SET v = 1 WHERE id = 1")
	mustExec(t, c.src, "SELECT pg_replication_slot_advance('moved', pg_current_wal_lsn())")
	startRun(t, c.config(t, "plans"))
	waitEqual(t, c, 30*time.Second, "plans")
}
