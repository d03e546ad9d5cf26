package proxy_test

import (
	"io"
	"net"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"
)

// TestFanoutStreams: a run_on all call's rows reach the client as shards
// answer, not once the slowest has finished: here s3 sleeps 3 s before
// its rows and the client reads the other shards' rows long before that.
func TestFanoutStreams(t *testing.T) {
	p := startRouting(t, proxyOpts{size: 2})
	ctx := testContext(t, time.Minute)
	conn := p.connect(t, ctx)
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeSimpleProtocol} {
		start := time.Now()
		rows, err := conn.Query(ctx, "SELECT * FROM rt_rows($1, $2, $3)", mode, 10, "s3", 3.0)
		if err != nil {
			t.Fatal(err)
		}
		var first time.Duration
		n := 0
		for rows.Next() {
			if n++; n == 1 {
				first = time.Since(start)
			}
		}
		if err := rows.Err(); err != nil || n != 40 {
			t.Fatalf("%v: %d rows, %v; want 40", mode, n, err)
		}
		if total := time.Since(start); first > 2*time.Second || total < 3*time.Second {
			t.Fatalf("%v: first row after %s, all after %s; want the first long before the slow shard's 3 s", mode, first, total)
		}
	}
}

// TestFanoutMemoryStaysFlat: 100 MB of rows through a run_on all call
// (25,000 rows of 1 KB from each of four shards) must not be held by the
// router: the heap, sampled while they pass, grows by far less.
func TestFanoutMemoryStaysFlat(t *testing.T) {
	p := startRouting(t, proxyOpts{size: 2})
	ctx := testContext(t, time.Minute)
	conn := p.connect(t, ctx)
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapAlloc
	var peak atomic.Uint64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		var ms runtime.MemStats
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			runtime.ReadMemStats(&ms)
			if ms.HeapAlloc > peak.Load() {
				peak.Store(ms.HeapAlloc)
			}
		}
	}()
	rows, err := conn.Query(ctx, "SELECT * FROM rt_rows($1, '', 0)", 25000)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for rows.Next() {
		n++
	}
	close(stop)
	<-sampled
	if err := rows.Err(); err != nil || n != 100000 {
		t.Fatalf("%d rows, %v; want 100000", n, err)
	}
	grew := int64(peak.Load()) - int64(base)
	t.Logf("heap grew by at most %d MB while 100 MB of rows passed", grew>>20)
	if grew > 40<<20 {
		t.Fatalf("heap grew by %d MB while 100 MB of rows passed through a fan-out; rows are being held", grew>>20)
	}
}

// TestFanoutMergeIsCapped: a merged call reduces many rows per shard, up to
// a cap on what it holds; past it, 54000 and the connection stays usable.
func TestFanoutMergeIsCapped(t *testing.T) {
	p := startRouting(t, proxyOpts{size: 2})
	ctx := testContext(t, time.Minute)
	conn := p.connect(t, ctx)
	var sum string
	if err := conn.QueryRow(ctx, "SELECT rt_sum_series($1)", 1000).Scan(&sum); err != nil || sum != "2002000" {
		t.Fatalf("sum of 4 × 1..1000 = %s, %v; want 2002000", sum, err)
	}
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeSimpleProtocol} {
		err := conn.QueryRow(ctx, "SELECT rt_sum_series($1)", mode, 100000).Scan(&sum)
		if pgCode(err) != "54000" {
			t.Fatalf("%v: merge of 400,000 values: %v; want 54000", mode, err)
		}
	}
	var one int
	if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
		t.Fatal(err)
	}
}

// TestFanoutCannotChangeSettings: a run_on all call whose statement also
// changes a setting would leave it on every shard's server, where pgrouter
// cannot follow it to the client's next server: refused before it runs.
func TestFanoutCannotChangeSettings(t *testing.T) {
	p := startRouting(t, proxyOpts{size: 1})
	ctx := testContext(t, time.Minute)
	conn := p.connect(t, ctx)
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeSimpleProtocol} {
		_, err := conn.Exec(ctx, "SELECT * FROM rt_rows(1, set_config('search_path', 'evil', false), 0)", mode)
		if pgCode(err) != "0A000" || !strings.Contains(err.Error(), "changes session settings") {
			t.Fatalf("%v: %v; want 0A000", mode, err)
		}
	}
	// Every shard's server still has the default search_path.
	rows, err := conn.Query(ctx, "SELECT * FROM rt_rows(1, '', 0)")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for rows.Next() {
		n++
	}
	if err := rows.Err(); err != nil || n != 4 {
		t.Fatalf("after the refused calls: %d rows, %v; want one per shard", n, err)
	}
}

