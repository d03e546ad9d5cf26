package proxy_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgrouter/pgrouter/internal/pgtest"
	"github.com/pgrouter/pgrouter/internal/pgtest/testenv"
)

func pgCode(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

// killableConn lets a test cut a client's TCP connection without a Terminate,
// as a crashed client would.
type killableConn struct {
	mu    sync.Mutex
	conns []net.Conn
}

func (k *killableConn) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, network, addr)
	if err == nil {
		k.mu.Lock()
		k.conns = append(k.conns, c)
		k.mu.Unlock()
	}
	return c, err
}

func (k *killableConn) kill() {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, c := range k.conns {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0) // RST, no FIN: the client vanished
		}
		_ = c.Close()
	}
}

// TestKilledClientLeavesNoTransaction kills a client inside BEGIN; UPDATE and
// checks that the next client (on the same, single server connection) sees
// the old row and can update it at once: nothing of the dead client's
// transaction, locks or session survives.
func TestKilledClientLeavesNoTransaction(t *testing.T) {
	for _, mode := range bothModes {
		t.Run(mode, func(t *testing.T) {
			table := "killed_" + mode
			shardExec(t, 0, fmt.Sprintf("DROP TABLE IF EXISTS %[1]s; CREATE TABLE %[1]s (id int PRIMARY KEY, v int); INSERT INTO %[1]s VALUES (1, 1)", table))
			p := startProxy(t, proxyOpts{mode: mode, size: 1})
			ctx := testContext(t, time.Minute)

			var k killableConn
			victim := p.connect(t, ctx, func(c *pgx.ConnConfig) { c.DialFunc = k.dial })
			if _, err := victim.Exec(ctx, "SET application_name = 'victim'"); err != nil {
				t.Fatal(err)
			}
			if _, err := victim.Exec(ctx, "CREATE TEMP TABLE victim_temp (x int)"); mode == "session" && err != nil {
				t.Fatal(err)
			}
			if _, err := victim.Exec(ctx, "BEGIN"); err != nil {
				t.Fatal(err)
			}
			if _, err := victim.Exec(ctx, "UPDATE "+table+" SET v = 2 WHERE id = 1"); err != nil {
				t.Fatal(err)
			}
			k.kill()

			next := p.connect(t, ctx)
			var v int
			if err := next.QueryRow(ctx, "SELECT v FROM "+table+" WHERE id = 1").Scan(&v); err != nil || v != 1 {
				t.Fatalf("next client sees v = %d, %v; want the old value 1", v, err)
			}
			lockCtx, cancel := context.WithTimeout(ctx, 3*time.Second)
			defer cancel()
			if _, err := next.Exec(lockCtx, "UPDATE "+table+" SET v = 3 WHERE id = 1"); err != nil {
				t.Fatalf("next client cannot update the row (lock left behind?): %v", err)
			}
			var app string
			if err := next.QueryRow(ctx, "SHOW application_name").Scan(&app); err != nil || app == "victim" {
				t.Fatalf("next client inherited application_name %q (%v)", app, err)
			}
			var temps int
			// Temporary tables are session state: transaction mode cannot
			// carry them (the README says so); session mode must reset them.
			if mode == "session" {
				if err := next.QueryRow(ctx, "SELECT count(*) FROM pg_class WHERE relname = 'victim_temp' AND relpersistence = 't' AND pg_table_is_visible(oid)").Scan(&temps); err != nil || temps != 0 {
					t.Fatalf("next client sees the dead client's temp table (%d, %v)", temps, err)
				}
			}
			if n := shardQueryInt(t, 0, "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'"); n != 0 {
				t.Fatalf("%d sessions idle in transaction on the shard", n)
			}
		})
	}
}

