package proxy

import (
	"context"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"

	"github.com/pgrouter/pgrouter/config"
	"github.com/pgrouter/pgrouter/ownership"
	"github.com/pgrouter/pgrouter/sqlstate"
)

// readOwnership sets the Owners of each cluster that declares tables to the
// partition map its shards record (pgrouter move), so a router started
// from the router.yaml of before a move routes to the new owners. A shard
// that cannot be read within server_connect_timeout is logged and its
// partitions follow router.yaml: if it was a move's source, its guard
// refuses the writes a stale map sends it.
func readOwnership(cfg *config.Config, log *zap.Logger) {
	timeout := cfg.Pool.ServerConnectTimeout.D()
	for _, name := range cfg.ClusterNames() {
		cl := cfg.Clusters[name]
		if len(cl.Tables) == 0 {
			continue
		}
		var mu sync.Mutex
		var wg sync.WaitGroup
		held := map[string][]int{}
		for _, sh := range cl.Shards {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), timeout)
				defer cancel()
				conn, err := pgx.Connect(ctx, sh.DSN)
				if err != nil {
					log.Warn("cannot read the partitions a shard holds; router.yaml's map is used for it", zap.String("shard", sh.Name), zap.Error(err))
					return
				}
				defer conn.Close(context.Background())
				h, recorded, err := ownership.Read(ctx, conn, name)
				if err != nil {
					log.Warn("cannot read the partitions a shard holds; router.yaml's map is used for it", zap.String("shard", sh.Name), zap.Error(err))
					return
				}
				if recorded {
					mu.Lock()
					held[sh.Name] = h
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		owners, err := ownership.Owners(held)
		if err != nil {
			log.Error("the shards' records of their partitions disagree; router.yaml's map is used", zap.String("cluster", name), zap.Error(err))
			continue
		}
		if len(owners) > 0 {
			cl.Owners = owners
		}
	}
}

// isMovedError reports the error a shard's ownership guard raises for a
// write in a partition it does not hold.
func isMovedError(code, message string) bool {
	return code == sqlstate.SerializationFailure && strings.HasPrefix(message, ownership.MovedPrefix)
}
