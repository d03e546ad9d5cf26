package proxy

import (
	"context"
	"fmt"
	"math/rand/v2"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgrouter/pgrouter/config"
	"github.com/pgrouter/pgrouter/pool"
	"github.com/pgrouter/pgrouter/router"
	"github.com/pgrouter/pgrouter/shardmap"
	"github.com/pgrouter/pgrouter/sqlstate"
	"github.com/pgrouter/pgrouter/wire"
)

// Routing in the session.
//
// A statement's shard is known from its text and, for the extended
// protocol, from its Bind parameters. So a pipeline's messages are held
// (copied, unanswered) until a Bind names its shard, or until Sync or Flush
// ends the pipeline without one; then they are replayed through the normal
// handlers on a server of that shard. Parse and Describe before any Bind may
// run on any shard: every shard has the same schema.
//
// A transaction is pinned to the shard of its first routed statement; until
// then it exists only in pgrouter (see transaction.go for the states and the
// rules, in whatever protocol the driver sends them).

// holdLimit bounds the bytes of a pipeline held before its shard is known;
// past it the pipeline is placed as if it had ended there.
const holdLimit = 1 << 20

// hold is a pipeline's messages waiting for their shard.
type hold struct {
	buf    []byte
	ends   []int // end offset of each message in buf
	parsed []heldParse
	// executes counts held Execute messages.
	executes int
	// pinning: a held Bind is of a statement that would pin an unpinned
	// transaction (one that is not router.Plan.Free).
	pinning bool
}

// heldParse is a held Parse's statement name and plan, for a later Bind of
// that statement in the same pipeline.
type heldParse struct {
	name string
	plan *router.Plan
}

func (h *hold) empty() bool { return len(h.ends) == 0 }

func (h *hold) add(raw []byte) {
	h.buf = append(h.buf, raw...)
	h.ends = append(h.ends, len(h.buf))
}

func (h *hold) reset() {
	h.buf = h.buf[:0]
	h.ends = h.ends[:0]
	h.parsed = h.parsed[:0]
	h.executes = 0
	h.pinning = false
	if cap(h.buf) > 4*holdLimit {
		h.buf = nil
	}
}

// planOf returns a statement's plan, planning its Parse body again only if
// there is none yet or the function catalog changed since.
func (s *session) planOf(p *router.Plan, parseBody []byte) *router.Plan {
	if p != nil && !s.router.Stale(p) {
		return p
	}
	_, def, _ := wire.CString(parseBody)
	q, _, _ := wire.CString(def)
	return s.router.PlanBytes(q, s.standardStrings())
}

// stmtPlan returns the plan of the statement a Bind names, or nil when the
// client has no such statement (the server will say so).
func (s *session) stmtPlan(name []byte) *router.Plan {
	for i := len(s.held.parsed) - 1; i >= 0; i-- {
		if s.held.parsed[i].name == string(name) {
			return s.held.parsed[i].plan
		}
	}
	if len(name) == 0 {
		if !s.unnamed.valid {
			return nil
		}
		s.unnamed.plan = s.planOf(s.unnamed.plan, s.unnamed.raw[wire.HeaderLen:])
		return s.unnamed.plan
	}
	st := s.stmts[string(name)]
	if st == nil {
		return nil
	}
	st.plan = s.planOf(st.plan, st.parseBody)
	return st.plan
}

// pinned returns the shard the session's current transaction or pipeline
// is bound to, or nil.
func (s *session) pinned() *shardmap.Shard {
	if s.server == nil || s.switchable() || s.movable() {
		return nil
	}
	sh, _ := s.cluster.ShardNamed(s.server.Shard())
	return sh
}

// readOnlyTx reports a transaction the client began READ ONLY (BEGIN READ
// ONLY, START TRANSACTION ... READ ONLY): its reads may run on a replica.
func (s *session) readOnlyTx() bool { return s.tx != txIdle && s.txReadOnly }

