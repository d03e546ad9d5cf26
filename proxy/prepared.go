package proxy

import (
	"crypto/sha256"
	"encoding/hex"
	"hash/maphash"
	"sync"

	"github.com/pgrouter/pgrouter/pool"
	"github.com/pgrouter/pgrouter/wire"
)

// Prepared statements in transaction mode.
//
// A client's named statement may be used on any server connection, so the
// proxy keeps its definition (query text and parameter types) and gives it a
// server-side name derived from that definition: "pgr_" + 32 hex digits of
// its SHA-256. Clients preparing the same text share one server statement,
// and a client's own name never reaches a server, so two clients reusing a
// name cannot collide. Before a Bind or Describe the statement is prepared
// on the linked server if its cache lacks it; a Parse the server already has
// is answered locally. PostgreSQL's own errors for name misuse are produced
// by the server in pipeline order (see bind and parse) so that the
// transaction they abort is exactly the one PostgreSQL would abort.

// missingStatement is sent in place of a statement name the client never
// prepared; no real server-side name has this form, so the server answers
// 26000 and the relay puts the client's name back into the message.
const missingStatement = "pgr_missing"

// statement is a client's named prepared statement.
type statement struct {
	serverName string
	// parseBody is a Parse message body that prepares serverName.
	parseBody []byte
}

func newStatement(definition []byte) *statement {
	sum := sha256.Sum256(definition)
	name := "pgr_" + hex.EncodeToString(sum[:16])
	body := make([]byte, 0, len(name)+1+len(definition))
	body = append(body, name...)
	body = append(body, 0)
	body = append(body, definition...)
	return &statement{serverName: name, parseBody: body}
}

// unnamedStatement is the client's latest unnamed statement. Drivers often
// Parse it, Sync, then Bind it; in transaction mode the Bind may land on
// another server, which then gets the Parse replayed first.
type unnamedStatement struct {
	valid bool
	fp    uint64 // fingerprint of query text and parameter types, never 0
	raw   []byte // the whole Parse message, buffer reused
}

var unnamedSeed = maphash.MakeSeed()

func (u *unnamedStatement) set(raw []byte, definition []byte) uint64 {
	u.raw = append(u.raw[:0], raw...)
	u.fp = maphash.Bytes(unnamedSeed, definition) | 1
	u.valid = true
	return u.fp
}

// prepareOn sends a Parse for st to server c and records it in c's cache,
// closing the statements the cache evicts to stay within its limit.
func (s *session) prepareOn(c *pool.Conn, st *statement, internal bool, clientName string) {
	start := c.W.Begin(wire.Parse)
	c.W.AppendBytes(st.parseBody)
	_ = c.W.End(start)
	s.queue.push(request{kind: reqParse, internal: internal, serverStmt: st.serverName, clientStmt: clientName})
	for _, victim := range c.Statements.Add(st.serverName) {
		s.closeOn(c, 'S', victim)
	}
}

// closeOn sends an internal Close of a statement or portal.
func (s *session) closeOn(c *pool.Conn, kind byte, name string) {
	start := c.W.Begin(wire.Close)
	c.W.AppendByte(kind)
	c.W.AppendString(name)
	c.W.AppendByte(0)
	_ = c.W.End(start)
	s.queue.push(request{kind: reqClose, internal: true})
}

// ensureUnnamed makes the server's unnamed statement the client's own before
// a Bind or Describe of it: replayed if the server has another, closed if
// the client has none (so the server reports it missing rather than run
// someone else's).
func (s *session) ensureUnnamed(c *pool.Conn) {
	switch {
	case s.unnamed.valid && c.Unnamed != s.unnamed.fp:
		_ = c.W.Write(s.unnamed.raw)
		c.Unnamed = s.unnamed.fp
		s.queue.push(request{kind: reqParse, internal: true, unnamed: true})
	case !s.unnamed.valid && c.Unnamed != 0:
		s.closeOn(c, 'S', "")
		c.Unnamed = 0
	}
}

// undo reverses the bookkeeping of a request the server did not carry out
// (it failed, or an earlier message of its batch failed).
func (s *session) undo(r request) {
	c := s.server
	switch r.kind {
	case reqParse, reqLocal:
		if r.unnamed {
			if c != nil {
				c.Unnamed = 0
			}
			if !r.internal {
				s.unnamed.valid = false
			}
			return
		}
		if r.serverStmt != "" && r.kind == reqParse && c != nil {
			c.Statements.Remove(r.serverStmt)
		}
		if r.clientStmt != "" {
			if st := s.stmts[r.clientStmt]; st != nil && st.serverName == r.serverStmt {
				delete(s.stmts, r.clientStmt)
			}
		}
		if r.restore != nil && r.clientStmt != "" {
			s.stmts[r.clientStmt] = r.restore
		}
	}
}

// knownLimit bounds the set of statements known to parse; past it the set
// starts over (it is an optimisation, not a record).
const knownLimit = 16384

// knownStatements is the set of server-side statement names that some
// server has parsed successfully. A Parse of one of them from a client with
// no linked server is answered at once, without taking a server: the
// statement is prepared where it executes, at Bind. This spares a round trip
// and, with drivers that prepare synchronously while their other
// connections hold servers (pgbench -M prepared), a pool-wide stall.
type knownStatements struct {
	mu    sync.Mutex
	names map[string]struct{}
}

func (k *knownStatements) add(name string) {
	k.mu.Lock()
	if k.names == nil || len(k.names) >= knownLimit {
		k.names = make(map[string]struct{})
	}
	k.names[name] = struct{}{}
	k.mu.Unlock()
}

func (k *knownStatements) has(name string) bool {
	k.mu.Lock()
	_, ok := k.names[name]
	k.mu.Unlock()
	return ok
}