// slowReader reads at most 64 kB at a time, 2 ms apart: with a small
// receive buffer, a client that keeps reading, slowly.
type slowReader struct{ r io.Reader }

func (s slowReader) Read(p []byte) (int, error) {
	time.Sleep(2 * time.Millisecond)
	return s.r.Read(p[:min(len(p), 64<<10)])
}

// TestFanoutSlowClientIsNotAShardTimeout: a client that reads an 8 MB
// run_on all result slowly (seconds, over a small receive buffer) is not
// a shard that stopped answering: with server_read_timeout 1s the call
// completes. Before, the time pgrouter spent blocked on the client counted
// toward the shards' timeout and the call failed with 57014.
func TestFanoutSlowClientIsNotAShardTimeout(t *testing.T) {
	p := startRouting(t, proxyOpts{size: 2, extra: "  server_read_timeout: 1s\n"})
	d := net.Dialer{Timeout: 5 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 16<<10) })
		if err != nil {
			return err
		}
		return serr
	}}
	conn, err := d.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Minute))
	c := &rawClient{t: t, conn: conn, fe: pgproto3.NewFrontend(slowReader{conn}, conn)}
	c.login(trustLogin)
	start := time.Now()
	c.send(&pgproto3.Query{String: "SELECT * FROM rt_rows(2000, '', 0)"})
	rows := 0
	for {
		m, err := c.receive()
		if err != nil {
			t.Fatalf("after %d rows: %v", rows, err)
		}
		switch m := m.(type) {
		case *pgproto3.DataRow:
			rows++
		case *pgproto3.ErrorResponse:
			t.Fatalf("after %d rows and %s: %s %s", rows, time.Since(start).Round(time.Millisecond), m.Code, m.Message)
		case *pgproto3.ReadyForQuery:
			if rows != 8000 {
				t.Fatalf("%d rows; want 8000", rows)
			}
			if took := time.Since(start); took < 1500*time.Millisecond {
				t.Fatalf("read in %s: the client was not slow enough to test anything", took)
			}
			return
		}
	}
}

// TestRoutingFanoutInSessionMode: a session-mode client's fan-out uses the
// servers it holds (with a pool of one per shard it would otherwise wait on
// itself), and its session state there is visible to the fan-out.
func TestRoutingFanoutInSessionMode(t *testing.T) {
	p := startRouting(t, proxyOpts{mode: "session", size: 1, extra: "  query_wait_timeout: 2s\n"})
	ctx := testContext(t, time.Minute)
	conn := p.connect(t, ctx)
	for _, key := range []string{"user1", "user2", "user3", "user4", "user5"} {
		if _, err := conn.Exec(ctx, "SELECT rt_where($1)", key); err != nil {
			t.Fatal(err)
		}
	}
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeSimpleProtocol} {
		var n int64
		if err := conn.QueryRow(ctx, "SELECT rt_count_users()", mode).Scan(&n); err != nil {
			t.Fatalf("fan-out in session mode (%v): %v", mode, err)
		}
	}
	var s string
	if err := conn.QueryRow(ctx, "SELECT rt_where($1)", "user1").Scan(&s); err != nil || s != expectShard(t, "user1") {
		t.Fatalf("after the fan-out: %q %v", s, err)
	}
}

// TestRoutingFanoutErrors: a shard's error fails a run_on all call, names
// the shard and keeps the SQLSTATE; the connection stays usable.
func TestRoutingFanoutErrors(t *testing.T) {
	p := startRouting(t, proxyOpts{size: 2})
	ctx := testContext(t, time.Minute)
	conn := p.connect(t, ctx)
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeSimpleProtocol} {
		_, err := conn.Exec(ctx, "SELECT * FROM rt_fail_on($1)", mode, "s2")
		if pgCode(err) != "22012" || !strings.Contains(err.Error(), "shard s2") {
			t.Fatalf("fan-out error (%v): %v", mode, err)
		}
		rows, err := conn.Query(ctx, "SELECT * FROM rt_fail_on($1)", mode, "none")
		if err != nil {
			t.Fatal(err)
		}
		vals, err := pgx.CollectRows(rows, pgx.RowTo[int32])
		if err != nil || len(vals) != 4 {
			t.Fatalf("fan-out rows (%v): %v %v", mode, vals, err)
		}
	}
}
