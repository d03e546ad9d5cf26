package refsync

import (
	"encoding/binary"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/pgrouter/pgrouter/config"
)

var countries = config.TableName{Schema: "public", Name: "countries"}

// pgoutput messages, built as PostgreSQL sends them (protocol version 1).
func relationMsg(id uint32, schema, name string, cols ...string) []byte {
	b := []byte{'R'}
	b = binary.BigEndian.AppendUint32(b, id)
	b = append(append(b, schema...), 0)
	b = append(append(b, name...), 0)
	b = append(b, 'd')
	b = binary.BigEndian.AppendUint16(b, uint16(len(cols)))
	for i, c := range cols {
		flag := byte(0)
		if i == 0 {
			flag = 1
		}
		b = append(b, flag)
		b = append(append(b, c...), 0)
		b = binary.BigEndian.AppendUint32(b, 25)
		b = binary.BigEndian.AppendUint32(b, 0xffffffff)
	}
	return b
}

// tuple encodes values: "\x00" is NULL, "\x01" an unchanged TOAST value.
func tuple(vals ...string) []byte {
	b := binary.BigEndian.AppendUint16(nil, uint16(len(vals)))
	for _, v := range vals {
		switch v {
		case "\x00":
			b = append(b, 'n')
		case "\x01":
			b = append(b, 'u')
		default:
			b = append(b, 't')
			b = binary.BigEndian.AppendUint32(b, uint32(len(v)))
			b = append(b, v...)
		}
	}
	return b
}

func beginMsg(final uint64) []byte {
	b := []byte{'B'}
	b = binary.BigEndian.AppendUint64(b, final)
	b = binary.BigEndian.AppendUint64(b, 0)
	return binary.BigEndian.AppendUint32(b, 7)
}

func commitMsg(lsn, end uint64) []byte {
	b := []byte{'C', 0}
	b = binary.BigEndian.AppendUint64(b, lsn)
	b = binary.BigEndian.AppendUint64(b, end)
	return binary.BigEndian.AppendUint64(b, uint64(time.Hour/time.Microsecond))
}

func rowMsg(kind byte, rel uint32, parts ...[]byte) []byte {
	b := binary.BigEndian.AppendUint32([]byte{kind}, rel)
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

// TestDecodeAndStatements: a transaction of every change kind decodes into
// the statements a shard runs, keys found by name in the relation.
func TestDecodeAndStatements(t *testing.T) {
	d := newDecoder([]config.TableName{countries}, map[config.TableName][]string{countries: {"code"}})
	msgs := [][]byte{
		relationMsg(16384, "public", "countries", "code", "name", "notes"),
		relationMsg(16999, "public", "other", "id"), // published, not configured
		beginMsg(0x100),
		rowMsg('I', 16384, []byte{'N'}, tuple("fr", "France", "\x00")),
		rowMsg('I', 16999, []byte{'N'}, tuple("1")),
		rowMsg('U', 16384, []byte{'N'}, tuple("fr", "République", "\x01")),
		rowMsg('U', 16384, []byte{'K'}, tuple("fr", "\x00", "\x00"), []byte{'N'}, tuple("FR", "France", "x")),
		rowMsg('D', 16384, []byte{'K'}, tuple("de", "\x00", "\x00")),
		{'T', 0, 0, 0, 2, 2, 0, 0, 0x40, 0, 0, 0, 0x42, 0x5f},
	}
	for _, m := range msgs {
		if txn, err := d.add(m); err != nil || txn != nil {
			t.Fatalf("add %q: %v %v", m[0], txn, err)
		}
	}
	txn, err := d.add(commitMsg(0x100, 0x180))
	if err != nil || txn == nil {
		t.Fatalf("commit: %v %v", txn, err)
	}
	if txn.commitLSN != 0x100 || txn.endLSN != 0x180 || len(txn.changes) != 5 {
		t.Fatalf("txn %+v", txn)
	}
	a := &applier{tables: map[tableKey]pglogrepl.LSN{tableKey(countries): 0x100}}
	want := []struct{ sql, params string }{
		{`INSERT INTO "public"."countries" ("code", "name", "notes") VALUES ($1, $2, $3)`, "fr|France|<nil>"},
		{`UPDATE "public"."countries" SET "code" = $1, "name" = $2 WHERE "code" = $3`, "fr|République|fr"},
		{`UPDATE "public"."countries" SET "code" = $1, "name" = $2, "notes" = $3 WHERE "code" = $4`, "FR|France|x|fr"},
		{`DELETE FROM "public"."countries" WHERE "code" = $1`, "de"},
		{`TRUNCATE "public"."countries" RESTART IDENTITY`, ""},
	}
	for i, c := range txn.changes {
		s, ok := a.statement(&c, txn.commitLSN)
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
	if _, ok := a.statement(&txn.changes[0], txn.commitLSN); ok {
		t.Error("a change older than the table's copy was not skipped")
	}
}

// TestDecodeRefusesMalformed: truncated and inconsistent messages are
// errors, not panics or wrong rows.
func TestDecodeRefusesMalformed(t *testing.T) {
	for name, msgs := range map[string][][]byte{
		"row before begin":    {relationMsg(1, "public", "countries", "code"), rowMsg('I', 1, []byte{'N'}, tuple("x"))},
		"commit before begin": {commitMsg(1, 2)},
		"short tuple":         {relationMsg(1, "public", "countries", "code"), beginMsg(1), rowMsg('I', 1, []byte{'N'}, tuple("x")[:5])},
		"wrong column count":  {relationMsg(1, "public", "countries", "code"), beginMsg(1), rowMsg('I', 1, []byte{'N'}, tuple("x", "y"))},
		"huge truncate":       {{'T', 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 1}},
		"huge column":         {relationMsg(1, "public", "countries", "code"), beginMsg(1), rowMsg('I', 1, []byte{'N', 0, 1, 't', 0xff, 0xff, 0xff, 0xf0})},
		"relation lacks key":  {relationMsg(1, "public", "countries", "name")},
		"empty":               {{}},
	} {
		d := newDecoder([]config.TableName{countries}, map[config.TableName][]string{countries: {"code"}})
		var err error
		for _, m := range msgs {
			if _, err = d.add(m); err != nil {
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
	f.Add(relationMsg(1, "public", "countries", "code", "name"))
	f.Add(rowMsg('U', 1, []byte{'K'}, tuple("a", "\x00"), []byte{'N'}, tuple("b", "\x01")))
	f.Add(beginMsg(5))
	f.Add(commitMsg(5, 6))
	f.Fuzz(func(t *testing.T, data []byte) {
		d := newDecoder([]config.TableName{countries}, map[config.TableName][]string{countries: {"code"}})
		_, _ = d.add(relationMsg(1, "public", "countries", "code", "name"))
		_, _ = d.add(beginMsg(1))
		_, _ = d.add(data)
	})
}
