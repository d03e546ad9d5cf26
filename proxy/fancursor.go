package proxy

import (
	"bytes"
	"context"
	"strconv"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgrouter/pgrouter/pool"
	"github.com/pgrouter/pgrouter/router"
	"github.com/pgrouter/pgrouter/shardmap"
	"github.com/pgrouter/pgrouter/sqlstate"
	"github.com/pgrouter/pgrouter/wire"
)

// fanCursor is a fan-out's portal that an Execute with a row limit
// suspended inside a transaction, as JDBC's setFetchSize and asyncpg's
// cursors leave one: the client fetches the rest with more Executes, after
// Syncs, until the rows end. PostgreSQL keeps such a portal until the
// transaction ends; pgrouter keeps one shard's at a time: the shards are
// read one after another, each from a portal of its own in a READ ONLY
// transaction on a server the session holds until that shard's rows end,
// so the client gets the rows in shard order, never more than it asked
// for, and the router holds none of them.
//
// The cursor lives until its rows end, the client closes the portal, or
// the client sends anything else (another statement, COMMIT, ROLLBACK):
// then the held server's transaction ends and a later Execute of the
// portal gets 34000, where PostgreSQL would still have it. Drivers that
// fetch in a loop (JDBC, asyncpg) send nothing else meanwhile.
type fanCursor struct {
	portal  string
	call    *router.Call
	split   *router.Split
	shards  []*shardmap.Shard
	def     []byte // the client's statement: query, then parameter types
	params  []byte // the client's Bind parameters (unless split gives each shard's)
	results []byte // the Bind's result formats
	// describe: the client asked for the portal's RowDescription; sent once.
	describe, sentDesc bool
	next               int        // the shard whose portal is open (conn), or is opened next
	conn               *pool.Conn // the server holding shards[next]'s portal; nil between shards
	held               bool       // conn is the session-mode client's own server
	tag                []byte     // the first shard's CommandComplete tag
}

// startCursor begins a fan-out whose Execute has a row limit inside a
// transaction (finishFanout): the client's Bind is answered here, and the
// first rows fetched.
func (s *session) startCursor(f *fanBatch, def []byte, bind wire.BindMsg, limit int64) error {
	shards := s.cluster.Shards
	if f.split != nil {
		shards = f.split.Shards
	}
	s.cursor = &fanCursor{portal: f.portal, call: f.call, split: f.split, shards: shards, def: bytes.Clone(def),
		params: bytes.Clone(bind.Params), results: bytes.Clone(bind.Results), describe: f.describe}
	_ = s.cw.Send(&pgproto3.BindComplete{})
	return s.cursorExecute(limit)
}

// cursorMessage takes a client message while a cursor is open. It handles
// the cursor's Executes and Close, and the Syncs and Flushes between them;
// anything else ends the cursor first and is handled as usual.
func (s *session) cursorMessage(m wire.Message) (bool, error) {
	cur := s.cursor
	switch m.Type {
	case wire.Execute:
		if e, err := wire.ReadExecute(m.Body()); err == nil && string(e.Portal) == cur.portal {
			if err := s.cursorExecute(e.MaxRows); err != nil {
				return true, err
			}
			if s.reqFailed {
				// As any error of an extended message: the transaction is
				// aborted, the rest of the batch discarded up to Sync.
				s.reqFailed = false
				s.abortUnpinned()
				s.skipping = true
			}
			return true, nil
		}
	case wire.Close:
		if c, err := wire.ReadTarget(m.Type, m.Body()); err == nil && c.Kind == 'P' && string(c.Name) == cur.portal {
			s.closeCursor()
			return true, clientIO(s.cw.SendEmpty(wire.CloseComplete))
		}
	case wire.Sync:
		return true, s.fanDone()
	case wire.Flush:
		return true, clientIO(s.cw.Flush())
	}
	s.closeCursor()
	return false, nil
}

// cursorExecute sends the client up to limit rows (0: all the rest), from
// as many shards as it takes, then PortalSuspended, or CommandComplete
// with the total once every shard's rows have ended.
func (s *session) cursorExecute(limit int64) error {
	cur := s.cursor
	var got int64
	for {
		if cur.next >= len(cur.shards) {
			// As PostgreSQL: the tag counts this Execute's rows, and an
			// ended portal executed again reports 0.
			tag := []byte("SELECT ")
			if cur.tag != nil {
				if prefix, _, ok := splitTag(cur.tag); ok {
					tag = bytes.Clone(prefix)
				}
			}
			return clientIO(s.cw.Send(&pgproto3.CommandComplete{CommandTag: strconv.AppendInt(tag, got, 10)}))
		}
		if limit > 0 && got == limit {
			return clientIO(s.cw.SendEmpty(wire.PortalSuspended))
		}
		want := int64(0)
		if limit > 0 {
			want = limit - got
		}
		n, ended, err := s.cursorFetch(cur, want)
		got += n
		if err != nil {
			s.closeCursor()
			if f, ok := err.(shardFailure); ok {
				return s.fanError(f.resp) // the shard's error, every field kept
			}
			return s.fanError(toError(err).response())
		}
		if !ended {
			return clientIO(s.cw.SendEmpty(wire.PortalSuspended))
		}
	}
}