// TestLimitsGiveTheirSQLSTATE checks max_client_conn (53300 at login) and
// query_wait_timeout (53300 for the statement, connection kept).
func TestLimitsGiveTheirSQLSTATE(t *testing.T) {
	t.Run("max_client_conn", func(t *testing.T) {
		p := startProxy(t, proxyOpts{extra: "  max_client_conn: 3\n"})
		ctx := testContext(t, 30*time.Second)
		for range 3 {
			p.connect(t, ctx)
		}
		_, err := pgx.Connect(ctx, p.url("postgres", "main"))
		if pgCode(err) != "53300" {
			t.Fatalf("fourth client: %v; want 53300", err)
		}
	})
	// Connections that never send a startup packet count too (otherwise
	// any number of them pile up); a cancel request still reaches a
	// router at its limit.
	t.Run("silent connections count", func(t *testing.T) {
		p := startProxy(t, proxyOpts{extra: "  max_client_conn: 3\n"})
		ctx := testContext(t, 30*time.Second)
		busy := p.connect(t, ctx)
		for range 2 {
			c, err := net.Dial("tcp", p.addr)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = c.Close() })
		}
		eventually(t, 5*time.Second, func() error {
			if n := p.srv.ClientCount(); n != 3 {
				return fmt.Errorf("%d connections counted; want 3", n)
			}
			return nil
		})
		_, err := pgx.Connect(ctx, p.url("postgres", "main"))
		if pgCode(err) != "53300" {
			t.Fatalf("client past two silent connections: %v; want 53300", err)
		}
		done := make(chan error, 1)
		go func() {
			_, err := busy.Exec(ctx, "SELECT pg_sleep(20)")
			done <- err
		}()
		waitRunning(t, "SELECT pg_sleep(20)")
		if err := busy.PgConn().CancelRequest(ctx); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-done:
			if pgCode(err) != "57014" {
				t.Fatalf("cancelled sleep: %v; want 57014", err)
			}
		case <-ctx.Done():
			t.Fatal("a cancel request past max_client_conn did not get through")
		}
	})
	t.Run("query_wait_timeout", func(t *testing.T) {
		p := startProxy(t, proxyOpts{size: 1, extra: "  query_wait_timeout: 300ms\n"})
		ctx := testContext(t, 30*time.Second)
		holder := p.connect(t, ctx)
		waiter := p.connect(t, ctx)
		if _, err := holder.Exec(ctx, "BEGIN"); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		_, err := waiter.Exec(ctx, "SELECT 1")
		if pgCode(err) != "53300" || time.Since(start) < 250*time.Millisecond || time.Since(start) > 5*time.Second {
			t.Fatalf("waiting client: %v after %s; want 53300 after ~300ms", err, time.Since(start))
		}
		if !strings.Contains(err.Error(), "query_wait_timeout") {
			t.Fatalf("message does not name the setting: %v", err)
		}
		if _, err := holder.Exec(ctx, "COMMIT"); err != nil {
			t.Fatal(err)
		}
		var one int
		if err := waiter.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
			t.Fatalf("waiting client unusable after the timeout: %v", err)
		}
	})
}

// TestNotifyAndNoticesRelayed checks LISTEN/NOTIFY in session mode (the
// notification reaches a client that is only waiting) and notices.
func TestNotifyAndNoticesRelayed(t *testing.T) {
	p := startProxy(t, proxyOpts{mode: "session", size: 3})
	ctx := testContext(t, 30*time.Second)
	listener := p.connect(t, ctx)
	if _, err := listener.Exec(ctx, "LISTEN pgrouter_test"); err != nil {
		t.Fatal(err)
	}
	notifier := p.connect(t, ctx)
	notified := make(chan error, 1)
	go func() {
		time.Sleep(200 * time.Millisecond) // the listener is waiting, idle, by now
		_, err := notifier.Exec(ctx, "NOTIFY pgrouter_test, 'hello'")
		notified <- err
	}()
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	n, err := listener.WaitForNotification(wctx)
	if nerr := <-notified; nerr != nil {
		t.Fatal(nerr)
	}
	if err != nil || n.Payload != "hello" {
		t.Fatalf("notification: %+v, %v", n, err)
	}

	var notices []string
	var mu sync.Mutex
	tp := startProxy(t, proxyOpts{})
	conn := tp.connect(t, ctx, func(c *pgx.ConnConfig) {
		c.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
			mu.Lock()
			notices = append(notices, n.Message)
			mu.Unlock()
		}
	})
	if _, err := conn.Exec(ctx, "DO $$BEGIN RAISE NOTICE 'note %', 42; END$$"); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(notices) != 1 || notices[0] != "note 42" {
		t.Fatalf("notices = %q", notices)
	}
}

