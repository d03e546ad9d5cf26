package wire

import (
	"encoding/binary"
	"io"

	"github.com/jackc/pgx/v5/pgproto3"
)

// FlushThreshold bounds how much output is batched before it is written, so
// a large result streams through instead of piling up in memory.
const FlushThreshold = 32 << 10

// Writer batches outgoing messages. The first write error is sticky: every
// later call returns it, so a caller may check once, at Flush.
type Writer struct {
	dst    io.Writer
	buf    []byte
	err    error
	manual bool // never flush on its own: the owner decides when (and how) to write
}

// SetManual stops the Writer from flushing when its batch grows, for an
// owner that must read replies while it writes (a server connection fed a
// long pipeline would otherwise deadlock with a server blocked writing).
func (w *Writer) SetManual() { w.manual = true }

// Take hands the batch to the caller, who writes it elsewhere and returns
// the buffer with Restore; meanwhile the Writer must not be used.
func (w *Writer) Take() []byte { return w.buf }

// Restore takes back a buffer from Take after it was written, recording err.
func (w *Writer) Restore(buf []byte, err error) {
	if cap(buf) > idleBufLimit {
		buf = nil
	}
	w.buf = buf[:0]
	if err != nil && w.err == nil {
		w.err = err
	}
}

// NewWriter returns a Writer on dst.
func NewWriter(dst io.Writer) *Writer { return &Writer{dst: dst} }

// Len reports how many bytes wait to be flushed.
func (w *Writer) Len() int { return len(w.buf) }

// Err returns the sticky write error, if any.
func (w *Writer) Err() error { return w.err }

// Write appends raw message bytes, flushing first when the batch is large.
func (w *Writer) Write(raw []byte) error {
	if w.err != nil {
		return w.err
	}
	if !w.manual && len(w.buf)+len(raw) > FlushThreshold {
		if err := w.Flush(); err != nil {
			return err
		}
		if len(raw) > FlushThreshold {
			_, w.err = w.dst.Write(raw)
			return w.err
		}
	}
	w.buf = append(w.buf, raw...)
	return nil
}

// Send encodes msg into the batch.
func (w *Writer) Send(msg pgproto3.Message) error {
	if w.err != nil {
		return w.err
	}
	buf, err := msg.Encode(w.buf)
	if err != nil {
		return err
	}
	w.buf = buf
	if !w.manual && len(w.buf) > FlushThreshold {
		return w.Flush()
	}
	return nil
}

// SendReady appends ReadyForQuery with the given transaction status without
// going through an interface (it ends nearly every request).
func (w *Writer) SendReady(status byte) error {
	if w.err != nil {
		return w.err
	}
	w.buf = append(w.buf, ReadyForQuery, 0, 0, 0, 5, status)
	return nil
}

// SendEmpty appends a message that has no body, such as Sync or ParseComplete.
func (w *Writer) SendEmpty(typ byte) error {
	if w.err != nil {
		return w.err
	}
	w.buf = append(w.buf, typ, 0, 0, 0, 4)
	return nil
}

// Flush writes the batch.
func (w *Writer) Flush() error {
	if w.err != nil {
		return w.err
	}
	if len(w.buf) == 0 {
		return nil
	}
	_, w.err = w.dst.Write(w.buf)
	if cap(w.buf) > idleBufLimit {
		w.buf = nil
	} else {
		w.buf = w.buf[:0]
	}
	return w.err
}

// Release drops the (flushed) buffer, after a one-off burst such as a login
// greeting, so a connection that then sits idle holds none; the next
// message allocates a new one.
func (w *Writer) Release() {
	if len(w.buf) == 0 {
		w.buf = nil
	}
}

// Reset forgets buffered output and any sticky error, for a Writer whose
// connection is being handed to a new owner after a clean exchange.
func (w *Writer) Reset() {
	w.buf = w.buf[:0]
	w.err = nil
}

// Begin starts a message that is built in place with the Append methods and
// finished with End; it returns the message's start offset.
func (w *Writer) Begin(typ byte) int {
	start := len(w.buf)
	w.buf = append(w.buf, typ, 0, 0, 0, 0)
	return start
}

// AppendBytes adds bytes to the message being built.
func (w *Writer) AppendBytes(b []byte) { w.buf = append(w.buf, b...) }

// AppendString adds a string to the message being built.
func (w *Writer) AppendString(s string) { w.buf = append(w.buf, s...) }

// AppendByte adds one byte to the message being built.
func (w *Writer) AppendByte(b byte) { w.buf = append(w.buf, b) }

// End patches the length of the message begun at start.
func (w *Writer) End(start int) error {
	if w.err != nil {
		w.buf = w.buf[:start]
		return w.err
	}
	binary.BigEndian.PutUint32(w.buf[start+1:], uint32(len(w.buf)-start-1))
	if !w.manual && len(w.buf) > FlushThreshold {
		return w.Flush()
	}
	return nil
}
