// Package ownership records on the shards themselves which shard holds
// which partitions of a cluster, and guards the cluster's sharded tables
// so that a shard refuses writes to rows of partitions it does not hold.
// A router with a stale map (an old router.yaml, a peer that missed a
// reload) then gets a retryable error (40001) instead of writing to the
// old shard, and every router reads the recorded ownership at start and
// reload, so a map changed by pgrouter move survives restarts.
//
// A shard holds partition p of cluster c when pgrouter.partitions has a
// row (c, p) on it, in one of three states: owned (it serves p), moving
// (it serves p, and the keys of rows written in p are logged in
// pgrouter.move_log for the move copying p elsewhere) and frozen (a move's
// cut-over: writes in p are refused). No row: p is not its own.
//
// The guard is a row trigger generated per table: it computes the row's
// partition as the router does (hashtext for text keys, hashint4 or
// hashint8 for integer keys, masked by the partition count: the cluster
// must use hash: hashtext) and takes a FOR KEY SHARE lock on the partition
// row, so a move's cut-over (which locks it FOR UPDATE) waits for the
// transactions writing in p and is waited for by the next ones.
package ownership

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/pgrouter/pgrouter/config"
)

// States of a partition row.
const (
	Owned  = "owned"
	Moving = "moving"
	Frozen = "frozen"
)

// MovedPrefix starts the message of the guard's error, which routers
// recognise to read the ownership again.
const MovedPrefix = "pgrouter: partition "

// schemaSQL creates what the guard and moves use, idempotently.
const schemaSQL = `
CREATE SCHEMA IF NOT EXISTS pgrouter;
CREATE TABLE IF NOT EXISTS pgrouter.partitions (
	cluster text NOT NULL,
	partition int NOT NULL,
	state text NOT NULL CHECK (state IN ('owned', 'moving', 'frozen')),
	PRIMARY KEY (cluster, partition)
);
CREATE TABLE IF NOT EXISTS pgrouter.move_log (
	id bigserial PRIMARY KEY,
	cluster text NOT NULL,
	tbl text NOT NULL,
	pk jsonb NOT NULL
);
CREATE TABLE IF NOT EXISTS pgrouter.moves (
	cluster text PRIMARY KEY,
	partitions int[] NOT NULL,
	source text NOT NULL,
	target text NOT NULL,
	phase text NOT NULL,
	rows_copied bigint NOT NULL DEFAULT 0,
	started timestamptz NOT NULL DEFAULT now(),
	updated timestamptz NOT NULL DEFAULT now()
);
`

// Table is a sharded table as the shards have it.
type Table struct {
	config.TableName
	Key     string   // the key column
	KeyType string   // its type: text, varchar, bpchar, int2, int4 or int8
	PK      []string // primary key columns, in index order
	Columns []string // every column, in order
}

// Ident is the table's quoted name.
func (t *Table) Ident() string { return pgx.Identifier{t.Schema, t.Name}.Sanitize() }

