package proxy

import (
	"bytes"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgrouter/pgrouter/pool"
	"github.com/pgrouter/pgrouter/router"
	"github.com/pgrouter/pgrouter/shardmap"
	"github.com/pgrouter/pgrouter/sqlstate"
	"github.com/pgrouter/pgrouter/wire"
)

// Fan-out: a call of a run_on all function runs once on every shard of the
// cluster, in parallel, each on its own server connection taken from that
// shard's pool for the duration of the statement. The client gets one
// result: the first shard's RowDescription, every shard's rows in shard
// order (or one row reduced by the function's merge) and a CommandComplete
// with the total. A failure on any shard fails the statement; its error
// keeps its SQLSTATE and names the shard. Fan-outs run outside
// transactions only, so nothing partial is ever left open on a shard.

// fanBatch is an extended-protocol run_on all call between its Bind and the
// Sync that ends its pipeline.
type fanBatch struct {
	call     *router.Call
	split    *router.Split // a split call's shards and their elements; nil for run_on all
	bind     []byte        // the client's Bind message body
	portal   string
	describe bool  // Describe of the portal was sent
	execute  bool  // Execute of the portal was sent
	limit    int64 // the Execute's row limit (0: all)
}

// fanError sends the client a fan-out's error; in an unpinned transaction
// it aborts the transaction, as any error would.
func (s *session) fanError(msg pgproto3.BackendMessage) error {
	s.reqFailed = true
	return clientIO(s.cw.Send(msg))
}

// fanDone ends a fan-out request with ReadyForQuery.
func (s *session) fanDone() error {
	if s.reqFailed {
		s.abortUnpinned()
	}
	s.reqFailed = false
	return clientIO(s.cw.SendReady(s.tx.status()))
}

// runOnAll sends every shard what write puts on its connection (ending with
// Query or Sync) and streams the replies up to ReadyForQuery into f as
// they arrive, so memory stays bounded whatever the shards return. In an
// unpinned transaction each shard runs it in a READ ONLY transaction of its
// own (BEGIN READ ONLY before, COMMIT after), so a run_on all call there
// reads and never writes outside the client's transaction. Each shard
// runs on a server taken from its pool (or, in session mode, the one the
// client holds there: its session state is there, and taking a second one
// could wait on itself). While it runs, the servers are registered for
// cancel requests.
func (s *session) runOnAll(f *fanStream, split *router.Split, write func(i int, c *pool.Conn)) {
	shards := s.cluster.Shards
	if split != nil {
		shards = split.Shards
	}
	taken := make([]*pool.Conn, len(shards)) // servers to give back
	// server_read_timeout counts from the first statement sent until every
	// shard has answered (time waiting for a pool slot before that is
	// query_wait_timeout's).
	begin := sync.OnceFunc(s.waitBegin)
	wrap := s.tx.unpinned()
	var wg sync.WaitGroup
	for i, sh := range shards {
		// Found here, on the session's goroutine: poolFor fills the
		// session's pool cache, which the shards' goroutines must not.
		at, err := s.fanPlaceOf(sh)
		if err != nil {
			f.lost(sh, err)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, took, err := s.fanServer(at)
			if took {
				taken[i] = c
			}
			if err != nil {
				f.lost(sh, err)
				return
			}
			// Registered for cancel requests and the watchdog; one acquired
			// after server_read_timeout fired is closed like the others.
			s.mu.Lock()
			s.fanConns = append(s.fanConns, c)
			if s.readExpired.Load() {
				c.MarkInterrupted()
				c.CloseSocket()
			}
			s.mu.Unlock()
			begin()
			if wrap {
				_ = c.W.Send(&pgproto3.Query{String: "BEGIN READ ONLY"})
			}
			write(i, c)
			if wrap {
				_ = c.W.Send(&pgproto3.Query{String: "COMMIT"})
				c.Unnamed = 0
			}
			if err := c.W.Flush(); err != nil {
				c.MarkBroken()
				f.lost(sh, err)
				return
			}
			if err := f.read(c, sh, wrap); err != nil {
				if c.Interrupted() { // server_read_timeout closed it
					err = s.readTimeoutError(sh.Name, false)
				}
				f.lost(sh, err)
			}
			s.dropFanConn(c) // answered: a timeout of the others must not close it
		}()
	}
	wg.Wait()
	s.waitEnd()
	s.mu.Lock()
	s.fanConns = nil
	s.mu.Unlock()
	for _, c := range taken {
		if c != nil {
			c.Pool().Release(c)
		}
	}
}

// shardNames lists shards' names for messages.
func shardNames(shards []*shardmap.Shard) string {
	names := make([]string, len(shards))
	for i, sh := range shards {
		names[i] = sh.Name
	}
	return strings.Join(names, ", ")
}

