package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

const (
	// HeaderLen is the size of a typed message header: type byte and int32 length.
	HeaderLen = 5

	// initialBufSize is what a Reader starts with: a login and a typical
	// request fit, and an idle client (pgrouter may hold ten thousand) costs
	// little. A read that fills the buffer doubles it, up to defaultBufSize.
	initialBufSize = 1 << 10

	// defaultBufSize holds a burst of requests or of small result rows in
	// one read; larger messages grow the buffer for as long as they need it.
	defaultBufSize = 8 << 10

	// idleBufLimit is the largest buffer kept once it has been drained, so a
	// single big message does not pin megabytes to an idle connection.
	idleBufLimit = 64 << 10

	// MaxStartupLen is PostgreSQL's own cap on a startup packet
	// (MAX_STARTUP_PACKET_LENGTH in pqcomm.h).
	MaxStartupLen = 10000
)

// ErrMalformed reports a length field that cannot be valid; the stream cannot
// be resynchronised after it and the connection must be closed.
var ErrMalformed = errors.New("malformed message length")

// TooLargeError reports a message whose declared length is above the limit.
// The bytes were not read, so the connection must be closed.
type TooLargeError struct {
	Type  byte // 0 for a startup packet
	Size  int
	Limit int
}

func (e *TooLargeError) Error() string {
	if e.Type == 0 {
		return fmt.Sprintf("startup packet of %d bytes exceeds the limit of %d bytes", e.Size, e.Limit)
	}
	return fmt.Sprintf("message %q of %d bytes exceeds the limit of %d bytes", e.Type, e.Size, e.Limit)
}

// Message is one framed protocol message. Raw holds the whole message (type
// byte, length and body) so it can be forwarded as is; it aliases the Reader's
// buffer and is valid only until the next call to Next.
type Message struct {
	Type byte
	Raw  []byte
}

// Body returns the message without its 5-byte header.
func (m Message) Body() []byte { return m.Raw[HeaderLen:] }

// Reader reads whole messages from a stream into one reusable buffer.
//
// A read error (including a deadline) leaves a partly received message in the
// buffer, so a later call resumes where the failed one stopped: callers may
// interrupt a blocked Next with a read deadline without losing stream framing.
type Reader struct {
	src     io.Reader
	buf     []byte
	r, w    int // unread bytes are buf[r:w]
	maxBody int
}

// NewReader returns a Reader that refuses message bodies above maxBody bytes.
func NewReader(src io.Reader, maxBody int) *Reader {
	return &Reader{src: src, maxBody: maxBody}
}

// SetMaxBody changes the body size limit for later messages.
func (r *Reader) SetMaxBody(n int) { r.maxBody = n }

// Buffered reports how many unread bytes are already buffered.
func (r *Reader) Buffered() int { return r.w - r.r }

// HasMessage reports whether a complete message is buffered, i.e. whether the
// next call to Next returns without touching the network.
func (r *Reader) HasMessage() bool {
	n := r.w - r.r
	if n < HeaderLen {
		return false
	}
	length := int(binary.BigEndian.Uint32(r.buf[r.r+1:]))
	return length >= 4 && n >= 1+length
}

// Next returns the next typed message.
func (r *Reader) Next() (Message, error) {
	r.shrink()
	for {
		if n := r.w - r.r; n >= HeaderLen {
			typ := r.buf[r.r]
			length := int(binary.BigEndian.Uint32(r.buf[r.r+1:]))
			if length < 4 {
				return Message{}, fmt.Errorf("message %q: %w %d", typ, ErrMalformed, length)
			}
			if length-4 > r.maxBody {
				return Message{}, &TooLargeError{Type: typ, Size: length - 4, Limit: r.maxBody}
			}
			total := 1 + length
			if n >= total {
				m := Message{Type: typ, Raw: r.buf[r.r : r.r+total : r.r+total]}
				r.r += total
				return m, nil
			}
			// Grow with the bytes that arrive, never on the declared length
			// alone: a peer that announces 64 MB and sends 10 bytes must
			// not cost 64 MB.
			r.reserve(min(total, max(2*n, defaultBufSize)))
		} else {
			r.reserve(HeaderLen)
		}
		if err := r.fill(); err != nil {
			return Message{}, err
		}
	}
}

// Peek waits for the next typed message as Next does, but leaves it to be
// returned by the next call of Next.
func (r *Reader) Peek() (Message, error) {
	m, err := r.Next()
	if err == nil {
		r.r -= len(m.Raw)
	}
	return m, err
}

// NextStartup returns the body of an untyped startup-phase packet (startup
// message, SSLRequest, GSSENCRequest or CancelRequest), without its length.
func (r *Reader) NextStartup() ([]byte, error) {
	r.shrink()
	for {
		if n := r.w - r.r; n >= 4 {
			length := int(binary.BigEndian.Uint32(r.buf[r.r:]))
			if length < 8 {
				return nil, fmt.Errorf("startup packet: %w %d", ErrMalformed, length)
			}
			if length > MaxStartupLen {
				return nil, &TooLargeError{Size: length, Limit: MaxStartupLen}
			}
			if n >= length {
				body := r.buf[r.r+4 : r.r+length : r.r+length]
				r.r += length
				return body, nil
			}
			r.reserve(length)
		} else {
			r.reserve(4)
		}
		if err := r.fill(); err != nil {
			return nil, err
		}
	}
}

// reserve makes room for a message of total bytes starting at r.r.
func (r *Reader) reserve(total int) {
	if r.buf == nil {
		r.buf = make([]byte, max(initialBufSize, total))
		return
	}
	if r.r+total <= len(r.buf) {
		return
	}
	if total <= len(r.buf) {
		r.w = copy(r.buf, r.buf[r.r:r.w])
		r.r = 0
		return
	}
	r.grow(max(total, 2*len(r.buf)))
}

// grow moves the unread bytes to the front of a new buffer of size n.
func (r *Reader) grow(n int) {
	grown := make([]byte, n)
	r.w = copy(grown, r.buf[r.r:r.w])
	r.r = 0
	r.buf = grown
}

// fill reads at least one byte into the free tail of the buffer.
func (r *Reader) fill() error {
	if r.buf == nil {
		r.reserve(HeaderLen)
	}
	free := len(r.buf) - r.w
	n, err := r.src.Read(r.buf[r.w:])
	r.w += n
	if n > 0 {
		if n == free && len(r.buf) < defaultBufSize { // more may be waiting: read more at once next time
			r.grow(2 * len(r.buf))
		}
		return nil
	}
	if err == io.EOF && r.w > r.r {
		return io.ErrUnexpectedEOF
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	return err
}

// shrink drops an oversized buffer once it is drained, and rewinds an empty one.
func (r *Reader) shrink() {
	if r.r != r.w {
		return
	}
	r.r, r.w = 0, 0
	if len(r.buf) > idleBufLimit {
		r.buf = nil
	}
}
