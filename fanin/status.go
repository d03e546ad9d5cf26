package fanin

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgrouter/pgrouter/config"
	"github.com/pgrouter/pgrouter/logical"
)

// ShardStatus is how far the target is behind one shard.
type ShardStatus struct {
	Shard, Slot string
	// Copied: the initial copy is done; CopiedRows rows at CopiedAt.
	Copied     bool
	CopiedRows int64
	CopiedAt   *time.Time
	// LSN is the position the target holds the shard's transactions up to.
	LSN string
	// LagBytes is the shard's WAL written past LSN (-1: unknown, see Err).
	LagBytes int64
	// SyncedTo is the shard's clock when it was at LSN.
	SyncedTo *time.Time
	// Err says why the shard could not be read.
	Err string
}

// Status reads every shard's position in the target and its lag on the
// shard. A shard that cannot be reached is reported in its Err; a target
// that cannot be read is the error.
func Status(ctx context.Context, cfg *config.Config) ([]ShardStatus, error) {
	f := cfg.Fanin
	if f == nil {
		return nil, errors.New("router.yaml has no fanin section")
	}
	target, err := connect(ctx, f.Target, nil)
	if err != nil {
		return nil, err
	}
	defer target.Close(context.WithoutCancel(ctx))
	var out []ShardStatus
	for _, sh := range cfg.Clusters[f.Cluster].Shards {
		s := ShardStatus{Shard: sh.Name, Slot: config.FaninSlot(f.Slot, sh.Name), LagBytes: -1}
		var lsn *string
		err := target.QueryRow(ctx, `SELECT lsn::text, copied_rows, copied_at, synced_to FROM pgrouter.fanin_state WHERE shard = $1`, sh.Name).
			Scan(&lsn, &s.CopiedRows, &s.CopiedAt, &s.SyncedTo)
		switch {
		case errors.Is(err, pgx.ErrNoRows) || isUndefinedTable(err):
			s.Err = "not started: pgrouter fanin has not run for this shard"
			out = append(out, s)
			continue
		case err != nil:
			return nil, err
		}
		if lsn != nil {
			s.Copied, s.LSN = true, *lsn
			s.LagBytes, err = lag(ctx, sh.DSN, *lsn)
			if err != nil {
				s.Err = err.Error()
			}
		}
		out = append(out, s)
	}
	return out, nil
}

// lag asks a shard how far its WAL is past a position.
func lag(ctx context.Context, dsn, lsn string) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, logical.ConnectTimeout)
	defer cancel()
	conn, err := connect(ctx, dsn, nil)
	if err != nil {
		return -1, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var n int64
	if err := conn.QueryRow(ctx, `SELECT greatest(pg_current_wal_lsn() - $1::text::pg_lsn, 0)::bigint`, lsn).Scan(&n); err != nil {
		return -1, err
	}
	return n, nil
}
