package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgrouter/pgrouter/internal/pgtest"
	"github.com/pgrouter/pgrouter/internal/pgtest/testenv"
)

const seqSchema = `CREATE TABLE items (id bigserial PRIMARY KEY, k text NOT NULL);
CREATE FUNCTION add_item(i_key text) RETURNS bigint LANGUAGE sql AS $$ INSERT INTO items (k) VALUES (i_key) RETURNING id $$;`

// seqConfig is a router.yaml over the given shard DSNs, which split 16
// partitions as listed.
func seqConfig(addr, metrics string, dsns []string, parts []string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `listen: %s
metrics_listen: %s
auth: {type: trust}
admin_users: [admin]
log: {format: json}
pool: {size: 8}
sequences: {stride: 64, check_interval: 300ms}
functions:
  - {name: add_item, key: i_key}
clusters:
  main:
    partitions: 16
    shards:
`, addr, metrics)
	for i, dsn := range dsns {
		fmt.Fprintf(&b, "      - {name: s%d, dsn: %q, partitions: %q}\n", i, dsn, parts[i])
	}
	return b.String()
}

// TestStrideSequencesEndToEnd is the whole life of a cluster's sequences,
// with real processes: apply on 4 shards, 20,000 concurrent routed inserts
// with distinct ids, each shard in its own slot; a second apply changes
// nothing; a fifth shard joins (apply, RELOAD) and 5,000 more inserts stay
// distinct; a sequence reset by hand is caught by seq check (exit 1) and by
// the running router (SHOW SHARDS, SHOW SEQUENCES, an error in its log), and
// apply repairs it.
func TestStrideSequencesEndToEnd(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	server := testenv.Servers(t, 1, pgtest.Options{})[0]
	var dsns []string
	for i := range 5 {
		db := fmt.Sprintf("seq%d", i)
		if err := server.Exec(ctx, "postgres", "CREATE DATABASE "+db); err != nil {
			t.Fatal(err)
		}
		if err := server.Exec(ctx, db, seqSchema); err != nil {
			t.Fatal(err)
		}
		dsns = append(dsns, server.DSN(db))
	}
	addr, metricsAddr := freeAddr(t), freeAddr(t)
	path := filepath.Join(t.TempDir(), "router.yaml")
	writeFile(t, path, seqConfig(addr, metricsAddr, dsns[:4], []string{"0-3", "4-7", "8-11", "12-15"}))

	if out, code := pgrouter(ctx, t, "seq", "check", "-c", path); code != 1 || !strings.Contains(out, "NO SLOT") {
		t.Fatalf("seq check before apply: exit %d\n%s", code, out)
	}
	if out, code := pgrouter(ctx, t, "seq", "apply", "-c", path); code != 0 || !strings.Contains(out, "main/s3: slot 3 recorded") {
		t.Fatalf("seq apply: exit %d\n%s", code, out)
	}
	router, logs, _ := startRouter(ctx, t, path, addr)
	defer func() { _ = router.Process.Kill() }()

	began := time.Now()
	ids := insertItems(ctx, t, addr, "a", 20000)
	t.Logf("20,000 routed inserts from 16 clients in %v", time.Since(began).Round(time.Millisecond))
	if n := distinct(ids); n != 20000 {
		t.Fatalf("20,000 routed inserts returned %d distinct ids", n)
	}
	checkSlots(ctx, t, dsns[:4], 64, 20000)

	// A second apply changes nothing.
	before := sequenceStates(ctx, t, dsns[:4])
	if out, code := pgrouter(ctx, t, "seq", "apply", "-c", path); code != 0 || !strings.Contains(out, "main: nothing to change") {
		t.Fatalf("second seq apply: exit %d\n%s", code, out)
	}
	if after := sequenceStates(ctx, t, dsns[:4]); after != before {
		t.Fatalf("the second apply changed sequences:\n%s\n%s", before, after)
	}

	// A fifth shard takes partitions 14-15 and the free slot 4.
	maxBefore := maxID(ctx, t, dsns[:4])
	writeFile(t, path, seqConfig(addr, metricsAddr, dsns, []string{"0-3", "4-7", "8-11", "12-13", "14-15"}))
	if out, code := pgrouter(ctx, t, "seq", "apply", "-c", path); code != 0 || !strings.Contains(out, "main/s4: slot 4 recorded") {
		t.Fatalf("seq apply with a fifth shard: exit %d\n%s", code, out)
	}
	adm, err := pgx.Connect(ctx, fmt.Sprintf("postgres://admin@%s/pgrouter?sslmode=disable&default_query_exec_mode=simple_protocol", addr))
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close(ctx)
	if _, err := adm.Exec(ctx, "RELOAD"); err != nil {
		t.Fatal(err)
	}
	more := insertItems(ctx, t, addr, "b", 5000)
	if n := distinct(append(ids, more...)); n != 25000 {
		t.Fatalf("25,000 routed inserts returned %d distinct ids", n)
	}
	onNew := checkSlots(ctx, t, dsns, 64, 25000)
	if onNew[4] == 0 {
		t.Fatal("no insert reached the fifth shard")
	}
	if minNew := minID(ctx, t, dsns[4]); minNew <= maxBefore {
		t.Fatalf("the fifth shard started at %d, not above %d, the highest id before it joined", minNew, maxBefore)
	}

	// A sequence reset by hand on s2: it would hand out ids s2 already has.
	conn, err := pgx.Connect(ctx, dsns[2])
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "ALTER SEQUENCE items_id_seq RESTART"); err != nil {
		t.Fatal(err)
	}
	out, code := pgrouter(ctx, t, "seq", "check", "-c", path)
	if code != 1 || !strings.Contains(out, "main/s2 public.items_id_seq: next value") || !strings.Contains(out, "RESET") {
		t.Fatalf("seq check after a hand reset: exit %d\n%s", code, out)
	}
	t.Logf("seq check after the reset:\n%s", out)
	waitSeqOK(ctx, t, adm, map[string]any{"s0": true, "s1": true, "s2": false, "s3": true, "s4": true})
	verdicts := map[string]any{}
	for _, r := range adminMaps(ctx, t, adm, "SHOW SEQUENCES") {
		verdicts[r["shard"].(string)] = r["verdict"]
	}
	if verdicts["s2"] != "reset" || verdicts["s1"] != "ok" {
		t.Fatalf("SHOW SEQUENCES verdicts %v", verdicts)
	}
	// /metrics says the same: pgrouter_shard_sequences_ok is 0 for s2 only.
	for _, m := range scrape(t, metricsAddr)["pgrouter_shard_sequences_ok"].GetMetric() {
		shard, want := "", 1.0
		for _, l := range m.GetLabel() {
			if l.GetName() == "shard" {
				shard = l.GetValue()
			}
		}
		if shard == "s2" {
			want = 0
		}
		if m.GetGauge().GetValue() != want {
			t.Fatalf("pgrouter_shard_sequences_ok{shard=%q} = %v, want %v", shard, m.GetGauge().GetValue(), want)
		}
	}
	if n := len(scrape(t, metricsAddr)["pgrouter_shard_sequences_ok"].GetMetric()); n != 5 {
		t.Fatalf("pgrouter_shard_sequences_ok has %d shards, want 5", n)
	}
	if !strings.Contains(logs.String(), `"level":"error"`) || !strings.Contains(logs.String(), `"verdict":"reset"`) {
		t.Fatalf("the router did not log the reset sequence as an error:\n%s", logs.String())
	}

	if out, code := pgrouter(ctx, t, "seq", "apply", "-c", path); code != 0 || !strings.Contains(out, "main/s2: public.items_id_seq increment 64, next value") {
		t.Fatalf("seq apply after the reset: exit %d\n%s", code, out)
	}
	if out, code := pgrouter(ctx, t, "seq", "check", "-c", path); code != 0 {
		t.Fatalf("seq check after the repair: exit %d\n%s", code, out)
	}
	waitSeqOK(ctx, t, adm, map[string]any{"s0": true, "s1": true, "s2": true, "s3": true, "s4": true})

	// Without a sequences section the router stops judging: seq_ok is NULL.
	all := seqConfig(addr, metricsAddr, dsns, []string{"0-3", "4-7", "8-11", "12-13", "14-15"})
	writeFile(t, path, strings.Replace(all, "sequences: {stride: 64, check_interval: 300ms}\n", "", 1))
	if _, err := adm.Exec(ctx, "RELOAD"); err != nil {
		t.Fatal(err)
	}
	waitSeqOK(ctx, t, adm, map[string]any{"s0": nil, "s1": nil, "s2": nil, "s3": nil, "s4": nil})
}

