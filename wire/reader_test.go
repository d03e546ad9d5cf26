package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"testing"
	"testing/iotest"

	"github.com/jackc/pgx/v5/pgproto3"
)

func encode(t testing.TB, msgs ...pgproto3.Message) []byte {
	var out []byte
	for _, m := range msgs {
		var err error
		if out, err = m.Encode(out); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

func TestReaderFramesMessagesAcrossReads(t *testing.T) {
	big := bytes.Repeat([]byte("x"), 3*defaultBufSize)
	stream := encode(t,
		&pgproto3.Query{String: "SELECT 1"},
		&pgproto3.Sync{},
		&pgproto3.Query{String: string(big)},
		&pgproto3.Terminate{},
	)
	r := NewReader(iotest.OneByteReader(bytes.NewReader(stream)), 1<<20)
	var got []byte
	var types []byte
	for {
		m, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		types = append(types, m.Type)
		got = append(got, m.Raw...)
	}
	if string(types) != "QSQX" || !bytes.Equal(got, stream) {
		t.Fatalf("types %q, bytes equal %v", types, bytes.Equal(got, stream))
	}
	if len(r.buf) > idleBufLimit {
		t.Fatalf("buffer of %d bytes kept after the big message", len(r.buf))
	}
}

// deadlineReader fails once in the middle of the stream, as a read deadline does.
type deadlineReader struct {
	data   []byte
	failAt int
	failed bool
}

func (d *deadlineReader) Read(p []byte) (int, error) {
	if !d.failed && len(d.data) > 0 && d.failAt == 0 {
		d.failed = true
		return 0, os.ErrDeadlineExceeded
	}
	if len(d.data) == 0 {
		return 0, io.EOF
	}
	n := min(len(p), 3, len(d.data))
	if !d.failed {
		n = min(n, d.failAt)
		d.failAt -= n
	}
	copy(p, d.data[:n])
	d.data = d.data[n:]
	return n, nil
}

// TestReaderResumesAfterDeadline checks that a read interrupted half-way
// through a message keeps its framing, which the session-mode watcher
// depends on.
func TestReaderResumesAfterDeadline(t *testing.T) {
	stream := encode(t, &pgproto3.Query{String: "SELECT 'interrupted'"}, &pgproto3.Sync{})
	for cut := 1; cut < len(stream); cut++ {
		r := NewReader(&deadlineReader{data: append([]byte(nil), stream...), failAt: cut}, 1<<10)
		var types []byte
		timeouts := 0
		for {
			m, err := r.Next()
			if errors.Is(err, os.ErrDeadlineExceeded) {
				timeouts++
				continue
			}
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("cut %d: %v", cut, err)
			}
			types = append(types, m.Type)
		}
		if string(types) != "QS" || timeouts != 1 {
			t.Fatalf("cut %d: types %q, timeouts %d", cut, types, timeouts)
		}
	}
}

func TestReaderLimits(t *testing.T) {
	big := encode(t, &pgproto3.Query{String: string(bytes.Repeat([]byte("y"), 2000))})
	_, err := NewReader(bytes.NewReader(big), 1000).Next()
	var tooLarge *TooLargeError
	if !errors.As(err, &tooLarge) || tooLarge.Type != 'Q' || tooLarge.Limit != 1000 {
		t.Fatalf("oversized: %v", err)
	}
	_, err = NewReader(bytes.NewReader([]byte{'Q', 0, 0, 0, 3}), 1000).Next()
	if !errors.Is(err, ErrMalformed) {
		t.Fatalf("length 3: %v", err)
	}
	_, err = NewReader(bytes.NewReader([]byte{'Q', 0, 0, 0, 9, 'a'}), 1000).Next()
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("truncated: %v", err)
	}
	startup := make([]byte, 8)
	binary.BigEndian.PutUint32(startup, MaxStartupLen+1)
	_, err = NewReader(bytes.NewReader(startup), 1000).NextStartup()
	if !errors.As(err, &tooLarge) || tooLarge.Type != 0 {
		t.Fatalf("oversized startup: %v", err)
	}
	binary.BigEndian.PutUint32(startup, 4)
	if _, err = NewReader(bytes.NewReader(startup), 1000).NextStartup(); !errors.Is(err, ErrMalformed) {
		t.Fatalf("short startup: %v", err)
	}
}

func TestWriterBatchesAndStreams(t *testing.T) {
	var out bytes.Buffer
	w := NewWriter(&out)
	if err := w.SendReady(TxIdle); err != nil {
		t.Fatal(err)
	}
	if out.Len() != 0 {
		t.Fatal("written before Flush")
	}
	start := w.Begin(Close)
	w.AppendByte('S')
	w.AppendString("stmt")
	w.AppendByte(0)
	if err := w.End(start); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	want := encode(t, &pgproto3.ReadyForQuery{TxStatus: 'I'}, &pgproto3.Close{ObjectType: 'S', Name: "stmt"})
	if !bytes.Equal(out.Bytes(), want) {
		t.Fatalf("got %q want %q", out.Bytes(), want)
	}
	out.Reset()
	big := encode(t, &pgproto3.CopyData{Data: bytes.Repeat([]byte("z"), 2*FlushThreshold)})
	if err := w.Write(big); err != nil {
		t.Fatal(err)
	}
	if out.Len() != len(big) || w.Len() != 0 {
		t.Fatalf("a large message should be written through: wrote %d, buffered %d", out.Len(), w.Len())
	}
}

