package proxy

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"

	"github.com/pgrouter/pgrouter/config"
	"github.com/pgrouter/pgrouter/pool"
	"github.com/pgrouter/pgrouter/router"
	"github.com/pgrouter/pgrouter/shardmap"
	"github.com/pgrouter/pgrouter/sqlstate"
	"github.com/pgrouter/pgrouter/wire"
)

// resetTimeout bounds the clean-up (ROLLBACK, DISCARD ALL) of a server whose
// client went away; a server that does not answer in time is closed.
const resetTimeout = 5 * time.Second

// errTerminate ends a session on the client's Terminate message.
var errTerminate = errors.New("client sent Terminate")

// session is one client connection after login. A single goroutine runs it
// and owns everything but the fields under mu: it reads a client message,
// forwards it to the linked server, and at each Sync, Query or Flush relays
// the server's answers back before reading the client again. Working one
// request at a time in one goroutine keeps the order of responses obvious and
// costs no goroutine hand-offs on the hot path. Other goroutines (cancel,
// watchdog, SHOW CLIENTS) read only mu's fields and the atomics, and mu is
// never held while another lock is taken. During a fan-out the shards'
// goroutines write to the client under fanStream.mu while this one waits.
type session struct {
	// Set at construction.
	srv         *Server
	gen         *generation
	conn        net.Conn
	id          uint64
	log         atomic.Pointer[zap.Logger] // built by logger() on first use
	user        string
	cluster     *shardmap.Cluster
	mode        config.PoolMode
	waitTimeout time.Duration
	idleTxLimit time.Duration // idle_transaction_timeout (0: none)
	idleLimit   time.Duration // client_idle_timeout (0: none)
	passthrough bool          // pool.prepared_statements is 0: statement names go to servers untouched
	pid         uint32
	secret      [4]byte

	// Owned by the session goroutine.
	cr       *wire.Reader
	cw       *wire.Writer
	server   *pool.Conn            // linked server, nil between transactions in transaction mode
	pools    map[string]*pool.Pool // by shard name
	tx       txState               // the client's transaction (txstate.go)
	queue    queue                 // requests sent to the server and not yet answered
	batch    batchPhase            // extended-protocol messages sent since the last Sync (txstate.go)
	skipping bool                  // an extended message failed: discard until Sync, as PostgreSQL does
	startup  pool.ParamState       // settings from the startup packet: what RESET ALL returns to
	desired  pool.ParamState       // the client's run-time settings now
	stmts    map[string]*statement // the client's named prepared statements
	unnamed  unnamedStatement      // the client's unnamed prepared statement
	known    *knownStatements      // statements a server of this cluster has parsed

	// Routing (see route.go).
	router    *router.Router
	held      hold                  // a pipeline waiting for its shard
	replaying bool                  // the held pipeline is being run
	noPin     bool                  // the replayed pipeline does not pin an unpinned transaction
	dest      *shardmap.Shard       // where link gets a server
	parked    map[string]*pool.Conn // session mode: the client's servers on other shards
	fan       *fanBatch             // a run_on all Bind waiting for its Sync
	cursor    *fanCursor            // a fan-out portal suspended in a transaction (fancursor.go)
	batchErr  bool                  // an extended-protocol message failed on the server
	// reqFailed: the server reported an error for the client's current
	// request (an unpinned transaction it ran outside of is aborted).
	reqFailed bool
	// localPortals are portals of statements pgrouter answers itself (see
	// localExtended), by name.
	localPortals map[string]*router.Plan
	// An unpinned transaction (tx.unpinned()): BEGIN and the SETs after it
	// wait for the first routed statement to be sent to its shard.
	beginSQL           string
	deferred           []*router.Plan
	deferredBytes      int    // of the state budget, held by deferred
	stateBytes         int    // what the client makes pgrouter hold (see charge)
	stateLimit         int    // pool.max_client_state
	overShard, overKey string // SET pgrouter.shard / pgrouter.key
	target             string // SET pgrouter.target: "" (auto), "primary" or "replica"
	txReadOnly         bool   // the unpinned transaction began READ ONLY (readOnlyTx)

	// What portals bound in the current batch will do, and what the
	// executed ones did.
	unnamedPortal queryInfo
	portals       map[string]queryInfo
	pending       effects
	// Settings changed by the client's statements and not yet read back from
	// the server (inside a transaction they may still roll back).
	dirty, dirtyResets []string
	needApply          bool

	// Accounting for the pool's counters: when the current request and
	// transaction began, and the bytes moved by the request.
	reqStart, xactStart time.Time
	bytesIn, bytesOut   int64
	// stmtViolation: in statement mode a request left a transaction open;
	// drainGraced: a shutdown has given the client its grace (drainNow).
	stmtViolation, drainGraced bool

	// Guarded by mu: the cancel path reads which server serves the client.
	mu       sync.Mutex
	linked   *pool.Conn
	fanConns []*pool.Conn // the servers running a fan-out

	// Read by SHOW CLIENTS from other goroutines.
	connected   time.Time
	dbName      string       // the cluster's name
	appName     string       // application_name from the startup packet
	waiting     atomic.Bool  // queued for a server connection
	lastRequest atomic.Int64 // unix nanoseconds when the latest request began

	// For the watchdog (watchdog.go): waitingSince is when the session began
	// a blocking wait on a server (monoNow; 0 when it is not waiting);
	// readExpired is set, under mu, when server_read_timeout closed the
	// session's servers during that wait; watched counts writes to the
	// client; ws is the watchdog's own memory.
	waitingSince atomic.Int64
	readExpired  atomic.Bool
	watched      *watchedConn
	ws           watchState
}

