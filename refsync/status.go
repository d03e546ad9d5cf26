package refsync

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/pgrouter/pgrouter/config"
)

// Status is where the source and every shard are, read from their
// databases (so it needs no running refsync, and any pgrouter can show it).
type Status struct {
	SourceLSN  pglogrepl.LSN
	SourceTime time.Time
	SourceErr  error
	Slot       *SlotStatus // nil when the slot does not exist
	Shards     []ShardStatus
}

// SlotStatus is the replication slot as the source sees it.
type SlotStatus struct {
	Active        bool          // a refsync is streaming from it
	Confirmed     pglogrepl.LSN // every shard holds every change before it
	RetainedBytes int64         // WAL the source keeps for it
}

// ShardStatus is one shard's position. Lag is measured against the source's
// current WAL position, so even a shard that holds everything shows the few
// bytes (and at most about a second) written since refsync last marked it.
type ShardStatus struct {
	Cluster, Shard string
	Copied         bool // the initial copy is done (a state row exists)
	LSN            pglogrepl.LSN
	LagBytes       int64
	Lag            time.Duration // the source's clock minus synced_to, when behind
	SyncedTo       time.Time     // the source's clock when it was at LSN
	Tables         int           // tables copied
	Err            error
}

// ReadStatus reads the status of every shard of cfg, each read bounded by
// ctx. It never fails as a whole: unreachable servers carry their error.
func ReadStatus(ctx context.Context, cfg *config.Config) *Status {
	st := &Status{}
	if cfg.Reference == nil {
		return st
	}
	slot := cfg.Reference.Slot
	var dsns []string
	for _, name := range cfg.ClusterNames() {
		for _, s := range cfg.Clusters[name].Shards {
			st.Shards = append(st.Shards, ShardStatus{Cluster: name, Shard: s.Name})
			dsns = append(dsns, s.DSN)
		}
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		st.SourceErr = readSource(ctx, cfg.Reference, st)
	}()
	for i, dsn := range dsns {
		ss := &st.Shards[i]
		wg.Add(1)
		go func() {
			defer wg.Done()
			ss.Err = readShard(ctx, dsn, slot, ss)
		}()
	}
	wg.Wait()
	for i := range st.Shards {
		ss := &st.Shards[i]
		if ss.Err != nil || !ss.Copied || st.SourceErr != nil {
			continue
		}
		if d := int64(st.SourceLSN) - int64(ss.LSN); d > 0 {
			ss.LagBytes = d
			if !ss.SyncedTo.IsZero() {
				ss.Lag = max(st.SourceTime.Sub(ss.SyncedTo), 0)
			}
		}
	}
	return st
}

func readSource(ctx context.Context, ref *config.Reference, st *Status) error {
	conn, err := connect(ctx, ref.Source, nil)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := conn.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text, now()`).Scan(&st.SourceLSN, &st.SourceTime); err != nil {
		return fmt.Errorf("read the source's position: %w", err)
	}
	slot := &SlotStatus{}
	err = conn.QueryRow(ctx, `SELECT active, coalesce(confirmed_flush_lsn, '0/0')::text, coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint
		FROM pg_replication_slots WHERE slot_name = $1`, ref.Slot).Scan(&slot.Active, &slot.Confirmed, &slot.RetainedBytes)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
	case err != nil:
		return fmt.Errorf("read replication slot %s: %w", ref.Slot, err)
	default:
		st.Slot = slot
	}
	return nil
}

func readShard(ctx context.Context, dsn, slot string, ss *ShardStatus) error {
	conn, err := connect(ctx, dsn, nil)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var syncedTo *time.Time
	err = conn.QueryRow(ctx, `SELECT s.lsn::text, s.synced_to, (SELECT count(*) FROM pgrouter.refsync_tables t WHERE t.slot = s.slot)
		FROM pgrouter.refsync_state s WHERE s.slot = $1`, slot).Scan(&ss.LSN, &syncedTo, &ss.Tables)
	switch {
	case errors.Is(err, pgx.ErrNoRows) || isUndefinedTable(err):
		return nil // not copied yet
	case err != nil:
		return fmt.Errorf("read pgrouter.refsync_state: %w", err)
	}
	ss.Copied = true
	if syncedTo != nil {
		ss.SyncedTo = *syncedTo
	}
	return nil
}
