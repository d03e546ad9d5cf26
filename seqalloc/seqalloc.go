// Package seqalloc keeps the sequences of a cluster's shards from handing
// out the same value: with stride S, the shard in slot k runs every sequence
// with INCREMENT BY S and values ≡ k+1 (mod S), so the shards draw from
// disjoint residue classes and a new shard can join as long as a slot is
// free.
//
// A shard's slot is recorded on the shard itself (pgrouter.seq_slot), not
// derived from the order of router.yaml, so reordering or renaming shards
// in the file cannot move a shard into another's values. Check reads every
// shard and judges each sequence; Apply plans the changes from the state it
// reads under lock and makes them in one transaction per shard.
package seqalloc

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgrouter/pgrouter/config"
	"github.com/pgrouter/pgrouter/shardmap"
)

// Options are the settings of router.yaml's sequences section.
type Options struct {
	Stride      int64
	Schemas     []string
	MinHeadroom int64
	LockTimeout time.Duration
	// ConnectTimeout bounds each connection to a shard (0: no limit).
	ConnectTimeout time.Duration
	// Skip are tables (schema.name) whose sequences are not the shards'
	// own: reference tables, whose values come from the source by refsync.
	Skip []string
}

// OptionsFrom takes the settings from a validated config that has a
// sequences section.
func OptionsFrom(cfg *config.Config) Options {
	s := cfg.Sequences
	opts := Options{Stride: s.Stride, Schemas: s.Schemas, MinHeadroom: s.MinHeadroom, LockTimeout: s.LockTimeout.D(),
		ConnectTimeout: cfg.Pool.ServerConnectTimeout.D()}
	if cfg.Reference != nil {
		for _, t := range cfg.Reference.TableNames {
			opts.Skip = append(opts.Skip, t.String())
		}
	}
	return opts
}

// connect opens a control connection to a shard.
func connect(ctx context.Context, dsn string, timeout time.Duration) (*pgx.Conn, error) {
	cc, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, err
	}
	cc.ConnectTimeout = timeout
	cc.RuntimeParams["application_name"] = "pgrouter seq"
	// No statement may hang the tool (max() behind a migration's lock, say);
	// apply's lock waits have their own, shorter, lock_timeout.
	cc.RuntimeParams["statement_timeout"] = "60s"
	return pgx.ConnectConfig(ctx, cc)
}

// Sequence is one sequence on one shard as read from the catalogs.
type Sequence struct {
	Name      string // schema.name, quoted where SQL needs it
	Type      string // smallint | integer | bigint
	Start     int64
	Increment int64
	Min, Max  int64
	Cycle     bool
	LastValue int64
	IsCalled  bool
	// Column is the integer column that owns the sequence (serial,
	// identity), as schema.table.column, or "".
	Column string
	// ColumnMax is the highest value in Column on this shard; nil when the
	// column is empty, there is none, or no btree index leads with it (so
	// reading it stays an index probe when serve checks every minute). Rows
	// inserted with explicit values are why it can exceed the sequence.
	ColumnMax *int64

	oid        uint32
	table, col string // quoted
	indexed    bool   // a btree index leads with col
}

// Next is the value nextval would return; ok is false when the sequence is
// exhausted (it would fail, or wrap around if it cycles).
func (q *Sequence) Next() (next int64, ok bool) {
	if !q.IsCalled {
		return q.LastValue, true
	}
	if q.Increment > 0 && q.LastValue > q.Max-q.Increment || q.Increment < 0 && q.LastValue < q.Min-q.Increment {
		return 0, false
	}
	return q.LastValue + q.Increment, true
}

// Headroom is how many more values the sequence can hand out.
func (q *Sequence) Headroom() int64 {
	next, ok := q.Next()
	if !ok {
		return 0
	}
	if q.Increment > 0 {
		return valuesLeft(next, q.Max, q.Increment)
	}
	return valuesLeft(q.Min, next, -q.Increment)
}

