package fanin

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgrouter/pgrouter/logical"
)

// A shard's change applies to the central rows that came from that shard:
// an insert takes the row whatever shard it came from before (a row moved
// by pgrouter move is inserted on its new shard, then deleted from its old
// one, in either stream order), an update or delete touches only the
// shard's own row (the old shard's delete of a moved row finds nothing),
// and a TRUNCATE on a shard deletes that shard's rows.

// stmt is one statement for the target, its parameters in text form.
type stmt struct {
	sql    string
	params [][]byte
}

// statements turns a shard transaction into the target's statements, as
// of the shard's partitions at this point of its stream (view; nil when
// nothing moves). Rows of tables that move are found by key alone; a
// delete, whose old row carries only the primary key, applies only when
// the central row's partition is one the shard holds.
func statements(shard string, t *logical.Txn, view *partitionView) []stmt {
	out := make([]stmt, 0, len(t.Changes))
	for i := 0; i < len(t.Changes); i++ {
		c := &t.Changes[i]
		if n := insertRun(t.Changes[i:]); n > 1 {
			out = append(out, insertStatement(shard, t.Changes[i:i+n]))
			i += n - 1
			continue
		}
		if c.Kind == 'T' {
			for _, rel := range c.Truncate {
				out = append(out, stmt{sql: "DELETE FROM " + ident(rel) + " WHERE " + shardColumn + " = $1", params: [][]byte{[]byte(shard)}})
			}
			continue
		}
		tracked := view.tracked(c.Rel.Table)
		s := rowStatement(shard, c, tracked)
		if tracked && c.Kind == 'D' {
			ot := view.tables[c.Rel.Table]
			s.sql += fmt.Sprintf(" AND %s = ANY ('%s'::int[])", ot.PartitionExpr(pgx.Identifier{ot.Key}.Sanitize(), view.partitions), view.heldArray())
		}
		out = append(out, s)
	}
	return out
}

// maxInsertRows bounds the rows of one multi-row insert (and its
// parameters, which PostgreSQL counts in 16 bits).
const maxInsertRows = 100

// insertRun is how many changes from the first are inserts of whole rows
// into one table, which one statement can upsert together. (A key cannot
// come twice in a run: the row would have to be deleted in between.)
func insertRun(changes []logical.Change) int {
	first := &changes[0]
	if first.Kind != 'I' || !whole(first.Row) {
		return 0
	}
	n := 1
	for n < len(changes) && n < maxInsertRows && (n+1)*(len(first.Row)+1) < 60000 {
		c := &changes[n]
		if c.Kind != 'I' || c.Rel != first.Rel || !whole(c.Row) {
			break
		}
		n++
	}
	return n
}

// whole reports a row with every column's value (none left unchanged).
func whole(row []logical.Value) bool {
	for _, v := range row {
		if v.Kind == 'u' {
			return false
		}
	}
	return true
}

// insertStatement upserts a run of inserts (insertRun) in one statement.
func insertStatement(shard string, run []logical.Change) stmt {
	rel := run[0].Rel
	var cols, sets, keys []string
	for _, c := range rel.Columns {
		id := pgx.Identifier{c}.Sanitize()
		cols = append(cols, id)
		sets = append(sets, id+" = excluded."+id)
	}
	for _, k := range rel.KeyCols {
		keys = append(keys, pgx.Identifier{rel.Columns[k]}.Sanitize())
	}
	var sb strings.Builder
	sb.WriteString("INSERT INTO " + ident(rel) + " (" + strings.Join(cols, ", ") + ", " + shardColumn + ") VALUES ")
	params := make([][]byte, 0, len(run)*(len(cols)+1))
	for r := range run {
		if r > 0 {
			sb.WriteString(", ")
		}
		sb.WriteByte('(')
		for _, v := range run[r].Row {
			params = append(params, v.Text) // nil for NULL
			sb.WriteString("$" + strconv.Itoa(len(params)) + ", ")
		}
		params = append(params, []byte(shard))
		sb.WriteString("$" + strconv.Itoa(len(params)) + ")")
	}
	sb.WriteString(" ON CONFLICT (" + strings.Join(keys, ", ") + ") DO UPDATE SET ")
	sb.WriteString(strings.Join(append(sets, shardColumn+" = excluded."+shardColumn), ", "))
	return stmt{sql: sb.String(), params: params}
}

