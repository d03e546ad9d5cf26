package proxy

import (
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgrouter/pgrouter/wire"
)

// encodeAll concatenates encoded frontend messages.
func encodeAll(msgs ...pgproto3.FrontendMessage) []byte {
	var out []byte
	for _, m := range msgs {
		var err error
		if out, err = m.Encode(out); err != nil {
			panic(err)
		}
	}
	return out
}

// FuzzStartup feeds arbitrary bytes to the startup phase: startup packets,
// SSLRequest and GSSENCRequest (answered N), cancel requests, then the
// startup parameters (options included) as login reads them. Nothing may
// panic or hang; a startup that is returned must be well formed.
func FuzzStartup(f *testing.F) {
	f.Add(encodeAll(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{
		"user": "u", "database": "d", "options": "-c search_path=a,b --work_mem=4MB", "_pq_.x": "1"}}))
	f.Add(encodeAll(&pgproto3.SSLRequest{}, &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": "u"}}))
	f.Add(encodeAll(&pgproto3.GSSEncRequest{}, &pgproto3.SSLRequest{}, &pgproto3.SSLRequest{}, &pgproto3.SSLRequest{}))
	f.Add(encodeAll(&pgproto3.CancelRequest{ProcessID: 7, SecretKey: []byte{1, 2, 3, 4}}))
	f.Add([]byte{0, 0, 0, 8, 0, 2, 0, 0})
	f.Add([]byte{0, 0, 0, 9, 0, 3, 0, 1, 'x'})
	f.Fuzz(func(t *testing.T, data []byte) {
		client, server := net.Pipe()
		defer client.Close()
		defer server.Close()
		_ = server.SetDeadline(time.Now().Add(5 * time.Second))
		go func() { _, _ = io.Copy(io.Discard, client) }() // the N answers
		go func() {
			_, _ = client.Write(data)
			_ = client.Close()
		}()
		cc := &clientConn{conn: server, maxMessage: 1 << 20}
		cc.r, cc.w = wire.NewReader(server, cc.maxMessage), wire.NewWriter(server)
		st, cancel, err := cc.readStartup(nil)
		switch {
		case err != nil:
			if st != nil || cancel != nil {
				t.Fatal("a startup returned with an error")
			}
		case cancel != nil:
			if st != nil {
				t.Fatal("both a startup and a cancel request")
			}
		case st == nil:
			t.Fatal("no startup, no cancel request and no error")
		default:
			for k := range st.params {
				if k == "" || strings.HasPrefix(k, "_pq_.") {
					t.Fatalf("startup parameter %q", k)
				}
			}
			_, _ = startupSettings(st.params)
		}
	})
}