// Describe reads a declared table from a shard: it must exist, have a
// primary key (moves apply changes by it) and a key column of a type the
// router and PostgreSQL hash alike.
func Describe(ctx context.Context, conn *pgx.Conn, t *config.Table) (*Table, error) {
	out := &Table{TableName: t.Table, Key: t.Key}
	var oid uint32
	if err := conn.QueryRow(ctx, `SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')`,
		t.Table.Schema, t.Table.Name).Scan(&oid); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return nil, fmt.Errorf("table %s does not exist (create it on every shard, as on the others: pg_dump --schema-only)", t.Table)
		}
		return nil, fmt.Errorf("table %s: %w", t.Table, err)
	}
	rows, err := conn.Query(ctx, `SELECT attname, format_type(atttypid, NULL) FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum`, oid)
	if err != nil {
		return nil, fmt.Errorf("table %s: %w", t.Table, err)
	}
	for rows.Next() {
		var name, typ string
		if err := rows.Scan(&name, &typ); err != nil {
			return nil, err
		}
		out.Columns = append(out.Columns, name)
		if name == t.Key {
			out.KeyType = typ
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("table %s: %w", t.Table, err)
	}
	switch out.KeyType {
	case "":
		return nil, fmt.Errorf("table %s has no column %s (its key in router.yaml)", t.Table, t.Key)
	case "text", "character varying", "character", "smallint", "integer", "bigint":
	default:
		return nil, fmt.Errorf("table %s: key column %s is %s: the router and the shards hash only text and integer keys alike (text, varchar, char, smallint, integer, bigint)", t.Table, t.Key, out.KeyType)
	}
	pk, err := conn.Query(ctx, `SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
		WHERE i.indrelid = $1 AND i.indisprimary ORDER BY array_position(i.indkey::int2[], a.attnum)`, oid)
	if err != nil {
		return nil, fmt.Errorf("table %s: %w", t.Table, err)
	}
	out.PK, err = pgx.CollectRows(pk, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("table %s: %w", t.Table, err)
	}
	if len(out.PK) == 0 {
		return nil, fmt.Errorf("table %s has no primary key: a move copies changes by it (ALTER TABLE %s ADD PRIMARY KEY (...))", t.Table, out.Ident())
	}
	return out, nil
}

// PartitionExpr is the SQL computing the partition of a row's key, from
// the column expression col (OLD.x, NEW.x, t.x), as the router computes it
// for hash: hashtext.
func (t *Table) PartitionExpr(col string, partitions int) string {
	switch t.KeyType {
	case "smallint", "integer":
		return fmt.Sprintf("(hashint4(%s::int4) & %d)", col, partitions-1)
	case "bigint":
		return fmt.Sprintf("(hashint8(%s) & %d)", col, partitions-1)
	}
	return fmt.Sprintf("(hashtext(%s::text) & %d)", col, partitions-1)
}

// guardName is the guard function of a table of a cluster, within
// PostgreSQL's 63-byte names.
func guardName(cluster string, t config.TableName) string {
	name := "guard_" + cluster + "_" + t.Schema + "_" + t.Name
	if len(name) > 63 {
		sum := sha256.Sum256([]byte(name))
		name = name[:50] + "_" + hex.EncodeToString(sum[:6])
	}
	return pgx.Identifier{"pgrouter", name}.Sanitize()
}

func literal(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// guardSQL is the guard function and trigger of one table on one shard.
func guardSQL(cluster, shard string, partitions int, t *Table) string {
	check := func(row string) string {
		part := t.PartitionExpr(row+"."+pgx.Identifier{t.Key}.Sanitize(), partitions)
		var pk []string
		for _, c := range t.PK {
			pk = append(pk, literal(c), row+"."+pgx.Identifier{c}.Sanitize())
		}
		return fmt.Sprintf(`
		SELECT state INTO st FROM pgrouter.partitions WHERE cluster = %[1]s AND partition = %[2]s FOR KEY SHARE;
		IF st IS NULL OR st = 'frozen' THEN
			RAISE EXCEPTION USING ERRCODE = '40001',
				MESSAGE = format('%[6]s%%s of cluster %%s is not on shard %%s: it moved, or is moving; retry the transaction', %[2]s, %[1]s, %[3]s),
				HINT = 'pgrouter reads where partitions are from the shards when it sees this error; a retry goes to the right shard.';
		END IF;
		IF st = 'moving' THEN
			INSERT INTO pgrouter.move_log (cluster, tbl, pk) VALUES (%[1]s, %[4]s, jsonb_build_object(%[5]s));
		END IF;`, literal(cluster), part, literal(shard), literal(t.Schema+"."+t.Name), strings.Join(pk, ", "), MovedPrefix)
	}
	fn := guardName(cluster, t.TableName)
	return fmt.Sprintf(`CREATE OR REPLACE FUNCTION %[1]s() RETURNS trigger LANGUAGE plpgsql AS $guard$
DECLARE
	st text;
BEGIN
	IF TG_OP IN ('UPDATE', 'DELETE') THEN%[2]s
	END IF;
	IF TG_OP IN ('INSERT', 'UPDATE') THEN%[3]s
	END IF;
	IF TG_OP = 'DELETE' THEN
		RETURN OLD;
	END IF;
	RETURN NEW;
END
$guard$;
DROP TRIGGER IF EXISTS pgrouter_owner_guard ON %[4]s;
CREATE TRIGGER pgrouter_owner_guard BEFORE INSERT OR UPDATE OR DELETE ON %[4]s FOR EACH ROW EXECUTE FUNCTION %[1]s();
`, fn, check("OLD"), check("NEW"), t.Ident())
}

// Install creates the ownership tables on a shard, records the partitions
// it holds when it records none yet for the cluster (the map router.yaml
// gives), and creates or replaces the guards of the tables. It is
// idempotent; ownership already recorded is kept.
func Install(ctx context.Context, conn *pgx.Conn, cluster, shard string, partitions int, held []int, tables []*Table) error {
	tx, err := beginSchema(ctx, conn)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	var recorded bool
	if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pgrouter.partitions WHERE cluster = $1)", cluster).Scan(&recorded); err != nil {
		return err
	}
	if !recorded {
		for _, p := range held {
			if _, err := tx.Exec(ctx, "INSERT INTO pgrouter.partitions (cluster, partition, state) VALUES ($1, $2, 'owned')", cluster, p); err != nil {
				return fmt.Errorf("record partition %d: %w", p, err)
			}
		}
	}
	for _, t := range tables {
		if _, err := tx.Exec(ctx, guardSQL(cluster, shard, partitions, t)); err != nil {
			return fmt.Errorf("guard %s: %w", t.TableName, err)
		}
	}
	return tx.Commit(ctx)
}

