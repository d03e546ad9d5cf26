package seqalloc

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgrouter/pgrouter/internal/pgtest"
	"github.com/pgrouter/pgrouter/internal/pgtest/testenv"
	"github.com/pgrouter/pgrouter/shardmap"
)

// server is one real PostgreSQL for the package; each test makes its own
// databases on it, one per shard.
var server *pgtest.Server

func TestMain(m *testing.M) {
	testenv.Main(m, 1, pgtest.Options{}, func(s []*pgtest.Server) { server = s[0] })
}

// cluster creates n fresh databases named prefix0.. with schema on each and
// returns them as a cluster whose DSNs log in as user.
func cluster(t *testing.T, prefix string, n int, user, schema string) *shardmap.Cluster {
	t.Helper()
	ctx := context.Background()
	cl := &shardmap.Cluster{Name: "main"}
	for i := range n {
		db := fmt.Sprintf("%s%d", prefix, i)
		for _, sql := range []string{"DROP DATABASE IF EXISTS " + db, "CREATE DATABASE " + db} {
			if err := server.Exec(ctx, "postgres", sql); err != nil {
				t.Fatal(err)
			}
		}
		if err := server.Exec(ctx, db, schema); err != nil {
			t.Fatal(err)
		}
		dsn := strings.Replace(server.DSN(db), pgtest.SuperUser+"@", user+"@", 1)
		cl.Shards = append(cl.Shards, &shardmap.Shard{Name: fmt.Sprintf("s%d", i), DSN: dsn, Cluster: "main", Index: i})
	}
	return cl
}

func exec(t *testing.T, sh *shardmap.Shard, sql string) {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), sh.DSN)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(context.Background(), sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

var testOpts = Options{Stride: 8, Schemas: []string{"public"}, MinHeadroom: 1000, LockTimeout: 10 * time.Second, ConnectTimeout: 5 * time.Second}

// TestApplyWhileInserting runs apply while every shard is inserting as fast
// as it can: no value a shard hands out after apply may equal one any shard
// handed out before or after, which holds only if apply locks the sequences
// before it reads the values it restarts above.
func TestApplyWhileInserting(t *testing.T) {
	cl := cluster(t, "busy", 3, pgtest.SuperUser, "CREATE TABLE items (id bigserial PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())")
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	errs := make(chan error, 6)
	for _, sh := range cl.Shards {
		for range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				conn, err := pgx.Connect(context.Background(), sh.DSN)
				if err != nil {
					errs <- err
					return
				}
				defer conn.Close(context.Background())
				for ctx.Err() == nil {
					if _, err := conn.Exec(context.Background(), "INSERT INTO items DEFAULT VALUES"); err != nil {
						errs <- err
						return
					}
				}
			}()
		}
	}
	time.Sleep(300 * time.Millisecond)
	res, err := Apply(context.Background(), cl, testOpts, false)
	time.Sleep(300 * time.Millisecond)
	cancel()
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatal(e)
	}
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Changes) != 3 {
		t.Fatalf("changes %+v", res.Changes)
	}
	restart := map[string]int64{}
	for _, c := range res.Changes {
		restart[c.Shard] = c.Restart
	}
	seen := map[int64]string{}
	var before, after int
	for i, sh := range cl.Shards {
		ids := queryInts(t, sh, "SELECT id FROM items ORDER BY id")
		for _, id := range ids {
			if id < restart[sh.Name] {
				before++
				continue // handed out before apply: shards overlapped then, by design
			}
			after++
			if mod(id-1, 8) != int64(i) {
				t.Fatalf("%s handed out %d after apply, not in its slot %d", sh.Name, id, i)
			}
			seen[id] = sh.Name
		}
	}
	for _, sh := range cl.Shards {
		for _, id := range queryInts(t, sh, "SELECT id FROM items") {
			if owner, dup := seen[id]; dup && owner != sh.Name {
				t.Fatalf("id %d is on %s and, handed out after apply, on %s", id, sh.Name, owner)
			}
		}
	}
	if before == 0 || after == 0 {
		t.Fatalf("%d ids before apply and %d after: the inserts did not span it", before, after)
	}
	t.Logf("%d ids before apply, %d after, restarts %v", before, after, restart)

	// Nothing left to do: a second apply changes nothing, and check agrees.
	res, err = Apply(context.Background(), cl, testOpts, false)
	if err != nil || res.Changed() {
		t.Fatalf("second apply: %+v, %v", res, err)
	}
	if r := Check(context.Background(), []*shardmap.Cluster{cl}, testOpts); r.Violations() != 0 {
		t.Fatalf("check after apply: %+v", r.Rows)
	}
}

func queryInts(t *testing.T, sh *shardmap.Shard, sql string) []int64 {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), sh.DSN)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	rows, _ := conn.Query(context.Background(), sql)
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

