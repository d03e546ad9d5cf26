package refsync

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"

	"github.com/pgrouter/pgrouter/logical"
)

// Batch limits: how much of the stream one shard transaction may take, and
// how many statements go to the server in one round trip.
const (
	maxBatchTxns    = 1000
	maxBatchChanges = 20000
	pipelineDepth   = 2000
	maxPrepared     = 500
)

// applier applies source transactions to one shard over one connection.
type applier struct {
	conn     *pgx.Conn
	slot     string
	log      *zap.Logger
	lsn      pglogrepl.LSN              // the shard's refsync_state.lsn
	tables   map[tableKey]pglogrepl.LSN // copied_lsn per table
	prepared map[string]string          // SQL -> prepared statement name
	named    int                        // statements prepared on this connection: names are never reused
	maxPrep  int                        // cache size (0: maxPrepared)
	missed   int64                      // updates and deletes that found no row
}

type tableKey = struct{ Schema, Name string }

// apply applies a batch of transactions (in stream order) in one shard
// transaction that also moves refsync_state.lsn to the last one's end.
// Transactions the shard already holds (commitLSN below its lsn, seen again
// after a restart of the stream) are skipped, and so are changes of a table
// copied after they committed.
func (a *applier) apply(ctx context.Context, batch []*logical.Txn) error {
	var stmts []stmt
	last := a.lsn
	var lastTime string
	for _, t := range batch {
		if t.CommitLSN < last {
			continue
		}
		for i := range t.Changes {
			if s, ok := a.statement(&t.Changes[i], t.CommitLSN); ok {
				stmts = append(stmts, s)
			}
		}
		last, lastTime = t.EndLSN, t.Time.UTC().Format("2006-01-02 15:04:05.999999Z07:00")
		if len(t.Changes) > 0 {
		}
	}
	if last == a.lsn {
		return nil
	}
	if _, err := a.conn.Exec(ctx, "BEGIN"); err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			_, _ = a.conn.Exec(context.WithoutCancel(ctx), "ROLLBACK")
		}
	}()
	for len(stmts) > 0 {
		n := min(len(stmts), pipelineDepth)
		if err := a.run(ctx, stmts[:n]); err != nil {
			return err
		}
		stmts = stmts[n:]
	}
	tag, err := a.conn.Exec(ctx, `UPDATE pgrouter.refsync_state SET lsn = $2::text::pg_lsn, synced_to = $3::text::timestamptz, updated_at = now() WHERE slot = $1`,
		a.slot, last.String(), lastTime)
	if err != nil {
		return fmt.Errorf("record position %s in pgrouter.refsync_state: %w", last, err)
	}
	if tag.RowsAffected() != 1 {
		return fmt.Errorf("the shard's pgrouter.refsync_state row for slot %s is gone: refsync copies the shard again", a.slot)
	}
	if _, err := a.conn.Exec(ctx, "COMMIT"); err != nil {
		return fmt.Errorf("commit up to %s: %w", last, err)
	}
	ok = true
	a.lsn = last
	return nil
}

// stmt is one statement of a batch, its text parameters and, for updates and
// deletes, the row it was meant to change (to report when it found none).
type stmt struct {
	sql    string
	params [][]byte
	want   string // "" when any row count is fine
}

// run sends statements in one round trip inside the open transaction.
func (a *applier) run(ctx context.Context, stmts []stmt) error {
	// Statements are prepared as the batch is built, so the cache may only
	// be emptied before: a name in the batch must still mean its statement.
	if len(a.prepared) >= a.preparedLimit() {
		var sb strings.Builder
		for _, name := range a.prepared { // only ours: pgx caches its own statements on this connection
			sb.WriteString("DEALLOCATE " + name + ";")
		}
		if _, err := a.conn.PgConn().Exec(ctx, sb.String()).ReadAll(); err != nil {
			return fmt.Errorf("deallocate: %w", err)
		}
		clear(a.prepared)
	}
	b := &pgconn.Batch{}
	for _, s := range stmts {
		name, err := a.prepare(ctx, s.sql)
		if err != nil {
			return err
		}
		b.ExecPrepared(name, s.params, nil, nil)
	}
	results, err := a.conn.PgConn().ExecBatch(ctx, b).ReadAll()
	if err != nil {
		return fmt.Errorf("apply: %w", err)
	}
	for i, r := range results {
		if r.Err != nil {
			return fmt.Errorf("apply %s: %w", stmts[i].sql, r.Err)
		}
		if stmts[i].want != "" && r.CommandTag.RowsAffected() == 0 {
			a.missed++
			a.log.Warn("a replicated change found no row on the shard: its copy differs from the source (delete its pgrouter.refsync_tables row to copy the table again)",
				zap.String("change", stmts[i].want), zap.Int64("missed", a.missed))
		}
	}
	return nil
}

