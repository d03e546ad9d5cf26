package fanin

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"

	"github.com/pgrouter/pgrouter/config"
)

// BenchmarkApply measures how fast a backlog of a shard's changes reaches
// the target: through pgrouter fanin, and through PostgreSQL's own logical
// replication (a subscription with the same publication, into another
// database of the same target server), in the same run. The backlog is
// written while the consumer, running and current, waits on a lock on the
// target table: per iteration 20,000 inserts (200 transactions of 100
// rows) and 20,000 single-column updates (2,000 transactions of 10); the
// clock runs from the lock's release until the last transaction is in the
// target. Reported: rows/s for each.
//
//	go test -run '^$' -bench Apply -benchtime 3x ./fanin
func BenchmarkApply(b *testing.B) {
	ctx := context.Background()
	shard, target := servers[0], servers[2]
	for _, name := range []string{"fanin", "native"} {
		b.Run(name, func(b *testing.B) {
			var rows int64
			var spent time.Duration
			for range b.N {
				benchDBs++
				db := fmt.Sprintf("bench_%s_%d", name, benchDBs)
				for _, s := range []string{"CREATE DATABASE " + db} {
					if err := shard.Exec(ctx, "postgres", s); err != nil {
						b.Fatal(err)
					}
					if err := target.Exec(ctx, "postgres", s); err != nil {
						b.Fatal(err)
					}
				}
				if err := shard.Exec(ctx, db, usersSQL+"; CREATE PUBLICATION fanin_"+db+" FOR TABLE users"); err != nil {
					b.Fatal(err)
				}
				var consume func(context.Context) error
				switch name {
				case "fanin":
					cfg := faninConfig(b, db, 1)
					// Copy the empty table and create the slot first, so the
					// backlog below is streamed, not copied.
					runFor(b, cfg, func() bool { return targetHas(ctx, target.DSN(db), "SELECT lsn IS NOT NULL FROM pgrouter.fanin_state") })
					consume = func(ctx context.Context) error {
						return Run(ctx, cfg, Options{Log: zap.NewNop(), StatusInterval: 50 * time.Millisecond})
					}
				case "native":
					if err := target.Exec(ctx, db, usersSQL); err != nil {
						b.Fatal(err)
					}
					if err := target.Exec(ctx, db, fmt.Sprintf("CREATE SUBSCRIPTION sub_%s CONNECTION %s PUBLICATION fanin_%s WITH (copy_data = false, enabled = false)",
						db, quoteLiteral(shard.DSN(db)), db)); err != nil {
						b.Fatal(err)
					}
					consume = func(ctx context.Context) error {
						if err := target.Exec(ctx, db, "ALTER SUBSCRIPTION sub_"+db+" ENABLE"); err != nil {
							return err
						}
						<-ctx.Done()
						return target.Exec(context.Background(), db, "ALTER SUBSCRIPTION sub_"+db+" DISABLE")
					}
				}
				// The consumer runs and is current (a first row through),
				// then waits on a lock in the target while the backlog is
				// written; the clock starts when the lock goes.
				cctx, cancel := context.WithCancel(ctx)
				done := make(chan error, 1)
				go func() { done <- consume(cctx) }()
				if err := shard.Exec(ctx, db, "INSERT INTO users (id, name) VALUES (-2, 'first')"); err != nil {
					b.Fatal(err)
				}
				for !targetHas(ctx, target.DSN(db), "SELECT EXISTS (SELECT FROM users WHERE id = -2)") {
					time.Sleep(5 * time.Millisecond)
				}
				lock, err := pgx.Connect(ctx, target.DSN(db))
				if err != nil {
					b.Fatal(err)
				}
				if _, err := lock.Exec(ctx, "BEGIN; LOCK TABLE users IN ACCESS EXCLUSIVE MODE"); err != nil {
					b.Fatal(err)
				}
				backlog := `INSERT INTO users (id, name) SELECT g, 'user ' || g FROM generate_series(%d, %d) g`
				conn, err := pgx.Connect(ctx, shard.DSN(db))
				if err != nil {
					b.Fatal(err)
				}
				for t := range 200 {
					if _, err := conn.Exec(ctx, fmt.Sprintf(backlog, t*100+1, t*100+100)); err != nil {
						b.Fatal(err)
					}
				}
				for t := range 2000 {
					if _, err := conn.Exec(ctx, fmt.Sprintf("UPDATE users SET balance = balance + 1 WHERE id BETWEEN %d AND %d", t*10+1, t*10+10)); err != nil {
						b.Fatal(err)
					}
				}
				if _, err := conn.Exec(ctx, "INSERT INTO users (id, name) VALUES (-1, 'last')"); err != nil {
					b.Fatal(err)
				}
				conn.Close(ctx)
				start := time.Now()
				if _, err := lock.Exec(ctx, "COMMIT"); err != nil {
					b.Fatal(err)
				}
				lock.Close(ctx)
				for !targetHas(ctx, target.DSN(db), "SELECT EXISTS (SELECT FROM users WHERE id = -1)") {
					time.Sleep(5 * time.Millisecond)
				}
				spent += time.Since(start)
				cancel()
				if err := <-done; err != nil && err != context.Canceled {
					b.Fatal(err)
				}
				rows += 40001
				if name == "native" {
					_ = target.Exec(ctx, db, "ALTER SUBSCRIPTION sub_"+db+" SET (slot_name = NONE)")
					_ = target.Exec(ctx, db, "DROP SUBSCRIPTION sub_"+db)
				}
				_ = shard.Exec(ctx, db, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = current_database()")
			}
			b.ReportMetric(float64(rows)/spent.Seconds(), "rows/s")
		})
	}
}

// benchDBs numbers the benchmark's databases.
var benchDBs int

// runFor runs fan-in until ready says so.
func runFor(b *testing.B, cfg *config.Config, ready func() bool) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = Run(ctx, cfg, Options{Log: zap.NewNop(), StatusInterval: 50 * time.Millisecond, RetryMin: 50 * time.Millisecond})
	}()
	for !ready() {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
}

// targetHas runs a boolean query in the target, false on error.
func targetHas(ctx context.Context, dsn, sql string) bool {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return false
	}
	defer conn.Close(ctx)
	var ok bool
	if err := conn.QueryRow(ctx, sql).Scan(&ok); err != nil {
		return false
	}
	return ok
}
