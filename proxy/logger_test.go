package proxy_test

import (
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/pgrouter/pgrouter/proxy"
)

// TestClientLoggerThroughAProxy: through a real proxy, a client that logs in,
// runs statements, has one refused by pgrouter and cancels one has no logger built while
// debug is off (nothing was logged for it), and at debug level the failed
// statement and the forwarded cancel are logged with the client's fields.
func TestClientLoggerThroughAProxy(t *testing.T) {
	for _, level := range []zapcore.Level{zap.InfoLevel, zap.DebugLevel} {
		t.Run(level.String(), func(t *testing.T) {
			ctx := testContext(t, time.Minute)
			core, logs := observer.New(level)
			p := startProxy(t, proxyOpts{log: zap.New(core)})
			conn := p.connect(t, ctx)
			var one int
			if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
				t.Fatal(err)
			}
			if _, err := conn.Exec(ctx, "SET pgrouter.shard = 'nope'", pgx.QueryExecModeSimpleProtocol); pgCode(err) != "42704" { // refused by pgrouter itself
				t.Fatalf("unknown shard: %v", err)
			}
			done := make(chan error, 1)
			go func() {
				_, err := conn.Exec(ctx, "SELECT pg_sleep(5)")
				done <- err
			}()
			shard, err := pgx.Connect(ctx, shards[0].DSN("postgres"))
			if err != nil {
				t.Fatal(err)
			}
			defer shard.Close(ctx)
			eventually(t, 10*time.Second, count(ctx, shard, "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(5)' AND state = 'active'", 1))
			if err := conn.PgConn().CancelRequest(ctx); err != nil {
				t.Fatal(err)
			}
			if err := <-done; pgCode(err) != "57014" {
				t.Fatalf("cancelled sleep: %v", err)
			}
			loggers := proxy.LoggersBuilt(p.srv)
			if len(loggers) != 1 {
				t.Fatalf("%d sessions", len(loggers))
			}
			built := loggers[0]
			var failed, cancelled bool
			for _, e := range logs.All() {
				fields := e.ContextMap()
				switch e.Message {
				case "statement failed":
					failed = fields["sqlstate"] == "42704" && fields["user"] == "postgres" && fields["database"] == "main"
				case "cancel request forwarded":
					cancelled = fields["client_id"] != nil
				}
			}
			if level == zap.InfoLevel && (built || failed || cancelled) {
				t.Fatalf("debug off: logger built %v, failure logged %v, cancel logged %v", built, failed, cancelled)
			}
			if level == zap.DebugLevel && !(built && failed && cancelled) {
				t.Fatalf("debug on: logger built %v, failure logged %v, cancel logged %v", built, failed, cancelled)
			}
		})
	}
}
