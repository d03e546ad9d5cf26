package move

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/pgrouter/pgrouter/config"
)

// Status is a move in progress, as its target records it.
type Status struct {
	Cluster        string
	Partitions     []int
	Source, Target string
	Phase          string
	RowsCopied     int64
	Behind         int64 // logged changes not applied yet (-1: unknown)
}

// String describes the move for SHOW SHARDS.
func (s Status) String() string {
	out := fmt.Sprintf("%s from %s to %s: %s, %d rows copied", config.FormatPartitions(s.Partitions), s.Source, s.Target, s.Phase, s.RowsCopied)
	if s.Behind >= 0 {
		out += fmt.Sprintf(", %d changes behind", s.Behind)
	}
	return out
}

// ReadStatus reads the moves in progress of the clusters that declare
// tables, from their shards; a shard that cannot be read is skipped.
func ReadStatus(ctx context.Context, cfg *config.Config) []Status {
	var out []Status
	for _, name := range cfg.ClusterNames() {
		cl := cfg.Clusters[name]
		if len(cl.Tables) == 0 {
			continue
		}
		dsn := map[string]string{}
		for _, sh := range cl.Shards {
			dsn[sh.Name] = sh.DSN
		}
		for _, sh := range cl.Shards {
			st, err := readMove(ctx, sh.DSN, name)
			if err != nil || st == nil {
				continue
			}
			st.Behind = -1
			if src, ok := dsn[st.Source]; ok {
				if n, err := backlog(ctx, src, name); err == nil {
					st.Behind = n
				}
			}
			out = append(out, *st)
		}
	}
	return out
}

func readMove(ctx context.Context, dsn, cluster string) (*Status, error) {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT to_regclass('pgrouter.moves') IS NOT NULL").Scan(&exists); err != nil || !exists {
		return nil, err
	}
	st := &Status{Cluster: cluster}
	err = conn.QueryRow(ctx, "SELECT partitions, source, target, phase, rows_copied FROM pgrouter.moves WHERE cluster = $1", cluster).
		Scan(&st.Partitions, &st.Source, &st.Target, &st.Phase, &st.RowsCopied)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	return st, err
}

func backlog(ctx context.Context, dsn, cluster string) (int64, error) {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var n int64
	err = conn.QueryRow(ctx, "SELECT count(*) FROM pgrouter.move_log WHERE cluster = $1", cluster).Scan(&n)
	return n, err
}
