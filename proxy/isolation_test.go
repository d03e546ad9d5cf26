package proxy_test

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgrouter/pgrouter/proxy"
)

// These tests put several clients on one server connection (pool size 1) and
// check that nothing one client does to prepared statements reaches another.

func rawLogin(t *testing.T, p *testProxy) *rawClient {
	c := dialRaw(t, p.addr)
	c.login(trustLogin)
	return c
}

// roundTrip sends messages and returns the replies up to ReadyForQuery.
func (c *rawClient) roundTrip(msgs ...pgproto3.FrontendMessage) string {
	c.t.Helper()
	c.send(msgs...)
	return describe(c.untilReady())
}

func TestStatementNamesCannotBeHijacked(t *testing.T) {
	p := startProxy(t, proxyOpts{size: 1})
	a := rawLogin(t, p)
	x := rawLogin(t, p)
	run := []pgproto3.FrontendMessage{&pgproto3.Bind{PreparedStatement: "q"}, &pgproto3.Execute{}, &pgproto3.Sync{}}
	if got := a.roundTrip(append([]pgproto3.FrontendMessage{&pgproto3.Parse{Name: "q", Query: "SELECT 'honest'"}}, run...)...); !strings.Contains(got, "Row(honest)") {
		t.Fatal(got)
	}
	x.roundTrip(&pgproto3.Parse{Name: "q", Query: "SELECT 'honest'"}, &pgproto3.Sync{})
	// A DEALLOCATE ALL hidden in a multi-statement string, then a reuse of the
	// name with other text: PostgreSQL says 42P05, and A's q must not change.
	if got := x.roundTrip(&pgproto3.Query{String: "SELECT 1; DEALLOCATE ALL"}); !strings.Contains(got, "Complete(DEALLOCATE ALL)") {
		t.Fatal(got)
	}
	x.roundTrip(&pgproto3.Parse{Name: "q", Query: "SELECT 'evil'"}, &pgproto3.Sync{})
	if got := a.roundTrip(run...); !strings.Contains(got, "Row(honest)") {
		t.Fatalf("A's statement now runs: %s", got)
	}
	// SQL-level names in pgrouter's reserved space are refused.
	for _, sql := range []string{
		"PREPARE pgr_0123456789abcdef0123456789abcdef AS SELECT 'evil'",
		"EXECUTE pgr_0123456789abcdef0123456789abcdef",
		"DEALLOCATE pgr_0123456789abcdef0123456789abcdef",
	} {
		if got := x.roundTrip(&pgproto3.Query{String: sql}); !strings.Contains(got, "42939") {
			t.Fatalf("%s: %s", sql, got)
		}
	}
	if got := x.roundTrip(&pgproto3.Parse{Query: "PREPARE pgr_x AS SELECT 1"}, &pgproto3.Sync{}); !strings.Contains(got, "42939") {
		t.Fatalf("reserved name through Parse: %s", got)
	}
	if got := a.roundTrip(run...); !strings.Contains(got, "Row(honest)") {
		t.Fatalf("after the attempts: %s", got)
	}
}

func TestFailedParseDoesNotLoseEvictedStatement(t *testing.T) {
	p := startProxy(t, proxyOpts{size: 1, extra: "  prepared_statements: 1\n"})
	a := rawLogin(t, p)
	a.roundTrip(&pgproto3.Parse{Name: "s1", Query: "SELECT 1"}, &pgproto3.Bind{PreparedStatement: "s1"}, &pgproto3.Execute{}, &pgproto3.Sync{})
	if got := a.roundTrip(&pgproto3.Parse{Name: "s2", Query: "SELECT bogus"}, &pgproto3.Sync{}); !strings.Contains(got, "42703") {
		t.Fatal(got)
	}
	for range 2 {
		if got := a.roundTrip(&pgproto3.Bind{PreparedStatement: "s1"}, &pgproto3.Execute{}, &pgproto3.Sync{}); got != "BindComplete Row(1) Complete(SELECT 1) Ready(I)" {
			t.Fatalf("s1 after a failed Parse evicted it: %s", got)
		}
	}
	b := rawLogin(t, p)
	if got := b.roundTrip(&pgproto3.Parse{Name: "x", Query: "SELECT 1"}, &pgproto3.Bind{PreparedStatement: "x"}, &pgproto3.Execute{}, &pgproto3.Sync{}); !strings.Contains(got, "Row(1)") {
		t.Fatalf("other client: %s", got)
	}
}

