package proxy

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"net"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"

	"github.com/pgrouter/pgrouter/pool"
)

// cancelTimeout bounds the delivery of one cancel request to a server.
const cancelTimeout = 5 * time.Second

// Cancel keys. A client's BackendKeyData is a 31-bit process id and a
// 32-bit secret. With peering (peer_id set) the process id carries the
// issuing instance's id, so that any instance can tell whose client a
// cancel request is for:
//
//	bit 31     0 (a process id is positive)
//	bits 30-17 peer_id (1..16383)
//	bit 16     forwarded: set by the instance that passes the request on,
//	           so it travels at most one hop
//	bits 15-0  random
//
// Without peering all 31 bits are random. Keys are looked up whole (process
// id and secret), so a cancel cannot be aimed at someone else's query by
// guessing: 48 random bits with peering, 63 without.
const (
	peerShift     = 17
	forwardedBit  = 1 << 16
	peerLocalMask = 1<<16 - 1
)

// cancelRegistry maps the BackendKeyData pgrouter gave each client to its
// session.
type cancelRegistry struct {
	peerID   uint32 // fixed at start: keys already given out carry it
	mu       sync.Mutex
	sessions map[uint64]*session
}

func cancelKey(pid uint32, secret []byte) uint64 {
	return uint64(pid)<<32 | uint64(binary.BigEndian.Uint32(secret))
}

// register gives s a fresh key.
func (r *cancelRegistry) register(s *session) {
	var b [8]byte
	for {
		_, _ = rand.Read(b[:])
		pid := binary.BigEndian.Uint32(b[:4]) & 0x7fffffff // positive, like a real backend pid
		if r.peerID != 0 {
			pid = r.peerID<<peerShift | pid&peerLocalMask
		}
		if pid == 0 {
			continue
		}
		key := cancelKey(pid, b[4:])
		r.mu.Lock()
		if r.sessions == nil {
			r.sessions = map[uint64]*session{}
		}
		if _, taken := r.sessions[key]; !taken {
			s.pid = pid
			copy(s.secret[:], b[4:])
			r.sessions[key] = s
			r.mu.Unlock()
			return
		}
		r.mu.Unlock()
	}
}

func (r *cancelRegistry) unregister(s *session) {
	key := cancelKey(s.pid, s.secret[:])
	r.mu.Lock()
	if r.sessions[key] == s {
		delete(r.sessions, key)
	}
	r.mu.Unlock()
}

func (r *cancelRegistry) lookup(pid uint32, secret []byte) *session {
	if len(secret) != 4 {
		return nil
	}
	key := cancelKey(pid, secret)
	r.mu.Lock()
	s := r.sessions[key]
	r.mu.Unlock()
	if s == nil || subtle.ConstantTimeCompare(s.secret[:], secret) != 1 {
		return nil
	}
	return s
}

// forwardCancel handles a CancelRequest connection. A key of this instance
// cancels what that client's linked server is running, if anything; with
// peering, a key of another instance is passed on to that peer once (a
// request that was already passed on, or names an unknown peer, is
// dropped). PostgreSQL sends no reply, and neither does pgrouter.
func (s *Server) forwardCancel(req *pgproto3.CancelRequest, log *zap.Logger) {
	pid := req.ProcessID
	if own := s.cancels.peerID; own != 0 {
		peer := pid >> peerShift
		if peer != own {
			s.passCancel(req, peer, log)
			return
		}
		pid &^= forwardedBit
	}
	sess := s.cancels.lookup(pid, req.SecretKey)
	if sess == nil {
		log.Debug("cancel request for an unknown key")
		return
	}
	ctx, cancel := context.WithTimeout(s.ctx, cancelTimeout)
	defer cancel()
	sess.cancelRunning(ctx)
}

// passCancel sends a cancel request for another instance's client to that
// instance, marked as forwarded.
func (s *Server) passCancel(req *pgproto3.CancelRequest, peer uint32, log *zap.Logger) {
	if req.ProcessID&forwardedBit != 0 {
		log.Debug("cancel request already forwarded once, for another instance: dropped", zap.Uint32("peer_id", peer))
		return
	}
	addr, ok := s.gen.Load().cfg.Peers[int(peer)]
	if !ok {
		log.Debug("cancel request for an unknown peer: dropped", zap.Uint32("peer_id", peer))
		return
	}
	ctx, cancel := context.WithTimeout(s.ctx, cancelTimeout)
	defer cancel()
	fwd := &pgproto3.CancelRequest{ProcessID: req.ProcessID | forwardedBit, SecretKey: req.SecretKey}
	if err := sendCancelRequest(ctx, addr, fwd); err != nil {
		log.Info("cancel request not forwarded to its peer", zap.Uint32("peer_id", peer), zap.String("peer", addr), zap.Error(err))
		return
	}
	log.Debug("cancel request forwarded to its peer", zap.Uint32("peer_id", peer), zap.String("peer", addr))
}

// sendCancelRequest delivers a CancelRequest to addr and waits for the
// peer to close the connection, as libpq does: the cancel has then been
// acted on.
func sendCancelRequest(ctx context.Context, addr string, req *pgproto3.CancelRequest) error {
	conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	buf, err := req.Encode(nil)
	if err != nil {
		return err
	}
	if _, err := conn.Write(buf); err != nil {
		return err
	}
	_, _ = conn.Read(make([]byte, 1)) // EOF once the peer is done
	return nil
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