func newSession(srv *Server, gen *generation, conn net.Conn, r *wire.Reader, w *wire.Writer, id uint64, user string, cl *shardmap.Cluster) *session {
	cfg := gen.cfg
	return &session{
		srv:         srv,
		gen:         gen,
		conn:        conn,
		id:          id,
		user:        user,
		cluster:     cl,
		mode:        cfg.Pool.Mode,
		waitTimeout: cfg.Pool.QueryWaitTimeout.D(),
		idleTxLimit: cfg.Pool.IdleTransactionTimeout.D(),
		idleLimit:   cfg.Pool.ClientIdleTimeout.D(),
		passthrough: cfg.Pool.PreparedStatements == 0,
		stateLimit:  int(cfg.Pool.MaxClientState),
		cr:          r,
		cw:          w,
		pools:       map[string]*pool.Pool{},
		stmts:       map[string]*statement{},
		known:       srv.known.get(cl.Name, user),
		router:      gen.routers[cl.Name],
		connected:   time.Now(),
		dbName:      cl.Name,
	}
}

// readTimeoutError is what a client is told when server_read_timeout closed
// the server connection its statement was waiting on.
func (s *session) readTimeoutError(shard string, fatal bool) *Error {
	d := s.srv.gen.Load().cfg.Pool.ServerReadTimeout.D()
	e := errorf(sqlstate.QueryCanceled, "pgrouter: server_read_timeout (%s) expired: shard %s sent nothing for that long; the statement was cancelled and its server connection closed", d, shard)
	if fatal {
		e = fatalf(sqlstate.QueryCanceled, "pgrouter: server_read_timeout (%s) expired: shard %s sent nothing for that long; the transaction or session state on it is gone", d, shard)
	}
	return e.WithHint("The limit is pool.server_read_timeout in router.yaml; for statements that are merely slow, set statement_timeout on the shards below it.")
}

// run serves the client until it leaves or a fatal error.
func (s *session) run() {
	s.srv.addSession(s)
	defer s.finish()
	for {
		if s.drainNow() {
			s.sendFatal(ShutdownError())
			return
		}
		if s.cw.Len() > 0 && !s.cr.HasMessage() { // about to wait for the client: send what it is owed first
			if err := s.cw.Flush(); err != nil {
				return
			}
		}
		m, err := s.readClient()
		if err = clientIO(err); err != nil {
			if !isClientGone(err) {
				s.sendFatal(toError(err))
			}
			return
		}
		if s.srv.gen.Load() != s.gen && s.atBoundary() { // a reload: take it before a new transaction starts
			if err := s.adopt(s.srv.gen.Load()); err != nil {
				s.sendFatal(toError(err))
				return
			}
		}
		if err := s.dispatch(m); err != nil {
			if errors.Is(err, errTerminate) || isClientGone(err) {
				return
			}
			e := toError(err)
			s.logger().Info("closing client connection", zap.String("sqlstate", e.Code), zap.String("reason", e.Message), zap.NamedError("cause", e.Err))
			s.sendFatal(e)
			return
		}
	}
}