// fanPlace is where a fan-out runs on one shard: the idle server a
// session-mode client holds there, else the pool of the client's user.
type fanPlace struct {
	held *pool.Conn
	pool *pool.Pool
}

// fanPlaceOf finds a shard's fanPlace; it runs on the session's goroutine.
func (s *session) fanPlaceOf(sh *shardmap.Shard) (fanPlace, error) {
	if c := s.heldOn(sh); c != nil {
		return fanPlace{held: c}, nil
	}
	p, err := s.poolFor(sh)
	return fanPlace{pool: p}, err
}

// fanServer returns the server a fan-out uses at a fanPlace: the held one,
// else one taken from the pool (took: it goes back to the pool after the
// fan-out, even when err says its settings could not be synced). It may
// run on the shards' goroutines.
func (s *session) fanServer(at fanPlace) (c *pool.Conn, took bool, err error) {
	if at.held != nil {
		return at.held, false, nil
	}
	p := at.pool
	if c, err = p.Acquire(s.srv.ctx, s.waitTimeout); err != nil {
		return nil, false, err
	}
	c.SetHolder(s.id)
	if err := s.syncSettings(c); err != nil {
		c.MarkBroken()
		return c, true, err
	}
	return c, true, nil
}

// heldOn returns the idle server a session-mode client holds on a shard.
func (s *session) heldOn(sh *shardmap.Shard) *pool.Conn {
	if s.mode.Shared() {
		return nil
	}
	if s.server != nil && s.server.Shard() == sh.Name {
		return s.server
	}
	return s.parked[sh.Name]
}

// dropFanConn takes a server that has answered its part of a fan-out off
// the list that cancel requests and the watchdog act on.
func (s *session) dropFanConn(c *pool.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, x := range s.fanConns {
		if x == c {
			s.fanConns = append(s.fanConns[:i], s.fanConns[i+1:]...)
			return
		}
	}
}

// fanoutQuery runs a simple Query that calls a run_on all function, or a
// split function whose elements belong to several shards.
func (s *session) fanoutQuery(m wire.Message, plan *router.Plan, route *router.Route) error {
	call, split := route.Call, route.Split
	if !router.Single(plan.SQL, s.standardStrings()) {
		return errorf(sqlstate.FeatureNotSupported, "pgrouter: %s runs on several shards and must be the only statement of its query", call.Fn.FullName())
	}
	f := s.newFanStream(call, nil)
	s.runOnAll(f, split, func(i int, c *pool.Conn) {
		if split != nil && split.SQL != nil {
			_ = c.W.Send(&pgproto3.Query{String: split.SQL[i]})
		} else {
			_ = c.W.Write(m.Raw)
		}
		c.Unnamed = 0
	})
	s.reqStart = time.Time{}
	if err := f.finish(); err != nil {
		return err
	}
	return s.fanDone()
}

// startFanout begins an extended-protocol run_on all call at its Bind (the
// last held message): what was held before it runs on any shard, and the
// call waits for its Sync.
func (s *session) startFanout(route *router.Route) error {
	n := len(s.held.ends)
	start := 0
	if n > 1 {
		start = s.held.ends[n-2]
	}
	bind := bytes.Clone(s.held.buf[start+wire.HeaderLen : s.held.ends[n-1]])
	s.held.ends = s.held.ends[:n-1]
	s.held.buf = s.held.buf[:start]
	portal, _, _ := wire.CString(bind)
	if !s.held.empty() {
		// A Parse (and Describe) of the call before its Bind, as
		// node-postgres and asyncpg send, prepares on any shard; in an
		// unpinned transaction that must not pin it (replaySoft).
		if err := s.replaySoft(); err != nil {
			return err
		}
	}
	s.batchErr = false
	s.fan = &fanBatch{call: route.Call, split: route.Split, bind: bind, portal: string(portal)}
	return nil
}

// fanMessage takes the messages after a run_on all Bind up to Sync.
func (s *session) fanMessage(m wire.Message) error {
	f := s.fan
	body := m.Body()
	switch m.Type {
	case wire.Describe:
		if d, err := wire.ReadTarget(m.Type, body); err == nil && d.Kind == 'P' && string(d.Name) == f.portal && !f.execute {
			f.describe = true
			return nil
		}
	case wire.Execute:
		if e, err := wire.ReadExecute(body); err == nil && string(e.Portal) == f.portal && !f.execute {
			// A row limit (asyncpg's fetchval and fetchrow ask for 1) returns
			// that many rows and PortalSuspended; the rest are not kept:
			// the portal ends with the pipeline's Sync.
			f.limit = e.MaxRows
			f.execute = true
			return nil
		}
	case wire.Flush:
		return nil // everything is answered at Sync
	case wire.Sync:
		return s.finishFanout(m)
	}
	s.fan = nil
	return s.fail(errorf(sqlstate.FeatureNotSupported, "pgrouter: %s runs on all shards and must be alone in its pipeline (Bind, Describe, Execute, Sync)", f.call.Fn.FullName()), m.Type)
}

