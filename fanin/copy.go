package fanin

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"

	"github.com/pgrouter/pgrouter/logical"
)

// copy creates the shard's slot and copies its tables into the target at
// the slot's snapshot, replacing whatever rows of the shard the target
// had, in one target transaction that also records the snapshot's
// position: the stream starts there. A slot left by a copy that did not
// finish is dropped first (its position was never recorded).
func (w *worker) copy(ctx context.Context, target, shard *pgx.Conn, slotExists bool, view *partitionView) (pglogrepl.LSN, error) {
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
	var holds, writes []int
	if view != nil {
		// What the shard holds in the snapshot: only those rows are its.
		if err := view.read(ctx, src, w.partitions); err != nil {
			return 0, fmt.Errorf("shard %s: %w", w.shard, err)
		}
		holds, writes = view.lists()
	}
	var defs []*logical.TableDef
	for _, t := range w.fanin.TableNames {
		def, err := logical.ReadTableDef(ctx, src, t)
		if err != nil {
			return 0, fmt.Errorf("shard %s: %w", w.shard, err)
		}
		defs = append(defs, def)
	}
	// Missing central tables first, one creator at a time (shards copied at
	// once would race to create them).
	err = pgx.BeginFunc(ctx, target, func(dst pgx.Tx) error {
		if _, err := dst.Exec(ctx, "SELECT pg_advisory_xact_lock(hashtext('pgrouter fanin tables'))"); err != nil {
			return err
		}
		for _, def := range defs {
			if err := ensureTable(ctx, dst, def); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	var total int64
	err = pgx.BeginFunc(ctx, target, func(dst pgx.Tx) error {
		for _, def := range defs {
			t := def.Name
			n, err := w.copyTable(ctx, src, dst, def, view)
			if err != nil {
				return err
			}
			w.log.Info("copied the shard's rows into the target", zap.Stringer("table", t), zap.Int64("rows", n))
			total += n
		}
		_, err := dst.Exec(ctx, `UPDATE pgrouter.fanin_state SET lsn = $1::text::pg_lsn, copied_rows = $2, copied_at = now(), synced_to = NULL,
			holds = $3::text::int[], writes = $4::text::int[], updated_at = now() WHERE shard = $5`,
			at.String(), total, textOrNil(intArray(holds)), textOrNil(intArray(writes)), w.shard)
		return err
	})
	if err != nil {
		return 0, err
	}
	return at, nil
}

// copyTable replaces the target's rows of the shard in one table by the
// shard's, read in the snapshot, and returns how many it copied.
func (w *worker) copyTable(ctx context.Context, src, dst pgx.Tx, def *logical.TableDef, view *partitionView) (int64, error) {
	t := def.Name
	ident := pgx.Identifier{t.Schema, t.Name}.Sanitize()
	if _, err := dst.Exec(ctx, "DELETE FROM "+ident+" WHERE "+shardColumn+" = $1", w.shard); err != nil {
		return 0, fmt.Errorf("remove the shard's old rows of %s from the target: %w", t, err)
	}
	var cols []string
	for _, c := range def.Copied() {
		cols = append(cols, pgx.Identifier{c}.Sanitize())
	}
	list := strings.Join(cols, ", ")
	where := ""
	if view.tracked(t) { // only the rows of partitions the shard holds
		ot := view.tables[t]
		where = fmt.Sprintf(" WHERE %s = ANY ('%s'::int[])", ot.PartitionExpr(pgx.Identifier{ot.Key}.Sanitize(), view.partitions), view.heldArray())
	}
	var estimate float64
	if err := src.QueryRow(ctx, `SELECT reltuples FROM pg_class WHERE oid = $1::regclass`, ident).Scan(&estimate); err != nil {
		return 0, fmt.Errorf("estimate the rows of %s on shard %s: %w", t, w.shard, err)
	}
	p := logical.Progress{Shard: w.shard, Table: t, Total: max(int64(estimate), 0)}
	counter := logical.CountRows(time.Second, func(rows int64) {
		w.opts.Progress(logical.Progress{Shard: p.Shard, Table: t, Total: p.Total, Rows: rows})
	})
	defer counter.Stop()
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		_, err := src.Conn().PgConn().CopyTo(ctx, io.MultiWriter(pw, counter), fmt.Sprintf("COPY (SELECT %s, %s FROM %s%s) TO STDOUT", list, quoteLiteral(w.shard), ident, where))
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
	p.Rows, p.Done = tag.RowsAffected(), true
	w.opts.Progress(p)
	return p.Rows, nil
}

func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// textOrNil passes a text value as a query argument, nil as NULL.
func textOrNil(b []byte) any {
	if b == nil {
		return nil
	}
	return string(b)
}
