package refsync

import (
	"encoding/binary"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/pgrouter/pgrouter/config"
)

// relation is a source table as the stream describes it: pgoutput sends a
// Relation message before a table's first change, and again after its
// definition changes, so a change carries the relation current when it
// was decoded.
type relation struct {
	table   config.TableName
	columns []string
	keyCols []int // positions in columns of the key a shard finds rows by
}

// change is one row change (or a truncate) of a source transaction.
type change struct {
	kind byte // 'I', 'U', 'D', 'T'
	rel  *relation
	// For 'I' and 'U': the new row. For 'U' and 'D': old holds the key
	// (the old key when an update changed it), nil when it did not change.
	row, old []value
	// For 'T': the truncated tables and whether identities restart.
	truncate        []*relation
	restartIdentity bool
}

// value is one column of a row in pgoutput's text format.
type value struct {
	kind byte // 't' text, 'n' null, 'u' unchanged TOAST (an update left it alone)
	text []byte
}

// txn is one source transaction, or a position mark (no changes) that says
// every transaction before lsn has been sent, so idle shards can record how
// far they are current.
type txn struct {
	commitLSN pglogrepl.LSN // transactions are applied where commitLSN >= the shard's lsn
	endLSN    pglogrepl.LSN // recorded as the shard's lsn once applied
	time      time.Time     // the source's commit time
	changes   []change
}

// decoder builds transactions from pgoutput messages.
type decoder struct {
	tables    []config.TableName
	keys      map[config.TableName][]string // key columns read from the source
	relations map[uint32]*relation
	cur       *txn
}

func newDecoder(tables []config.TableName, keys map[config.TableName][]string) *decoder {
	return &decoder{tables: tables, keys: keys, relations: map[uint32]*relation{}}
}

// parse decodes one pgoutput message. pglogrepl does not check lengths
// inside tuples; a malformed message from the source must end the stream
// with an error, never the process.
func parse(data []byte) (msg pglogrepl.Message, err error) {
	if len(data) == 0 {
		return nil, fmt.Errorf("empty pgoutput message")
	}
	// pglogrepl sizes slices from lengths in the message before checking
	// them: a corrupt length would ask for gigabytes, which recover cannot
	// undo. Check those lengths first.
	if err := checkLengths(data); err != nil {
		return nil, fmt.Errorf("malformed pgoutput message %q (%d bytes): %w", data[0], len(data), err)
	}
	defer func() {
		if r := recover(); r != nil {
			msg, err = nil, fmt.Errorf("malformed pgoutput message %q (%d bytes): %v", data[0], len(data), r)
		}
	}()
	return pglogrepl.Parse(data)
}

// checkLengths checks the counts and lengths that pglogrepl allocates by:
// a truncate's relation count and the tuples of row changes.
func checkLengths(data []byte) error {
	switch data[0] {
	case 'T':
		if len(data) >= 5 && uint64(binary.BigEndian.Uint32(data[1:]))*4 > uint64(len(data)) {
			return fmt.Errorf("%d relations", binary.BigEndian.Uint32(data[1:]))
		}
	case 'I', 'U', 'D':
		pos := 5 // type, relation id
		for {
			if pos >= len(data) {
				return fmt.Errorf("ends before its tuple")
			}
			kind := data[pos]
			end, err := tupleEnd(data, pos+1)
			if err != nil {
				return err
			}
			if data[0] == 'U' && (kind == 'K' || kind == 'O') {
				pos = end // the new tuple follows the old one
				continue
			}
			return nil
		}
	}
	return nil
}

// tupleEnd returns where a TupleData starting at pos ends.
func tupleEnd(data []byte, pos int) (int, error) {
	if pos+2 > len(data) {
		return 0, fmt.Errorf("tuple without a column count")
	}
	n := int(binary.BigEndian.Uint16(data[pos:]))
	pos += 2
	for i := 0; i < n; i++ {
		if pos >= len(data) {
			return 0, fmt.Errorf("tuple of %d columns ends at column %d", n, i)
		}
		kind := data[pos]
		pos++
		if kind == 't' || kind == 'b' {
			if pos+4 > len(data) {
				return 0, fmt.Errorf("column %d without a length", i)
			}
			l := uint64(binary.BigEndian.Uint32(data[pos:]))
			pos += 4
			if l > uint64(len(data)-pos) {
				return 0, fmt.Errorf("column %d of %d bytes in %d", i, l, len(data)-pos)
			}
			pos += int(l)
		}
	}
	return pos, nil
}