// finishFanout runs an extended-protocol run_on all call at its Sync.
func (s *session) finishFanout(sync wire.Message) error {
	f := s.fan
	s.fan = nil
	s.batch = batchNone
	if s.server != nil { // the pipeline's earlier messages ran on one shard: finish them first
		c := s.server
		_ = c.W.Write(sync.Raw)
		s.queue.push(request{kind: reqSync, internal: true})
		if err := s.exchange(); err != nil {
			return err
		}
		if err := s.afterRequest(0); err != nil {
			return err
		}
		if s.batchErr {
			s.batchErr = false
			return clientIO(s.cw.SendReady(s.tx.status()))
		}
	}
	bind, err := wire.ReadBind(f.bind)
	if err != nil {
		return malformed(err)
	}
	def, err := s.definition(bind.Statement)
	if err != nil {
		if err := s.fanError(toError(err).response()); err != nil {
			return err
		}
		return s.fanDone()
	}
	reduce := f.call.Fn.Merge != shardmap.MergeConcat
	if f.execute && f.limit > 0 && !reduce && s.tx != txIdle {
		// The portal outlives the Sync: the client may fetch the rest.
		if err := s.startCursor(f, def, bind, f.limit); err != nil {
			return err
		}
		s.reqStart = time.Time{}
		return s.fanDone()
	}
	shape := &fanShape{describe: f.describe, execute: f.execute, limit: f.limit, formats: bind.ResultFormats()}
	fs := s.newFanStream(f.call, shape)
	split := f.split
	s.runOnAll(fs, split, func(i int, c *pool.Conn) {
		w := c.W
		start := w.Begin(wire.Parse)
		w.AppendByte(0)
		if split != nil && split.SQL != nil { // the query with this shard's elements, then the parameter types
			_, types, _ := wire.CString(def)
			w.AppendString(split.SQL[i])
			w.AppendByte(0)
			w.AppendBytes(types)
		} else {
			w.AppendBytes(def)
		}
		_ = w.End(start)
		start = w.Begin(wire.Bind)
		w.AppendByte(0)
		w.AppendByte(0)
		if split != nil && split.Params != nil {
			w.AppendBytes(split.Params[i])
		} else {
			w.AppendBytes(bind.Params)
		}
		if reduce { // reduce text values; the result is encoded as the client asked
			w.AppendBytes([]byte{0, 0})
		} else {
			w.AppendBytes(bind.Results)
		}
		_ = w.End(start)
		if f.describe || reduce {
			start = w.Begin(wire.Describe)
			w.AppendByte('P')
			w.AppendByte(0)
			_ = w.End(start)
		}
		if f.execute {
			start = w.Begin(wire.Execute)
			w.AppendByte(0)
			w.AppendBytes([]byte{0, 0, 0, 0})
			_ = w.End(start)
		}
		_ = w.Write(sync.Raw)
		c.Unnamed = 0
	})
	s.reqStart = time.Time{}
	if err := fs.finish(); err != nil {
		return err
	}
	return s.fanDone()
}

// definition returns the Parse definition (query, parameter types) of a
// client's statement.
func (s *session) definition(name []byte) ([]byte, error) {
	if len(name) == 0 {
		if !s.unnamed.valid {
			return nil, errorf(sqlstate.InvalidStatementName, "unnamed prepared statement does not exist")
		}
		_, def, _ := wire.CString(s.unnamed.raw[wire.HeaderLen:])
		return def, nil
	}
	st := s.stmts[string(name)]
	if st == nil {
		return nil, errorf(sqlstate.InvalidStatementName, "prepared statement %q does not exist", name)
	}
	_, def, _ := wire.CString(st.parseBody)
	return def, nil
}

// splitTag splits a CommandComplete tag that ends in a row count ("SELECT
// 42") into the part before the count and the count.
func splitTag(body []byte) (prefix []byte, n int64, ok bool) {
	tag := trimNUL(body)
	i := bytes.LastIndexByte(tag, ' ')
	if i < 0 {
		return nil, 0, false
	}
	n, err := strconv.ParseInt(string(tag[i+1:]), 10, 64)
	if err != nil {
		return nil, 0, false
	}
	return tag[:i+1], n, true
}
