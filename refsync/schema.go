package refsync

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgrouter/pgrouter/config"
	"github.com/pgrouter/pgrouter/sqlstate"
)

// What refsync keeps on every shard. The state row and the rows it applies
// change in the same transaction, which is what makes a restart of refsync,
// of a shard or of the source lose and repeat nothing: a shard holds every
// source transaction that committed before its lsn and none after it.
const shardSchemaSQL = `
SELECT pg_advisory_xact_lock(hashtext('pgrouter refsync schema'));
CREATE SCHEMA IF NOT EXISTS pgrouter;
CREATE TABLE IF NOT EXISTS pgrouter.refsync_state (
	slot text PRIMARY KEY,
	lsn pg_lsn NOT NULL,         -- every source transaction committed before it is applied here
	synced_to timestamptz,       -- the source's clock when it was at lsn
	updated_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS pgrouter.refsync_tables (
	slot text NOT NULL,
	table_schema text NOT NULL,
	table_name text NOT NULL,
	copied_lsn pg_lsn NOT NULL,  -- the snapshot the table was copied at; older changes are in the copy
	copied_rows bigint NOT NULL,
	copied_at timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (slot, table_schema, table_name));
CREATE OR REPLACE FUNCTION pgrouter.refsync_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF current_setting('pgrouter.refsync', true) IS DISTINCT FROM 'on' THEN
		RAISE EXCEPTION '%.% is a reference table, replicated to every shard by pgrouter refsync', TG_TABLE_SCHEMA, TG_TABLE_NAME
			USING ERRCODE = '25006',
			HINT = 'Write to it in the reference source database (reference.source in router.yaml); refsync applies the change to every shard.';
	END IF;
	RETURN NULL;
END $$;`

// shardState is what a shard's pgrouter tables say about one slot.
type shardState struct {
	fresh  bool // no state row: the shard needs every table copied
	lsn    pglogrepl.LSN
	tables map[config.TableName]pglogrepl.LSN // copied_lsn per table
}

// setupShard creates refsync's tables and guard function on a shard, forgets
// tables that are no longer configured (so adding one back copies it again)
// and reads the shard's position.
func setupShard(ctx context.Context, conn *pgx.Conn, slot string, tables []config.TableName) (shardState, error) {
	st := shardState{tables: map[config.TableName]pglogrepl.LSN{}}
	err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, shardSchemaSQL); err != nil {
			return fmt.Errorf("create refsync's tables in schema pgrouter: %w", err)
		}
		err := tx.QueryRow(ctx, `SELECT lsn::text FROM pgrouter.refsync_state WHERE slot = $1`, slot).Scan(&st.lsn)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			st.fresh = true
		case err != nil:
			return fmt.Errorf("read pgrouter.refsync_state: %w", err)
		}
		rows, err := tx.Query(ctx, `SELECT table_schema, table_name, copied_lsn::text FROM pgrouter.refsync_tables WHERE slot = $1`, slot)
		if err != nil {
			return fmt.Errorf("read pgrouter.refsync_tables: %w", err)
		}
		var forget []config.TableName
		for rows.Next() {
			var t config.TableName
			var lsn pglogrepl.LSN
			if err := rows.Scan(&t.Schema, &t.Name, &lsn); err != nil {
				return fmt.Errorf("read pgrouter.refsync_tables: %w", err)
			}
			if !st.fresh && configured(tables, t) {
				st.tables[t] = lsn
			} else {
				forget = append(forget, t)
			}
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("read pgrouter.refsync_tables: %w", err)
		}
		for _, t := range forget {
			if _, err := tx.Exec(ctx, `DELETE FROM pgrouter.refsync_tables WHERE slot = $1 AND table_schema = $2 AND table_name = $3`, slot, t.Schema, t.Name); err != nil {
				return fmt.Errorf("forget %s in pgrouter.refsync_tables: %w", t, err)
			}
		}
		return nil
	})
	return st, err
}

func configured(tables []config.TableName, t config.TableName) bool {
	for _, c := range tables {
		if c == t {
			return true
		}
	}
	return false
}

// tableDef is a source table's definition, read inside the copy snapshot.
type tableDef struct {
	name    config.TableName
	columns []columnDef
	keyDDL  string   // constraint or index clause that gives the shard copy its key
	key     []string // key column names, in key order
}

type columnDef struct {
	name, typ string
	notNull   bool
	generated string // expression of a stored generated column, else ""
}

