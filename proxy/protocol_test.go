package proxy_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgrouter/pgrouter/proxy"
)

// rawClient speaks the protocol by hand, for what drivers never send.
type rawClient struct {
	t    testing.TB
	conn net.Conn
	fe   *pgproto3.Frontend
}

func dialRaw(t testing.TB, addr string) *rawClient {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	t.Cleanup(func() { _ = conn.Close() })
	return &rawClient{t: t, conn: conn, fe: pgproto3.NewFrontend(conn, conn)}
}

func (c *rawClient) send(msgs ...pgproto3.FrontendMessage) {
	c.t.Helper()
	for _, m := range msgs {
		c.fe.Send(m)
	}
	if err := c.fe.Flush(); err != nil {
		c.t.Fatal(err)
	}
}

func (c *rawClient) write(b []byte) {
	c.t.Helper()
	if _, err := c.conn.Write(b); err != nil {
		c.t.Fatal(err)
	}
}

// receive reads one message, copying it (pgproto3 reuses its structs).
func (c *rawClient) receive() (pgproto3.BackendMessage, error) {
	m, err := c.fe.Receive()
	if err != nil {
		return nil, err
	}
	return copyMessage(m), nil
}

func copyMessage(m pgproto3.BackendMessage) pgproto3.BackendMessage {
	buf, err := m.Encode(nil)
	if err != nil {
		panic(err)
	}
	fe := pgproto3.NewFrontend(bytes.NewReader(buf), io.Discard)
	out, err := fe.Receive()
	if err != nil {
		panic(err)
	}
	return out
}

// untilReady reads until ReadyForQuery.
func (c *rawClient) untilReady() []pgproto3.BackendMessage {
	c.t.Helper()
	var out []pgproto3.BackendMessage
	for {
		m, err := c.receive()
		if err != nil {
			c.t.Fatalf("after %s: %v", describe(out), err)
		}
		out = append(out, m)
		if _, ok := m.(*pgproto3.ReadyForQuery); ok {
			return out
		}
	}
}

// login sends a startup message and reads up to ReadyForQuery.
func (c *rawClient) login(params map[string]string) []pgproto3.BackendMessage {
	c.t.Helper()
	c.send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: params})
	return c.untilReady()
}

// expectFatal reads until an ErrorResponse and checks it is FATAL with code,
// then that the connection is closed.
func (c *rawClient) expectFatal(code string) *pgproto3.ErrorResponse {
	c.t.Helper()
	for {
		m, err := c.receive()
		if err != nil {
			c.t.Fatalf("waiting for FATAL %s: %v", code, err)
		}
		if e, ok := m.(*pgproto3.ErrorResponse); ok {
			if e.Severity != "FATAL" || e.Code != code {
				c.t.Fatalf("got %s %s %q, want FATAL %s", e.Severity, e.Code, e.Message, code)
			}
			if _, err := c.receive(); err == nil {
				c.t.Fatal("connection still open after FATAL")
			}
			return e
		}
	}
}

func describe(msgs []pgproto3.BackendMessage) string {
	var parts []string
	for _, m := range msgs {
		switch m := m.(type) {
		case *pgproto3.ErrorResponse:
			parts = append(parts, fmt.Sprintf("Error(%s %s: %s)", m.Severity, m.Code, m.Message))
		case *pgproto3.ReadyForQuery:
			parts = append(parts, fmt.Sprintf("Ready(%c)", m.TxStatus))
		case *pgproto3.CommandComplete:
			parts = append(parts, fmt.Sprintf("Complete(%s)", m.CommandTag))
		case *pgproto3.DataRow:
			var vals []string
			for _, v := range m.Values {
				vals = append(vals, string(v))
			}
			parts = append(parts, "Row("+strings.Join(vals, ",")+")")
		case *pgproto3.ParameterStatus, *pgproto3.BackendKeyData, *pgproto3.NoticeResponse:
			continue // these differ between a proxy and a server by design
		default:
			name := fmt.Sprintf("%T", m)
			parts = append(parts, strings.TrimPrefix(name, "*pgproto3."))
		}
	}
	return strings.Join(parts, " ")
}

var trustLogin = map[string]string{"user": "postgres", "database": "main"}

func TestEncryptionRequestsAreDeclined(t *testing.T) {
	p := startProxy(t, proxyOpts{})
	for _, code := range []uint32{proxy.CodeGSSENCRequest, proxy.CodeSSLRequest} {
		c := dialRaw(t, p.addr)
		req := make([]byte, 8)
		binary.BigEndian.PutUint32(req, 8)
		binary.BigEndian.PutUint32(req[4:], code)
		c.write(req)
		answer := make([]byte, 1)
		if _, err := io.ReadFull(c.conn, answer); err != nil || answer[0] != 'N' {
			t.Fatalf("request %d answered %q, %v", code, answer, err)
		}
		msgs := c.login(trustLogin)
		if got := describe(msgs); got != "AuthenticationOk Ready(I)" {
			t.Fatalf("login after declined encryption: %s", got)
		}
	}
}

