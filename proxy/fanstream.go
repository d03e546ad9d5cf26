package proxy

import (
	"bytes"
	"fmt"
	"strconv"
	"sync"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgrouter/pgrouter/pool"
	"github.com/pgrouter/pgrouter/router"
	"github.com/pgrouter/pgrouter/shardmap"
	"github.com/pgrouter/pgrouter/sqlstate"
	"github.com/pgrouter/pgrouter/wire"
)

// mergeBufferLimit caps what a merged fan-out may hold before it reduces:
// a merge reads one small value per shard, and a function that returns
// more must not make the router hold it all (a 2M-row call once took
// 600 MB). Past it the call fails with 54000.
const mergeBufferLimit = 1 << 20

// fanShape is what the client asked of an extended-protocol fan-out.
type fanShape struct {
	describe, execute bool
	limit             int64    // the Execute's row limit (0: all)
	formats           []uint16 // the Bind's result format codes
}

// fanStream turns the shards' replies to a run_on all call into the one
// result the client sees, as they arrive: the shards' goroutines hand it
// their messages one at a time (under mu), and it writes them to the client
// at once, so a shard's rows are never held, and a slow client slows the
// shards (through TCP) rather than growing the router's memory. The first
// of each shard's BindComplete, RowDescription, NoData is forwarded, every
// DataRow and notice, and finish ends with a CommandComplete carrying the
// total. The first failure (an ErrorResponse or a lost shard) wins: it is
// what the client gets, and everything after it is read and dropped so the
// servers stay usable. A merge keeps only the values it reduces, up to
// mergeBufferLimit bytes.
type fanStream struct {
	s      *session
	call   *router.Call
	shape  *fanShape // nil: a simple Query
	reduce bool

	mu        sync.Mutex
	failure   *pgproto3.ErrorResponse // the first failure
	clientErr error                   // the client's socket failed
	sentBind  bool
	sentDesc  bool
	sentNone  bool // NoData or EmptyQueryResponse
	sent      int64
	suspended bool // the Execute's row limit was reached
	total     int64
	tag       []byte // the first CommandComplete's tag
	desc      []byte // merge: the first RowDescription's body
	values    [][]byte
	buffered  int
}

func (s *session) newFanStream(call *router.Call, shape *fanShape) *fanStream {
	return &fanStream{s: s, call: call, shape: shape, reduce: call.Fn.Merge != shardmap.MergeConcat}
}

// read takes a shard's replies up to its last ReadyForQuery. Wrapped in
// BEGIN READ ONLY and COMMIT, only the errors of those count.
func (f *fanStream) read(c *pool.Conn, sh *shardmap.Shard, wrapped bool) error {
	errorsOnly := func(m wire.Message) {
		if m.Type == wire.ErrorResponse {
			f.take(sh, m)
		}
	}
	take := func(m wire.Message) { f.take(sh, m) }
	if !wrapped {
		return pump(c, wire.TxIdle, f.flush, take)
	}
	if err := pump(c, 0, nil, errorsOnly); err != nil {
		return err
	}
	if err := pump(c, 0, f.flush, take); err != nil {
		return err
	}
	return pump(c, wire.TxIdle, nil, errorsOnly)
}

// flush writes what the client has been sent so far; a shard calls it
// before it waits for more, so rows do not sit in the router's buffer
// while a slower shard is still working.
func (f *fanStream) flush() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.clientErr != nil || f.s.cw.Len() == 0 {
		return
	}
	if err := f.clientWrite(f.s.cw.Flush); err != nil {
		f.clientErr = err
	}
}

// clientWrite runs a write to the client that may block (a flush) with the
// fan-out's server_read_timeout clock stopped: time the client takes to
// read is client_write_timeout's business, not a shard's silence. The
// clock resumes where it was, so the shards' own time still counts.
func (f *fanStream) clientWrite(write func() error) error {
	s := f.s
	began := s.waitingSince.Load()
	if began == 0 {
		return write()
	}
	s.waitingSince.Store(0)
	start := monoNow()
	err := write()
	s.waitingSince.Store(began + (monoNow() - start))
	return err
}

// pump reads a server's replies up to ReadyForQuery, handing each to fn
// (valid only during the call). Before it waits on the network it calls
// idle (when not nil), so what was handed on reaches the client while the
// server is still working. A server that ends anywhere but in the status
// want (0: any) is not reused.
func pump(c *pool.Conn, want byte, idle func(), fn func(wire.Message)) error {
	for {
		if idle != nil && !c.R.HasMessage() {
			idle()
		}
		m, err := c.R.Next()
		if err != nil {
			c.MarkBroken()
			return err
		}
		switch m.Type {
		case wire.ReadyForQuery:
			if body := m.Body(); len(body) != 1 || (want != 0 && body[0] != want) {
				c.MarkBroken()
			}
			return nil
		case wire.ParameterStatus:
			c.Params.NoteStatus(m.Body())
			continue
		case wire.ErrorResponse:
			if isFatal(m.Body()) {
				c.MarkBroken()
			}
		case wire.CopyInResponse, wire.CopyOutResponse:
			c.MarkBroken()
			return fmt.Errorf("COPY is not supported in a run_on all call")
		}
		fn(m)
	}
}

