package proxy_test

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestDriversUnderPressure runs 50 clients through a transaction-mode pool
// of 2 server connections for 30 seconds: 20 pgx clients with the default
// statement cache (transactions, per-client settings), 10 pgx clients
// sending batches, 10 lib/pq clients with prepared statements, and pgbench
// -M prepared with 10 clients. Every client checks what it reads back; at
// the end every row written is counted on the shard and pgbench's TPC-B
// balances must agree.
func TestDriversUnderPressure(t *testing.T) {
	const duration = 30 * time.Second
	shardExec(t, 0, "DROP TABLE IF EXISTS pressure; CREATE TABLE pressure (client int, seq int, val int, PRIMARY KEY (client, seq))")
	p := startProxy(t, proxyOpts{size: 2, extra: "  query_wait_timeout: 60s\n"})
	ctx := testContext(t, duration+2*time.Minute)
	p.tool(t, ctx, "", "pgbench", "-i", "-q", "-s", "1")
	deadline := time.Now().Add(duration)

	var wg sync.WaitGroup
	errs := make(chan error, 100)
	written := make([]atomic.Int64, 50) // rows each Go client committed
	report := func(client int, format string, args ...any) {
		select {
		case errs <- fmt.Errorf("client %d: "+format, append([]any{client}, args...)...):
		default:
		}
	}

	for c := range 20 { // pgx, default statement cache, explicit transactions
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := pgx.Connect(ctx, p.url("postgres", "main"))
			if err != nil {
				report(c, "connect: %v", err)
				return
			}
			defer conn.Close(context.Background())
			app := fmt.Sprintf("pgx-%d", c)
			if _, err := conn.Exec(ctx, "SET application_name = '"+app+"'"); err != nil {
				report(c, "set: %v", err)
				return
			}
			for seq := 0; time.Now().Before(deadline); seq++ {
				var gotApp string
				var sum int64
				err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
					if _, err := tx.Exec(ctx, "INSERT INTO pressure VALUES ($1, $2, $3)", c, seq, seq*2); err != nil {
						return err
					}
					return tx.QueryRow(ctx, "SELECT current_setting('application_name'), sum(val) FROM pressure WHERE client = $1", c).Scan(&gotApp, &sum)
				})
				if err != nil {
					report(c, "seq %d: %v", seq, err)
					return
				}
				if want := int64(seq) * int64(seq+1); sum != want || gotApp != app {
					report(c, "seq %d: sum %d want %d, application_name %q want %q", seq, sum, want, gotApp, app)
					return
				}
				written[c].Add(1)
			}
		}()
	}
	for c := 20; c < 30; c++ { // pgx batches
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := pgx.Connect(ctx, p.url("postgres", "main"))
			if err != nil {
				report(c, "connect: %v", err)
				return
			}
			defer conn.Close(context.Background())
			for seq := 0; time.Now().Before(deadline); seq += 10 {
				b := &pgx.Batch{}
				for i := range 10 {
					b.Queue("INSERT INTO pressure VALUES ($1, $2, $3)", c, seq+i, 1)
				}
				b.Queue("SELECT count(*) FROM pressure WHERE client = $1", c)
				br := conn.SendBatch(ctx, b)
				for range 10 {
					if _, err := br.Exec(); err != nil {
						report(c, "batch insert: %v", err)
						_ = br.Close()
						return
					}
				}
				var n int64
				if err := br.QueryRow().Scan(&n); err != nil || n != int64(seq+10) {
					report(c, "batch count %d want %d: %v", n, seq+10, err)
					_ = br.Close()
					return
				}
				if err := br.Close(); err != nil {
					report(c, "batch close: %v", err)
					return
				}
				written[c].Add(10)
			}
		}()
	}
	host, port := p.hostPort()
	for c := 30; c < 40; c++ { // lib/pq prepared statements
		wg.Add(1)
		go func() {
			defer wg.Done()
			db, err := sql.Open("postgres", fmt.Sprintf("host=%s port=%s user=postgres dbname=main sslmode=disable", host, port))
			if err != nil {
				report(c, "open: %v", err)
				return
			}
			defer db.Close()
			db.SetMaxOpenConns(1)
			ins, err := db.PrepareContext(ctx, "INSERT INTO pressure VALUES ($1, $2, $3)")
			if err != nil {
				report(c, "prepare: %v", err)
				return
			}
			defer ins.Close()
			count, err := db.PrepareContext(ctx, "SELECT count(*) FROM pressure WHERE client = $1")
			if err != nil {
				report(c, "prepare: %v", err)
				return
			}
			defer count.Close()
			for seq := 0; time.Now().Before(deadline); seq++ {
				if _, err := ins.ExecContext(ctx, c, seq, 3); err != nil {
					report(c, "insert %d: %v", seq, err)
					return
				}
				var n int64
				if err := count.QueryRowContext(ctx, c).Scan(&n); err != nil || n != int64(seq+1) {
					report(c, "count %d want %d: %v", n, seq+1, err)
					return
				}
				written[c].Add(1)
			}
		}()
	}
	var benchOut []byte
	var benchErr error
	wg.Add(1)
	go func() { // pgbench -M prepared: the other 10 clients
		defer wg.Done()
		cmd := exec.CommandContext(ctx, "pgbench", "-n", "-M", "prepared", "-c", "10", "-j", "10", "-T", fmt.Sprint(int(duration.Seconds())), "-b", "tpcb-like")
		cmd.Env = append(os.Environ(), "PGHOST="+host, "PGPORT="+port, "PGUSER=postgres", "PGDATABASE=main")
		benchOut, benchErr = cmd.CombinedOutput()
	}()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if benchErr != nil {
		t.Fatalf("pgbench: %v\n%s", benchErr, benchOut)
	}
	if m := failedRE.FindStringSubmatch(string(benchOut)); m == nil || m[1] != "0" {
		t.Fatalf("pgbench failures:\n%s", benchOut)
	}
	var total int64
	for c := range 40 {
		n := written[c].Load()
		total += n
		if got := shardQueryInt(t, 0, fmt.Sprintf("SELECT count(*) FROM pressure WHERE client = %d", c)); got != n {
			t.Errorf("client %d committed %d rows, the shard has %d", c, n, got)
		}
		if n == 0 {
			t.Errorf("client %d got nothing done in %s", c, duration)
		}
	}
	want := shardQueryInt(t, 0, "SELECT coalesce(sum(delta), 0) FROM pgbench_history")
	for _, q := range []string{"SELECT sum(abalance) FROM pgbench_accounts", "SELECT sum(tbalance) FROM pgbench_tellers", "SELECT sum(bbalance) FROM pgbench_branches"} {
		if got := shardQueryInt(t, 0, q); got != want {
			t.Fatalf("%s = %d, pgbench_history says %d", q, got, want)
		}
	}
	m := xactsRE.FindStringSubmatch(string(benchOut))
	t.Logf("40 Go clients committed %d checked writes; pgbench -M prepared: %s transactions", total, m[1])
}