func TestProtocolNegotiation(t *testing.T) {
	p := startProxy(t, proxyOpts{})
	t.Run("3.2 is negotiated down", func(t *testing.T) {
		c := dialRaw(t, p.addr)
		c.send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion32, Parameters: map[string]string{
			"user": "postgres", "database": "main", "_pq_.test_option": "1",
		}})
		m, err := c.receive()
		if err != nil {
			t.Fatal(err)
		}
		nv, ok := m.(*pgproto3.NegotiateProtocolVersion)
		if !ok || nv.NewestMinorProtocol != 0 || len(nv.UnrecognizedOptions) != 1 || nv.UnrecognizedOptions[0] != "_pq_.test_option" {
			t.Fatalf("first reply %#v", m)
		}
		msgs := c.untilReady()
		c.send(&pgproto3.Query{String: "SELECT 7"})
		if got := describe(c.untilReady()); got != "RowDescription Row(7) Complete(SELECT 1) Ready(I)" {
			t.Fatalf("query after negotiation: %s (login %s)", got, describe(msgs))
		}
	})
	t.Run("2.0 is refused", func(t *testing.T) {
		c := dialRaw(t, p.addr)
		pkt := []byte{0, 0, 0, 8, 0, 2, 0, 0}
		c.write(pkt)
		c.expectFatal("0A000")
	})
}

// TestHostileInput sends what a broken or hostile client might: each gets a
// FATAL 08P01 (or a closed socket for a silent client) and the server keeps
// serving others.
func TestHostileInput(t *testing.T) {
	p := startProxy(t, proxyOpts{extra: "  max_message_size: 64kB\n  client_login_timeout: 300ms\n"})
	t.Run("oversized startup packet", func(t *testing.T) {
		c := dialRaw(t, p.addr)
		pkt := make([]byte, 8)
		binary.BigEndian.PutUint32(pkt, 20000)
		binary.BigEndian.PutUint32(pkt[4:], pgproto3.ProtocolVersion30)
		c.write(pkt)
		c.expectFatal("08P01")
	})
	t.Run("malformed startup length", func(t *testing.T) {
		c := dialRaw(t, p.addr)
		c.write([]byte{0, 0, 0, 2, 0, 3, 0, 0})
		c.expectFatal("08P01")
	})
	t.Run("unterminated startup parameters", func(t *testing.T) {
		c := dialRaw(t, p.addr)
		body := []byte("\x00\x03\x00\x00user\x00postgres")
		pkt := binary.BigEndian.AppendUint32(nil, uint32(len(body)+4))
		c.write(append(pkt, body...))
		c.expectFatal("08P01")
	})
	t.Run("oversized message", func(t *testing.T) {
		c := dialRaw(t, p.addr)
		c.login(trustLogin)
		c.send(&pgproto3.Query{String: "SELECT '" + strings.Repeat("x", 100<<10) + "'"})
		e := c.expectFatal("08P01")
		if !strings.Contains(e.Message, "exceeds the limit") || !strings.Contains(e.Hint, "max_message_size") {
			t.Fatalf("message %q hint %q", e.Message, e.Hint)
		}
	})
	t.Run("negative message length", func(t *testing.T) {
		c := dialRaw(t, p.addr)
		c.login(trustLogin)
		c.write([]byte{'Q', 0, 0, 0, 2})
		c.expectFatal("08P01")
	})
	t.Run("unknown message type", func(t *testing.T) {
		c := dialRaw(t, p.addr)
		c.login(trustLogin)
		c.write([]byte{'z', 0, 0, 0, 4})
		c.expectFatal("08P01")
	})
	t.Run("malformed Bind", func(t *testing.T) {
		c := dialRaw(t, p.addr)
		c.login(trustLogin)
		c.write([]byte{'B', 0, 0, 0, 6, 'a', 'b'}) // no terminators
		c.expectFatal("08P01")
	})
	t.Run("silent client hits client_login_timeout", func(t *testing.T) {
		c := dialRaw(t, p.addr)
		start := time.Now()
		_, err := c.conn.Read(make([]byte, 1))
		if !errors.Is(err, io.EOF) || time.Since(start) > 5*time.Second {
			t.Fatalf("silent client: %v after %s", err, time.Since(start))
		}
	})
	t.Run("others still served", func(t *testing.T) {
		c := dialRaw(t, p.addr)
		c.login(trustLogin)
		c.send(&pgproto3.Query{String: "SELECT 1"})
		if got := describe(c.untilReady()); got != "RowDescription Row(1) Complete(SELECT 1) Ready(I)" {
			t.Fatal(got)
		}
	})
}

