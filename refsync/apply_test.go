package refsync

import (
	"strings"
	"testing"

	"github.com/jackc/pglogrepl"

	"github.com/pgrouter/pgrouter/config"
	"github.com/pgrouter/pgrouter/logical"
	lt "github.com/pgrouter/pgrouter/logical/logicaltest"
)

var countries = config.TableName{Schema: "public", Name: "countries"}

// TestStatements: a transaction of every change kind becomes the
// statements a shard runs, rows found by key; changes older than a table's
// copy are skipped.
func TestStatements(t *testing.T) {
	d := logical.NewDecoder([]config.TableName{countries}, map[config.TableName][]string{countries: {"code"}})
	for _, m := range lt.Countries() {
		if _, err := d.Add(m); err != nil {
			t.Fatal(err)
		}
	}
	txn, err := d.Add(lt.Commit(0x100, 0x180))
	if err != nil || txn == nil || len(txn.Changes) != 5 {
		t.Fatalf("commit: %+v %v", txn, err)
	}
	a := &applier{tables: map[tableKey]pglogrepl.LSN{tableKey(countries): 0x100}}
	want := []struct{ sql, params string }{
		{`INSERT INTO "public"."countries" ("code", "name", "notes") VALUES ($1, $2, $3)`, "fr|France|<nil>"},
		{`UPDATE "public"."countries" SET "code" = $1, "name" = $2 WHERE "code" = $3`, "fr|République|fr"},
		{`UPDATE "public"."countries" SET "code" = $1, "name" = $2, "notes" = $3 WHERE "code" = $4`, "FR|France|x|fr"},
		{`DELETE FROM "public"."countries" WHERE "code" = $1`, "de"},
		{`TRUNCATE "public"."countries" RESTART IDENTITY`, ""},
	}
	for i, c := range txn.Changes {
		s, ok := a.statement(&c, txn.CommitLSN)
		if !ok {
			t.Fatalf("change %d skipped", i)
		}
		var params []string
		for _, p := range s.params {
			if p == nil {
				params = append(params, "<nil>")
			} else {
				params = append(params, string(p))
			}
		}
		if s.sql != want[i].sql || strings.Join(params, "|") != want[i].params {
			t.Errorf("change %d:\n got %s [%s]\nwant %s [%s]", i, s.sql, strings.Join(params, "|"), want[i].sql, want[i].params)
		}
	}
	// A table copied after the transaction committed skips its changes.
	a.tables[tableKey(countries)] = 0x101
	if _, ok := a.statement(&txn.Changes[0], txn.CommitLSN); ok {
		t.Error("a change older than the table's copy was not skipped")
	}
}