// dispatch handles one client message. A non-fatal failure is reported here
// in the protocol state the client expects; only fatal errors are returned.
func (s *session) dispatch(m wire.Message) error {
	if skip, err := s.skipped(m); skip {
		return err
	}
	s.bytesIn += int64(len(m.Raw))
	if (m.Type == wire.Query || m.Type == wire.Parse) && s.router != nil && s.router.HasTargets() {
		var err error
		if m, err = s.retarget(m); err != nil {
			return err
		}
	}
	if s.reqStart.IsZero() {
		s.reqStart = time.Now()
		s.lastRequest.Store(s.reqStart.UnixNano())
	}
	if s.cursor != nil {
		if handled, err := s.cursorMessage(m); handled {
			return err
		}
	}
	switch m.Type {
	case wire.Parse, wire.Bind, wire.Describe, wire.Execute, wire.Close, wire.Sync, wire.Flush:
		if handled, err := s.localExtended(m); handled {
			return err
		}
		if s.failedUnpinned() && m.Type != wire.Sync && m.Type != wire.Flush {
			return s.fail(errorf(sqlstate.InFailedTransaction, "current transaction is aborted, commands ignored until end of transaction block"), m.Type)
		}
		if s.fan != nil {
			return s.fanMessage(m)
		}
		if s.holding() && (m.Type != wire.Sync && m.Type != wire.Flush || !s.held.empty()) {
			if err := s.holdMessage(m); err != nil {
				return s.fail(err, m.Type)
			}
			return nil
		}
	}
	return s.handle(m)
}

// skipped reports whether a message is discarded because an earlier one of
// its batch failed, as PostgreSQL discards everything up to Sync.
func (s *session) skipped(m wire.Message) (bool, error) {
	if !s.skipping {
		return false, nil
	}
	switch m.Type {
	case wire.Sync:
		s.skipping = false
		return false, nil
	case wire.Terminate:
		return true, errTerminate
	}
	return true, nil
}

// handle handles one client message whose shard is settled.
func (s *session) handle(m wire.Message) error {
	var err error
	switch m.Type {
	case wire.Query:
		err = s.query(m)
	case wire.Parse:
		err = s.parse(m)
	case wire.Bind:
		err = s.bind(m)
	case wire.Describe:
		err = s.describe(m)
	case wire.Execute:
		err = s.execute(m)
	case wire.Close:
		err = s.closeStatement(m)
	case wire.Sync:
		err = s.sync(m)
	case wire.Flush:
		err = s.flush(m)
	case wire.FunctionCall:
		err = s.functionCall(m)
	case wire.CopyData, wire.CopyDone, wire.CopyFail:
		return nil // outside COPY PostgreSQL ignores these too
	case wire.Terminate:
		return errTerminate
	default:
		return fatalf(sqlstate.ProtocolViolation, "pgrouter: invalid frontend message type %q", m.Type)
	}
	if err == nil {
		return nil
	}
	return s.fail(err, m.Type)
}

// fail reports a non-fatal error for a message of type typ: after a simple
// Query, FunctionCall or Sync it is followed by ReadyForQuery; after any other
// extended-protocol message the rest of the batch is discarded up to Sync.
// With a server linked the error is raised in-band (see failInBand), so the
// transaction it aborts is the one PostgreSQL would abort.
func (s *session) fail(err error, typ byte) error {
	e := toError(err)
	if e.Fatal || isClientGone(err) {
		return err
	}
	s.debug("statement failed", zap.String("sqlstate", e.Code), zap.String("reason", e.Message), zap.NamedError("cause", e.Err))
	if s.server != nil && !s.switchable() {
		return s.failInBand(e, typ)
	}
	s.abortUnpinned() // as PostgreSQL, an error aborts the transaction
	s.emitLocals()
	if err := clientIO(s.cw.Send(e.response())); err != nil {
		return err
	}
	switch typ {
	case wire.Query, wire.FunctionCall, wire.Sync:
		s.batch = batchNone
		return clientIO(s.cw.SendReady(s.tx.status()))
	}
	s.skipping = true
	return nil
}

// refusedSQL is what pgrouter sends a server in place of a statement it
// refuses: it fails to parse, which aborts the server's transaction exactly
// as the refused statement's own error would have.
const refusedSQL = "pgrouter refused this statement"

