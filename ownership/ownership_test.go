package ownership

import (
	"strings"
	"testing"

	"github.com/pgrouter/pgrouter/config"
)

// TestOwners: the shards' records merge into one map; a partition two
// shards claim is an error naming both.
func TestOwners(t *testing.T) {
	got, err := Owners(map[string][]int{"s0": {0, 1}, "s1": {2, 3}, "s2": nil})
	if err != nil || len(got) != 4 || got[0] != "s0" || got[3] != "s1" {
		t.Fatalf("Owners: %v, %v", got, err)
	}
	if _, err := Owners(map[string][]int{"s0": {0, 6}, "s1": {6}}); err == nil || !strings.Contains(err.Error(), "partition 6 is recorded as held by both s0 and s1") {
		t.Fatalf("a partition claimed twice: %v", err)
	}
}

// TestPartitionExpr: the SQL partition of a key is the router's: hashtext
// for text keys, hashint4 for smallint and integer, hashint8 for bigint,
// masked by the partition count.
func TestPartitionExpr(t *testing.T) {
	for typ, want := range map[string]string{
		"text":              "(hashtext(NEW.k::text) & 7)",
		"character varying": "(hashtext(NEW.k::text) & 7)",
		"smallint":          "(hashint4(NEW.k::int4) & 7)",
		"integer":           "(hashint4(NEW.k::int4) & 7)",
		"bigint":            "(hashint8(NEW.k) & 7)",
	} {
		tb := &Table{KeyType: typ}
		if got := tb.PartitionExpr("NEW.k", 8); got != want {
			t.Errorf("%s: %s, want %s", typ, got, want)
		}
	}
}

// TestGuardName: guard functions are named per cluster and table within
// PostgreSQL's 63 bytes, distinct for long names that share a prefix.
func TestGuardName(t *testing.T) {
	if got := guardName("main", config.TableName{Schema: "public", Name: "users"}); got != `"pgrouter"."guard_main_public_users"` {
		t.Fatalf("guardName: %s", got)
	}
	long := strings.Repeat("x", 60)
	a := guardName("main", config.TableName{Schema: "public", Name: long + "a"})
	b := guardName("main", config.TableName{Schema: "public", Name: long + "b"})
	if a == b || len(strings.Trim(strings.TrimPrefix(a, `"pgrouter".`), `"`)) > 63 {
		t.Fatalf("long names: %s and %s", a, b)
	}
}
