package logical

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/pgrouter/pgrouter/config"
)

// TableDef is a replicated table's definition, read on the database the
// rows come from (inside the copy's snapshot), to create it where they go.
type TableDef struct {
	Name    config.TableName
	Columns []ColumnDef
	KeyDDL  string   // constraint or index clause that gives a copy its key
	Key     []string // key column names, in key order
}

// ColumnDef is one column of a TableDef.
type ColumnDef struct {
	Name, Type string
	NotNull    bool
	Generated  string // expression of a stored generated column, else ""
}

// Copied are the columns a copy and the stream carry: pgoutput leaves out
// generated columns, which the shard computes itself.
func (d *TableDef) Copied() []string {
	var out []string
	for _, c := range d.Columns {
		if c.Generated == "" {
			out = append(out, c.Name)
		}
	}
	return out
}

// Querier is a connection or a transaction.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// ReadTableDef reads a table's columns and key from the source catalogs.
func ReadTableDef(ctx context.Context, src Querier, t config.TableName) (*TableDef, error) {
	d := &TableDef{Name: t}
	ident := pgx.Identifier{t.Schema, t.Name}.Sanitize()
	rows, err := src.Query(ctx, `SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
			CASE WHEN a.attgenerated = 's' THEN pg_get_expr(d.adbin, d.adrelid) ELSE '' END
		FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
		WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum`, ident)
	if err != nil {
		return nil, fmt.Errorf("read the columns of %s on the source: %w", t, err)
	}
	for rows.Next() {
		var c ColumnDef
		if err := rows.Scan(&c.Name, &c.Type, &c.NotNull, &c.Generated); err != nil {
			return nil, fmt.Errorf("read the columns of %s on the source: %w", t, err)
		}
		d.Columns = append(d.Columns, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read the columns of %s on the source: %w", t, err)
	}
	// The key that replicated updates and deletes find rows by: the primary
	// key, or the replica identity index (the preflight refused tables with
	// neither). A primary key also serves REPLICA IDENTITY FULL tables, whose
	// old rows would otherwise be matched on every column.
	var primary bool
	var conname, condef, indexdef string
	err = src.QueryRow(ctx, `SELECT i.indisprimary, coalesce(con.conname, ''), coalesce(pg_get_constraintdef(con.oid), ''), pg_get_indexdef(i.indexrelid),
			array(SELECT a.attname FROM unnest(i.indkey) WITH ORDINALITY k(attnum, n)
				JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum ORDER BY k.n)
		FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
		LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid AND con.contype = 'p'
		WHERE i.indrelid = $1::regclass AND (i.indisprimary AND c.relreplident IN ('d', 'f') OR i.indisreplident AND c.relreplident = 'i')
		ORDER BY i.indisreplident DESC LIMIT 1`, ident).Scan(&primary, &conname, &condef, &indexdef, &d.Key)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("%s has no primary key or replica identity index on the source: add a primary key", t)
	}
	if err != nil {
		return nil, fmt.Errorf("read the key of %s on the source: %w", t, err)
	}
	if primary {
		d.KeyDDL = fmt.Sprintf("CONSTRAINT %s %s", pgx.Identifier{conname}.Sanitize(), condef)
	} else {
		d.KeyDDL = indexdef
	}
	return d, nil
}

// CreateSQL creates the table where the rows go: columns, NOT NULL, generated
// columns and the key. Defaults, checks and foreign keys stay on the source,
// where the rows are written.
func (d *TableDef) CreateSQL() string {
	ident := pgx.Identifier{d.Name.Schema, d.Name.Name}.Sanitize()
	var cols []string
	for _, c := range d.Columns {
		col := pgx.Identifier{c.Name}.Sanitize() + " " + c.Type
		if c.Generated != "" {
			col += " GENERATED ALWAYS AS (" + c.Generated + ") STORED"
		}
		if c.NotNull {
			col += " NOT NULL"
		}
		cols = append(cols, col)
	}
	sql := fmt.Sprintf("CREATE SCHEMA IF NOT EXISTS %s; ", pgx.Identifier{d.Name.Schema}.Sanitize())
	if strings.HasPrefix(d.KeyDDL, "CONSTRAINT ") {
		return sql + fmt.Sprintf("CREATE TABLE %s (%s, %s)", ident, strings.Join(cols, ", "), d.KeyDDL)
	}
	return sql + fmt.Sprintf("CREATE TABLE %s (%s); %s", ident, strings.Join(cols, ", "), d.KeyDDL)
}