// valuesLeft counts from, from+step, ... up to limit, capped at MaxInt64;
// the difference is taken unsigned, so it cannot overflow whatever the signs.
func valuesLeft(from, limit, step int64) int64 {
	if from > limit {
		return 0
	}
	n := (uint64(limit)-uint64(from))/uint64(step) + 1
	return int64(min(n, math.MaxInt64))
}

// highest is the highest value the sequence or its column may already
// hold: new values of any shard must start above it.
func (q *Sequence) highest() int64 {
	hi := q.LastValue
	if !q.IsCalled && hi > math.MinInt64 {
		hi-- // a fresh or restarted sequence has handed out nothing at LastValue
	}
	if q.ColumnMax != nil && *q.ColumnMax > hi {
		hi = *q.ColumnMax
	}
	return hi
}

// Shard is what one shard records and holds.
type Shard struct {
	Cluster, Name string
	// Slot is the slot recorded on the shard, -1 when none is.
	Slot int64
	// Stride is the stride recorded with the slot (0 when none is).
	Stride int64
	// RecordedAs is the shard name recorded with the slot.
	RecordedAs string
	// Sequences sorted by name.
	Sequences []*Sequence
	// Trigger reports whether the event trigger that strides new sequences
	// is installed.
	Trigger bool
	// Err is why the shard could not be read; nothing else is set then.
	Err error
}

// sequence returns the named sequence, or nil.
func (s *Shard) sequence(name string) *Sequence {
	i := sort.Search(len(s.Sequences), func(i int) bool { return s.Sequences[i].Name >= name })
	if i < len(s.Sequences) && s.Sequences[i].Name == name {
		return s.Sequences[i]
	}
	return nil
}

// querier is what reading needs from a connection or a transaction.
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Schema and names pgrouter keeps on every shard.
const (
	slotTable    = "pgrouter.seq_slot"
	triggerName  = "pgrouter_stride_sequences"
	triggerFunc  = "pgrouter.stride_new_sequences"
	applyLockKey = 0x7067726f75746572 // "pgrouter": one apply at a time per shard
)

const sequencesSQL = `SELECT c.oid, quote_ident(n.nspname) || '.' || quote_ident(c.relname), format_type(s.seqtypid, NULL),
	s.seqstart, s.seqincrement, s.seqmin, s.seqmax, s.seqcycle,
	coalesce(quote_ident(tn.nspname) || '.' || quote_ident(t.relname), ''), coalesce(quote_ident(a.attname), ''),
	coalesce((SELECT true FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_am am ON am.oid = ic.relam
		WHERE i.indrelid = a.attrelid AND i.indkey[0] = a.attnum AND i.indpred IS NULL AND am.amname = 'btree' LIMIT 1), false)
FROM pg_sequence s
JOIN pg_class c ON c.oid = s.seqrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.refclassid = 'pg_class'::regclass
	AND d.refobjsubid > 0 AND d.deptype IN ('a', 'i')
LEFT JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid AND a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype)
LEFT JOIN pg_class t ON t.oid = a.attrelid
LEFT JOIN pg_namespace tn ON tn.oid = t.relnamespace
WHERE CASE WHEN $1::text[] IS NULL THEN n.nspname NOT IN ('pg_catalog', 'information_schema', 'pgrouter') AND n.nspname NOT LIKE 'pg\_%'
	ELSE n.nspname = ANY($1) END
	AND coalesce(tn.nspname || '.' || t.relname, '') <> ALL(coalesce($2::text[], '{}'))
ORDER BY 2`

