package wire

import (
	"io"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// request is one extended-protocol call as drivers send it: Parse of an
// unnamed statement, Bind, Describe, Execute, Sync.
func request(tb testing.TB) []byte {
	tb.Helper()
	var buf []byte
	var err error
	for _, m := range []pgproto3.FrontendMessage{
		&pgproto3.Parse{Query: "SELECT * FROM get_user($1)"},
		&pgproto3.Bind{Parameters: [][]byte{[]byte("some.user@example.com")}},
		&pgproto3.Describe{ObjectType: 'P'},
		&pgproto3.Execute{},
		&pgproto3.Sync{},
	} {
		if buf, err = m.Encode(buf); err != nil {
			tb.Fatal(err)
		}
	}
	return buf
}

// endless replays the same bytes forever, like a client that never stops.
type endless struct {
	data []byte
	off  int
}

func (e *endless) Read(p []byte) (int, error) {
	n := copy(p, e.data[e.off:])
	e.off = (e.off + n) % len(e.data)
	return n, nil
}

// relay frames one request's five messages and forwards them as a batch,
// which is what the proxy does for every request.
func relay(tb testing.TB, r *Reader, w *Writer) {
	for range 5 {
		m, err := r.Next()
		if err != nil {
			tb.Fatal(err)
		}
		if err := w.Write(m.Raw); err != nil {
			tb.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		tb.Fatal(err)
	}
}

// BenchmarkFraming: framing and forwarding one request (5 messages).
func BenchmarkFraming(b *testing.B) {
	r := NewReader(&endless{data: request(b)}, 1<<20)
	w := NewWriter(io.Discard)
	b.ReportAllocs()
	for b.Loop() {
		relay(b, r, w)
	}
}

// TestFramingDoesNotAllocate: once the buffers have grown, framing and
// forwarding a request allocates nothing.
func TestFramingDoesNotAllocate(t *testing.T) {
	r := NewReader(&endless{data: request(t)}, 1<<20)
	w := NewWriter(io.Discard)
	relay(t, r, w)
	if n := testing.AllocsPerRun(500, func() { relay(t, r, w) }); n != 0 {
		t.Fatalf("%v allocations per relayed request", n)
	}
}
