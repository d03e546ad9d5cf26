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

// statements turns a shard transaction into the target's statements.
func statements(shard string, t *logical.Txn) []stmt {
	out := make([]stmt, 0, len(t.Changes))
	for i := range t.Changes {
		c := &t.Changes[i]
		if c.Kind == 'T' {
			for _, rel := range c.Truncate {
				out = append(out, stmt{sql: "DELETE FROM " + ident(rel) + " WHERE " + shardColumn + " = $1", params: [][]byte{[]byte(shard)}})
			}
			continue
		}
		out = append(out, rowStatement(shard, c))
	}
	return out
}

func ident(rel *logical.Relation) string {
	return pgx.Identifier{rel.Table.Schema, rel.Table.Name}.Sanitize()
}

// rowStatement builds the upsert, update or delete for a row change.
func rowStatement(shard string, c *logical.Change) stmt {
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

// batchStatements is how many statements go to the target in one round
// trip.
const batchStatements = 500

// apply runs a shard transaction's statements in the target, with the
// shard's new position, in one target transaction.
func apply(ctx context.Context, target *pgx.Conn, shard string, t *logical.Txn) error {
	stmts := statements(shard, t)
	stmts = append(stmts, stmt{
		sql:    "UPDATE pgrouter.fanin_state SET lsn = $1::text::pg_lsn, synced_to = $2::text::timestamptz, updated_at = now() WHERE shard = $3",
		params: [][]byte{[]byte(t.EndLSN.String()), []byte(t.Time.UTC().Format("2006-01-02 15:04:05.999999Z07:00")), []byte(shard)},
	})
	conn := target.PgConn()
	if len(stmts) <= batchStatements {
		// One Sync: the batch is one implicit transaction.
		return run(ctx, conn, stmts)
	}
	if err := conn.Exec(ctx, "BEGIN").Close(); err != nil {
		return err
	}
	for len(stmts) > 0 {
		n := min(len(stmts), batchStatements)
		if err := run(ctx, conn, stmts[:n]); err != nil {
			_ = conn.Exec(context.WithoutCancel(ctx), "ROLLBACK").Close()
			return err
		}
		stmts = stmts[n:]
	}
	return conn.Exec(ctx, "COMMIT").Close()
}

// run sends statements in one round trip.
func run(ctx context.Context, conn *pgconn.PgConn, stmts []stmt) error {
	b := &pgconn.Batch{}
	for _, s := range stmts {
		b.ExecParams(s.sql, s.params, nil, nil, nil)
	}
	results, err := conn.ExecBatch(ctx, b).ReadAll()
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

// applied reports whether the target already holds a shard transaction:
// one that committed before the shard's position.
func applied(t *logical.Txn, at pglogrepl.LSN) bool { return t.CommitLSN < at }