// add takes one message; it returns the transaction a Commit completed.
func (d *decoder) add(data []byte) (*txn, error) {
	msg, err := parse(data)
	if err != nil {
		return nil, err
	}
	switch m := msg.(type) {
	case *pglogrepl.BeginMessage:
		d.cur = &txn{commitLSN: m.FinalLSN, time: m.CommitTime}
	case *pglogrepl.CommitMessage:
		t := d.cur
		if t == nil {
			return nil, fmt.Errorf("commit at %s without a begin", m.CommitLSN)
		}
		d.cur = nil
		t.commitLSN, t.endLSN, t.time = m.CommitLSN, m.TransactionEndLSN, m.CommitTime
		return t, nil
	case *pglogrepl.RelationMessage:
		return nil, d.relation(m)
	case *pglogrepl.InsertMessage:
		return nil, d.change('I', m.RelationID, m.Tuple, nil)
	case *pglogrepl.UpdateMessage:
		return nil, d.change('U', m.RelationID, m.NewTuple, m.OldTuple)
	case *pglogrepl.DeleteMessage:
		return nil, d.change('D', m.RelationID, nil, m.OldTuple)
	case *pglogrepl.TruncateMessage:
		c := change{kind: 'T', restartIdentity: m.Option&pglogrepl.TruncateOptionRestartIdentity != 0}
		for _, id := range m.RelationIDs {
			if rel := d.relations[id]; rel != nil {
				c.truncate = append(c.truncate, rel)
			}
		}
		if len(c.truncate) > 0 {
			return nil, d.append(c)
		}
	}
	// Type, origin and logical messages carry nothing a shard needs.
	return nil, nil
}

func (d *decoder) relation(m *pglogrepl.RelationMessage) error {
	t := config.TableName{Schema: m.Namespace, Name: m.RelationName}
	if !configured(d.tables, t) {
		delete(d.relations, m.RelationID) // published, but not ours (someone added it)
		return nil
	}
	rel := &relation{table: t}
	for _, c := range m.Columns {
		rel.columns = append(rel.columns, c.Name)
	}
	key := d.keys[t]
	for _, k := range key {
		for i, c := range rel.columns {
			if c == k {
				rel.keyCols = append(rel.keyCols, i)
			}
		}
	}
	if len(key) == 0 || len(rel.keyCols) != len(key) {
		return fmt.Errorf("the stream describes %s with columns %v, which lack its key %v: restart refsync after changing a key", t, rel.columns, key)
	}
	d.relations[m.RelationID] = rel
	return nil
}

func (d *decoder) change(kind byte, relID uint32, row, old *pglogrepl.TupleData) error {
	rel := d.relations[relID]
	if rel == nil {
		return nil // not a configured table
	}
	c := change{kind: kind, rel: rel}
	var err error
	if c.row, err = values(rel, row); err != nil {
		return err
	}
	if c.old, err = values(rel, old); err != nil {
		return err
	}
	if kind == 'D' && c.old == nil {
		return fmt.Errorf("delete from %s without the old key", rel.table)
	}
	return d.append(c)
}

func (d *decoder) append(c change) error {
	if d.cur == nil {
		return fmt.Errorf("%c change outside a transaction", c.kind)
	}
	d.cur.changes = append(d.cur.changes, c)
	return nil
}

func values(rel *relation, t *pglogrepl.TupleData) ([]value, error) {
	if t == nil {
		return nil, nil
	}
	if len(t.Columns) != len(rel.columns) {
		return nil, fmt.Errorf("a row of %s has %d columns, its relation %d", rel.table, len(t.Columns), len(rel.columns))
	}
	out := make([]value, len(t.Columns))
	for i, c := range t.Columns {
		switch c.DataType {
		case pglogrepl.TupleDataTypeText:
			out[i] = value{kind: 't', text: c.Data}
		case pglogrepl.TupleDataTypeNull:
			out[i] = value{kind: 'n'}
		case pglogrepl.TupleDataTypeToast:
			out[i] = value{kind: 'u'}
		default:
			return nil, fmt.Errorf("a row of %s has column %s in format %q; refsync asks for text", rel.table, rel.columns[i], c.DataType)
		}
	}
	return out, nil
}