// TestCopyThroughPgx runs COPY FROM STDIN and COPY TO STDOUT through pgx in
// both modes, including a COPY that fails half-way.
func TestCopyThroughPgx(t *testing.T) {
	for _, mode := range bothModes {
		t.Run(mode, func(t *testing.T) {
			table := "copy_" + mode
			shardExec(t, 0, fmt.Sprintf("DROP TABLE IF EXISTS %[1]s; CREATE TABLE %[1]s (id int PRIMARY KEY, name text)", table))
			p := startProxy(t, proxyOpts{mode: mode, size: 2})
			ctx := testContext(t, time.Minute)
			conn := p.connect(t, ctx)
			rows := make([][]any, 50000)
			for i := range rows {
				rows[i] = []any{i, fmt.Sprintf("row %d", i)}
			}
			n, err := conn.CopyFrom(ctx, pgx.Identifier{table}, []string{"id", "name"}, pgx.CopyFromRows(rows))
			if err != nil || n != int64(len(rows)) {
				t.Fatalf("copy from: %d, %v", n, err)
			}
			// A duplicate key fails the COPY; the connection stays usable.
			_, err = conn.CopyFrom(ctx, pgx.Identifier{table}, []string{"id", "name"}, pgx.CopyFromRows([][]any{{1, "dup"}}))
			if pgCode(err) != "23505" {
				t.Fatalf("duplicate copy: %v", err)
			}
			var buf strings.Builder
			res, err := conn.PgConn().CopyTo(ctx, &buf, "COPY (SELECT id FROM "+table+" WHERE id < 5 ORDER BY id) TO STDOUT")
			if err != nil || res.RowsAffected() != 5 || buf.String() != "0\n1\n2\n3\n4\n" {
				t.Fatalf("copy to: %q, %v", buf.String(), err)
			}
			var count int
			if err := conn.QueryRow(ctx, "SELECT count(*) FROM "+table).Scan(&count); err != nil || count != len(rows) {
				t.Fatalf("count = %d, %v", count, err)
			}
		})
	}
}

// TestSettingsStayWithTheirClient gives two clients different settings
// (startup parameters and SET) on one shared server connection in
// transaction mode: each always sees its own.
func TestSettingsStayWithTheirClient(t *testing.T) {
	p := startProxy(t, proxyOpts{size: 1})
	ctx := testContext(t, 30*time.Second)
	a := p.connect(t, ctx, func(c *pgx.ConnConfig) {
		c.RuntimeParams["application_name"] = "client_a"
		c.RuntimeParams["TimeZone"] = "Asia/Tokyo"
	})
	b := p.connect(t, ctx, func(c *pgx.ConnConfig) {
		c.RuntimeParams["application_name"] = "client_b"
		c.RuntimeParams["options"] = "-c statement_timeout=4321"
	})
	for i := range 5 {
		for _, tc := range []struct {
			conn              *pgx.Conn
			app, tz, stmtTime string
		}{
			{a, "client_a", "Asia/Tokyo", "0"},
			{b, "client_b", "UTC", "4321ms"},
		} {
			var app, tz, st string
			err := tc.conn.QueryRow(ctx, "SELECT current_setting('application_name'), current_setting('TimeZone'), current_setting('statement_timeout')").Scan(&app, &tz, &st)
			if err != nil {
				t.Fatal(err)
			}
			if app != tc.app || (tz != tc.tz && tc.tz != "UTC") || st != tc.stmtTime {
				t.Fatalf("round %d: %s sees application_name=%q TimeZone=%q statement_timeout=%q", i, tc.app, app, tz, st)
			}
		}
	}
	// A SET of a reported parameter follows its client, and only its client.
	if _, err := a.Exec(ctx, "SET application_name = 'client_a2'"); err != nil {
		t.Fatal(err)
	}
	var app string
	if err := b.QueryRow(ctx, "SHOW application_name").Scan(&app); err != nil || app != "client_b" {
		t.Fatalf("b sees %q", app)
	}
	if err := a.QueryRow(ctx, "SHOW application_name").Scan(&app); err != nil || app != "client_a2" {
		t.Fatalf("a sees %q", app)
	}
}

