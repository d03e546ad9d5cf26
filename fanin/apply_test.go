package fanin

import (
	"strings"
	"testing"

	"github.com/pgrouter/pgrouter/config"
	"github.com/pgrouter/pgrouter/logical"
	lt "github.com/pgrouter/pgrouter/logical/logicaltest"
)

// TestStatements: consecutive inserts of whole rows into one table become
// one multi-row upsert; an insert leaving a value unchanged, updates and
// deletes stay one statement each, found by key and shard.
func TestStatements(t *testing.T) {
	users := config.TableName{Schema: "public", Name: "users"}
	d := logical.NewDecoder([]config.TableName{users}, map[config.TableName][]string{users: {"id"}})
	msgs := [][]byte{
		lt.Relation(1, "public", "users", "id", "name"),
		lt.Begin(0x100),
		lt.Row('I', 1, []byte{'N'}, lt.Tuple("1", "a")),
		lt.Row('I', 1, []byte{'N'}, lt.Tuple("2", "\x00")),
		lt.Row('I', 1, []byte{'N'}, lt.Tuple("3", "c")),
		lt.Row('U', 1, []byte{'N'}, lt.Tuple("3", "C")),
		lt.Row('I', 1, []byte{'N'}, lt.Tuple("4", "d")),
		lt.Row('D', 1, []byte{'K'}, lt.Tuple("1", "\x00")),
	}
	for _, m := range msgs {
		if _, err := d.Add(m); err != nil {
			t.Fatal(err)
		}
	}
	txn, err := d.Add(lt.Commit(0x100, 0x180))
	if err != nil || txn == nil {
		t.Fatal(txn, err)
	}
	got := statements("s1", txn, nil)
	want := []string{
		`INSERT INTO "public"."users" ("id", "name", pgrouter_shard) VALUES ($1, $2, $3), ($4, $5, $6), ($7, $8, $9) ON CONFLICT ("id") DO UPDATE SET "id" = excluded."id", "name" = excluded."name", pgrouter_shard = excluded.pgrouter_shard`,
		`UPDATE "public"."users" SET "id" = $1, "name" = $2 WHERE "id" = $3 AND pgrouter_shard = $4`,
		`INSERT INTO "public"."users" ("id", "name", pgrouter_shard) VALUES ($1, $2, $3) ON CONFLICT ("id") DO UPDATE SET "id" = excluded."id", "name" = excluded."name", pgrouter_shard = excluded.pgrouter_shard`,
		`DELETE FROM "public"."users" WHERE "id" = $1 AND pgrouter_shard = $2`,
	}
	if len(got) != len(want) {
		t.Fatalf("%d statements, want %d: %v", len(got), len(want), got)
	}
	for i := range want {
		if got[i].sql != want[i] {
			t.Errorf("statement %d:\n got %s\nwant %s", i, got[i].sql, want[i])
		}
	}
	var params []string
	for _, p := range got[0].params {
		if p == nil {
			params = append(params, "NULL")
		} else {
			params = append(params, string(p))
		}
	}
	if strings.Join(params, "|") != "1|a|s1|2|NULL|s1|3|c|s1" {
		t.Errorf("multi-row insert parameters %v", params)
	}
}