// goldenCases are message lists whose replies must match plain PostgreSQL's,
// message for message (ParameterStatus, keys and notices aside).
var goldenCases = []struct {
	name string
	msgs []pgproto3.FrontendMessage
}{
	{"simple query with error in the middle", []pgproto3.FrontendMessage{
		&pgproto3.Query{String: "SELECT 1; SELECT 1/0; SELECT 2"},
	}},
	{"pipeline with error in the middle", []pgproto3.FrontendMessage{
		&pgproto3.Parse{Name: "ok1", Query: "SELECT $1::int + 1"},
		&pgproto3.Bind{PreparedStatement: "ok1", Parameters: [][]byte{[]byte("41")}},
		&pgproto3.Execute{},
		&pgproto3.Parse{Name: "bad", Query: "SELEC 1"},
		&pgproto3.Bind{PreparedStatement: "bad"},
		&pgproto3.Execute{},
		&pgproto3.Sync{},
		&pgproto3.Bind{PreparedStatement: "ok1", Parameters: [][]byte{[]byte("1")}},
		&pgproto3.Execute{},
		&pgproto3.Bind{PreparedStatement: "bad"},
		&pgproto3.Execute{},
		&pgproto3.Sync{},
	}},
	{"name misuse", []pgproto3.FrontendMessage{
		&pgproto3.Parse{Name: "dup", Query: "SELECT 1"},
		&pgproto3.Sync{},
		&pgproto3.Parse{Name: "dup", Query: "SELECT 2"},
		&pgproto3.Sync{},
		&pgproto3.Bind{PreparedStatement: "nope"},
		&pgproto3.Sync{},
		&pgproto3.Describe{ObjectType: 'S', Name: "nope"},
		&pgproto3.Sync{},
		&pgproto3.Close{ObjectType: 'S', Name: "nope"},
		&pgproto3.Close{ObjectType: 'S', Name: "dup"},
		&pgproto3.Sync{},
		&pgproto3.Bind{PreparedStatement: "dup"},
		&pgproto3.Sync{},
		&pgproto3.Query{String: "DEALLOCATE nope"},
	}},
	{"describe and unnamed statement across syncs", []pgproto3.FrontendMessage{
		&pgproto3.Parse{Query: "SELECT $1::text AS t"},
		&pgproto3.Describe{ObjectType: 'S'},
		&pgproto3.Sync{},
		&pgproto3.Bind{Parameters: [][]byte{[]byte("hi")}},
		&pgproto3.Describe{ObjectType: 'P'},
		&pgproto3.Execute{},
		&pgproto3.Sync{},
	}},
	{"error aborts the implicit transaction", []pgproto3.FrontendMessage{
		&pgproto3.Query{String: "CREATE TABLE IF NOT EXISTS golden_t (x int)"},
		&pgproto3.Parse{Query: "INSERT INTO golden_t VALUES (1)"},
		&pgproto3.Bind{},
		&pgproto3.Execute{},
		&pgproto3.Parse{Query: "SELECT 1/0"},
		&pgproto3.Bind{},
		&pgproto3.Execute{},
		&pgproto3.Sync{},
		&pgproto3.Query{String: "SELECT count(*) FROM golden_t; DROP TABLE golden_t"},
	}},
	{"explicit transaction states", []pgproto3.FrontendMessage{
		&pgproto3.Query{String: "BEGIN"},
		&pgproto3.Query{String: "SELECT 1/0"},
		&pgproto3.Query{String: "SELECT 1"},
		&pgproto3.Query{String: "ROLLBACK"},
	}},
	{"flush without sync", []pgproto3.FrontendMessage{
		&pgproto3.Parse{Name: "f1", Query: "SELECT 5"},
		&pgproto3.Describe{ObjectType: 'S', Name: "f1"},
		&pgproto3.Flush{},
		&pgproto3.Bind{PreparedStatement: "f1"},
		&pgproto3.Execute{},
		&pgproto3.Sync{},
	}},
	{"delayed sync: results flushed, then the batch ends", []pgproto3.FrontendMessage{
		&pgproto3.Parse{Query: "SELECT generate_series(1, 3)"},
		&pgproto3.Bind{},
		&pgproto3.Execute{MaxRows: 2},
		&pgproto3.Flush{},
		&pgproto3.Execute{},
		&pgproto3.Flush{},
		&pgproto3.Sync{},
	}},
	{"error before a flush: the rest is skipped up to sync", []pgproto3.FrontendMessage{
		&pgproto3.Parse{Query: "SELECT bogus"},
		&pgproto3.Flush{},
		&pgproto3.Bind{},
		&pgproto3.Execute{},
		&pgproto3.Query{String: "SELECT 'ignored'"},
		&pgproto3.Sync{},
		&pgproto3.Query{String: "SELECT 'after'"},
	}},
	{"error in a pipeline with a named statement and an evicting parse", []pgproto3.FrontendMessage{
		&pgproto3.Parse{Name: "e1", Query: "SELECT 1"},
		&pgproto3.Bind{PreparedStatement: "e1"},
		&pgproto3.Execute{},
		&pgproto3.Sync{},
		&pgproto3.Parse{Name: "e2", Query: "SELECT bogus"},
		&pgproto3.Sync{},
		&pgproto3.Bind{PreparedStatement: "e1"},
		&pgproto3.Execute{},
		&pgproto3.Sync{},
	}},
	{"extended COPY FROM STDIN", []pgproto3.FrontendMessage{
		&pgproto3.Query{String: "CREATE TABLE IF NOT EXISTS gcopy (x int)"},
		&pgproto3.Parse{Query: "COPY gcopy FROM STDIN"},
		&pgproto3.Bind{},
		&pgproto3.Execute{},
		&pgproto3.Sync{},
		&pgproto3.CopyData{Data: []byte("1\n2\n")},
		&pgproto3.CopyDone{},
		&pgproto3.Sync{},
		&pgproto3.Parse{Query: "COPY gcopy FROM STDIN"},
		&pgproto3.Bind{},
		&pgproto3.Execute{},
		&pgproto3.Sync{},
		&pgproto3.CopyData{Data: []byte("notanint\n")},
		&pgproto3.CopyDone{},
		&pgproto3.Sync{},
		&pgproto3.Query{String: "SELECT count(*) FROM gcopy; DROP TABLE gcopy"},
	}},
	{"unnamed statement after a skipped close", []pgproto3.FrontendMessage{
		&pgproto3.Parse{Query: "SELECT 'mine'"},
		&pgproto3.Sync{},
		&pgproto3.Parse{Name: "z", Query: "SELECT 1/0"},
		&pgproto3.Bind{PreparedStatement: "z"},
		&pgproto3.Execute{},
		&pgproto3.Close{ObjectType: 'S'},
		&pgproto3.Sync{},
		&pgproto3.Bind{},
		&pgproto3.Execute{},
		&pgproto3.Sync{},
	}},
	{"reserved names and deallocate", []pgproto3.FrontendMessage{
		&pgproto3.Query{String: "PREPARE mine AS SELECT 7"},
		&pgproto3.Query{String: "EXECUTE mine"},
		&pgproto3.Query{String: "DEALLOCATE mine"},
		&pgproto3.Query{String: "EXECUTE mine"},
	}},
}

// runGolden sends each message of a case and collects the replies as a
// driver would: after every Sync, Query and Flush it reads until
// ReadyForQuery or CopyInResponse, or until the server has been quiet for a
// moment (after a Flush, or when the server skips messages after an error).
func runGolden(t *testing.T, addr, database string, msgs []pgproto3.FrontendMessage) string {
	c := dialRaw(t, addr)
	c.login(map[string]string{"user": "postgres", "database": database})
	var out []pgproto3.BackendMessage
	for i, m := range msgs {
		c.send(m)
		switch m.(type) {
		case *pgproto3.Sync, *pgproto3.Query, *pgproto3.Flush:
			for {
				_ = c.conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
				r, err := c.receive()
				if err != nil {
					var ne net.Error
					if errors.As(err, &ne) && ne.Timeout() {
						break
					}
					t.Fatalf("message %d: %v after %s", i, err, describe(out))
				}
				out = append(out, r)
				_, ready := r.(*pgproto3.ReadyForQuery)
				_, copyIn := r.(*pgproto3.CopyInResponse)
				if ready || copyIn {
					break
				}
			}
			_ = c.conn.SetReadDeadline(time.Now().Add(20 * time.Second))
			// A reply that arrives after a quiet period must not be lost
			// from the transcript; the next step reads it.
		}
	}
	// Anything still owed at the end is part of the reply.
	_ = c.conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	for {
		r, err := c.receive()
		if err != nil {
			break
		}
		out = append(out, r)
	}
	return describe(out)
}

// TestGoldenAgainstPostgres holds the proxy to PostgreSQL's own replies, in
// both pool modes.
func TestGoldenAgainstPostgres(t *testing.T) {
	proxies := map[string]*testProxy{}
	for _, mode := range bothModes {
		proxies[mode] = startProxy(t, proxyOpts{mode: mode, size: 2})
	}
	for _, gc := range goldenCases {
		t.Run(gc.name, func(t *testing.T) {
			want := runGolden(t, shards[0].Addr(), "postgres", gc.msgs)
			for _, mode := range bothModes {
				if got := runGolden(t, proxies[mode].addr, "main", gc.msgs); got != want {
					t.Errorf("%s mode:\n got: %s\nwant: %s", mode, got, want)
				}
			}
		})
	}
}
