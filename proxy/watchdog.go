package proxy

import (
	"net"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/pgrouter/pgrouter/pool"
	"github.com/pgrouter/pgrouter/wire"
)

// watchdogTick is how often the watchdog looks at every session. A timeout
// fires up to one tick late.
const watchdogTick = 250 * time.Millisecond

// epoch anchors monoNow: durations from it use the monotonic clock, so a
// step of the wall clock cannot fire (or hold back) a timeout.
var epoch = time.Now()

// monoNow is the time since epoch, never 0 (0 means "not waiting").
func monoNow() int64 { return int64(time.Since(epoch)) | 1 }

// watchedConn is a client socket that counts its writes, so the watchdog
// can tell a write that has not returned for client_write_timeout (a client
// that stopped reading) without a deadline being set on every write.
type watchedConn struct {
	net.Conn
	writes atomic.Uint64 // odd while a write is in progress
}

func (c *watchedConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	n, err := c.Conn.Write(p)
	c.writes.Add(1)
	return n, err
}

// watchState is what the watchdog remembers about a session between ticks;
// only the watchdog goroutine touches it.
type watchState struct {
	writes uint64    // the write counter seen last
	since  time.Time // when that (odd) value was first seen
	closed bool      // client_write_timeout closed the client
}

// waitBegin and waitEnd bracket a blocking read or write on the session's
// servers, for server_read_timeout. Two atomic stores and a clock read per
// wait: cheap next to the system call they surround.
func (s *session) waitBegin() {
	if s.readExpired.Load() { // reported; this is a new wait
		s.readExpired.Store(false)
	}
	s.waitingSince.Store(monoNow())
}

func (s *session) waitEnd() { s.waitingSince.Store(0) }

// readServer reads the next message of server c, as a watched wait when it
// must block.
func (s *session) readServer(c *pool.Conn) (m wire.Message, err error) {
	if c.R.HasMessage() {
		return c.R.Next()
	}
	s.waitBegin()
	m, err = c.R.Next()
	s.waitEnd()
	return m, err
}

// watchdog enforces the timeouts that a session cannot enforce itself
// because it is blocked: server_read_timeout (it waits for a server that
// sends nothing: a frozen or unreachable shard) and client_write_timeout (it
// is blocked writing to a client that stopped reading, holding a server
// connection). It runs until the server closes.
func (s *Server) watchdog() {
	defer s.wg.Done()
	t := time.NewTicker(watchdogTick)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case now := <-t.C:
			pc := s.gen.Load().cfg.Pool
			if pc.ServerReadTimeout <= 0 && pc.ClientWriteTimeout <= 0 {
				continue
			}
			for _, sess := range s.sessionList() {
				s.checkTimeouts(sess, now, pc.ServerReadTimeout.D(), pc.ClientWriteTimeout.D())
			}
		}
	}
}

// checkTimeouts checks one session against the timeouts.
func (s *Server) checkTimeouts(sess *session, now time.Time, readTimeout, writeTimeout time.Duration) {
	if writeTimeout > 0 && sess.watched != nil {
		n := sess.watched.writes.Load()
		switch {
		case n%2 == 0:
			sess.ws.since = time.Time{}
		case n != sess.ws.writes || sess.ws.since.IsZero():
			sess.ws.since = now
		case now.Sub(sess.ws.since) >= writeTimeout && !sess.ws.closed:
			sess.ws.closed = true
			sess.logger().Info("client_write_timeout: the client has not read its results; closing it", zap.Duration("client_write_timeout", writeTimeout))
			_ = sess.watched.Close() // its write fails and the session ends, abandoning its server
		}
		sess.ws.writes = n
	}
	if readTimeout > 0 {
		if began := sess.waitingSince.Load(); began != 0 && monoNow()-began >= int64(readTimeout) {
			s.interruptServers(sess, began, readTimeout)
		}
	}
}

// interruptServers cancels what the session's servers are running and
// closes their sockets, so the session's blocked wait fails and it reports
// server_read_timeout. The connections are marked under the session's lock,
// with the wait checked to be the one that expired: a connection the
// session has given back meanwhile (it unlinks under that lock) is never
// touched, so another client's can never be. The cancel goes out in the
// background: a frozen server may never accept it.
func (s *Server) interruptServers(sess *session, began int64, readTimeout time.Duration) {
	sess.mu.Lock()
	if sess.waitingSince.Load() != began || sess.readExpired.Load() {
		sess.mu.Unlock()
		return // that wait ended, or was dealt with at an earlier tick
	}
	sess.readExpired.Store(true)
	targets := sess.serversLocked()
	for _, c := range targets {
		c.MarkInterrupted()
	}
	sess.mu.Unlock()
	sess.logger().Warn("server_read_timeout: a shard sent nothing for too long; cancelling the statement and closing the connection",
		zap.Duration("server_read_timeout", readTimeout))
	for _, c := range targets {
		c.CloseSocket()
		sess.cancelInBackground(c, "cancel after server_read_timeout not delivered")
	}
}
