package proxy_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	_ "github.com/lib/pq"

	"github.com/pgrouter/pgrouter/config"
)

var bothModes = []string{string(config.ModeSession), string(config.ModeTransaction)}

// TestPgxQueriesAndTransactions runs pgx in every query mode through both
// pool modes: parameters, transactions that commit and roll back, errors
// that leave the connection usable, and batches.
func TestPgxQueriesAndTransactions(t *testing.T) {
	shardExec(t, 0, "DROP TABLE IF EXISTS pgx_t; CREATE TABLE pgx_t (id int PRIMARY KEY, v text)")
	execModes := map[string]pgx.QueryExecMode{
		"cache_statement": pgx.QueryExecModeCacheStatement,
		"cache_describe":  pgx.QueryExecModeCacheDescribe,
		"describe_exec":   pgx.QueryExecModeDescribeExec,
		"exec":            pgx.QueryExecModeExec,
		"simple":          pgx.QueryExecModeSimpleProtocol,
	}
	for _, mode := range bothModes {
		p := startProxy(t, proxyOpts{mode: mode, size: 2})
		for name, execMode := range execModes {
			t.Run(mode+"/"+name, func(t *testing.T) {
				ctx := testContext(t, 30*time.Second)
				conn := p.connect(t, ctx, func(c *pgx.ConnConfig) { c.DefaultQueryExecMode = execMode })
				base := int(execMode)*1000 + len(mode)*100000
				var sum int
				if err := conn.QueryRow(ctx, "SELECT $1::int + $2::int", 40, 2).Scan(&sum); err != nil || sum != 42 {
					t.Fatalf("sum = %d, %v", sum, err)
				}
				// Committed and rolled-back transactions.
				tx, err := conn.Begin(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := tx.Exec(ctx, "INSERT INTO pgx_t VALUES ($1, $2)", base+1, "kept"); err != nil {
					t.Fatal(err)
				}
				if err := tx.Commit(ctx); err != nil {
					t.Fatal(err)
				}
				tx, err = conn.Begin(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := tx.Exec(ctx, "INSERT INTO pgx_t VALUES ($1, $2)", base+2, "dropped"); err != nil {
					t.Fatal(err)
				}
				if err := tx.Rollback(ctx); err != nil {
					t.Fatal(err)
				}
				var n int
				if err := conn.QueryRow(ctx, "SELECT count(*) FROM pgx_t WHERE id IN ($1, $2)", base+1, base+2).Scan(&n); err != nil || n != 1 {
					t.Fatalf("rows after commit+rollback = %d, %v; want 1", n, err)
				}
				// An error keeps the connection usable and carries the server's SQLSTATE.
				_, err = conn.Exec(ctx, "SELECT 1/0")
				var pgErr *pgconn.PgError
				if !errors.As(err, &pgErr) || pgErr.Code != "22012" {
					t.Fatalf("division by zero: %v", err)
				}
				// An error inside a transaction aborts it, as on PostgreSQL.
				tx, err = conn.Begin(ctx)
				if err != nil {
					t.Fatal(err)
				}
				_, err = tx.Exec(ctx, "SELECT 1/0")
				if err == nil {
					t.Fatal("no error")
				}
				_, err = tx.Exec(ctx, "SELECT 1")
				if !errors.As(err, &pgErr) || pgErr.Code != "25P02" {
					t.Fatalf("statement in aborted transaction: %v", err)
				}
				if err := tx.Rollback(ctx); err != nil {
					t.Fatal(err)
				}
				// A batch.
				batch := &pgx.Batch{}
				for i := range 20 {
					batch.Queue("SELECT $1::int * 2", i)
				}
				br := conn.SendBatch(ctx, batch)
				for i := range 20 {
					var v int
					if err := br.QueryRow().Scan(&v); err != nil || v != 2*i {
						t.Fatalf("batch row %d = %d, %v", i, v, err)
					}
				}
				if err := br.Close(); err != nil {
					t.Fatal(err)
				}
				// Many rows stream through.
				rows, err := conn.Query(ctx, "SELECT g, repeat('x', 100) FROM generate_series(1, 20000) g")
				if err != nil {
					t.Fatal(err)
				}
				count := 0
				for rows.Next() {
					count++
				}
				if rows.Err() != nil || count != 20000 {
					t.Fatalf("rows = %d, %v", count, rows.Err())
				}
			})
		}
	}
}

// TestManyClientsShareSmallPool has 200 clients doing transactions through a
// pool of 4 server connections.
func TestManyClientsShareSmallPool(t *testing.T) {
	shardExec(t, 0, "DROP TABLE IF EXISTS share_t; CREATE TABLE share_t (client int, n int)")
	p := startProxy(t, proxyOpts{size: 4})
	ctx := testContext(t, 2*time.Minute)
	const clients, rounds = 200, 5
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := pgx.Connect(ctx, p.url("postgres", "main"))
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close(context.Background())
			for r := range rounds {
				err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
					_, err := tx.Exec(ctx, "INSERT INTO share_t VALUES ($1, $2)", i, r)
					return err
				})
				if err != nil {
					errs <- fmt.Errorf("client %d round %d: %w", i, r, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := shardQueryInt(t, 0, "SELECT count(*) FROM share_t"); n != clients*rounds {
		t.Fatalf("rows = %d, want %d", n, clients*rounds)
	}
	for _, pl := range p.srv.Pools().Pools() {
		if st := pl.Stats(); st.Open > 4 {
			t.Fatalf("pool %s opened %d connections, limit 4", pl.Shard(), st.Open)
		}
	}
	if n := shardQueryInt(t, 0, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND datname = 'postgres' AND pid <> pg_backend_pid() AND application_name <> 'pgrouter health check'"); n > 4 {
		t.Fatalf("%d server connections on the shard, pool size 4", n)
	}
}

// TestLibPQ drives the proxy with lib/pq through database/sql: prepared
// statements used from many goroutines, transactions, and a cancel through
// context.
func TestLibPQ(t *testing.T) {
	shardExec(t, 0, "DROP TABLE IF EXISTS pq_t; CREATE TABLE pq_t (id int PRIMARY KEY, v int)")
	for _, mode := range bothModes {
		t.Run(mode, func(t *testing.T) {
			p := startProxy(t, proxyOpts{mode: mode, size: 3})
			host, port := p.hostPort()
			db, err := sql.Open("postgres", fmt.Sprintf("host=%s port=%s user=postgres dbname=main sslmode=disable", host, port))
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			db.SetMaxOpenConns(16)
			ctx := testContext(t, time.Minute)
			offset := len(mode) * 10000
			stmt, err := db.PrepareContext(ctx, "INSERT INTO pq_t VALUES ($1, $2)")
			if err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			errs := make(chan error, 400)
			for i := range 400 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if _, err := stmt.ExecContext(ctx, offset+i, i); err != nil {
						errs <- err
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			_ = stmt.Close()
			var sum int
			if err := db.QueryRowContext(ctx, "SELECT sum(v) FROM pq_t WHERE id >= $1 AND id < $2", offset, offset+400).Scan(&sum); err != nil || sum != 399*400/2 {
				t.Fatalf("sum = %d, %v", sum, err)
			}
			tx, err := db.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.ExecContext(ctx, "UPDATE pq_t SET v = -1 WHERE id = $1", offset); err != nil {
				t.Fatal(err)
			}
			if err := tx.Rollback(); err != nil {
				t.Fatal(err)
			}
			var v int
			if err := db.QueryRowContext(ctx, "SELECT v FROM pq_t WHERE id = $1", offset).Scan(&v); err != nil || v != 0 {
				t.Fatalf("after rollback v = %d, %v", v, err)
			}
			// lib/pq cancels a running query with a CancelRequest when the context ends.
			cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
			start := time.Now()
			_, err = db.ExecContext(cctx, "SELECT pg_sleep(30)")
			cancel()
			if err == nil || time.Since(start) > 5*time.Second {
				t.Fatalf("cancelled pg_sleep returned %v after %s", err, time.Since(start))
			}
			if err := db.QueryRowContext(ctx, "SELECT 1").Scan(&v); err != nil || v != 1 {
				t.Fatalf("after cancel: %d, %v", v, err)
			}
		})
	}
}