// readShard reads the slot and every sequence of one shard in the schemas
// (nil: every schema but the system ones).
func readShard(ctx context.Context, q querier, sh *Shard, schemas, skip []string) error {
	sh.Slot, sh.Stride, sh.RecordedAs, sh.Sequences, sh.Trigger = -1, 0, "", nil, false
	var hasTable bool
	err := q.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL, EXISTS (SELECT FROM pg_event_trigger WHERE evtname = $2)`,
		slotTable, triggerName).Scan(&hasTable, &sh.Trigger)
	if err != nil {
		return fmt.Errorf("read the catalogs: %w", err)
	}
	if hasTable {
		rows, err := q.Query(ctx, "SELECT slot, stride, shard FROM "+slotTable)
		if err != nil {
			return fmt.Errorf("read %s: %w", slotTable, err)
		}
		n := 0
		for rows.Next() {
			if err := rows.Scan(&sh.Slot, &sh.Stride, &sh.RecordedAs); err != nil {
				rows.Close()
				return fmt.Errorf("read %s: %w", slotTable, err)
			}
			n++
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("read %s: %w", slotTable, err)
		}
		if n > 1 { // the table allows one row; this is hand-made damage
			return fmt.Errorf("%s holds %d rows, but a shard has one slot: delete the rows that are not this shard's", slotTable, n)
		}
	}

	rows, err := q.Query(ctx, sequencesSQL, schemas, skip)
	if err != nil {
		return fmt.Errorf("list sequences: %w", err)
	}
	seqs, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (*Sequence, error) {
		q := &Sequence{}
		var table, col string
		err := row.Scan(&q.oid, &q.Name, &q.Type, &q.Start, &q.Increment, &q.Min, &q.Max, &q.Cycle, &table, &col, &q.indexed)
		if table != "" && col != "" {
			q.table, q.col = table, col
			q.Column = table + "." + col
		}
		return q, err
	})
	if err != nil {
		return fmt.Errorf("list sequences: %w", err)
	}
	sort.Slice(seqs, func(i, j int) bool { return seqs[i].Name < seqs[j].Name })
	sh.Sequences = seqs
	return readValues(ctx, q, seqs)
}

// readValues reads each sequence's position and its column's highest value
// in one round trip.
func readValues(ctx context.Context, q querier, seqs []*Sequence) error {
	if len(seqs) == 0 {
		return nil
	}
	var b strings.Builder
	for i, s := range seqs {
		if i > 0 {
			b.WriteString("\nUNION ALL ")
		}
		colMax := "NULL::int8"
		if s.indexed {
			colMax = fmt.Sprintf("(SELECT max(%s) FROM %s)::int8", s.col, s.table)
		}
		fmt.Fprintf(&b, "SELECT %d, last_value, is_called, %s FROM %s", i, colMax, s.Name)
	}
	rows, err := q.Query(ctx, b.String())
	if err != nil {
		return fmt.Errorf("read sequence values: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var i int
		var last int64
		var called bool
		var colMax *int64
		if err := rows.Scan(&i, &last, &called, &colMax); err != nil {
			return fmt.Errorf("read sequence values: %w", err)
		}
		seqs[i].LastValue, seqs[i].IsCalled, seqs[i].ColumnMax = last, called, colMax
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read sequence values: %w", err)
	}
	return nil
}

// Read reads every shard of a cluster concurrently; a shard that cannot be
// read has Err set.
func Read(ctx context.Context, cl *shardmap.Cluster, opts Options) []*Shard {
	out := make([]*Shard, len(cl.Shards))
	done := make(chan struct{}, len(cl.Shards))
	for i, sm := range cl.Shards {
		sh := &Shard{Cluster: cl.Name, Name: sm.Name, Slot: -1}
		out[i] = sh
		go func() {
			defer func() { done <- struct{}{} }()
			conn, err := connect(ctx, sm.DSN, opts.ConnectTimeout)
			if err != nil {
				sh.Err = fmt.Errorf("connect: %w", err)
				return
			}
			defer conn.Close(context.WithoutCancel(ctx))
			if err := readShard(ctx, conn, sh, opts.Schemas, opts.Skip); err != nil {
				*sh = Shard{Cluster: cl.Name, Name: sm.Name, Slot: -1, Err: err}
			}
		}()
	}
	for range cl.Shards {
		<-done
	}
	return out
}

// ErrRefused is wrapped by Apply when a sequence or a shard cannot be made
// safe automatically; nothing was changed.
var ErrRefused = errors.New("refused")