func writeFile(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

// insertItems makes n routed add_item calls through pgrouter from 16
// concurrent clients, keys prefix0.., and returns the ids they got.
func insertItems(ctx context.Context, t *testing.T, addr, prefix string, n int) []int64 {
	t.Helper()
	const clients = 16
	ids := make([]int64, n)
	errs := make(chan error, clients)
	var wg sync.WaitGroup
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := pgx.Connect(ctx, fmt.Sprintf("postgres://postgres@%s/main?sslmode=disable", addr))
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close(ctx)
			for i := c; i < n; i += clients {
				if err := conn.QueryRow(ctx, "SELECT add_item($1)", fmt.Sprintf("%s%d", prefix, i)).Scan(&ids[i]); err != nil {
					errs <- fmt.Errorf("insert %d: %w", i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	return ids
}

func distinct(ids []int64) int {
	seen := make(map[int64]bool, len(ids))
	for _, id := range ids {
		seen[id] = true
	}
	return len(seen)
}

// checkSlots reads every shard's ids and slot: each id must be slot+1
// modulo the stride, and the shards must hold total rows between them. It
// returns the rows per shard.
func checkSlots(ctx context.Context, t *testing.T, dsns []string, stride int64, total int) []int {
	t.Helper()
	counts := make([]int, len(dsns))
	sum := 0
	for i, dsn := range dsns {
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		var slot int64
		if err := conn.QueryRow(ctx, "SELECT slot FROM pgrouter.seq_slot").Scan(&slot); err != nil {
			t.Fatal(err)
		}
		rows, _ := conn.Query(ctx, "SELECT id FROM items")
		ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		conn.Close(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, id := range ids {
			if (id-1)%stride != slot {
				t.Fatalf("shard s%d (slot %d) holds id %d, which is not %d modulo %d", i, slot, id, slot+1, stride)
			}
		}
		counts[i] = len(ids)
		sum += len(ids)
	}
	if sum != total {
		t.Fatalf("the shards hold %d rows (%v), want %d", sum, counts, total)
	}
	for i, c := range counts[:len(counts)-1] {
		if c == 0 {
			t.Fatalf("shard s%d got no rows: %v", i, counts)
		}
	}
	return counts
}

// sequenceStates describes every shard's items sequence as pg_sequences has it.
func sequenceStates(ctx context.Context, t *testing.T, dsns []string) string {
	t.Helper()
	var b strings.Builder
	for _, dsn := range dsns {
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		var state string
		err = conn.QueryRow(ctx, "SELECT format('%s %s %s %s %s', start_value, increment_by, min_value, max_value, last_value) FROM pg_sequences WHERE sequencename = 'items_id_seq'").Scan(&state)
		conn.Close(ctx)
		if err != nil {
			t.Fatal(err)
		}
		b.WriteString(state + "\n")
	}
	return b.String()
}

func maxID(ctx context.Context, t *testing.T, dsns []string) int64 {
	t.Helper()
	var hi int64
	for _, dsn := range dsns {
		hi = max(hi, minOrMax(ctx, t, dsn, "max"))
	}
	return hi
}

func minID(ctx context.Context, t *testing.T, dsn string) int64 { return minOrMax(ctx, t, dsn, "min") }

func minOrMax(ctx context.Context, t *testing.T, dsn, fn string) int64 {
	t.Helper()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var v int64
	if err := conn.QueryRow(ctx, "SELECT coalesce("+fn+"(id), 0) FROM items").Scan(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

// waitSeqOK waits until SHOW SHARDS reports seq_ok as wanted for every shard.
func waitSeqOK(ctx context.Context, t *testing.T, adm *pgx.Conn, want map[string]any) {
	t.Helper()
	waitShards(ctx, t, adm, fmt.Sprintf("seq_ok %v", want), func(rows []map[string]any) bool {
		match := len(rows) == len(want)
		for _, r := range rows {
			if w, ok := want[r["shard"].(string)]; !ok || r["seq_ok"] != w {
				match = false
			}
		}
		return match
	})
}

// waitShards waits (20 s at most) until SHOW SHARDS returns rows that ok
// accepts.
func waitShards(ctx context.Context, t *testing.T, adm *pgx.Conn, what string, ok func([]map[string]any) bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		rows := adminMaps(ctx, t, adm, "SHOW SHARDS")
		if ok(rows) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("SHOW SHARDS never showed %s: %v", what, rows)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// adminMaps runs an admin console command and returns its rows by column name.
func adminMaps(ctx context.Context, t *testing.T, adm *pgx.Conn, command string) []map[string]any {
	t.Helper()
	rows, _ := adm.Query(ctx, command)
	out, err := pgx.CollectRows(rows, pgx.RowToMap)
	if err != nil {
		t.Fatalf("%s: %v", command, err)
	}
	return out
}