func ident(rel *logical.Relation) string {
	return pgx.Identifier{rel.Table.Schema, rel.Table.Name}.Sanitize()
}

// rowStatement builds the upsert, update or delete for a row change; byKey
// finds the row by its key alone (a row that moves), else by key and shard.
func rowStatement(shard string, c *logical.Change, byKey bool) stmt {
	rel := c.Rel
	var sb strings.Builder
	var params [][]byte
	param := func(v []byte) string {
		params = append(params, v)
		return "$" + strconv.Itoa(len(params))
	}
	col := func(i int) string { return pgx.Identifier{rel.Columns[i]}.Sanitize() }
	where := func(key []logical.Value) {
		sb.WriteString(" WHERE ")
		for _, k := range rel.KeyCols {
			sb.WriteString(col(k))
			if key[k].Kind == 'n' {
				sb.WriteString(" IS NULL AND ")
			} else {
				sb.WriteString(" = " + param(key[k].Text) + " AND ")
			}
		}
		if byKey {
			sb.WriteString("true")
			return
		}
		sb.WriteString(shardColumn + " = " + param([]byte(shard)))
	}
	switch c.Kind {
	case 'I':
		sb.WriteString("INSERT INTO " + ident(rel) + " (")
		var vals, sets, keys []string
		for i, v := range c.Row {
			if v.Kind == 'u' {
				continue
			}
			sb.WriteString(col(i) + ", ")
			vals = append(vals, param(v.Text))
			sets = append(sets, col(i)+" = excluded."+col(i))
		}
		for _, k := range rel.KeyCols {
			keys = append(keys, col(k))
		}
		sb.WriteString(shardColumn + ") VALUES (" + strings.Join(vals, ", ") + ", " + param([]byte(shard)) + ")")
		sb.WriteString(" ON CONFLICT (" + strings.Join(keys, ", ") + ") DO UPDATE SET ")
		sb.WriteString(strings.Join(append(sets, shardColumn+" = excluded."+shardColumn), ", "))
	case 'U':
		sb.WriteString("UPDATE " + ident(rel) + " SET ")
		n := 0
		for i, v := range c.Row {
			if v.Kind == 'u' { // unchanged TOAST value: the target has it already
				continue
			}
			if n > 0 {
				sb.WriteString(", ")
			}
			n++
			sb.WriteString(col(i) + " = " + param(v.Text))
		}
		if byKey { // the row may have come from another shard: it is this one's now
			sb.WriteString(", " + shardColumn + " = " + param([]byte(shard)))
		}
		key := c.Old
		if key == nil {
			key = c.Row
		}
		where(key)
	default: // 'D'
		sb.WriteString("DELETE FROM " + ident(rel))
		where(c.Old)
	}
	return stmt{sql: sb.String(), params: params}
}

// Limits of one target transaction: it takes the shard transactions that
// have arrived, up to these, so that a backlog of small transactions costs
// one commit per batch rather than each, and statements go to the target
// batchStatements at a time, prepared once per text.
const (
	maxBatchTxns     = 500
	maxBatchChanges  = 20000
	batchStatements  = 500
	maxPreparedTexts = 256
)

// applier applies a shard's transactions in the target.
type applier struct {
	conn     *pgconn.PgConn
	shard    string
	view     *partitionView    // nil: nothing moves
	prepared map[string]string // statement text -> prepared name
	named    int
	// stmts are the queued transactions' statements, made as each was
	// queued; last is the last of them, txns how many.
	stmts []stmt
	last  *logical.Txn
	txns  int
}

func newApplier(target *pgx.Conn, shard string, view *partitionView) *applier {
	return &applier{conn: target.PgConn(), shard: shard, view: view, prepared: map[string]string{}}
}

// add queues a transaction; full reports that the batch should be applied.
func (a *applier) add(t *logical.Txn) (full bool) {
	a.stmts = append(a.stmts, statements(a.shard, t, a.view)...)
	a.last = t
	a.txns++
	return a.txns >= maxBatchTxns || len(a.stmts) >= maxBatchChanges
}

