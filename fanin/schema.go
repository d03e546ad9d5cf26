package fanin

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

// What fan-in keeps in the target. A shard's state row and the rows it
// applies change in the same transaction, which is what makes a restart of
// fanin, of a shard or of the target lose and repeat nothing: the target
// holds every transaction of the shard that committed before its lsn and
// none after it.
const targetSchemaSQL = `
SELECT pg_advisory_xact_lock(hashtext('pgrouter fanin schema'));
CREATE SCHEMA IF NOT EXISTS pgrouter;
CREATE TABLE IF NOT EXISTS pgrouter.fanin_state (
	shard text PRIMARY KEY,
	slot text NOT NULL,
	lsn pg_lsn,                  -- every shard transaction committed before it is applied; NULL: not copied yet
	copied_rows bigint NOT NULL DEFAULT 0,
	copied_at timestamptz,
	synced_to timestamptz,       -- the shard's clock at lsn
	updated_at timestamptz NOT NULL DEFAULT now());
-- The partitions the shard holds (owned, moving, frozen) and still writes
-- in (owned, moving) at lsn, for the cluster's sharded tables (partitions.go).
ALTER TABLE pgrouter.fanin_state ADD COLUMN IF NOT EXISTS holds int[], ADD COLUMN IF NOT EXISTS writes int[];
CREATE OR REPLACE FUNCTION pgrouter.fanin_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF current_setting('pgrouter.fanin', true) IS DISTINCT FROM 'on' THEN
		RAISE EXCEPTION '%.% is the central copy of a sharded table, kept by pgrouter fanin', TG_TABLE_SCHEMA, TG_TABLE_NAME
			USING ERRCODE = '25006',
			HINT = 'Write to the shards (through pgrouter); fanin applies every shard''s changes here.';
	END IF;
	RETURN NULL;
END $$;`

// shardColumn is the column of every central table that names the shard a
// row came from: a change from a shard applies only to its own rows.
const shardColumn = "pgrouter_shard"

// state is what the target says about one shard.
type state struct {
	copied bool // the initial copy is done: stream from lsn
	lsn    pglogrepl.LSN
	// holds and writes are the partitions the shard held at lsn (nil: not
	// recorded).
	holds, writes []int
}

// setupTarget creates fan-in's schema in the target and reads the shard's
// state.
func setupTarget(ctx context.Context, target *pgx.Conn, shard, slot string) (state, error) {
	var st state
	err := pgx.BeginFunc(ctx, target, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, targetSchemaSQL); err != nil {
			return fmt.Errorf("create pgrouter.fanin_state in the target: %w", err)
		}
		var lsn *string
		err := tx.QueryRow(ctx, `SELECT lsn::text, holds, writes FROM pgrouter.fanin_state WHERE shard = $1`, shard).Scan(&lsn, &st.holds, &st.writes)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			_, err = tx.Exec(ctx, `INSERT INTO pgrouter.fanin_state (shard, slot) VALUES ($1, $2)`, shard, slot)
			return err
		case err != nil:
			return err
		case lsn != nil:
			st.copied = true
			st.lsn, err = pglogrepl.ParseLSN(*lsn)
		}
		return err
	})
	return st, err
}

// ensureTable creates a central table from a shard's definition when it is
// missing, adds the shard column, and puts the write guard on it.
func ensureTable(ctx context.Context, tx pgx.Tx, d *logical.TableDef) error {
	ident := pgx.Identifier{d.Name.Schema, d.Name.Name}.Sanitize()
	var exists bool
	if err := tx.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, ident).Scan(&exists); err != nil {
		return fmt.Errorf("look for %s in the target: %w", d.Name, err)
	}
	if !exists {
		if _, err := tx.Exec(ctx, d.CreateSQL()); err != nil {
			return fmt.Errorf("create %s in the target from the shard's definition (types and schemas it uses must exist there): %w", d.Name, err)
		}
	}
	if _, err := tx.Exec(ctx, "ALTER TABLE "+ident+" ADD COLUMN IF NOT EXISTS "+shardColumn+" text"); err != nil {
		return fmt.Errorf("add %s to %s in the target: %w", shardColumn, d.Name, err)
	}
	var guarded bool
	if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_trigger WHERE tgrelid = $1::regclass AND tgname = 'pgrouter_fanin_guard')`, ident).Scan(&guarded); err != nil {
		return fmt.Errorf("look for the write guard on %s: %w", d.Name, err)
	}
	if !guarded {
		if _, err := tx.Exec(ctx, "CREATE TRIGGER pgrouter_fanin_guard BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON "+ident+
			" FOR EACH STATEMENT EXECUTE FUNCTION pgrouter.fanin_guard()"); err != nil {
			return fmt.Errorf("put the write guard on %s: %w", d.Name, err)
		}
	}
	return nil
}

// ensurePublication creates the shard's publication of the tables, or adds
// tables missing from it.
func ensurePublication(ctx context.Context, shard *pgx.Conn, name string, tables []config.TableName) error {
	// A publication FOR TABLE may not list a table twice.
	tables = slices.Compact(slices.Clone(tables))
	var exists bool
	if err := shard.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_publication WHERE pubname = $1)`, name).Scan(&exists); err != nil {
		return fmt.Errorf("look for publication %s: %w", name, err)
	}
	var idents []string
	for _, t := range tables {
		var in bool
		if exists {
			if err := shard.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_publication_tables WHERE pubname = $1 AND schemaname = $2 AND tablename = $3)`,
				name, t.Schema, t.Name).Scan(&in); err != nil {
				return fmt.Errorf("read publication %s: %w", name, err)
			}
		}
		if !in {
			idents = append(idents, pgx.Identifier{t.Schema, t.Name}.Sanitize())
		}
	}
	if len(idents) == 0 {
		return nil
	}
	sql := "CREATE PUBLICATION " + pgx.Identifier{name}.Sanitize() + " FOR TABLE "
	if exists {
		sql = "ALTER PUBLICATION " + pgx.Identifier{name}.Sanitize() + " ADD TABLE "
	}
	for i, id := range idents {
		if i > 0 {
			sql += ", "
		}
		sql += id
	}
	if _, err := shard.Exec(ctx, sql); err != nil {
		return fmt.Errorf("publish the tables on the shard (needs the owner of the tables or a superuser): %w", err)
	}
	return nil
}

// isUndefinedTable says whether err is PostgreSQL's 42P01 (no fan-in has
// run against the target yet).
func isUndefinedTable(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == sqlstate.UndefinedTable
}
