package proxy

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"

	"github.com/pgrouter/pgrouter/pool"
)

// cancelTimeout bounds the delivery of one cancel request to a server.
const cancelTimeout = 5 * time.Second

// cancelRegistry maps the BackendKeyData pgrouter gave each client to its
// session. Keys are random (31-bit process id, 32-bit secret from
// crypto/rand), so a CancelRequest cannot be aimed at someone else's query
// by guessing.
type cancelRegistry struct {
	mu       sync.Mutex
	sessions map[uint32]*session
}

// register gives s a fresh key.
func (r *cancelRegistry) register(s *session) {
	var b [8]byte
	for {
		_, _ = rand.Read(b[:])
		pid := binary.BigEndian.Uint32(b[:4]) & 0x7fffffff // positive, like a real backend pid
		if pid == 0 {
			continue
		}
		r.mu.Lock()
		if r.sessions == nil {
			r.sessions = map[uint32]*session{}
		}
		if _, taken := r.sessions[pid]; !taken {
			s.pid = pid
			copy(s.secret[:], b[4:])
			r.sessions[pid] = s
			r.mu.Unlock()
			return
		}
		r.mu.Unlock()
	}
}

func (r *cancelRegistry) unregister(s *session) {
	r.mu.Lock()
	if r.sessions[s.pid] == s {
		delete(r.sessions, s.pid)
	}
	r.mu.Unlock()
}

func (r *cancelRegistry) lookup(pid uint32, secret []byte) *session {
	r.mu.Lock()
	s := r.sessions[pid]
	r.mu.Unlock()
	if s == nil || subtle.ConstantTimeCompare(s.secret[:], secret) != 1 {
		return nil
	}
	return s
}

// forwardCancel handles a CancelRequest connection: the request goes to the
// server linked to that client right now, if any. PostgreSQL sends no reply.
func (s *Server) forwardCancel(req *pgproto3.CancelRequest, log *zap.Logger) {
	sess := s.cancels.lookup(req.ProcessID, req.SecretKey)
	if sess == nil {
		log.Debug("cancel request for an unknown key")
		return
	}
	ctx, cancel := context.WithTimeout(s.ctx, cancelTimeout)
	defer cancel()
	sess.cancelRunning(ctx)
}

// serversLocked lists the servers running the session's statement: the
// linked one and a fan-out's, each once (a session-mode fan-out runs on the
// linked server too). The caller holds s.mu.
func (s *session) serversLocked() []*pool.Conn {
	var out []*pool.Conn
	if s.linked != nil {
		out = append(out, s.linked)
	}
	for _, c := range s.fanConns {
		if c != s.linked {
			out = append(out, c)
		}
	}
	return out
}

// cancelInBackground sends a cancel for c's statement without waiting for
// it (it costs the server a fork, and a frozen server never takes it); what
// went wrong is logged at level debug under msg.
func (s *session) cancelInBackground(c *pool.Conn, msg string) {
	s.srv.wg.Add(1) // the caller holds a count of the group (a session, the watchdog)
	go func() {
		defer s.srv.wg.Done()
		ctx, cancel := context.WithTimeout(s.srv.ctx, cancelTimeout)
		defer cancel()
		if err := c.SendCancel(ctx); err != nil {
			s.debug(msg, zap.String("shard", c.Shard()), zap.Error(err))
		}
	}()
}

// cancelRunning cancels what the client's linked server is running. The
// server is marked under the session's lock, and the pool does not hand it
// to another client until the cancel has been delivered, so the cancel can
// only hit this client's statement.
func (s *session) cancelRunning(ctx context.Context) {
	s.mu.Lock()
	targets := s.serversLocked()
	dones := make([]func(), len(targets))
	for i, c := range targets {
		dones[i] = c.StartCancel()
	}
	s.mu.Unlock()
	for i, c := range targets {
		if err := c.SendCancel(ctx); err != nil {
			s.logger().Info("cancel request not delivered", zap.String("shard", c.Shard()), zap.Error(err))
		} else {
			s.debug("cancel request forwarded", zap.String("shard", c.Shard()), zap.Uint32("backend_pid", c.PID))
		}
		dones[i]()
	}
}
