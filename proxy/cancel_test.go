package proxy_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestCancel cancels a running pg_sleep with a CancelRequest carrying the
// key pgrouter issued: it ends with 57014 within a second, the connection and
// the pool stay usable, and a cancel from an idle client hits nobody else.
func TestCancel(t *testing.T) {
	for _, mode := range bothModes {
		t.Run(mode, func(t *testing.T) {
			p := startProxy(t, proxyOpts{mode: mode, size: 2})
			ctx := testContext(t, time.Minute)
			conn := p.connect(t, ctx)
			done := make(chan error, 1)
			go func() {
				_, err := conn.Exec(ctx, "SELECT pg_sleep(30)")
				done <- err
			}()
			waitRunning(t, "SELECT pg_sleep(30)")
			start := time.Now()
			if err := conn.PgConn().CancelRequest(ctx); err != nil {
				t.Fatal(err)
			}
			err := <-done
			if elapsed := time.Since(start); pgCode(err) != "57014" || elapsed > time.Second {
				t.Fatalf("cancelled pg_sleep: %v %s after the cancel; want 57014 within a second", err, elapsed)
			}
			var one int
			if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
				t.Fatalf("connection unusable after cancel: %v", err)
			}

			// A cancel sent by an idle client must not reach another client's query.
			idle := p.connect(t, ctx)
			busy := p.connect(t, ctx)
			go func() {
				_, err := busy.Exec(ctx, "SELECT pg_sleep(1.5)")
				done <- err
			}()
			waitRunning(t, "SELECT pg_sleep(1.5)")
			if err := idle.PgConn().CancelRequest(ctx); err != nil {
				t.Fatal(err)
			}
			if err := <-done; err != nil {
				t.Fatalf("an idle client's cancel hit another client: %v", err)
			}
		})
	}
}

// waitRunning waits until shard s0 runs a statement of exactly this text.
func waitRunning(t *testing.T, sql string) {
	t.Helper()
	eventually(t, 10*time.Second, func() error {
		n := shardQueryInt(t, 0, "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = '"+strings.ReplaceAll(sql, "'", "''")+"'")
		if n == 0 {
			return fmt.Errorf("%q is not running on s0 yet", sql)
		}
		return nil
	})
}

// TestCancelNeverHitsTheNextClient hammers cancel while the client's server is
// being released and reused by another client: the other client's queries
// must never be cancelled.
func TestCancelNeverHitsTheNextClient(t *testing.T) {
	p := startProxy(t, proxyOpts{size: 1})
	ctx := testContext(t, time.Minute)
	canceller := p.connect(t, ctx)
	bystander := p.connect(t, ctx)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // the canceller runs short queries and cancels itself constantly
		defer wg.Done()
		var cancels sync.WaitGroup
		defer cancels.Wait()
		for {
			select {
			case <-stop:
				return
			default:
			}
			cancels.Add(1)
			go func() {
				defer cancels.Done()
				_ = canceller.PgConn().CancelRequest(context.Background())
			}()
			_, _ = canceller.Exec(ctx, "SELECT 1")
		}
	}()
	for i := range 100 {
		if _, err := bystander.Exec(ctx, "SELECT pg_sleep(0.002)"); err != nil {
			close(stop)
			wg.Wait()
			t.Fatalf("bystander query %d cancelled: %v", i, err)
		}
	}
	close(stop)
	wg.Wait()
}