// failWriter fails every write.
type failWriter struct{ n int }

func (f *failWriter) Write([]byte) (int, error) {
	f.n++
	return 0, errors.New("broken pipe")
}

func TestWriterErrorIsSticky(t *testing.T) {
	fw := &failWriter{}
	w := NewWriter(fw)
	_ = w.SendReady(TxIdle)
	if err := w.Flush(); err == nil {
		t.Fatal("no error")
	}
	if err := w.SendEmpty(Sync); err == nil || w.Flush() == nil || fw.n != 1 {
		t.Fatalf("error not sticky: %v, writes %d", err, fw.n)
	}
}

// FuzzReader feeds arbitrary bytes to the framing layer: it must never panic
// and every message it returns must be exactly as long as its header says.
func FuzzReader(f *testing.F) {
	f.Add(encode(f, &pgproto3.Query{String: "SELECT 1"}, &pgproto3.Sync{}))
	f.Add([]byte{0, 0, 0, 8, 4, 210, 22, 47})
	f.Add([]byte{'Q', 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := NewReader(bytes.NewReader(data), 1<<16)
		if _, err := r.NextStartup(); err != nil {
			r = NewReader(bytes.NewReader(data), 1<<16)
		}
		for range 1000 {
			m, err := r.Next()
			if err != nil {
				return
			}
			if len(m.Raw) < HeaderLen || int(binary.BigEndian.Uint32(m.Raw[1:]))+1 != len(m.Raw) || m.Raw[0] != m.Type {
				t.Fatalf("inconsistent message %q", m.Raw)
			}
		}
	})
}

// TestReaderBufferGrowsWithTraffic: a Reader that only saw small messages
// (a login, an idle client) keeps a small buffer; one whose reads fill the
// buffer (a pipeline, a burst of rows) grows to defaultBufSize and no more.
func TestReaderBufferGrowsWithTraffic(t *testing.T) {
	small := NewReader(bytes.NewReader(encode(t, &pgproto3.Query{String: "SELECT 1"})), 1<<20)
	if _, err := small.Next(); err != nil {
		t.Fatal(err)
	}
	if len(small.buf) != initialBufSize {
		t.Fatalf("buffer of %d bytes after one small message, want %d", len(small.buf), initialBufSize)
	}

	pair := encode(t, &pgproto3.Sync{}, &pgproto3.Query{String: "SELECT 1"})
	stream := bytes.Repeat(pair, 4000) // 76 KB
	r := NewReader(bytes.NewReader(stream), 1<<20)
	reads := 0
	for {
		if !r.HasMessage() {
			reads++
		}
		if _, err := r.Next(); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
	}
	if len(r.buf) != defaultBufSize {
		t.Fatalf("buffer of %d bytes after a long burst, want %d", len(r.buf), defaultBufSize)
	}
	if limit := len(stream)/defaultBufSize + 10; reads > limit {
		t.Fatalf("%d reads for %d bytes: the buffer did not grow early", reads, len(stream))
	}
}

// TestReaderGrowsWithArrivingBytes: a message that announces 64 MB and
// then sends a few bytes costs a buffer the size of what arrived, not of
// what was announced (an unauthenticated client could otherwise make the
// proxy allocate the declared length on every connection).
func TestReaderGrowsWithArrivingBytes(t *testing.T) {
	msg := []byte{'p', 0, 0, 0, 0}
	binary.BigEndian.PutUint32(msg[1:], 64<<20+4)
	msg = append(msg, bytes.Repeat([]byte{'x'}, 20000)...)
	r := NewReader(bytes.NewReader(msg), 1<<30)
	if _, err := r.Next(); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("truncated message: %v", err)
	}
	if len(r.buf) > 64<<10 {
		t.Fatalf("buffer of %d bytes for 20,005 bytes received", len(r.buf))
	}
	// A message that does arrive whole still comes through.
	big := encode(t, &pgproto3.Query{String: string(bytes.Repeat([]byte{'y'}, 3<<20))})
	r = NewReader(bytes.NewReader(big), 1<<30)
	m, err := r.Next()
	if err != nil || len(m.Raw) != len(big) {
		t.Fatalf("3 MB query: %d bytes, %v", len(m.Raw), err)
	}
}

// TestReaderPeek: Peek waits for a whole message across short reads and
// leaves it for Next, which then returns it and the ones after it in order.
func TestReaderPeek(t *testing.T) {
	stream := encode(t, &pgproto3.Query{String: "SELECT 1"}, &pgproto3.Sync{})
	r := NewReader(iotest.OneByteReader(bytes.NewReader(stream)), 1<<20)
	p, err := r.Peek()
	if err != nil || p.Type != 'Q' {
		t.Fatalf("Peek: %c %v", p.Type, err)
	}
	if p2, err := r.Peek(); err != nil || !bytes.Equal(p2.Raw, p.Raw) {
		t.Fatalf("Peek again: %q %v", p2.Raw, err)
	}
	for _, want := range []byte{'Q', 'S'} {
		m, err := r.Next()
		if err != nil || m.Type != want {
			t.Fatalf("Next: %c %v, want %c", m.Type, err, want)
		}
	}
	if _, err := r.Peek(); err != io.EOF {
		t.Fatalf("Peek at the end: %v, want EOF", err)
	}
}