// TestEventTrigger: with --event-trigger, sequences that migrations create
// later (CREATE SEQUENCE, serial and identity columns, a column added to a
// table) stride by themselves in their shard's slot; a non-superuser is told
// why the trigger cannot be installed, and nothing changes.
func TestEventTrigger(t *testing.T) {
	ctx := context.Background()
	if err := server.Exec(ctx, "postgres", "DO $$ BEGIN CREATE ROLE app LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$"); err != nil {
		t.Fatal(err)
	}
	plain := cluster(t, "evtuser", 2, "app", "SELECT 1")
	for i := range plain.Shards {
		if err := server.Exec(ctx, fmt.Sprintf("evtuser%d", i), "GRANT CREATE ON DATABASE evtuser"+fmt.Sprint(i)+" TO app"); err != nil {
			t.Fatal(err)
		}
	}
	_, err := Apply(ctx, plain, testOpts, true)
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "user app is not a superuser") || !strings.Contains(err.Error(), "nothing was changed") {
		t.Fatalf("apply --event-trigger as app: %v", err)
	}
	if got := queryInts(t, plain.Shards[0], "SELECT count(*) FROM pg_namespace WHERE nspname = 'pgrouter'"); got[0] != 0 {
		t.Fatal("a refused apply created the pgrouter schema")
	}

	cl := cluster(t, "evt", 2, pgtest.SuperUser, "CREATE TABLE old (id serial PRIMARY KEY)")
	res, err := Apply(ctx, cl, testOpts, true)
	if err != nil || len(res.Triggers) != 2 {
		t.Fatalf("apply --event-trigger: %+v, %v", res, err)
	}
	for _, sh := range cl.Shards {
		exec(t, sh, "INSERT INTO old SELECT FROM generate_series(1, 20)")
	}
	for _, sh := range cl.Shards {
		exec(t, sh, `CREATE TABLE later (id bigserial PRIMARY KEY, n bigint GENERATED BY DEFAULT AS IDENTITY);
			CREATE SEQUENCE free_standing;
			ALTER TABLE old ADD COLUMN extra bigserial;
			CREATE TABLE other_schema_is_not_managed (id int);
			CREATE SCHEMA elsewhere; CREATE SEQUENCE elsewhere.s;
			INSERT INTO later DEFAULT VALUES; INSERT INTO later DEFAULT VALUES;`)
	}
	for i, sh := range cl.Shards {
		ids := queryInts(t, sh, "SELECT id FROM later UNION ALL SELECT n FROM later ORDER BY 1")
		if len(ids) != 4 || ids[0] != int64(i+1) || ids[2] != int64(i+1+8) {
			t.Fatalf("%s: ids %v, want %d and %d twice", sh.Name, ids, i+1, i+9)
		}
		// ADD COLUMN numbered the 20 rows 1..20; new values start above them.
		if got := queryInts(t, sh, "INSERT INTO old DEFAULT VALUES RETURNING extra"); got[0] != int64(24+i+1) {
			t.Fatalf("%s: the added bigserial column went on at %d, want %d (slot %d above the 20 it numbered)", sh.Name, got[0], 24+i+1, i)
		}
		if inc := queryInts(t, sh, "SELECT increment_by FROM pg_sequences WHERE schemaname = 'elsewhere'"); inc[0] != 1 {
			t.Fatalf("a sequence outside the managed schemas was changed: increment %d", inc[0])
		}
	}
	r := Check(ctx, []*shardmap.Cluster{cl}, testOpts)
	if r.Violations() != 0 || len(r.Rows) != 2*5 {
		t.Fatalf("check after migrations: %d violations in %d rows: %+v", r.Violations(), len(r.Rows), r.Rows)
	}
	res, err = Apply(ctx, cl, testOpts, true)
	if err != nil || res.Changed() {
		t.Fatalf("second apply --event-trigger: %+v, %v", res, err)
	}
}

// TestColumnMax: the highest value in a sequence's column is read when an
// index leads with the column (so the check is an index probe), and then
// apply restarts above it; an unindexed column is not scanned.
func TestColumnMax(t *testing.T) {
	cl := cluster(t, "colmax", 1, pgtest.SuperUser, `CREATE TABLE indexed (id bigserial PRIMARY KEY);
		CREATE TABLE plain (id bigserial, v int);
		INSERT INTO indexed VALUES (500); INSERT INTO plain VALUES (700, 1);`)
	sh := Read(context.Background(), cl, testOpts)[0]
	if sh.Err != nil {
		t.Fatal(sh.Err)
	}
	got := map[string]*int64{}
	for _, q := range sh.Sequences {
		got[q.Name] = q.ColumnMax
	}
	if v := got["public.indexed_id_seq"]; v == nil || *v != 500 {
		t.Fatalf("indexed column max %v, want 500", v)
	}
	if v, ok := got["public.plain_id_seq"]; !ok || v != nil {
		t.Fatalf("unindexed column max %v (listed %v), want not read", v, ok)
	}
	res, err := Apply(context.Background(), cl, testOpts, false)
	if err != nil {
		t.Fatal(err)
	}
	restarts := map[string]int64{}
	for _, c := range res.Changes {
		restarts[c.Sequence.Name] = c.Restart
	}
	if restarts["public.indexed_id_seq"] != 505 {
		t.Fatalf("restarts %v: want indexed_id_seq at 505, the first value of slot 0 above 500 with stride 8", restarts)
	}
}