// TestShardDownAndBack stops the default shard: clients get ERROR 08001 and
// stay connected (logins still work through the other shard), and once the
// shard is back the pool serves again without a restart of pgrouter.
func TestShardDownAndBack(t *testing.T) {
	ctx := testContext(t, 2*time.Minute)
	own := testenv.Servers(t, 1, pgtest.Options{})[0]
	p := startProxy(t, proxyOpts{servers: []*pgtest.Server{own, shards[1]}})
	conn := p.connect(t, ctx)
	var one int
	if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
		t.Fatal(err)
	}
	own.Halt()
	// The first statement may meet the server's own FATAL 57P01 (shutdown),
	// passed on as an ERROR since the client was outside a transaction.
	_, err := conn.Exec(ctx, "SELECT 1")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Severity != "ERROR" || (pgErr.Code != "08001" && pgErr.Code != "57P01") {
		t.Fatalf("with the shard down: %v; want ERROR 08001 or 57P01", err)
	}
	_, err = conn.Exec(ctx, "SELECT 1")
	if pgCode(err) != "08001" || !strings.Contains(err.Error(), "shard s0") {
		t.Fatalf("second statement with the shard down: %v; want 08001 naming shard s0", err)
	}
	if strings.Contains(err.Error(), own.Host) || strings.Contains(err.Error(), strconv.Itoa(own.Port)) {
		t.Fatalf("the client learns the shard's address: %v", err)
	}
	late := p.connect(t, ctx) // login still works: the other shard answers the greeting
	if err := own.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*pgx.Conn{conn, late} {
		if err := c.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
			t.Fatalf("after the shard came back: %v", err)
		}
	}
}

// TestServerFatalIsDowngradedOutsideTransactions terminates the client's own
// backend: outside a transaction in transaction mode the client gets the
// server's 57P01 as an ERROR and keeps working; inside a transaction, or in
// session mode, it gets the FATAL and is disconnected, as PostgreSQL would.
func TestServerFatalIsDowngradedOutsideTransactions(t *testing.T) {
	const suicide = "SELECT pg_terminate_backend(pg_backend_pid())"
	ctx := testContext(t, time.Minute)
	p := startProxy(t, proxyOpts{size: 2})
	conn := p.connect(t, ctx)
	_, err := conn.Exec(ctx, suicide)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "57P01" || pgErr.Severity != "ERROR" {
		t.Fatalf("outside a transaction: %v; want ERROR 57P01", err)
	}
	var one int
	if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
		t.Fatalf("connection unusable after a downgraded FATAL: %v", err)
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, err = tx.Exec(ctx, suicide)
	if !errors.As(err, &pgErr) || pgErr.Code != "57P01" || pgErr.Severity != "FATAL" {
		t.Fatalf("inside a transaction: %v; want FATAL 57P01", err)
	}

	sp := startProxy(t, proxyOpts{mode: "session", size: 2})
	sconn := sp.connect(t, ctx)
	_, err = sconn.Exec(ctx, suicide)
	if !errors.As(err, &pgErr) || pgErr.Severity != "FATAL" {
		t.Fatalf("session mode: %v; want FATAL", err)
	}
	if sconn.QueryRow(ctx, "SELECT 1").Scan(&one) == nil {
		t.Fatal("session-mode client still connected after its server's FATAL")
	}
}

