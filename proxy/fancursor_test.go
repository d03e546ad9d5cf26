package proxy_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgrouter/pgrouter/proxy"
	"github.com/pgrouter/pgrouter/sqlstate"
)

// cursorClient is a raw client fetching a fan-out's portal in pieces, as
// JDBC with setFetchSize does: Parse, Bind of a named portal, Describe,
// Execute with a row limit, Sync; then Execute and Sync until the rows end.
type cursorClient struct {
	*rawClient
}

func loginCursorClient(t *testing.T, p *testProxy) cursorClient {
	c := cursorClient{dialRaw(t, p.addr)}
	c.login(map[string]string{"user": "postgres", "database": "main"})
	return c
}

// open begins a transaction and the portal, returning the first reply.
func (c cursorClient) open(sql string, limit uint32, params ...string) []pgproto3.BackendMessage {
	c.send(&pgproto3.Query{String: "BEGIN"})
	c.untilReady()
	var ps [][]byte
	for _, v := range params {
		ps = append(ps, []byte(v))
	}
	c.send(&pgproto3.Parse{Query: sql}, &pgproto3.Bind{DestinationPortal: "C_1", Parameters: ps},
		&pgproto3.Describe{ObjectType: 'P', Name: "C_1"}, &pgproto3.Execute{Portal: "C_1", MaxRows: limit}, &pgproto3.Sync{})
	return c.untilReady()
}

// fetch executes the portal again.
func (c cursorClient) fetch(limit uint32) []pgproto3.BackendMessage {
	c.send(&pgproto3.Execute{Portal: "C_1", MaxRows: limit}, &pgproto3.Sync{})
	return c.untilReady()
}

// rowsOf returns a reply's rows' first columns and whether it ended with
// PortalSuspended (else its CommandComplete tag).
func rowsOf(t *testing.T, reply []pgproto3.BackendMessage) (rows []string, suspended bool, tag string) {
	t.Helper()
	for _, m := range reply {
		switch m := m.(type) {
		case *pgproto3.DataRow:
			rows = append(rows, string(m.Values[0]))
		case *pgproto3.PortalSuspended:
			suspended = true
		case *pgproto3.CommandComplete:
			tag = string(m.CommandTag)
		case *pgproto3.ErrorResponse:
			t.Fatalf("error: %s %s", m.Code, m.Message)
		}
	}
	return rows, suspended, tag
}

