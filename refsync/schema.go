package refsync

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgrouter/pgrouter/config"
	"github.com/pgrouter/pgrouter/logical"
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
			if !st.fresh && slices.Contains(tables, t) {
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

// ensureTable creates a reference table on a shard when it is missing and
// puts the write guard on it.
func ensureTable(ctx context.Context, shard pgx.Tx, d *logical.TableDef) error {
	ident := pgx.Identifier{d.Name.Schema, d.Name.Name}.Sanitize()
	var exists bool
	if err := shard.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, ident).Scan(&exists); err != nil {
		return fmt.Errorf("look for %s: %w", d.Name, err)
	}
	if !exists {
		if _, err := shard.Exec(ctx, d.CreateSQL()); err != nil {
			return fmt.Errorf("create %s from the source's definition (types and schemas it uses must exist on the shard): %w", d.Name, err)
		}
	}
	// The guard is a statement trigger, so a refsync batch pays for it once
	// per statement and an application write fails before touching a row.
	var guarded bool
	if err := shard.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_trigger WHERE tgrelid = $1::regclass AND tgname = 'pgrouter_refsync_guard')`, ident).Scan(&guarded); err != nil {
		return fmt.Errorf("look for the write guard on %s: %w", d.Name, err)
	}
	if !guarded {
		if _, err := shard.Exec(ctx, "CREATE TRIGGER pgrouter_refsync_guard BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON "+ident+
			" FOR EACH STATEMENT EXECUTE FUNCTION pgrouter.refsync_guard()"); err != nil {
			return fmt.Errorf("put the write guard on %s: %w", d.Name, err)
		}
	}
	return nil
}

// isUndefinedTable says whether err is PostgreSQL's 42P01.
func isUndefinedTable(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == sqlstate.UndefinedTable
}
