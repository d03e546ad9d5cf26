// Package logicaltest builds pgoutput messages as PostgreSQL sends them
// (protocol version 1), for tests of stream decoding and applying.
package logicaltest

import (
	"encoding/binary"
	"time"
)

// Relation describes a table: the first column is its key (flag 1), every
// column text.
func Relation(id uint32, schema, name string, cols ...string) []byte {
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

// Tuple encodes values: "\x00" is NULL, "\x01" an unchanged TOAST value.
func Tuple(vals ...string) []byte {
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

// Begin starts a transaction that commits at final.
func Begin(final uint64) []byte {
	b := []byte{'B'}
	b = binary.BigEndian.AppendUint64(b, final)
	b = binary.BigEndian.AppendUint64(b, 0)
	return binary.BigEndian.AppendUint32(b, 7)
}

// Commit ends a transaction: its commit and end positions.
func Commit(lsn, end uint64) []byte {
	b := []byte{'C', 0}
	b = binary.BigEndian.AppendUint64(b, lsn)
	b = binary.BigEndian.AppendUint64(b, end)
	return binary.BigEndian.AppendUint64(b, uint64(time.Hour/time.Microsecond))
}

// Row is an insert, update or delete (kind) of relation rel: its parts
// are the tuple markers (N, K, O) and tuples.
func Row(kind byte, rel uint32, parts ...[]byte) []byte {
	b := binary.BigEndian.AppendUint32([]byte{kind}, rel)
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

// Countries is a transaction on public.countries (code, name, notes; key
// code) with every kind of change, between its Begin at 0x100 and the
// Commit the test sends: an insert (notes NULL), an update leaving notes
// unchanged (TOAST), an update of the key fr to FR, a delete of de, and a
// truncate with RESTART IDENTITY. Changes of public.other (relation 16999)
// are published but not configured.
func Countries() [][]byte {
	return [][]byte{
		Relation(16384, "public", "countries", "code", "name", "notes"),
		Relation(16999, "public", "other", "id"),
		Begin(0x100),
		Row('I', 16384, []byte{'N'}, Tuple("fr", "France", "\x00")),
		Row('I', 16999, []byte{'N'}, Tuple("1")),
		Row('U', 16384, []byte{'N'}, Tuple("fr", "République", "\x01")),
		Row('U', 16384, []byte{'K'}, Tuple("fr", "\x00", "\x00"), []byte{'N'}, Tuple("FR", "France", "x")),
		Row('D', 16384, []byte{'K'}, Tuple("de", "\x00", "\x00")),
		{'T', 0, 0, 0, 2, 2, 0, 0, 0x40, 0, 0, 0, 0x42, 0x5f},
	}
}