// lost records that a shard could not be reached or failed mid-answer.
// Pool errors keep their SQLSTATE (53300 wait, 08001 connect); anything
// else broke the server connection mid-statement.
func (f *fanStream) lost(sh *shardmap.Shard, err error) {
	e := toError(err)
	if e.Fatal {
		e = errorf(sqlstate.ConnectionFailure, "pgrouter: lost the connection to shard %s while running %s", sh.Name, f.call.Fn.FullName()).because(err)
	} else {
		e.Message = "shard " + sh.Name + ": " + e.Message
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failure == nil {
		f.failure = e.response()
	}
}

// take handles one message of a shard's answer to the statement.
func (f *fanStream) take(sh *shardmap.Shard, m wire.Message) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if m.Type == wire.ErrorResponse {
		if f.failure == nil {
			e := &pgproto3.ErrorResponse{}
			_ = e.Decode(m.Body())
			e.Message = "shard " + sh.Name + ": " + e.Message
			f.failure = e
		}
		return
	}
	if f.failure != nil || f.clientErr != nil {
		return
	}
	switch m.Type {
	case wire.NoticeResponse:
		f.forward(m)
	case wire.CommandComplete:
		_, n, _ := splitTag(m.Body())
		f.total += n
		if f.tag == nil {
			f.tag = bytes.Clone(trimNUL(m.Body()))
		}
	case wire.BindComplete:
		if !f.reduce && !f.sentBind {
			f.sentBind = true
			f.forward(m)
		}
	case wire.NoData, wire.EmptyQueryResponse:
		if !f.reduce && !f.sentNone {
			f.sentNone = true
			f.forward(m)
		}
	case wire.RowDescription:
		switch {
		case f.reduce:
			if f.desc == nil {
				f.desc = bytes.Clone(m.Body())
			}
		case !f.sentDesc && (f.shape == nil || f.shape.describe):
			f.sentDesc = true
			f.forward(m)
		}
	case wire.DataRow:
		if f.reduce {
			f.keep(m)
			return
		}
		if f.suspended {
			return
		}
		f.forward(m)
		// As PostgreSQL: the limit reached suspends the portal.
		if f.sent++; f.shape != nil && f.shape.limit > 0 && f.sent == f.shape.limit {
			f.suspended = true
			f.clientErr = f.s.cw.SendEmpty(wire.PortalSuspended)
		}
	}
}

// forward writes a shard's message to the client; the caller holds mu.
func (f *fanStream) forward(m wire.Message) {
	var err error
	if f.s.cw.Len()+len(m.Raw) > wire.FlushThreshold { // the write flushes, and may block
		err = f.clientWrite(func() error { return f.s.forward(m) })
	} else {
		err = f.s.forward(m)
	}
	if err != nil {
		f.clientErr = err
	}
}

// keep holds a merged call's value; the caller holds mu.
func (f *fanStream) keep(m wire.Message) {
	var row pgproto3.DataRow
	if err := row.Decode(m.Body()); err != nil || len(row.Values) != 1 {
		f.failure = f.oneColumn()
		return
	}
	if f.buffered += len(row.Values[0]); f.buffered > mergeBufferLimit {
		f.failure = errorf(sqlstate.ProgramLimitExceeded, "pgrouter: %s returned more than %d bytes to merge", f.call.Fn.FullName(), mergeBufferLimit).
			WithHint("A merged function returns one small value per shard; declare it without merge to stream its rows.").response()
		return
	}
	f.values = append(f.values, bytes.Clone(row.Values[0]))
}

func (f *fanStream) oneColumn() *pgproto3.ErrorResponse {
	return errorf(sqlstate.DatatypeMismatch, "pgrouter: %s merges its results, so it must return one column", f.call.Fn.FullName()).response()
}

// finish ends the client's result once every shard has answered.
func (f *fanStream) finish() error {
	s := f.s
	switch {
	case f.clientErr != nil:
		return clientIO(f.clientErr)
	case f.failure != nil:
		return s.fanError(f.failure)
	case f.reduce:
		return f.emitReduced()
	case f.suspended || f.tag == nil:
		return nil
	}
	tag := f.tag
	if prefix, _, ok := splitTag(tag); ok {
		tag = strconv.AppendInt(bytes.Clone(prefix), f.total, 10)
	}
	return clientIO(s.cw.Send(&pgproto3.CommandComplete{CommandTag: tag}))
}

// emitReduced sends the one-row result of a merge.
func (f *fanStream) emitReduced() error {
	s, shape := f.s, f.shape
	desc := &pgproto3.RowDescription{}
	if f.desc == nil || desc.Decode(f.desc) != nil || len(desc.Fields) != 1 {
		return s.fanError(f.oneColumn())
	}
	format := uint16(0)
	if shape != nil && len(shape.formats) > 0 {
		format = shape.formats[0]
	}
	v, merr := router.Merged(f.call.Fn.FullName(), f.call.Fn.Merge, f.values, desc.Fields[0].DataTypeOID, format == 1)
	if merr != nil {
		return s.fanError((&Error{Code: merr.Code, Message: merr.Message, Hint: merr.Hint}).response())
	}
	desc.Fields[0].Format = int16(format)
	if shape != nil {
		_ = s.cw.Send(&pgproto3.BindComplete{})
	}
	if shape == nil || shape.describe {
		_ = s.cw.Send(desc)
	}
	if shape == nil || shape.execute {
		_ = s.cw.Send(&pgproto3.DataRow{Values: [][]byte{v}})
		if shape != nil && shape.limit == 1 { // as PostgreSQL: the limit reached suspends the portal
			return clientIO(s.cw.SendEmpty(wire.PortalSuspended))
		}
		if err := s.cw.Send(&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")}); err != nil {
			return clientIO(err)
		}
	}
	return nil
}
