package proxy

import (
	"errors"
	"os"
	"time"

	"github.com/pgrouter/pgrouter/wire"
)

// copyIn relays COPY FROM STDIN data from the client until CopyDone or
// CopyFail. Syncs already sent after the COPY are ignored by the server
// while it reads data, so they no longer expect a ReadyForQuery. For a COPY
// run by Execute, the server answers only after the client's next Sync, so
// the relay is suspended (suspend true) and the batch stays open.
func (s *session) copyIn() (suspend bool, err error) {
	for i := 1; i < s.queue.len(); {
		if s.queue.at(i).kind == reqSync {
			s.queue.removeAt(i)
			continue
		}
		i++
	}
	if err := s.cw.Flush(); err != nil {
		return false, clientIO(err)
	}
	for {
		c := s.server
		if c == nil {
			return false, nil
		}
		if !s.cr.HasMessage() && c.W.Len() > 0 {
			if err := s.flushServer(); err != nil {
				return false, err
			}
			if c = s.server; c == nil {
				return false, nil
			}
		}
		m, err := s.cr.Next()
		if errors.Is(err, os.ErrDeadlineExceeded) && s.srv.draining.Load() {
			_ = s.conn.SetReadDeadline(time.Time{}) // Shutdown woke us: a COPY is a transaction, let it finish
			continue
		}
		if err != nil {
			return false, clientIO(err)
		}
		switch m.Type {
		case wire.CopyData, wire.Flush, wire.Sync: // the server ignores Flush and Sync during COPY
			_ = c.W.Write(m.Raw)
			if err := s.pushServer(); err != nil {
				return false, err
			}
		case wire.Terminate:
			return false, errTerminate
		default: // CopyDone, CopyFail, or a message that makes the server abort the COPY
			_ = c.W.Write(m.Raw)
			if err := s.flushServer(); err != nil {
				return false, err
			}
			if s.server != nil && !s.queue.empty() && s.queue.peek().kind == reqExecute {
				s.batch.send()
				return true, nil
			}
			return false, nil
		}
	}
}