// TestFanoutCursor: a run_on all portal fetched 7 rows at a time inside a
// transaction gives every shard's rows once, never more than asked, with
// PortalSuspended between fetches and, as PostgreSQL, a last tag counting
// that fetch's rows and SELECT 0 after the end; the transaction then goes
// on to pin a shard. Closing the portal, COMMIT, a shard's error and a
// client that vanishes mid-cursor all give the held server back (the pool
// has one server per shard, so a leak would starve the next client).
func TestFanoutCursor(t *testing.T) {
	p := startRouting(t, proxyOpts{size: 1, extra: "  query_wait_timeout: 2s\n"})
	ctx := testContext(t, time.Minute)
	conn := p.connect(t, ctx)
	var want []string
	for i := range 40 {
		k := fmt.Sprintf("cur-%02d", i)
		if _, err := conn.Exec(ctx, "SELECT rt_add_user($1, $2)", k, email(k)); err != nil {
			t.Fatal(err)
		}
		want = append(want, k)
	}
	conn.Close(ctx)

	t.Run("fetch every row in pieces", func(t *testing.T) {
		c := loginCursorClient(t, p)
		first := c.open("select * from rt_list_users()", 7)
		if got := describe(first); !strings.HasPrefix(got, "ParseComplete BindComplete RowDescription") {
			t.Fatalf("first reply: %s", got)
		}
		var all []string
		rows, suspended, endTag := rowsOf(t, first)
		for ; suspended; rows, suspended, endTag = rowsOf(t, c.fetch(7)) {
			if len(rows) != 7 {
				t.Fatalf("a suspended fetch of 7 gave %d rows", len(rows))
			}
			all = append(all, rows...)
		}
		if len(rows) != 40%7 || endTag != fmt.Sprintf("SELECT %d", 40%7) {
			t.Fatalf("the last fetch gave %d rows, tag %q; want %d rows, as many in the tag", len(rows), endTag, 40%7)
		}
		all = append(all, rows...)
		last, _, tag := rowsOf(t, c.fetch(7)) // after the end, as PostgreSQL: SELECT 0
		if tag != "SELECT 0" || len(last) != 0 {
			t.Fatalf("fetch after the end: %d rows, tag %q", len(last), tag)
		}
		slices.Sort(all)
		if !slices.Equal(all, want) {
			t.Fatalf("fetched %d rows %q, want the %d users", len(all), all, len(want))
		}
		// The transaction is still free: its first write chooses the shard.
		c.send(&pgproto3.Query{String: "SELECT rt_add_user('cur-after', 'x'); COMMIT"})
		if got := describe(c.untilReady()); strings.Contains(got, "Error") {
			t.Fatalf("write after the cursor: %s", got)
		}
		if n := shardQueryInt(t, shardIndex(t, "cur-after"), "SELECT count(*) FROM rt_users WHERE username = "+proxy.QuoteLiteral("cur-after")); n != 1 {
			t.Fatalf("cur-after: %d rows on its shard", n)
		}
	})

	t.Run("ended early", func(t *testing.T) {
		for _, end := range []string{"close", "commit", "vanish"} {
			c := loginCursorClient(t, p)
			if _, suspended, _ := rowsOf(t, c.open("select * from rt_list_users()", 3)); !suspended {
				t.Fatalf("%s: not suspended after 3 rows", end)
			}
			switch end {
			case "close":
				c.send(&pgproto3.Close{ObjectType: 'P', Name: "C_1"}, &pgproto3.Sync{})
				if got := describe(c.untilReady()); got != "CloseComplete Ready(T)" {
					t.Fatalf("close: %s", got)
				}
				c.send(&pgproto3.Execute{Portal: "C_1"}, &pgproto3.Sync{})
				if got := describe(c.untilReady()); !strings.Contains(got, "34000") {
					t.Fatalf("execute after close: %s", got)
				}
			case "commit":
				c.send(&pgproto3.Query{String: "COMMIT"})
				if got := describe(c.untilReady()); got != "Complete(COMMIT) Ready(I)" {
					t.Fatalf("commit: %s", got)
				}
			case "vanish":
				_ = c.conn.Close()
			}
			// Every shard's one server is free again for someone else.
			other := p.connect(t, ctx)
			var n int64
			if err := other.QueryRow(ctx, "SELECT count(*) FROM rt_list_users()").Scan(&n); err != nil || n == 0 {
				t.Fatalf("after the cursor ended by %s: %d, %v", end, n, err)
			}
			other.Close(ctx)
		}
	})

	t.Run("a shard's error", func(t *testing.T) {
		c := loginCursorClient(t, p)
		rows, suspended, _ := rowsOf(t, c.open("select * from rt_fail_on($1)", 1, "s2"))
		for ; suspended; rows, suspended, _ = func() ([]string, bool, string) {
			reply := c.fetch(1)
			for _, m := range reply {
				if e, ok := m.(*pgproto3.ErrorResponse); ok {
					if e.Code != "22012" || !strings.Contains(e.Message, "shard s2: boom on s2") {
						t.Fatalf("the shard's error: %s %s", e.Code, e.Message)
					}
					return nil, false, "error"
				}
			}
			return rowsOf(t, reply)
		}() {
			if len(rows) != 1 {
				t.Fatalf("%d rows", len(rows))
			}
		}
		c.send(&pgproto3.Query{String: "SELECT 1"})
		if got := describe(c.untilReady()); !strings.Contains(got, sqlstate.InFailedTransaction) {
			t.Fatalf("after the error the transaction is aborted, got %s", got)
		}
		c.send(&pgproto3.Query{String: "ROLLBACK"})
		c.untilReady()
		other := p.connect(t, ctx)
		if _, err := other.Exec(ctx, "SELECT count(*) FROM rt_list_users()"); err != nil {
			t.Fatalf("after the error: %v", err)
		}
	})
}