// EnsureSchema creates the ownership tables on a shard (empty: no
// ownership recorded), for a reader that must publish them before any move
// has run (pgrouter fanin).
func EnsureSchema(ctx context.Context, conn *pgx.Conn) error {
	tx, err := beginSchema(ctx, conn)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	return tx.Commit(ctx)
}

// beginSchema begins a transaction in which the ownership tables exist,
// one installer at a time per shard (CREATE ... IF NOT EXISTS races).
func beginSchema(ctx context.Context, conn *pgx.Conn) (pgx.Tx, error) {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(hashtext('pgrouter.ownership'))"); err != nil {
		_ = tx.Rollback(context.WithoutCancel(ctx))
		return nil, err
	}
	if _, err := tx.Exec(ctx, schemaSQL); err != nil {
		_ = tx.Rollback(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("create the pgrouter schema: %w", err)
	}
	return tx, nil
}

// Read returns the partitions of a cluster a shard holds (owned or
// moving; frozen ones it no longer serves); recorded is false when the
// shard records nothing for the cluster (no move ever ran: router.yaml's
// map holds).
func Read(ctx context.Context, conn *pgx.Conn, cluster string) (held []int, recorded bool, err error) {
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT to_regclass('pgrouter.partitions') IS NOT NULL").Scan(&exists); err != nil || !exists {
		return nil, false, err
	}
	err = conn.QueryRow(ctx, `SELECT count(*) > 0, coalesce(array_agg(partition ORDER BY partition) FILTER (WHERE state <> 'frozen'), '{}')
		FROM pgrouter.partitions WHERE cluster = $1`, cluster).Scan(&recorded, &held)
	return held, recorded, err
}

// Owners merges what the shards of a cluster record (shard name: the
// partitions it holds) into a partition -> shard map. A partition no shard
// holds (frozen in a cut-over, or never recorded) is absent; one two shards
// claim is an error, which a router reports and ignores.
func Owners(held map[string][]int) (map[int]string, error) {
	out := map[int]string{}
	names := make([]string, 0, len(held))
	for name := range held {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		for _, p := range held[name] {
			if prev, dup := out[p]; dup {
				return nil, fmt.Errorf("partition %d is recorded as held by both %s and %s", p, prev, name)
			}
			out[p] = name
		}
	}
	return out, nil
}
