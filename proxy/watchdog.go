package proxy

import (
	"context"
	"net"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/pgrouter/pgrouter/pool"
)

// watchdogTick is how often the watchdog looks at every session. A timeout
// fires up to one tick late.
const watchdogTick = 250 * time.Millisecond

// Why the watchdog ended a session's wait (session.expired).
const (
	expiredNone int32 = iota
	expiredQuery
	expiredWrite
)

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
}

// watchdog enforces the timeouts that a session cannot enforce itself
// because it is blocked: query_timeout (the session waits for a server that
// does not answer: a frozen or unreachable shard) and client_write_timeout
// (the session is blocked writing to a client that stopped reading, holding
// a server connection). It runs until the server closes.
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
			if pc.QueryTimeout <= 0 && pc.ClientWriteTimeout <= 0 {
				continue
			}
			for _, sess := range s.sessionList() {
				s.checkTimeouts(sess, now, pc.QueryTimeout.D(), pc.ClientWriteTimeout.D())
			}
		}
	}
}

// checkTimeouts checks one session against the timeouts.
func (s *Server) checkTimeouts(sess *session, now time.Time, queryTimeout, writeTimeout time.Duration) {
	if writeTimeout > 0 && sess.watched != nil {
		n := sess.watched.writes.Load()
		switch {
		case n%2 == 0:
			sess.ws.since = time.Time{}
		case n != sess.ws.writes || sess.ws.since.IsZero():
			sess.ws.since = now
		case now.Sub(sess.ws.since) >= writeTimeout && sess.expired.CompareAndSwap(expiredNone, expiredWrite):
			sess.logger().Info("client_write_timeout: the client has not read its results; closing it", zap.Duration("client_write_timeout", writeTimeout))
			_ = sess.watched.Close() // its write fails and the session ends, abandoning its server
		}
		sess.ws.writes = n
	}
	if queryTimeout > 0 {
		began := sess.busySince.Load()
		if began != 0 && now.Sub(time.Unix(0, began)) >= queryTimeout && sess.expired.CompareAndSwap(expiredNone, expiredQuery) {
			if sess.busySince.Load() != began { // that wait ended meanwhile; another began
				sess.expired.CompareAndSwap(expiredQuery, expiredNone)
				return
			}
			sess.logger().Warn("query_timeout: the shard has not answered; cancelling and closing its connection", zap.Duration("query_timeout", queryTimeout))
			s.interruptServers(sess)
		}
	}
}

// interruptServers cancels what the session's servers are running and
// closes their sockets, so the session's blocked read fails and it reports
// the timeout. The cancel goes out in the background: a frozen server may
// never accept it.
func (s *Server) interruptServers(sess *session) {
	sess.mu.Lock()
	var targets []*pool.Conn
	if sess.linked != nil {
		targets = append(targets, sess.linked)
	}
	targets = append(targets, sess.fanConns...)
	sess.mu.Unlock()
	// No StartCancel: that would hold the session's Release of these
	// connections until the cancel is delivered (up to cancelTimeout on a
	// frozen server), and Interrupt already keeps them from being reused,
	// so the cancel can only reach this client's statement.
	for _, c := range targets {
		c.Interrupt()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			ctx, cancel := context.WithTimeout(s.ctx, cancelTimeout)
			defer cancel()
			if err := c.SendCancel(ctx); err != nil {
				sess.logger().Info("cancel after query_timeout not delivered", zap.String("shard", c.Shard()), zap.Error(err))
			}
		}()
	}
}