// TestSetFollowsItsClient: in transaction mode with two server connections,
// client A's SET search_path / SET TimeZone never reach client B on the same
// server, A keeps them when it lands on the other server, and PostgreSQL's
// transaction rules hold (ROLLBACK undoes SET, COMMIT keeps it, SET LOCAL
// ends with its transaction, RESET goes back to the startup value).
func TestSetFollowsItsClient(t *testing.T) {
	shardExec(t, 0, "CREATE SCHEMA IF NOT EXISTS app_a")
	p := startProxy(t, proxyOpts{size: 2})
	ctx := testContext(t, time.Minute)
	a := p.connect(t, ctx, func(c *pgx.ConnConfig) { c.RuntimeParams["TimeZone"] = "Asia/Tokyo" })
	b := p.connect(t, ctx)
	show := func(conn *pgx.Conn) (path, tz, wm string) {
		t.Helper()
		if err := conn.QueryRow(ctx, "SELECT current_setting('search_path'), current_setting('TimeZone'), current_setting('work_mem')").Scan(&path, &tz, &wm); err != nil {
			t.Fatal(err)
		}
		return
	}
	_, bTZ, bWM := show(b)
	mustExec := func(conn *pgx.Conn, sql string, args ...any) {
		t.Helper()
		if _, err := conn.Exec(ctx, sql, args...); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	mustExec(a, "SET search_path = app_a, public")
	mustExec(a, "SET TIME ZONE 'Europe/Rome'")
	mustExec(a, "SELECT set_config('work_mem', $1, false)", "7MB") // extended protocol, function form

	// B takes the server A used; A gets the other one.
	tx, err := b.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if path, tz, wm := show(a); path != "app_a, public" || tz != "Europe/Rome" || wm != "7MB" {
		t.Fatalf("A on another server: search_path=%q TimeZone=%q work_mem=%q", path, tz, wm)
	}
	var path, tz, wm string
	if err := tx.QueryRow(ctx, "SELECT current_setting('search_path'), current_setting('TimeZone'), current_setting('work_mem')").Scan(&path, &tz, &wm); err != nil {
		t.Fatal(err)
	}
	if path != `"$user", public` || tz != bTZ || wm != bWM {
		t.Fatalf("B sees A's settings: search_path=%q TimeZone=%q work_mem=%q", path, tz, wm)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}

	// Transaction rules.
	mustExec(a, "BEGIN")
	mustExec(a, "SET search_path = public")
	mustExec(a, "ROLLBACK")
	if path, _, _ := show(a); path != "app_a, public" {
		t.Fatalf("after ROLLBACK of a SET: %q", path)
	}
	mustExec(a, "BEGIN")
	mustExec(a, "SET search_path = public")
	mustExec(a, "SET LOCAL work_mem = '9MB'")
	mustExec(a, "COMMIT")
	if path, _, wm := show(a); path != "public" || wm != "7MB" {
		t.Fatalf("after COMMIT: search_path=%q work_mem=%q", path, wm)
	}
	mustExec(a, "RESET TimeZone")
	if _, tz, _ := show(a); tz != "Asia/Tokyo" {
		t.Fatalf("RESET should return to the startup value, got %q", tz)
	}
	mustExec(a, "RESET ALL")
	if path, tz, wm := show(a); path != `"$user", public` || tz != "Asia/Tokyo" || wm != bWM {
		t.Fatalf("after RESET ALL: search_path=%q TimeZone=%q work_mem=%q", path, tz, wm)
	}
	if path, tz, wm := show(b); path != `"$user", public` || tz != bTZ || wm != bWM {
		t.Fatalf("B at the end: search_path=%q TimeZone=%q work_mem=%q", path, tz, wm)
	}
}