// copied are the columns a copy and the stream carry: pgoutput leaves out
// generated columns, which the shard computes itself.
func (d *tableDef) copied() []string {
	var out []string
	for _, c := range d.columns {
		if c.generated == "" {
			out = append(out, c.name)
		}
	}
	return out
}

// querier is a connection or a transaction.
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// readTableDef reads a table's columns and key from the source catalogs.
func readTableDef(ctx context.Context, src querier, t config.TableName) (*tableDef, error) {
	d := &tableDef{name: t}
	ident := pgx.Identifier{t.Schema, t.Name}.Sanitize()
	rows, err := src.Query(ctx, `SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
			CASE WHEN a.attgenerated = 's' THEN pg_get_expr(d.adbin, d.adrelid) ELSE '' END
		FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
		WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum`, ident)
	if err != nil {
		return nil, fmt.Errorf("read the columns of %s on the source: %w", t, err)
	}
	for rows.Next() {
		var c columnDef
		if err := rows.Scan(&c.name, &c.typ, &c.notNull, &c.generated); err != nil {
			return nil, fmt.Errorf("read the columns of %s on the source: %w", t, err)
		}
		d.columns = append(d.columns, c)
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
		ORDER BY i.indisreplident DESC LIMIT 1`, ident).Scan(&primary, &conname, &condef, &indexdef, &d.key)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("%s has no primary key or replica identity index on the source: add a primary key", t)
	}
	if err != nil {
		return nil, fmt.Errorf("read the key of %s on the source: %w", t, err)
	}
	if primary {
		d.keyDDL = fmt.Sprintf("CONSTRAINT %s %s", pgx.Identifier{conname}.Sanitize(), condef)
	} else {
		d.keyDDL = indexdef
	}
	return d, nil
}

// createSQL creates the table on a shard: columns, NOT NULL, generated
// columns and the key. Defaults, checks and foreign keys stay on the source,
// where the rows are written.
func (d *tableDef) createSQL() string {
	ident := pgx.Identifier{d.name.Schema, d.name.Name}.Sanitize()
	var cols []string
	for _, c := range d.columns {
		col := pgx.Identifier{c.name}.Sanitize() + " " + c.typ
		if c.generated != "" {
			col += " GENERATED ALWAYS AS (" + c.generated + ") STORED"
		}
		if c.notNull {
			col += " NOT NULL"
		}
		cols = append(cols, col)
	}
	sql := fmt.Sprintf("CREATE SCHEMA IF NOT EXISTS %s; ", pgx.Identifier{d.name.Schema}.Sanitize())
	if strings.HasPrefix(d.keyDDL, "CONSTRAINT ") {
		return sql + fmt.Sprintf("CREATE TABLE %s (%s, %s)", ident, strings.Join(cols, ", "), d.keyDDL)
	}
	return sql + fmt.Sprintf("CREATE TABLE %s (%s); %s", ident, strings.Join(cols, ", "), d.keyDDL)
}

// ensureTable creates a reference table on a shard when it is missing and
// puts the write guard on it.
func ensureTable(ctx context.Context, shard pgx.Tx, d *tableDef) error {
	ident := pgx.Identifier{d.name.Schema, d.name.Name}.Sanitize()
	var exists bool
	if err := shard.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, ident).Scan(&exists); err != nil {
		return fmt.Errorf("look for %s: %w", d.name, err)
	}
	if !exists {
		if _, err := shard.Exec(ctx, d.createSQL()); err != nil {
			return fmt.Errorf("create %s from the source's definition (types and schemas it uses must exist on the shard): %w", d.name, err)
		}
	}
	// The guard is a statement trigger, so a refsync batch pays for it once
	// per statement and an application write fails before touching a row.
	var guarded bool
	if err := shard.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_trigger WHERE tgrelid = $1::regclass AND tgname = 'pgrouter_refsync_guard')`, ident).Scan(&guarded); err != nil {
		return fmt.Errorf("look for the write guard on %s: %w", d.name, err)
	}
	if !guarded {
		if _, err := shard.Exec(ctx, "CREATE TRIGGER pgrouter_refsync_guard BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON "+ident+
			" FOR EACH STATEMENT EXECUTE FUNCTION pgrouter.refsync_guard()"); err != nil {
			return fmt.Errorf("put the write guard on %s: %w", d.name, err)
		}
	}
	return nil
}

// isUndefinedTable says whether err is PostgreSQL's 42P01.
func isUndefinedTable(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == sqlstate.UndefinedTable
}
