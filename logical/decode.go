// Package logical decodes PostgreSQL's pgoutput logical replication stream
// into transactions of row changes in text form, for the side processes
// that apply a stream elsewhere: refsync (one source to every shard) and
// fanin (every shard to one target).
package logical

import (
	"encoding/binary"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/pgrouter/pgrouter/config"
)

// relation is a source table as the stream describes it: pgoutput sends a
// Relation message before a table's first change, and again after its
// definition changes, so a change carries the relation current when it
// was decoded.
type Relation struct {
	Table   config.TableName
	Columns []string
	KeyCols []int // positions in Columns of the key rows are found by
}

// change is one row change (or a truncate) of a source transaction.
type Change struct {
	Kind byte // 'I', 'U', 'D', 'T'
	Rel  *Relation
	// For 'I' and 'U': the new row. For 'U' and 'D': Old holds the key
	// (the old key when an update changed it), nil when it did not change.
	Row, Old []Value
	// For 'T': the truncated tables and whether identities restart.
	Truncate        []*Relation
	RestartIdentity bool
}

// value is one column of a row in pgoutput's text format.
type Value struct {
	Kind byte // 't' text, 'n' null, 'u' unchanged TOAST (an update left it alone)
	Text []byte
}

// txn is one source transaction, or a position mark (no changes) that says
// every transaction before lsn has been sent, so idle shards can record how
// far they are current.
type Txn struct {
	CommitLSN pglogrepl.LSN // transactions are applied where CommitLSN >= the applied position
	EndLSN    pglogrepl.LSN // recorded as the applied position once applied
	Time      time.Time     // the source's commit time
	Changes   []Change
}

// Decoder builds transactions from pgoutput messages of the tables it is
// given (others are skipped), finding each row's key columns by name.
type Decoder struct {
	tables    []config.TableName
	keys      map[config.TableName][]string // key columns read from the source
	relations map[uint32]*Relation
	cur       *Txn
}

func NewDecoder(tables []config.TableName, keys map[config.TableName][]string) *Decoder {
	return &Decoder{tables: tables, keys: keys, relations: map[uint32]*Relation{}}
}

// Parse decodes one pgoutput message. pglogrepl does not check lengths
// inside tuples; a malformed message from the source must end the stream
// with an error, never the process.
func Parse(data []byte) (msg pglogrepl.Message, err error) {
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

// Restart forgets the relations and any transaction in progress: a new
// stream sends Relation messages again before each table's changes.
func (d *Decoder) Restart() {
	d.relations, d.cur = map[uint32]*Relation{}, nil
}

// InTransaction reports whether a transaction has begun and not yet
// committed: a position seen now may be inside it.
func (d *Decoder) InTransaction() bool { return d.cur != nil }

// Add takes one message; it returns the transaction a Commit completed.
func (d *Decoder) Add(data []byte) (*Txn, error) {
	msg, err := Parse(data)
	if err != nil {
		return nil, err
	}
	switch m := msg.(type) {
	case *pglogrepl.BeginMessage:
		d.cur = &Txn{CommitLSN: m.FinalLSN, Time: m.CommitTime}
	case *pglogrepl.CommitMessage:
		t := d.cur
		if t == nil {
			return nil, fmt.Errorf("commit at %s without a begin", m.CommitLSN)
		}
		d.cur = nil
		t.CommitLSN, t.EndLSN, t.Time = m.CommitLSN, m.TransactionEndLSN, m.CommitTime
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
		c := Change{Kind: 'T', RestartIdentity: m.Option&pglogrepl.TruncateOptionRestartIdentity != 0}
		for _, id := range m.RelationIDs {
			if rel := d.relations[id]; rel != nil {
				c.Truncate = append(c.Truncate, rel)
			}
		}
		if len(c.Truncate) > 0 {
			return nil, d.append(c)
		}
	}
	// Type, origin and logical messages carry nothing a shard needs.
	return nil, nil
}

func (d *Decoder) relation(m *pglogrepl.RelationMessage) error {
	t := config.TableName{Schema: m.Namespace, Name: m.RelationName}
	if !slices.Contains(d.tables, t) {
		delete(d.relations, m.RelationID) // published, but not ours (someone added it)
		return nil
	}
	rel := &Relation{Table: t}
	for _, c := range m.Columns {
		rel.Columns = append(rel.Columns, c.Name)
	}
	key := d.keys[t]
	for _, k := range key {
		for i, c := range rel.Columns {
			if c == k {
				rel.KeyCols = append(rel.KeyCols, i)
			}
		}
	}
	if len(key) == 0 || len(rel.KeyCols) != len(key) {
		return fmt.Errorf("the stream describes %s with columns %v, which lack its key %v: restart after changing a key", t, rel.Columns, key)
	}
	d.relations[m.RelationID] = rel
	return nil
}

func (d *Decoder) change(kind byte, relID uint32, row, old *pglogrepl.TupleData) error {
	rel := d.relations[relID]
	if rel == nil {
		return nil // not a configured table
	}
	c := Change{Kind: kind, Rel: rel}
	var err error
	if c.Row, err = values(rel, row); err != nil {
		return err
	}
	if c.Old, err = values(rel, old); err != nil {
		return err
	}
	if kind == 'D' && c.Old == nil {
		return fmt.Errorf("delete from %s without the old key", rel.Table)
	}
	return d.append(c)
}

func (d *Decoder) append(c Change) error {
	if d.cur == nil {
		return fmt.Errorf("%c change outside a transaction", c.Kind)
	}
	d.cur.Changes = append(d.cur.Changes, c)
	return nil
}

func values(rel *Relation, t *pglogrepl.TupleData) ([]Value, error) {
	if t == nil {
		return nil, nil
	}
	if len(t.Columns) != len(rel.Columns) {
		return nil, fmt.Errorf("a row of %s has %d columns, its relation %d", rel.Table, len(t.Columns), len(rel.Columns))
	}
	out := make([]Value, len(t.Columns))
	for i, c := range t.Columns {
		switch c.DataType {
		case pglogrepl.TupleDataTypeText:
			out[i] = Value{Kind: 't', Text: c.Data}
		case pglogrepl.TupleDataTypeNull:
			out[i] = Value{Kind: 'n'}
		case pglogrepl.TupleDataTypeToast:
			out[i] = Value{Kind: 'u'}
		default:
			return nil, fmt.Errorf("a row of %s has column %s in format %q; the stream is asked for text", rel.Table, rel.Columns[i], c.DataType)
		}
	}
	return out, nil
}
