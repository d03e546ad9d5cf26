package proxy

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"hash/maphash"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"

	"github.com/pgrouter/pgrouter/pool"
	"github.com/pgrouter/pgrouter/router"
	"github.com/pgrouter/pgrouter/wire"
)

// Prepared statements in transaction mode.
//
// A client's named statement may be used on any server connection, so the
// proxy keeps its definition (query text and parameter types) and gives it a
// server-side name derived from that definition: "pgr_" + 32 hex digits of
// its HMAC-SHA-256 under a secret drawn when the process starts, so no
// client can compute in advance the name another client's statement will
// have and plant it. Clients preparing the same text share one server statement,
// and a client's own name never reaches a server, so two clients reusing a
// name cannot collide. Before a Bind or Describe the statement is prepared
// on the linked server if its cache lacks it; a Parse the server already has
// is answered locally. PostgreSQL's own errors for name misuse are produced
// by the server in pipeline order (see parse and bind) so that the
// transaction they abort is exactly the one PostgreSQL would abort.
//
// The "pgr_" prefix is reserved: SQL-level PREPARE, EXECUTE and DEALLOCATE
// of such names are refused (the lexer decodes U&"..." UESCAPE names, so
// they cannot be disguised), and a server found holding a "pgr_" name that
// was prepared through SQL (from a DO block or a function) is closed rather
// than reused (see queueStatementResync). What remains is the reach of the
// server role itself: clients sharing a server user can run any SQL as
// that role on the same servers, as with pgbouncer, so tenants that must
// not trust one another need distinct server users.

// serverStmtPrefix starts every server-side statement name pgrouter makes.
const serverStmtPrefix = "pgr_"

// missingStatement is sent in place of a statement name the client never
// prepared; no real server-side name has this form, so the server answers
// 26000 and the relay puts the client's name back into the message.
const missingStatement = "pgr_missing"

// statement is a client's named prepared statement.
type statement struct {
	serverName string
	// parseBody is a Parse message body that prepares serverName.
	parseBody []byte
	// info is what executing it does to state pgrouter mirrors.
	info queryInfo
	// plan is where it routes (planned again if the catalog changes).
	plan *router.Plan
}

// statementKey is the secret server statement names are derived with.
var statementKey = func() []byte {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		panic(fmt.Sprintf("pgrouter: no randomness for statement names: %v", err))
	}
	return k
}()

// statementMACs keeps keyed HMAC states for reuse: building one costs more
// than hashing a typical statement.
var statementMACs = sync.Pool{New: func() any { return hmac.New(sha256.New, statementKey) }}

func newStatement(definition []byte, info queryInfo, plan *router.Plan) *statement {
	mac := statementMACs.Get().(hash.Hash)
	mac.Reset()
	mac.Write(definition)
	var sum [sha256.Size]byte
	mac.Sum(sum[:0])
	statementMACs.Put(mac)
	const nameLen = len(serverStmtPrefix) + 32
	body := make([]byte, nameLen+1+len(definition))
	copy(body, serverStmtPrefix)
	hex.Encode(body[len(serverStmtPrefix):nameLen], sum[:16])
	copy(body[nameLen+1:], definition)
	return &statement{serverName: string(body[:nameLen]), parseBody: body, info: info, plan: plan}
}

// unnamedStatement is the client's latest unnamed statement. Drivers often
// Parse it, Sync, then Bind it; in transaction mode the Bind may land on
// another server, which then gets the Parse replayed first. The previous one
// is kept so a Parse or Close skipped after an error can be undone.
type unnamedStatement struct {
	valid bool
	fp    uint64 // fingerprint of query text and parameter types, never 0
	raw   []byte // the whole Parse message, buffer reused
	info  queryInfo
	plan  *router.Plan

	prevValid bool
	prevFp    uint64
	prevRaw   []byte
	prevInfo  queryInfo
}

var unnamedSeed = maphash.MakeSeed()

func (u *unnamedStatement) save() {
	u.prevValid, u.prevFp, u.prevInfo = u.valid, u.fp, u.info
	u.raw, u.prevRaw = u.prevRaw, u.raw
}

// set records a new unnamed statement, keeping the previous one.
func (u *unnamedStatement) set(raw, definition []byte, info queryInfo, plan *router.Plan) uint64 {
	u.save()
	u.raw = append(u.raw[:0], raw...)
	u.fp = maphash.Bytes(unnamedSeed, definition) | 1
	u.valid = true
	u.info = info
	u.plan = plan
	return u.fp
}

// drop forgets the unnamed statement (Close, or a simple Query), keeping it
// as the previous one.
func (u *unnamedStatement) drop() {
	u.save()
	u.raw = append(u.raw[:0], u.prevRaw...)
	u.valid = false
	u.plan = nil
}