// TestApplyRefusesAndWaitsSafely against a real server: a shard copied from
// another (same slot row) and a sequence held by an open transaction both
// stop apply with a message saying what to do, and nothing changes.
func TestApplyRefusesAndWaitsSafely(t *testing.T) {
	ctx := context.Background()
	cl := cluster(t, "refuse", 2, pgtest.SuperUser, "CREATE TABLE items (id bigserial PRIMARY KEY)")
	if _, err := Apply(ctx, cl, testOpts, false); err != nil {
		t.Fatal(err)
	}
	before := sequenceState(t, cl)

	// s1 becomes a copy of s0's slot row.
	exec(t, cl.Shards[1], "UPDATE pgrouter.seq_slot SET slot = 0, shard = 's0'")
	_, err := Apply(ctx, cl, testOpts, false)
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "s1 (recorded as s0) all record slot 0") {
		t.Fatalf("apply with a copied slot: %v", err)
	}
	if r := Check(ctx, []*shardmap.Cluster{cl}, testOpts); r.Violations() != 2 || r.Rows[0].Verdict != DuplicateSlot {
		t.Fatalf("check with a copied slot: %+v", r.Rows)
	}
	exec(t, cl.Shards[1], "UPDATE pgrouter.seq_slot SET slot = 1, shard = 's1'")

	// A transaction that has called nextval holds the sequence until it ends.
	exec(t, cl.Shards[0], "SELECT setval('items_id_seq', 2)") // next 10, in slot 1: apply must restart it
	holder, err := pgx.Connect(ctx, cl.Shards[0].DSN)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close(ctx)
	tx, err := holder.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "SELECT nextval('items_id_seq')"); err != nil {
		t.Fatal(err)
	}
	quick := testOpts
	quick.LockTimeout = 300 * time.Millisecond
	_, err = Apply(ctx, cl, quick, false)
	if err == nil || !strings.Contains(err.Error(), "stayed in use by a transaction") || !strings.Contains(err.Error(), "nothing was changed") {
		t.Fatalf("apply while a transaction holds the sequence: %v", err)
	}
	_ = tx.Rollback(ctx)
	if _, err := Apply(ctx, cl, quick, false); err != nil {
		t.Fatalf("apply once the transaction ended: %v", err)
	}
	if after := sequenceState(t, cl); after == before {
		t.Fatal("apply did not repair the sequence set back by hand")
	}
}

// sequenceState describes the items sequence on every shard.
func sequenceState(t *testing.T, cl *shardmap.Cluster) string {
	t.Helper()
	var b strings.Builder
	for _, sh := range cl.Shards {
		v := queryInts(t, sh, "SELECT last_value FROM items_id_seq UNION ALL SELECT start_value FROM pg_sequences WHERE sequencename = 'items_id_seq'")
		fmt.Fprintf(&b, "%s %v\n", sh.Name, v)
	}
	return b.String()
}

// TestReferenceTablesSkipped: sequences of reference tables (refsync writes
// the source's values into them) are neither judged nor restarted.
func TestReferenceTablesSkipped(t *testing.T) {
	cl := cluster(t, "refskip", 2, pgtest.SuperUser, `CREATE TABLE own (id bigserial PRIMARY KEY);
		CREATE TABLE countries (id serial PRIMARY KEY, name text);
		INSERT INTO countries (id, name) VALUES (41, 'copied from the source')`)
	opts := testOpts
	opts.Skip = []string{"public.countries"}
	res, err := Apply(context.Background(), cl, opts, false)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range res.Changes {
		if strings.Contains(c.Sequence.Name, "countries") {
			t.Fatalf("apply restarted a reference table's sequence: %+v", c)
		}
	}
	for _, sh := range Read(context.Background(), cl, opts) {
		for _, q := range sh.Sequences {
			if q.Name != "public.own_id_seq" {
				t.Fatalf("shard %s lists %s; want only public.own_id_seq", sh.Name, q.Name)
			}
		}
	}
	if rep := Check(context.Background(), []*shardmap.Cluster{cl}, opts); rep.Violations() != 0 {
		t.Fatalf("check with the reference table skipped: %+v", rep.Rows)
	}
}