// place decides where a statement runs: one shard, or several for a
// fan-out (fan is then the route: a run_on all call, or a split call whose
// elements belong to several shards).
func (s *session) place(p *router.Plan, params wire.BindMsg) (*shardmap.Shard, *router.Route, error) {
	if g := s.srv.gen.Load(); g != s.gen && (s.atBoundary() || (s.tx == txIdle && s.movable())) {
		// A reload since this request began (a partition move's cut-over
		// reloads the routers): route by the map in force, not the one the
		// request's first message saw.
		if err := s.adopt(g); err != nil {
			return nil, nil, err
		}
	}
	route, rerr := s.router.Route(p, params)
	if rerr != nil {
		return nil, nil, &Error{Code: rerr.Code, Message: rerr.Message, Hint: rerr.Hint}
	}
	pinned := s.pinned()
	var sh *shardmap.Shard
	switch route.Target {
	case router.TargetAll, router.TargetSplit:
		where := "all shards"
		if route.Target == router.TargetSplit {
			where = "several shards (its split elements belong to " + shardNames(route.Split.Shards) + ")"
		}
		switch {
		case s.tx.onServer():
			return nil, nil, errorf(sqlstate.FeatureNotSupported, "pgrouter: %s runs on %s and cannot run inside a transaction that already runs on shard %s", route.Call.Fn.FullName(), where, s.server.Shard()).
				WithHint("Call it before the transaction's first statement that chooses a shard, or outside BEGIN ... COMMIT.")
		case pinned != nil || (s.batch != batchNone && !s.movable()):
			return nil, nil, errorf(sqlstate.FeatureNotSupported, "pgrouter: %s runs on %s and must be alone in its pipeline", route.Call.Fn.FullName(), where).
				WithHint("Send a Sync before and after it.")
		case route.Target == router.TargetSplit && s.tx != txIdle && !route.Call.Fn.ReadOnly:
			// Each shard commits its part on its own: inside the client's
			// transaction that would not be atomic, and a ROLLBACK would
			// not undo it. (Declared read_only, it reads in a READ ONLY
			// transaction per shard, as a run_on all call does.)
			return nil, nil, errorf(sqlstate.FeatureNotSupported, "pgrouter: %s runs on %s, each committing its part, so it cannot run inside a transaction", route.Call.Fn.FullName(), where).
				WithHint("Call it outside BEGIN ... COMMIT, split the call per shard, or declare the function read_only if it only reads.")
		}
		return nil, &route, nil
	case router.TargetShard:
		sh = route.Shard
		if route.ReadOnly && s.target != "primary" && pinned == nil && (s.tx == txIdle || s.readOnlyTx()) {
			r := s.srv.replicaFor(sh)
			if r != nil {
				sh = r // the partition check below concerns writes, which never come here
				break
			}
			if s.target == "replica" {
				return nil, nil, errorf(sqlstate.CannotConnectNow, "pgrouter: no replica of shard %s can serve reads now (up, a standby, within max_replica_lag)", sh.Name).
					WithHint("SHOW SHARDS shows the replicas' state and replay lag; SET pgrouter.target = auto lets the primary serve reads when no replica can.")
			}
		}
		if route.Partition < 0 {
			break
		}
		if done := s.srv.partitionWait(s.cluster.Name, route.Partition); done != nil {
			if err := s.awaitPartition(done, route.Partition); err != nil {
				return nil, nil, err
			}
			if s.srv.gen.Load() != s.gen {
				// The move reloaded the map before resuming: place again
				// (which adopts it), unless the statement is part of a
				// transaction already running on the old owner, whose guard
				// refuses it anyway.
				if !s.atBoundary() && (s.tx != txIdle || !s.movable()) {
					return nil, nil, errorf(sqlstate.SerializationFailure, "pgrouter: partition %d of cluster %s moved to another shard while this statement waited; retry the transaction", route.Partition, s.cluster.Name).
						WithHint("The transaction began on the partition's old shard; a retry runs on the new one.")
				}
				return s.place(p, params)
			}
		}
	default:
		var err error
		if sh, err = s.unrouted(p, route.Target == router.TargetAny, pinned); err != nil {
			return nil, nil, err
		}
	}
	if pinned != nil && sh != pinned && pinned.Primary == sh && s.readOnlyTx() {
		sh = pinned // a READ ONLY transaction that began on a replica stays there
	}
	if pinned != nil && sh != pinned {
		what := "transaction"
		if s.tx == txIdle {
			what = "pipeline"
		}
		return nil, nil, errorf(sqlstate.FeatureNotSupported, "pgrouter: this %s runs on shard %s; the statement belongs to shard %s", what, pinned.Name, sh.Name).
			WithHint("A transaction (or a pipeline up to Sync) must stay on one shard; split it per key.")
	}
	return sh, nil, nil
}

