package fanin

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"

	"github.com/pgrouter/pgrouter/config"
	"github.com/pgrouter/pgrouter/logical"
)

// copy creates the shard's slot and copies its tables into the target at
// the slot's snapshot, replacing whatever rows of the shard the target
// had, in one target transaction that also records the snapshot's
// position: the stream starts there. A slot left by a copy that did not
// finish is dropped first (its position was never recorded).
func (w *worker) copy(ctx context.Context, target, shard *pgx.Conn, slotExists bool) (pglogrepl.LSN, error) {
	repl, err := w.replicationConn(ctx)
	if err != nil {
		return 0, err
	}
	defer repl.Close(context.WithoutCancel(ctx)) // the snapshot lives while this connection is idle
	if slotExists {
		if err := pglogrepl.DropReplicationSlot(ctx, repl, w.slot, pglogrepl.DropReplicationSlotOptions{Wait: true}); err != nil {
			return 0, fmt.Errorf("drop slot %s of an unfinished copy on shard %s: %w", w.slot, w.shard, err)
		}
	}
	slot, err := pglogrepl.CreateReplicationSlot(ctx, repl, w.slot, "pgoutput",
		pglogrepl.CreateReplicationSlotOptions{SnapshotAction: "EXPORT_SNAPSHOT", Mode: pglogrepl.LogicalReplication})
	if err != nil {
		return 0, fmt.Errorf("create slot %s on shard %s (it needs wal_level = logical and a free replication slot): %w", w.slot, w.shard, err)
	}
	at, err := pglogrepl.ParseLSN(slot.ConsistentPoint)
	if err != nil {
		return 0, fmt.Errorf("the slot's consistent point %q: %w", slot.ConsistentPoint, err)
	}
	src, err := shard.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return 0, err
	}
	defer src.Rollback(context.WithoutCancel(ctx))
	if _, err := src.Exec(ctx, "SET TRANSACTION SNAPSHOT '"+slot.SnapshotName+"'"); err != nil {
		return 0, fmt.Errorf("use the slot's snapshot on shard %s: %w", w.shard, err)
	}
	var total int64
	err = pgx.BeginFunc(ctx, target, func(dst pgx.Tx) error {
		for _, t := range w.fanin.TableNames {
			n, err := w.copyTable(ctx, src, dst, t)
			if err != nil {
				return err
			}
			w.log.Info("copied the shard's rows into the target", zap.Stringer("table", t), zap.Int64("rows", n))
			total += n
		}
		_, err := dst.Exec(ctx, `UPDATE pgrouter.fanin_state SET lsn = $1::text::pg_lsn, copied_rows = $2, copied_at = now(), synced_to = NULL, updated_at = now()
			WHERE shard = $3`, at.String(), total, w.shard)
		return err
	})
	if err != nil {
		return 0, err
	}
	return at, nil
}

// copyTable replaces the target's rows of the shard in one table by the
// shard's, read in the snapshot, and returns how many it copied.
func (w *worker) copyTable(ctx context.Context, src, dst pgx.Tx, t config.TableName) (int64, error) {
	def, err := logical.ReadTableDef(ctx, src, t)
	if err != nil {
		return 0, fmt.Errorf("shard %s: %w", w.shard, err)
	}
	if err := ensureTable(ctx, dst, def); err != nil {
		return 0, err
	}
	ident := pgx.Identifier{t.Schema, t.Name}.Sanitize()
	if _, err := dst.Exec(ctx, "DELETE FROM "+ident+" WHERE "+shardColumn+" = $1", w.shard); err != nil {
		return 0, fmt.Errorf("remove the shard's old rows of %s from the target: %w", t, err)
	}
	var cols []string
	for _, c := range def.Copied() {
		cols = append(cols, pgx.Identifier{c}.Sanitize())
	}
	list := strings.Join(cols, ", ")
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		_, err := src.Conn().PgConn().CopyTo(ctx, pw, fmt.Sprintf("COPY (SELECT %s, %s FROM %s) TO STDOUT", list, quoteLiteral(w.shard), ident))
		pw.CloseWithError(err)
		done <- err
	}()
	tag, err := dst.Conn().PgConn().CopyFrom(ctx, pr, fmt.Sprintf("COPY %s (%s, %s) FROM STDIN", ident, list, shardColumn))
	pr.CloseWithError(err)
	if rerr := <-done; rerr != nil && err == nil {
		err = fmt.Errorf("read %s on shard %s: %w", t, w.shard, rerr)
	}
	if err != nil {
		return 0, fmt.Errorf("copy %s from shard %s into the target: %w", t, w.shard, err)
	}
	return tag.RowsAffected(), nil
}

func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }
