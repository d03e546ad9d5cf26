package proxy_test

import (
	"io"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgrouter/pgrouter/proxy"
)

// FuzzClientMessages feeds arbitrary bytes, after a valid login, to a proxy
// in front of real PostgreSQL. Whatever arrives, the process must not panic,
// the session must end once the client hangs up, and no server connection
// may stay checked out.
func FuzzClientMessages(f *testing.F) {
	f.Add(proxy.EncodeAll(&pgproto3.Query{String: "SELECT 1"}))
	f.Add(proxy.EncodeAll(&pgproto3.Query{String: "BEGIN; SELECT 1/0"}, &pgproto3.Query{String: "SELECT 1"}))
	f.Add(proxy.EncodeAll(
		&pgproto3.Parse{Name: "s1", Query: "SELECT $1::int"},
		&pgproto3.Bind{PreparedStatement: "s1", Parameters: [][]byte{[]byte("5")}},
		&pgproto3.Describe{ObjectType: 'P'},
		&pgproto3.Execute{},
		&pgproto3.Sync{},
		&pgproto3.Close{ObjectType: 'S', Name: "s1"},
		&pgproto3.Flush{},
		&pgproto3.Sync{},
	))
	f.Add(proxy.EncodeAll(&pgproto3.Query{String: "COPY (SELECT 1) TO STDOUT"}, &pgproto3.Query{String: "CREATE TEMP TABLE f(x int); COPY f FROM STDIN"},
		&pgproto3.CopyData{Data: []byte("1\n")}, &pgproto3.CopyDone{}))
	f.Add(proxy.EncodeAll(&pgproto3.Parse{Name: "a", Query: "SELECT 1"}, &pgproto3.Parse{Name: "a", Query: "SELECT 2"}, &pgproto3.Bind{PreparedStatement: "b"}, &pgproto3.Sync{}))
	f.Add(proxy.EncodeAll(&pgproto3.Query{String: "DEALLOCATE ALL"}, &pgproto3.Query{String: "DISCARD ALL"}, &pgproto3.Terminate{}))
	f.Add([]byte{'Q', 0, 0, 0, 3})
	f.Add([]byte{'B', 0, 0, 0, 5, 0})

	p := startProxy(f, proxyOpts{size: 2, quiet: true, extra: "  query_wait_timeout: 2s\n"})
	f.Fuzz(func(t *testing.T, data []byte) {
		conn, err := net.Dial("tcp", p.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		login := proxy.EncodeAll(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{
			"user": "postgres", "database": "main",
			"options": "-c statement_timeout=500 -c lock_timeout=500",
		}})
		go func() {
			_, _ = conn.Write(append(login, data...))
			_ = conn.(*net.TCPConn).CloseWrite()
		}()
		_, _ = io.Copy(io.Discard, conn) // until the proxy closes, or the deadline
		_ = conn.Close()
		deadline := time.Now().Add(5 * time.Second)
		for p.srv.ClientCount() > 0 || anyActive(p) {
			if time.Now().After(deadline) {
				t.Fatalf("session still running or server still checked out 5s after the client left (clients %d)", p.srv.ClientCount())
			}
			time.Sleep(5 * time.Millisecond)
		}
	})
}

func anyActive(p *testProxy) bool {
	for _, pl := range p.srv.Pools().Pools() {
		if pl.Stats().Active > 0 {
			return true
		}
	}
	return false
}
