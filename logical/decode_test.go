package logical

import (
	"strings"
	"testing"

	"github.com/pgrouter/pgrouter/config"
	lt "github.com/pgrouter/pgrouter/logical/logicaltest"
)

var countries = config.TableName{Schema: "public", Name: "countries"}

// TestDecode: a transaction of every change kind decodes into changes of
// the configured table only, keys found by name in the relation; an
// update that changed the key carries the old one.
func TestDecode(t *testing.T) {
	d := NewDecoder([]config.TableName{countries}, map[config.TableName][]string{countries: {"code"}})
	for _, m := range lt.Countries() {
		if txn, err := d.Add(m); err != nil || txn != nil {
			t.Fatalf("add %q: %v %v", m[0], txn, err)
		}
	}
	txn, err := d.Add(lt.Commit(0x100, 0x180))
	if err != nil || txn == nil {
		t.Fatalf("commit: %v %v", txn, err)
	}
	if txn.CommitLSN != 0x100 || txn.EndLSN != 0x180 || len(txn.Changes) != 5 {
		t.Fatalf("txn %+v", txn)
	}
	text := func(vs []Value) string {
		var out []string
		for _, v := range vs {
			switch v.Kind {
			case 'n':
				out = append(out, "NULL")
			case 'u':
				out = append(out, "UNCHANGED")
			default:
				out = append(out, string(v.Text))
			}
		}
		return strings.Join(out, "|")
	}
	want := []struct {
		kind     byte
		row, old string
	}{
		{'I', "fr|France|NULL", ""},
		{'U', "fr|République|UNCHANGED", ""},
		{'U', "FR|France|x", "fr|NULL|NULL"},
		{'D', "", "de|NULL|NULL"},
		{'T', "", ""},
	}
	for i, c := range txn.Changes {
		if c.Kind != want[i].kind || text(c.Row) != want[i].row || text(c.Old) != want[i].old {
			t.Errorf("change %d: %c row %q old %q; want %c %q %q", i, c.Kind, text(c.Row), text(c.Old), want[i].kind, want[i].row, want[i].old)
		}
		if c.Kind != 'T' && (c.Rel.Table != countries || len(c.Rel.KeyCols) != 1 || c.Rel.KeyCols[0] != 0) {
			t.Errorf("change %d: relation %+v", i, c.Rel)
		}
	}
	if c := txn.Changes[4]; len(c.Truncate) != 1 || !c.RestartIdentity {
		t.Errorf("truncate %+v", c)
	}
}

// TestDecodeRefusesMalformed: truncated and inconsistent messages are
// errors, not panics or wrong rows.
func TestDecodeRefusesMalformed(t *testing.T) {
	for name, msgs := range map[string][][]byte{
		"row before begin":    {lt.Relation(1, "public", "countries", "code"), lt.Row('I', 1, []byte{'N'}, lt.Tuple("x"))},
		"commit before begin": {lt.Commit(1, 2)},
		"short tuple":         {lt.Relation(1, "public", "countries", "code"), lt.Begin(1), lt.Row('I', 1, []byte{'N'}, lt.Tuple("x")[:5])},
		"wrong column count":  {lt.Relation(1, "public", "countries", "code"), lt.Begin(1), lt.Row('I', 1, []byte{'N'}, lt.Tuple("x", "y"))},
		"huge truncate":       {{'T', 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 1}},
		"huge column":         {lt.Relation(1, "public", "countries", "code"), lt.Begin(1), lt.Row('I', 1, []byte{'N', 0, 1, 't', 0xff, 0xff, 0xff, 0xf0})},
		"relation lacks key":  {lt.Relation(1, "public", "countries", "name")},
		"empty":               {{}},
	} {
		d := NewDecoder([]config.TableName{countries}, map[config.TableName][]string{countries: {"code"}})
		var err error
		for _, m := range msgs {
			if _, err = d.Add(m); err != nil {
				break
			}
		}
		if err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// FuzzDecode: no input makes the decoder panic.
func FuzzDecode(f *testing.F) {
	f.Add(lt.Relation(1, "public", "countries", "code", "name"))
	f.Add(lt.Row('U', 1, []byte{'K'}, lt.Tuple("a", "\x00"), []byte{'N'}, lt.Tuple("b", "\x01")))
	f.Add(lt.Begin(5))
	f.Add(lt.Commit(5, 6))
	f.Fuzz(func(t *testing.T, data []byte) {
		d := NewDecoder([]config.TableName{countries}, map[config.TableName][]string{countries: {"code"}})
		_, _ = d.Add(lt.Relation(1, "public", "countries", "code", "name"))
		_, _ = d.Add(lt.Begin(1))
		_, _ = d.Add(data)
	})
}