func (a *applier) preparedLimit() int {
	if a.maxPrep > 0 {
		return a.maxPrep
	}
	return maxPrepared
}

// prepare returns the name of a prepared statement for sql, preparing it
// with parameter types left to the server (the stream's values are text).
func (a *applier) prepare(ctx context.Context, sql string) (string, error) {
	if name, ok := a.prepared[sql]; ok {
		return name, nil
	}
	a.named++
	name := "refsync_" + strconv.Itoa(a.named)
	if _, err := a.conn.PgConn().Prepare(ctx, name, sql, nil); err != nil {
		return "", fmt.Errorf("prepare %s: %w", sql, err)
	}
	a.prepared[sql] = name
	return name, nil
}

// statement turns a change into SQL for the shard; ok is false when the
// shard must skip it (its table was copied after the change committed).
func (a *applier) statement(c *logical.Change, commit pglogrepl.LSN) (stmt, bool) {
	if c.Kind == 'T' {
		var names []string
		for _, rel := range c.Truncate {
			if commit >= a.tables[tableKey(rel.Table)] {
				names = append(names, ident(rel))
			}
		}
		if len(names) == 0 {
			return stmt{}, false
		}
		sql := "TRUNCATE " + strings.Join(names, ", ")
		if c.RestartIdentity {
			sql += " RESTART IDENTITY"
		}
		return stmt{sql: sql}, true
	}
	copied, ok := a.tables[tableKey(c.Rel.Table)]
	if !ok || commit < copied {
		return stmt{}, false
	}
	return rowStatement(c), true
}

func ident(rel *logical.Relation) string {
	return pgx.Identifier{rel.Table.Schema, rel.Table.Name}.Sanitize()
}

// rowStatement builds the INSERT, UPDATE or DELETE for a row change. Rows
// are found by key; an update that changed the key carries the old one.
func rowStatement(c *logical.Change) stmt {
	rel := c.Rel
	var sb strings.Builder
	var params [][]byte
	param := func(v logical.Value) string {
		params = append(params, v.Text)
		return "$" + strconv.Itoa(len(params))
	}
	where := func(key []logical.Value) {
		sb.WriteString(" WHERE ")
		for i, k := range rel.KeyCols {
			if i > 0 {
				sb.WriteString(" AND ")
			}
			sb.WriteString(pgx.Identifier{rel.Columns[k]}.Sanitize())
			if key[k].Kind == 'n' {
				sb.WriteString(" IS NULL")
			} else {
				sb.WriteString(" = " + param(key[k]))
			}
		}
	}
	switch c.Kind {
	case 'I':
		sb.WriteString("INSERT INTO " + ident(rel) + " (")
		var vals []string
		for i, v := range c.Row {
			if v.Kind == 'u' {
				continue
			}
			if len(vals) > 0 {
				sb.WriteString(", ")
			}
			sb.WriteString(pgx.Identifier{rel.Columns[i]}.Sanitize())
			vals = append(vals, param(v))
		}
		sb.WriteString(") VALUES (" + strings.Join(vals, ", ") + ")")
		return stmt{sql: sb.String(), params: params}
	case 'U':
		sb.WriteString("UPDATE " + ident(rel) + " SET ")
		n := 0
		for i, v := range c.Row {
			if v.Kind == 'u' { // unchanged TOAST value: the shard has it already
				continue
			}
			if n > 0 {
				sb.WriteString(", ")
			}
			n++
			sb.WriteString(pgx.Identifier{rel.Columns[i]}.Sanitize() + " = " + param(v))
		}
		key := c.Old
		if key == nil {
			key = c.Row
		}
		where(key)
		return stmt{sql: sb.String(), params: params, want: "update of " + rel.Table.String() + describeKey(rel, key)}
	default: // 'D'
		sb.WriteString("DELETE FROM " + ident(rel))
		where(c.Old)
		return stmt{sql: sb.String(), params: params, want: "delete from " + rel.Table.String() + describeKey(rel, c.Old)}
	}
}

func describeKey(rel *logical.Relation, key []logical.Value) string {
	var parts []string
	for _, k := range rel.KeyCols {
		v := "NULL"
		if key[k].Kind == 't' {
			v = string(key[k].Text)
		}
		parts = append(parts, rel.Columns[k]+"="+v)
	}
	return " where " + strings.Join(parts, ", ")
}