// unrouted places a statement that calls no routed function: an override
// first, then the pinned shard, then any shard for statements any shard can
// answer, then default_route.
func (s *session) unrouted(p *router.Plan, anyShard bool, pinned *shardmap.Shard) (*shardmap.Shard, error) {
	if p != nil && p.Override.Set {
		return s.overrideShard(p.Override.Shard, p.Override.Key)
	}
	if s.overShard != "" || s.overKey != "" {
		return s.overrideShard(s.overShard, s.overKey)
	}
	if pinned != nil {
		return pinned, nil
	}
	if anyShard {
		return s.anyShard(), nil
	}
	switch s.cluster.Default.Kind {
	case shardmap.RouteShard:
		if s.gen.cfg.DefaultRouteNotice {
			s.noticeDefaultRoute(s.cluster.Default.Shard)
		}
		return s.cluster.Default.Shard, nil
	case shardmap.RouteAny:
		return s.anyShard(), nil
	}
	if p != nil && p.Undeclared != "" {
		return nil, errorf(sqlstate.FeatureNotSupported, "pgrouter: cannot route this statement: function %s is not declared in router.yaml, and default_route is %q", p.Undeclared, config.RouteError).
			WithHint("Declare %s under functions: in router.yaml and RELOAD (SHOW FUNCTIONS lists the declared ones: a misspelled name there leaves calls unrouted), or name a shard with SET pgrouter.shard or /* pgrouter: shard=NAME */.", p.Undeclared)
	}
	return nil, errorf(sqlstate.FeatureNotSupported, "pgrouter: cannot route this statement: it calls no routed function and default_route is %q", config.RouteError).
		WithHint("Call a function declared in router.yaml, name a shard with SET pgrouter.shard or /* pgrouter: shard=NAME */, or set default_route.")
}

// noticeDefaultRoute tells the client that a statement ran on the default
// route's shard only (default_route_notice).
func (s *session) noticeDefaultRoute(sh *shardmap.Shard) {
	_ = s.cw.Send(&pgproto3.NoticeResponse{Severity: "NOTICE", SeverityUnlocalized: "NOTICE", Code: sqlstate.SuccessfulCompletion,
		Message: fmt.Sprintf("pgrouter: this statement calls no routed function: it runs on shard %s (default_route) and sees only that shard's rows", sh.Name),
		Hint:    "Call a function declared in router.yaml to reach the shard that owns a key, or a run_on: all function for every shard; default_route_notice: false silences this."})
}

// anyShard picks a shard for a statement any shard can run (a driver
// preparing a statement): the server the session holds, else the shard the
// session's override names, else the default route's shard unless the
// health checks report it down, else a random shard that is up. So
// preparing statements keeps working while the default shard is down.
func (s *session) anyShard() *shardmap.Shard {
	if s.server != nil {
		if sh, ok := s.cluster.ShardNamed(s.server.Shard()); ok {
			return sh
		}
	}
	if s.overShard != "" || s.overKey != "" { // where the client's statements go: it may be the only shard up
		if sh, err := s.overrideShard(s.overShard, s.overKey); err == nil {
			return sh
		}
	}
	if d := s.cluster.Default; d.Kind == shardmap.RouteShard && !s.srv.pools.Down(d.Shard.Name) {
		return d.Shard
	}
	return pickUp(s.cluster.Shards, s.srv.pools.Down)
}

// pickUp picks a random shard that the health checks do not report down
// (any shard when all are).
func pickUp(shards []*shardmap.Shard, down func(string) bool) *shardmap.Shard {
	start := rand.IntN(len(shards))
	for i := range shards {
		if sh := shards[(start+i)%len(shards)]; !down(sh.Name) {
			return sh
		}
	}
	return shards[start]
}

// holding reports whether an extended-protocol message must wait for its
// pipeline's shard.
func (s *session) holding() bool {
	// A single shard with replicas holds too: a read_only call may go to one.
	return (len(s.cluster.Shards) > 1 || s.cluster.HasReplicas()) && !s.replaying && s.fan == nil && (s.server == nil || s.switchable())
}