// restore brings back the previous unnamed statement.
func (u *unnamedStatement) restore() {
	u.valid, u.fp, u.info = u.prevValid, u.prevFp, u.prevInfo
	u.plan = nil
	u.raw, u.prevRaw = u.prevRaw, u.raw
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
		s.queue.at(s.queue.len() - 1).serverStmt = victim
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
		s.queue.push(request{kind: reqParse, internal: true, unnamed: true, prevUnnamed: c.Unnamed})
		c.Unnamed = s.unnamed.fp
	case !s.unnamed.valid && c.Unnamed != 0:
		s.closeOn(c, 'S', "")
		r := s.queue.at(s.queue.len() - 1)
		r.unnamed, r.prevUnnamed = true, c.Unnamed
		c.Unnamed = 0
	}
}

// undo reverses the bookkeeping of a request the server did not carry out:
// failed is true for the request that got the error, false for the ones the
// server then skipped.
func (s *session) undo(r request, failed bool) {
	c := s.server
	switch r.kind {
	case reqParse:
		if r.unnamed {
			if failed { // PostgreSQL dropped the old unnamed statement before failing
				c.Unnamed = 0
				if !r.internal {
					s.unnamed.valid = false
				}
			} else {
				c.Unnamed = r.prevUnnamed
				if !r.internal {
					s.unnamed.restore()
				}
			}
			return
		}
		if r.serverStmt != "" {
			c.Statements.Remove(r.serverStmt)
		}
		s.forget(r.clientStmt, r.serverStmt)
	case reqClose:
		if failed {
			return
		}
		if r.unnamed {
			c.Unnamed = r.prevUnnamed
			if !r.internal {
				s.unnamed.restore()
			}
		} else if r.internal && r.serverStmt != "" {
			c.Statements.Restore(r.serverStmt) // an evicted statement the server kept
		}
	case reqLocal:
		switch r.reply {
		case wire.ParseComplete:
			s.forget(r.clientStmt, r.serverStmt)
		case wire.CloseComplete:
			if r.restore != nil {
				s.restoreStatement(r.clientStmt, r.restore)
			}
		}
	}
}

// forget drops a client statement name if it still maps to serverName.
func (s *session) forget(clientName, serverName string) {
	if clientName == "" {
		return
	}
	if st := s.stmts[clientName]; st != nil && st.serverName == serverName {
		s.dropStatement(clientName)
	}
}

// reservedName reports a statement name pgrouter keeps for itself.
func reservedName(name string) bool {
	return strings.HasPrefix(strings.ToLower(name), serverStmtPrefix)
}

// knownLimit bounds a set of statements known to parse; past it the set
// starts over (it is an optimisation, not a record).
const knownLimit = 16384

// knownStatements is the set of server-side statement names that a server
// of one cluster, for one server user, has parsed successfully. A Parse of
// one of them from a client with no linked server is answered at once,
// without taking a server: the statement is prepared where it executes, at
// Bind. This spares a round trip and, with drivers that prepare
// synchronously while their other connections hold servers (pgbench -M
// prepared), a pool-wide stall.
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

// knownRegistry keeps one knownStatements per cluster and user.
type knownRegistry struct {
	mu   sync.Mutex
	sets map[string]*knownStatements
}

func (r *knownRegistry) get(cluster, user string) *knownStatements {
	key := cluster + "\x00" + user
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.sets == nil {
		r.sets = map[string]*knownStatements{}
	}
	k := r.sets[key]
	if k == nil {
		k = &knownStatements{}
		r.sets[key] = k
	}
	return k
}

// queueStatementResync asks the server, right after the client's request,
// which pgrouter statements it still has, and makes its cache say exactly
// that (after DEALLOCATE or DISCARD ALL, whose effect on a multi-statement
// string or a failed transaction pgrouter cannot know for sure). Only
// statements prepared through the protocol are pgrouter's (clients' own
// Parse names never reach a server): a "pgr_" name prepared through SQL was
// planted, from a DO block or a function, so the server is not reused. If
// the question fails (an aborted transaction), it is not reused either.
func (s *session) queueStatementResync(c *pool.Conn) {
	_ = c.W.Send(&pgproto3.Query{String: "SELECT name, from_sql FROM pg_catalog.pg_prepared_statements WHERE starts_with(name, '" + serverStmtPrefix + "')"})
	c.Unnamed = 0
	var names []string
	planted := false
	s.queue.push(request{kind: reqQuery, internal: true,
		onRow: func(v [][]byte) {
			switch {
			case len(v) != 2:
			case string(v[1]) != "f":
				planted = true
			default:
				names = append(names, string(v[0]))
			}
		},
		onEnd: func(ok bool) {
			switch {
			case !ok:
				c.MarkBroken()
			case planted:
				s.logger().Warn("a server held a pgrouter statement name prepared through SQL (a DO block or function?); closing it",
					zap.String("shard", c.Shard()))
				c.MarkBroken()
			default:
				c.Statements.Reset(names)
			}
		},
	})
}
