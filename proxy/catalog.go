package proxy

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"

	"github.com/pgrouter/pgrouter/router"
)

// Function signatures (argument names and types, which say where a call's
// key is and how to read it) come from pg_proc on the cluster's shards. The
// first load is waited for briefly at start, so clients that connect right
// away find them; a cluster whose shards are not reachable yet, or that lack
// a declared function, is retried in the background until it loads.

// catalogRetryMax caps the wait between load attempts.
const catalogRetryMax = 10 * time.Second

// startCatalogs loads every cluster's signatures, waiting up to
// server_connect_timeout for the first attempt. It returns what that
// attempt found wrong, a line per cluster (a declared function missing
// from the shards, most often a misspelled name), for RELOAD to tell.
func (s *Server) startCatalogs(gen *generation) (problems []string) {
	timeout := gen.cfg.Pool.ServerConnectTimeout.D()
	for _, cl := range gen.shards.Clusters() {
		r := gen.routers[cl.Name]
		if !r.HasFunctions() {
			continue
		}
		first := make(chan error, 1)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.keepLoading(gen.ctx, r, first)
		}()
		select {
		case err := <-first:
			var missing *router.MissingError
			switch {
			case errors.As(err, &missing):
				problems = append(problems, fmt.Sprintf("cluster %s: %v: calls of it are not routed until it loads (pgrouter retries); check the name in router.yaml", cl.Name, err))
			case err != nil:
				problems = append(problems, fmt.Sprintf("cluster %s: function signatures not loaded: %v; routed calls fail with 55000 until they load (pgrouter retries)", cl.Name, err))
			}
		case <-time.After(timeout):
			s.log.Warn("function signatures not loaded yet; routed calls fail with 55000 until they are", zap.String("cluster", cl.Name))
		}
	}
	return problems
}

// keepLoading loads a router's catalog until it succeeds completely or the
// server closes; first receives the first attempt's outcome.
func (s *Server) keepLoading(ctx context.Context, r *router.Router, first chan<- error) {
	wait := 250 * time.Millisecond
	for attempt := 0; ; attempt++ {
		err := s.loadCatalog(ctx, r)
		if attempt == 0 {
			first <- err
		}
		if err == nil {
			return
		}
		s.log.Warn("loading function signatures failed; retrying", zap.String("cluster", r.Cluster.Name), zap.Error(err), zap.Duration("retry_in", wait))
		select {
		case <-ctx.Done():
			return
		case <-s.ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, catalogRetryMax)
	}
}

// loadCatalog reads the signatures from the first shard that answers. A
// catalog that lacks some functions is installed (the others route) and
// reported as an error, so loading goes on.
func (s *Server) loadCatalog(ctx context.Context, r *router.Router) error {
	var lastErr error
	for _, sh := range r.Cluster.Shards {
		ctx, cancel := context.WithTimeout(ctx, s.gen.Load().cfg.Pool.ServerConnectTimeout.D()+5*time.Second)
		cat, err := func() (*router.Catalog, error) {
			conn, err := pgx.Connect(ctx, sh.DSN)
			if err != nil {
				return nil, err
			}
			defer conn.Close(context.Background())
			return router.LoadCatalog(ctx, conn, r.Cluster.Functions)
		}()
		cancel()
		if cat != nil {
			r.SetCatalog(cat)
			if err == nil {
				s.log.Info("function signatures loaded", zap.String("cluster", r.Cluster.Name), zap.String("shard", sh.Name))
			}
			return err
		}
		lastErr = err
	}
	return lastErr
}