// holdMessage keeps an extended-protocol message until its pipeline's
// shard is known, and replays the pipeline once it is.
func (s *session) holdMessage(m wire.Message) error {
	s.held.add(m.Raw)
	switch m.Type {
	case wire.Parse:
		msg, err := wire.ReadParse(m.Body())
		if err != nil {
			return malformed(err)
		}
		s.held.parsed = append(s.held.parsed, heldParse{name: string(msg.Name), plan: s.router.PlanBytes(msg.Query, s.standardStrings())})
	case wire.Bind:
		msg, err := wire.ReadBind(m.Body())
		if err != nil {
			return malformed(err)
		}
		p := s.stmtPlan(msg.Statement)
		if p == nil {
			break // no such statement: any shard will say so
		}
		if p.Free {
			break // runs anywhere: a later Bind may still name the pipeline's shard
		}
		s.held.pinning = true
		switch p.Command.Kind {
		case router.CmdBegin, router.CmdCommit, router.CmdRollback, router.CmdSets, router.CmdSavepoint:
			// Transaction control and SETs go where the pipeline's statements go.
			if len(s.held.buf) > holdLimit {
				return s.replaySoft()
			}
			return nil
		}
		sh, all, err := s.place(p, msg)
		switch {
		case err != nil:
			// The messages before this Bind run anywhere; the Bind fails.
			return s.replay(s.anyShard(), err)
		case all != nil:
			return s.startFanout(all)
		case sh != nil:
			return s.replay(sh, nil)
		}
	case wire.Execute:
		s.held.executes++
	case wire.Sync, wire.Flush:
		return s.replaySoft()
	}
	if len(s.held.buf) > holdLimit {
		return s.replaySoft()
	}
	return nil
}

// replaySoft runs a pipeline that named no shard on any shard. Inside an
// unpinned transaction, a pipeline that executes nothing (a driver preparing
// a statement: Parse, Describe, Sync) or only statements that need no shard
// does not pin the transaction.
func (s *session) replaySoft() error {
	s.noPin = s.held.executes == 0 || !s.held.pinning
	defer func() { s.noPin = false }()
	return s.replay(s.anyShard(), nil)
}

// replay runs the held messages on a server of shard sh. With failAt set,
// the last held message (a Bind) is not run but fails with that error.
func (s *session) replay(sh *shardmap.Shard, failAt error) error {
	s.dest = sh
	if s.server != nil && s.server.Shard() != sh.Name {
		s.park()
	}
	s.replaying = true
	defer func() {
		s.replaying = false
		s.held.reset()
	}()
	start := 0
	n := len(s.held.ends)
	for i, end := range s.held.ends {
		raw := s.held.buf[start:end]
		start = end
		m := wire.Message{Type: raw[0], Raw: raw}
		if skip, _ := s.skipped(m); skip { // Terminate is never held
			continue
		}
		if i == n-1 && failAt != nil {
			return s.fail(failAt, m.Type)
		}
		if err := s.handle(m); err != nil {
			return err
		}
	}
	return nil
}

// park sets aside a session-mode client's idle server on one shard to use
// a server on another; the session keeps it for when it comes back.
func (s *session) park() {
	c := s.server
	s.mu.Lock()
	s.linked = nil
	s.mu.Unlock()
	s.server = nil
	if s.parked == nil {
		s.parked = map[string]*pool.Conn{}
	}
	s.parked[c.Shard()] = c
}

// pin starts the client's unpinned transaction on the server just linked:
// its BEGIN and the SETs made in it, in one round trip before anything of
// the client's is sent (if BEGIN failed, the client's statements must not
// run outside the transaction it asked for). A failure is the client's
// statement's error and leaves the transaction aborted; the server, back
// to idle, returns to the pool.
func (s *session) pin() error {
	c := s.server
	sql := s.beginSQL
	for _, p := range s.deferred {
		sql += "; " + p.SQL
	}
	ctx, cancel := context.WithTimeout(s.srv.ctx, s.waitTimeout)
	status, err := c.Exec(ctx, sql)
	cancel()
	if err == nil && status == wire.TxActive {
		for _, p := range s.deferred {
			info := planInfo(p)
			s.noteSettings(&info)
		}
		s.tx = txPinned // the server answered BEGIN with 'T'
		s.beginSQL = ""
		s.truncateDeferred(0)
		return nil
	}
	if c.Broken() {
		return s.serverLostBeforeUse(err)
	}
	if status != wire.TxIdle {
		ctx, cancel := context.WithTimeout(s.srv.ctx, resetTimeout)
		if st, rerr := c.Exec(ctx, "ROLLBACK"); rerr != nil || st != wire.TxIdle {
			c.MarkBroken()
		}
		cancel()
	}
	if s.mode.Shared() { // a session-mode server keeps the client's session state
		s.unlink()
	}
	if err == nil {
		err = errorf(sqlstate.ProtocolViolation, "pgrouter: %q did not open a transaction on shard %s", s.beginSQL, c.Shard())
	}
	return err
}