// cursorFetch asks the open shard (opening the next one first if none is)
// for up to want rows (0: all) and forwards them. ended reports that the
// shard's rows have ended: its server is then given back.
func (s *session) cursorFetch(cur *fanCursor, want int64) (n int64, ended bool, err error) {
	sh := cur.shards[cur.next]
	if cur.conn == nil {
		if err := s.openCursorShard(cur, sh); err != nil {
			return 0, false, err
		}
	}
	c := cur.conn
	w := c.W
	start := w.Begin(wire.Execute)
	w.AppendByte(0)
	w.AppendBytes([]byte{byte(want >> 24), byte(want >> 16), byte(want >> 8), byte(want)})
	_ = w.End(start)
	_ = w.SendEmpty(wire.Sync)
	if err := w.Flush(); err != nil {
		c.MarkBroken()
		return 0, false, errorf(sqlstate.ConnectionFailure, "pgrouter: lost the connection to shard %s while running %s", sh.Name, cur.call.Fn.FullName()).because(err)
	}
	s.mu.Lock()
	s.fanConns = append(s.fanConns, c)
	s.mu.Unlock()
	s.waitBegin()
	var failure *pgproto3.ErrorResponse
	perr := pump(c, 0, func() { _ = s.cw.Flush() }, func(m wire.Message) {
		if err != nil || failure != nil {
			return
		}
		switch m.Type {
		case wire.ErrorResponse:
			failure = &pgproto3.ErrorResponse{}
			_ = failure.Decode(m.Body())
			failure.Message = "shard " + sh.Name + ": " + failure.Message
		case wire.RowDescription:
			if cur.describe && !cur.sentDesc {
				cur.sentDesc = true
				err = s.forward(m)
			}
		case wire.DataRow:
			n++
			err = s.forward(m)
		case wire.NoticeResponse:
			err = s.forward(m)
		case wire.PortalSuspended:
		case wire.CommandComplete:
			ended = true
			if cur.tag == nil {
				cur.tag = bytes.Clone(trimNUL(m.Body()))
			}
		}
	})
	s.waitEnd()
	s.dropFanConn(c)
	switch {
	case perr != nil:
		if c.Interrupted() {
			perr = s.readTimeoutError(sh.Name, false)
		}
		return n, false, errorf(sqlstate.ConnectionFailure, "pgrouter: lost the connection to shard %s while running %s", sh.Name, cur.call.Fn.FullName()).because(perr)
	case err != nil:
		return n, false, err
	case failure != nil:
		return n, false, shardFailure{failure}
	}
	if ended {
		s.endCursorShard(cur)
	}
	return n, ended, nil
}

// openCursorShard takes a server for the cursor's next shard and opens
// the portal there, in a READ ONLY transaction of its own.
func (s *session) openCursorShard(cur *fanCursor, sh *shardmap.Shard) error {
	at, err := s.fanPlaceOf(sh)
	if err != nil {
		return err
	}
	c, took, err := s.fanServer(at)
	if err != nil {
		if took {
			c.Pool().Release(c)
		}
		return err
	}
	cur.conn, cur.held = c, !took
	ctx, cancel := context.WithTimeout(s.srv.ctx, s.waitTimeout)
	_, err = c.Exec(ctx, "BEGIN READ ONLY")
	cancel()
	if err != nil {
		return err
	}
	w := c.W
	start := w.Begin(wire.Parse)
	w.AppendByte(0)
	if cur.split != nil && cur.split.SQL != nil {
		_, types, _ := wire.CString(cur.def)
		w.AppendString(cur.split.SQL[cur.next])
		w.AppendByte(0)
		w.AppendBytes(types)
	} else {
		w.AppendBytes(cur.def)
	}
	_ = w.End(start)
	c.Unnamed = 0
	start = w.Begin(wire.Bind)
	w.AppendByte(0)
	w.AppendByte(0)
	if cur.split != nil && cur.split.Params != nil {
		w.AppendBytes(cur.split.Params[cur.next])
	} else {
		w.AppendBytes(cur.params)
	}
	w.AppendBytes(cur.results)
	_ = w.End(start)
	if cur.describe && !cur.sentDesc {
		start = w.Begin(wire.Describe)
		w.AppendByte('P')
		w.AppendByte(0)
		_ = w.End(start)
	}
	return nil
}

// endCursorShard ends the open shard's READ ONLY transaction and gives its
// server back; the next fetch opens the next shard.
func (s *session) endCursorShard(cur *fanCursor) {
	c := cur.conn
	if c == nil {
		return
	}
	cur.conn = nil
	cur.next++
	if !c.Broken() {
		ctx, cancel := context.WithTimeout(s.srv.ctx, s.waitTimeout)
		if status, err := c.Exec(ctx, "ROLLBACK"); err != nil || status != wire.TxIdle {
			c.MarkBroken()
		}
		cancel()
	}
	if !cur.held {
		c.Pool().Release(c)
	}
}

// closeCursor ends an open cursor: its server, if it holds one, ends the
// portal's transaction and goes back.
func (s *session) closeCursor() {
	if cur := s.cursor; cur != nil {
		s.endCursorShard(cur)
		s.cursor = nil
	}
}

// shardFailure is a shard's ErrorResponse to a cursor's fetch.
type shardFailure struct{ resp *pgproto3.ErrorResponse }

func (f shardFailure) Error() string { return f.resp.Message }