// failInBand sends the linked server something that fails where the refused
// message stood (a Query for a Query, an unnamed Parse for an extended
// message), swallows the server's error and reports e in its place.
func (s *session) failInBand(e *Error, typ byte) error {
	c := s.server
	switch typ {
	case wire.Query, wire.FunctionCall, wire.Sync:
		s.unnamed.drop()
		c.Unnamed = 0
		_ = c.W.Send(&pgproto3.Query{String: refusedSQL})
		s.queue.push(request{kind: reqQuery, replace: e})
		s.batch = batchNone
		if err := s.exchange(); err != nil {
			return err
		}
		return s.afterRequest(0)
	}
	_ = c.W.Send(&pgproto3.Parse{Query: refusedSQL})
	s.queue.push(request{kind: reqParse, internal: true, unnamed: true, prevUnnamed: c.Unnamed, replace: e})
	c.Unnamed = 0
	s.batch.send()
	s.skipping = true // the server skips to Sync now, and so does the client's batch
	return s.pushServer()
}

// link makes sure a server of the destination shard (s.dest, else any
// shard) is linked. A session-mode client between transactions switches to
// its server on that shard; the pin of an unpinned transaction is queued.
func (s *session) link() error {
	dest := s.dest
	if s.server != nil {
		if dest == nil || s.server.Shard() == dest.Name {
			if s.tx.unpinned() && !s.noPin {
				if s.batch != batchNone { // the pin's BEGIN goes between requests
					if err := s.endBatch(); err != nil {
						return err
					}
				}
				return s.pin()
			}
			return nil
		}
		switch {
		case s.movable():
			if err := s.detach(); err != nil {
				return err
			}
		case s.switchable():
			s.park()
		default: // place refuses this; never send to the wrong shard
			return errorf(sqlstate.FeatureNotSupported, "pgrouter: this transaction runs on shard %s, not %s", s.server.Shard(), dest.Name)
		}
	}
	if dest == nil {
		dest = s.anyShard()
	}
	c := s.parked[dest.Name]
	if c != nil {
		delete(s.parked, dest.Name)
	} else {
		p, err := s.poolFor(dest)
		if err != nil {
			return err
		}
		s.waiting.Store(true)
		c, err = p.Acquire(s.srv.ctx, s.waitTimeout)
		s.waiting.Store(false)
		if err != nil {
			return err
		}
		// A reload while we waited (a PAUSE, then a partition move, then
		// RESUME) may have given the statement's key to another shard.
		// Nothing of the transaction has run yet, so refuse rather than run
		// it on a shard that may no longer own its rows.
		if g := s.srv.gen.Load(); g != s.gen && !sameRouting(s.gen, g, s.cluster.Name, dest.Name) {
			p.Release(c)
			return pool.ErrRetired
		}
	}
	c.SetHolder(s.id)
	s.mu.Lock()
	s.linked = c
	s.mu.Unlock()
	s.server = c
	if err := s.applySettings(); err != nil {
		s.unlink()
		return err
	}
	if s.tx.unpinned() && !s.noPin {
		return s.pin()
	}
	return nil
}

// poolFor returns the pool of the client's user on a shard.
func (s *session) poolFor(sh *shardmap.Shard) (*pool.Pool, error) {
	p := s.pools[sh.Name]
	if p == nil {
		var err error
		if p, err = s.srv.pools.Get(sh, s.user); err != nil {
			return nil, err
		}
		s.pools[sh.Name] = p
	}
	return p, nil
}

// unlink hands the linked server back to its pool. The caller has made sure
// it is clean, or marked it broken.
func (s *session) unlink() {
	c := s.server
	if c == nil {
		return
	}
	s.mu.Lock()
	s.linked = nil
	s.mu.Unlock()
	s.server = nil
	c.Pool().Release(c)
}

// afterRequest runs once a request (a Query, FunctionCall or batch up to
// Sync) is fully answered: it mirrors what the request did, enforces
// statement mode, and releases the server when the mode allows.
func (s *session) afterRequest(eff effects) error {
	if err := s.applyEffects(eff); err != nil {
		return err
	}
	if err := s.settle(); err != nil {
		return err
	}
	if s.stmtViolation {
		if err := s.refuseTransaction(); err != nil {
			return err
		}
	}
	s.dest = nil
	if len(s.portals) > 0 && s.tx == txIdle && s.queue.empty() && s.batch == batchNone {
		s.endPortals() // the transaction that held them ended, and they with it
	}
	s.maybeRelease()
	return nil
}

// maybeRelease returns the server to the pool in transaction and statement
// mode once the client is outside a transaction with nothing outstanding.
func (s *session) maybeRelease() {
	if s.server != nil && s.mode.Shared() && s.quiet() {
		s.unlink()
	}
}