// queued reports transactions waiting to be applied.
func (a *applier) queued() bool { return a.txns > 0 }

// also queues statements of the worker's own (a retag) to run with the
// next transaction queued.
func (a *applier) also(stmts []stmt) { a.stmts = append(a.stmts, stmts...) }

// flush applies the queued transactions, with the shard's new position, in
// one target transaction, and returns that position (0: nothing queued).
func (a *applier) flush(ctx context.Context) (pglogrepl.LSN, error) {
	if a.txns == 0 {
		return 0, nil
	}
	last, stmts := a.last, a.stmts
	var holds, writes []int
	if a.view != nil {
		holds, writes = a.view.lists()
	}
	stmts = append(stmts, stmt{
		sql: "UPDATE pgrouter.fanin_state SET lsn = $1::text::pg_lsn, synced_to = $2::text::timestamptz, holds = $3::text::int[], writes = $4::text::int[], updated_at = now() WHERE shard = $5",
		params: [][]byte{[]byte(last.EndLSN.String()), []byte(last.Time.UTC().Format("2006-01-02 15:04:05.999999Z07:00")),
			intArray(holds), intArray(writes), []byte(a.shard)},
	})
	a.stmts, a.last, a.txns = nil, nil, 0
	if len(stmts) <= batchStatements {
		// One Sync: the batch is one implicit transaction.
		return last.EndLSN, a.run(ctx, stmts)
	}
	if err := a.conn.Exec(ctx, "BEGIN").Close(); err != nil {
		return 0, err
	}
	for len(stmts) > 0 {
		n := min(len(stmts), batchStatements)
		if err := a.run(ctx, stmts[:n]); err != nil {
			_ = a.conn.Exec(context.WithoutCancel(ctx), "ROLLBACK").Close()
			return 0, err
		}
		stmts = stmts[n:]
	}
	return last.EndLSN, a.conn.Exec(ctx, "COMMIT").Close()
}

// run sends statements in one round trip, each prepared once.
func (a *applier) run(ctx context.Context, stmts []stmt) error {
	b := &pgconn.Batch{}
	for _, s := range stmts {
		name, err := a.prepare(ctx, s.sql)
		if err != nil {
			return err
		}
		b.ExecPrepared(name, s.params, nil, nil)
	}
	results, err := a.conn.ExecBatch(ctx, b).ReadAll()
	if err != nil {
		return fmt.Errorf("apply in the target: %w", err)
	}
	for i, r := range results {
		if r.Err != nil {
			return fmt.Errorf("apply %s in the target: %w", stmts[i].sql, r.Err)
		}
	}
	return nil
}

// prepare returns the prepared statement for a text, preparing it (and
// starting over past maxPreparedTexts: a table with many column subsets of
// updates must not grow the target session without bound).
func (a *applier) prepare(ctx context.Context, sql string) (string, error) {
	if name, ok := a.prepared[sql]; ok {
		return name, nil
	}
	if len(a.prepared) >= maxPreparedTexts {
		if err := a.conn.Exec(ctx, "DEALLOCATE ALL").Close(); err != nil {
			return "", err
		}
		clear(a.prepared)
	}
	a.named++
	name := "fanin_" + strconv.Itoa(a.named)
	if _, err := a.conn.Prepare(ctx, name, sql, nil); err != nil {
		return "", fmt.Errorf("prepare %s in the target: %w", sql, err)
	}
	a.prepared[sql] = name
	return name, nil
}

// applied reports whether the target already holds a shard transaction:
// one that committed before the shard's position.
func applied(t *logical.Txn, at pglogrepl.LSN) bool { return t.CommitLSN < at }

// intArray writes a list as an int[] literal; nil is NULL (nothing
// recorded: the table moves nothing).
func intArray(list []int) []byte {
	if list == nil {
		return nil
	}
	out := []byte{'{'}
	for i, p := range list {
		if i > 0 {
			out = append(out, ',')
		}
		out = strconv.AppendInt(out, int64(p), 10)
	}
	return append(out, '}')
}
