package refsync

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgrouter/pgrouter/config"
	"github.com/pgrouter/pgrouter/logical"
)

// Progress reports an initial copy while it runs (about once a second) and
// when it ends.
type Progress = logical.Progress

// copyTables copies tables from the source to a shard at the snapshot of a
// temporary replication slot, and records in the same shard transaction the
// slot's consistent point as each table's copied_lsn (and as the shard's
// lsn when it had none): every change that committed before that point is
// in the copy, every later one comes from the stream.
//
// A shard copied whole needs nothing from the slot before the snapshot, but
// the slot must not be confirmed past the snapshot either: the slot is held
// at its confirmed position until onSnapshot has recorded the snapshot's
// position as the shard's floor.
func (r *run) copyTables(ctx context.Context, shardName string, shard *pgx.Conn, tables []config.TableName, fresh bool, onSnapshot func(pglogrepl.LSN)) (pglogrepl.LSN, error) {
	repl, err := r.replicationConn(ctx)
	if err != nil {
		return 0, err
	}
	defer repl.Close(context.WithoutCancel(ctx)) // drops the temporary slot
	r.hold.Store(r.confirmed.Load())
	held := true
	release := func() {
		if held {
			r.hold.Store(0)
			held = false
		}
	}
	defer release()
	name := fmt.Sprintf("%s_copy_%d", r.ref.Slot, rand.Uint32())
	slot, err := pglogrepl.CreateReplicationSlot(ctx, repl, name, "pgoutput",
		pglogrepl.CreateReplicationSlotOptions{Temporary: true, SnapshotAction: "EXPORT_SNAPSHOT", Mode: pglogrepl.LogicalReplication})
	if err != nil {
		return 0, fmt.Errorf("create a temporary slot for the copy (the source needs a free replication slot and wal sender): %w", err)
	}
	at, err := pglogrepl.ParseLSN(slot.ConsistentPoint)
	if err != nil {
		return 0, fmt.Errorf("the slot's consistent point %q: %w", slot.ConsistentPoint, err)
	}
	onSnapshot(at)
	release()
	src, err := r.sourceConn(ctx)
	if err != nil {
		return 0, err
	}
	defer src.Close(context.WithoutCancel(ctx))
	srcTx, err := src.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return 0, fmt.Errorf("begin the copy on the source: %w", err)
	}
	defer srcTx.Rollback(context.WithoutCancel(ctx))
	if _, err := srcTx.Exec(ctx, "SET TRANSACTION SNAPSHOT "+quoteLiteral(slot.SnapshotName)); err != nil {
		return 0, fmt.Errorf("use the slot's snapshot: %w", err)
	}

	err = pgx.BeginFunc(ctx, shard, func(tx pgx.Tx) error {
		for _, t := range tables {
			rows, err := r.copyTable(ctx, shardName, srcTx, tx, t)
			if err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `INSERT INTO pgrouter.refsync_tables (slot, table_schema, table_name, copied_lsn, copied_rows)
				VALUES ($1, $2, $3, $4::text::pg_lsn, $5)
				ON CONFLICT (slot, table_schema, table_name) DO UPDATE SET copied_lsn = excluded.copied_lsn, copied_rows = excluded.copied_rows, copied_at = now()`,
				r.ref.Slot, t.Schema, t.Name, at.String(), rows); err != nil {
				return fmt.Errorf("record the copy of %s: %w", t, err)
			}
		}
		if fresh {
			if _, err := tx.Exec(ctx, `INSERT INTO pgrouter.refsync_state (slot, lsn) VALUES ($1, $2::text::pg_lsn)
				ON CONFLICT (slot) DO UPDATE SET lsn = excluded.lsn, synced_to = NULL, updated_at = now()`, r.ref.Slot, at.String()); err != nil {
				return fmt.Errorf("record the copy's position: %w", err)
			}
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	return at, nil
}

// copyTable copies one table inside the two open transactions.
func (r *run) copyTable(ctx context.Context, shardName string, src, dst pgx.Tx, t config.TableName) (int64, error) {
	def, err := logical.ReadTableDef(ctx, src, t)
	if err != nil {
		return 0, err
	}
	if err := ensureTable(ctx, dst, def); err != nil {
		return 0, err
	}
	ident := pgx.Identifier{t.Schema, t.Name}.Sanitize()
	var estimate float64
	if err := src.QueryRow(ctx, `SELECT reltuples FROM pg_class WHERE oid = $1::regclass`, ident).Scan(&estimate); err != nil {
		return 0, fmt.Errorf("estimate the rows of %s: %w", t, err)
	}
	if _, err := dst.Exec(ctx, "TRUNCATE "+ident); err != nil {
		return 0, fmt.Errorf("empty %s on the shard before the copy: %w", t, err)
	}
	var cols []string
	for _, c := range def.Copied() {
		cols = append(cols, pgx.Identifier{c}.Sanitize())
	}
	list := strings.Join(cols, ", ")

	p := Progress{Shard: shardName, Table: t, Total: max(int64(estimate), 0)}
	counter := logical.CountRows(time.Second, func(rows int64) {
		r.progress(Progress{Shard: p.Shard, Table: t, Total: p.Total, Rows: rows})
	})
	defer counter.Stop()

	// Text format both ways: the shard parses what the source printed, so
	// user-defined types need only match by name, not by OID.
	pr, pw := io.Pipe()
	copied := make(chan error, 1)
	go func() {
		_, err := src.Conn().PgConn().CopyTo(ctx, io.MultiWriter(pw, counter), fmt.Sprintf("COPY (SELECT %s FROM %s) TO STDOUT", list, ident))
		pw.CloseWithError(err)
		copied <- err
	}()
	_, err = dst.Conn().PgConn().CopyFrom(ctx, pr, fmt.Sprintf("COPY %s (%s) FROM STDIN", ident, list))
	pr.CloseWithError(errors.New("the shard stopped the copy"))
	srcErr := <-copied
	if srcErr != nil {
		return 0, fmt.Errorf("copy %s from the source: %w", t, srcErr)
	}
	if err != nil {
		return 0, fmt.Errorf("copy %s into the shard: %w", t, err)
	}
	p.Rows, p.Done = counter.Rows(), true
	r.progress(p)
	return p.Rows, nil
}

func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// replicationConn opens a walsender connection to the source database.
func (r *run) replicationConn(ctx context.Context) (*pgconn.PgConn, error) {
	conn, err := logical.ReplicationConn(ctx, r.ref.Source, "pgrouter refsync")
	if err != nil {
		return nil, fmt.Errorf("connect to the reference source for replication: %w", err)
	}
	return conn, nil
}

// sourceConn opens an ordinary connection to the source.
func (r *run) sourceConn(ctx context.Context) (*pgx.Conn, error) {
	return connect(ctx, r.ref.Source, nil)
}

// connect opens a control connection; params are extra startup settings.
func connect(ctx context.Context, dsn string, params map[string]string) (*pgx.Conn, error) {
	return logical.Connect(ctx, dsn, "pgrouter refsync", params)
}