func TestUnnamedStatementNeverCrossesClients(t *testing.T) {
	p := startProxy(t, proxyOpts{size: 1})
	a := rawLogin(t, p)
	a.roundTrip(&pgproto3.Parse{Query: "SELECT 'secret of A'"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
	b := rawLogin(t, p)
	b.roundTrip(&pgproto3.Parse{Name: "z", Query: "SELECT 1/0"}, &pgproto3.Bind{PreparedStatement: "z"}, &pgproto3.Execute{},
		&pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
	got := b.roundTrip(&pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
	if strings.Contains(got, "secret") || !strings.Contains(got, "26000") {
		t.Fatalf("B bound the unnamed statement of A: %s", got)
	}
}

// TestExtendedCopyReleasesCleanly runs COPY FROM STDIN through the extended
// protocol, successful and failing, then checks the server went back to the
// pool clean: the next client's statements run normally.
func TestExtendedCopyReleasesCleanly(t *testing.T) {
	shardExec(t, 0, "DROP TABLE IF EXISTS xcopy; CREATE TABLE xcopy (x int)")
	p := startProxy(t, proxyOpts{size: 1})
	for _, data := range []string{"1\n2\n", "notanint\n"} {
		c := rawLogin(t, p)
		c.send(&pgproto3.Parse{Query: "COPY xcopy FROM STDIN"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
		for {
			m, err := c.receive()
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := m.(*pgproto3.CopyInResponse); ok {
				break
			}
		}
		c.send(&pgproto3.CopyData{Data: []byte(data)}, &pgproto3.CopyDone{}, &pgproto3.Sync{})
		got := describe(c.untilReady())
		if (data == "1\n2\n") != (got == "Complete(COPY 2) Ready(I)") {
			t.Fatalf("copy of %q: %s", data, got)
		}
		other := rawLogin(t, p)
		if got := other.roundTrip(&pgproto3.Query{String: "SELECT 42"}); got != "RowDescription Row(42) Complete(SELECT 1) Ready(I)" {
			t.Fatalf("next client after copy of %q: %s", data, got)
		}
	}
	if n := shardQueryInt(t, 0, "SELECT count(*) FROM xcopy"); n != 2 {
		t.Fatalf("%d rows committed, want 2", n)
	}
}

// TestSessionModePausedPipeline pauses a large pipeline before its Sync in
// session mode: the server starts answering, and the proxy must keep
// relaying rather than take those replies for idle-time messages.
func TestSessionModePausedPipeline(t *testing.T) {
	p := startProxy(t, proxyOpts{mode: "session", size: 1})
	c := rawLogin(t, p)
	c.send(&pgproto3.Parse{Query: "SELECT repeat('y', 100000)"}, &pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Parse{Name: "big", Query: "SELECT '" + strings.Repeat("x", 40000) + "'"})
	time.Sleep(300 * time.Millisecond)
	if got := c.roundTrip(&pgproto3.Sync{}); !strings.HasSuffix(got, "Complete(SELECT 1) ParseComplete Ready(I)") {
		t.Fatalf("%.200s", got)
	}
}

// TestLargePipelineDoesNotDeadlock sends tens of megabytes of results'
// worth of Bind/Execute before one Sync while reading concurrently, as pgx
// batches and libpq pipelines do.
func TestLargePipelineDoesNotDeadlock(t *testing.T) {
	p := startProxy(t, proxyOpts{size: 1})
	c := rawLogin(t, p)
	// Requests and replies must both outgrow the socket buffers: 20,000
	// Binds of 1 kB each, and 3 kB rows back.
	c.roundTrip(&pgproto3.Parse{Name: "big", Query: "SELECT $1::text || repeat('y', 2000)"}, &pgproto3.Sync{})
	param := [][]byte{[]byte(strings.Repeat("p", 1000))}
	const n = 20000
	_ = c.conn.SetDeadline(time.Now().Add(30 * time.Second)) // a deadlock fails the test, not the run
	var wg sync.WaitGroup
	wg.Add(1)
	result := make(chan string, 1)
	go func() {
		defer wg.Done()
		rows := 0
		for {
			m, err := c.fe.Receive()
			if err != nil {
				result <- fmt.Sprintf("after %d rows: %v", rows, err)
				return
			}
			switch m.(type) {
			case *pgproto3.DataRow:
				rows++
			case *pgproto3.ReadyForQuery:
				result <- fmt.Sprintf("%d rows", rows)
				return
			}
		}
	}()
	for range n {
		c.fe.Send(&pgproto3.Bind{PreparedStatement: "big", Parameters: param})
		c.fe.Send(&pgproto3.Execute{})
	}
	c.fe.Send(&pgproto3.Sync{})
	if err := c.fe.Flush(); err != nil {
		t.Fatalf("client write: %v", err)
	}
	wg.Wait()
	if got := <-result; got != fmt.Sprintf("%d rows", n) {
		t.Fatal(got)
	}
}

// TestRefusedStatementAbortsLikePostgres refuses a statement in the middle
// of a transaction and of an extended-protocol batch: the error aborts
// exactly what PostgreSQL's own error would (the transaction goes to E, the
// implicit transaction's earlier INSERT is rolled back).
func TestRefusedStatementAbortsLikePostgres(t *testing.T) {
	shardExec(t, 0, "DROP TABLE IF EXISTS refused; CREATE TABLE refused (x int)")
	for _, mode := range bothModes {
		t.Run(mode, func(t *testing.T) {
			p := startProxy(t, proxyOpts{mode: mode, size: 1})
			c := rawLogin(t, p)
			c.roundTrip(&pgproto3.Query{String: "BEGIN"})
			c.roundTrip(&pgproto3.Query{String: "INSERT INTO refused VALUES (1)"})
			if got := c.roundTrip(&pgproto3.Query{String: "PREPARE pgr_a AS SELECT 1"}); !strings.Contains(got, "42939") || !strings.HasSuffix(got, "Ready(E)") {
				t.Fatalf("refused inside a transaction: %s", got)
			}
			if got := c.roundTrip(&pgproto3.Query{String: "SELECT 1"}); !strings.Contains(got, "25P02") {
				t.Fatalf("transaction not aborted: %s", got)
			}
			c.roundTrip(&pgproto3.Query{String: "ROLLBACK"})
			got := c.roundTrip(
				&pgproto3.Parse{Query: "INSERT INTO refused VALUES (2)"}, &pgproto3.Bind{}, &pgproto3.Execute{},
				&pgproto3.Parse{Query: "PREPARE pgr_b AS SELECT 1"}, &pgproto3.Bind{}, &pgproto3.Execute{},
				&pgproto3.Sync{})
			if got != "ParseComplete BindComplete Complete(INSERT 0 1) Error(ERROR 42939: pgrouter: prepared statement names starting with \"pgr_\" are reserved for pgrouter) Ready(I)" {
				t.Fatalf("refused in a batch: %s", got)
			}
			if n := shardQueryInt(t, 0, "SELECT count(*) FROM refused"); n != 0 {
				t.Fatalf("%d rows survived the aborted transactions", n)
			}
		})
	}
}

// TestPlantedStatementIsNeverRun: a client that knows (or guesses) the
// server-side name another client's statement will get, plants a statement
// under it through SQL that pgrouter's reserved-name check cannot see (a DO
// block, a U&"..." UESCAPE name), and makes pgrouter re-read the server's
// statements. The victim must still run its own statement.
func TestPlantedStatementIsNeverRun(t *testing.T) {
	p := startProxy(t, proxyOpts{size: 1})
	a := rawLogin(t, p)
	x := rawLogin(t, p)
	definition := []byte("SELECT 'honest'\x00\x00\x00") // query, no parameter types
	name := proxy.StatementName(definition)
	sum := sha256.Sum256(definition)
	if name == proxy.ServerStmtPrefix+hex.EncodeToString(sum[:16]) {
		t.Fatal("server statement names are a plain hash of the text: computable by any client")
	}
	escaped := `U&"!0070` + name[1:] + `" UESCAPE '!'`
	if got := x.roundTrip(&pgproto3.Query{String: "PREPARE " + escaped + " AS SELECT 'evil'"}); !strings.Contains(got, "42939") {
		t.Fatalf("reserved name disguised with UESCAPE: %s", got)
	}
	x.roundTrip(&pgproto3.Query{String: "PREPARE mine AS SELECT 1"})
	if got := x.roundTrip(&pgproto3.Query{String: "DO $$ BEGIN EXECUTE 'PREPARE " + name + " AS SELECT ''evil'''; END $$"}); !strings.Contains(got, "Complete(DO)") {
		t.Fatalf("planting through DO: %s", got)
	}
	x.roundTrip(&pgproto3.Query{String: "DEALLOCATE mine"}) // makes pgrouter re-read the server's statements
	got := a.roundTrip(&pgproto3.Parse{Name: "q", Query: "SELECT 'honest'"}, &pgproto3.Bind{PreparedStatement: "q"}, &pgproto3.Execute{}, &pgproto3.Sync{})
	if !strings.Contains(got, "Row(honest)") {
		t.Fatalf("the victim's statement ran the planted one: %s", got)
	}
}
