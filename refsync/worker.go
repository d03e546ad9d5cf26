package refsync

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"go.uber.org/zap"

	"github.com/pgrouter/pgrouter/config"
	"github.com/pgrouter/pgrouter/logical"
)

// worker keeps one shard current: it connects (retrying with backoff while
// the shard is down), copies the tables the shard lacks, then attaches to
// the stream and applies what the coordinator hands it.
type worker struct {
	run       *run
	name, dsn string
	tables    []config.TableName
	log       *zap.Logger
	cancel    context.CancelFunc
	done      chan struct{}
	copySlots chan struct{} // shared: how many copies may run at once
	// floor is the position below which the shard is known to hold every
	// change (at first, the slot's position when the worker started). The
	// slot is never confirmed past the lowest floor, so the source keeps
	// the WAL any shard still needs.
	floor atomic.Uint64
	// recopy is set when the slot was found past the shard's position.
	recopy atomic.Bool
}

// attachment is a worker's place in the stream while it is attached.
type attachment struct {
	w     *worker
	lsn   pglogrepl.LSN // where the shard is; the stream must replay from here
	queue chan *logical.Txn
	gone  chan struct{} // closed when the worker stops taking the queue
	kick  chan struct{} // closed (by detach) to end the worker's session
	once  sync.Once
}

// detach ends the worker's session (it reconnects and attaches again).
func (a *attachment) detach() { a.once.Do(func() { close(a.kick) }) }

func (w *worker) start(ctx context.Context, floor pglogrepl.LSN) {
	ctx, w.cancel = context.WithCancel(ctx)
	w.done = make(chan struct{})
	w.floor.Store(uint64(floor))
	go func() {
		defer close(w.done)
		w.loop(ctx)
	}()
}

func (w *worker) stop() {
	w.cancel()
	<-w.done
}

// loop runs sessions until the context ends; a failed session is retried
// with exponential backoff, reset once a session has applied something.
func (w *worker) loop(ctx context.Context) {
	backoff := w.run.opts.RetryMin
	for {
		progressed, err := w.session(ctx)
		if ctx.Err() != nil {
			return
		}
		if progressed {
			backoff = w.run.opts.RetryMin
		}
		w.log.Error("shard is not being kept current; retrying", zap.Error(err), zap.Duration("retry_in", backoff))
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, w.run.opts.RetryMax)
	}
}

// noFloor is the floor of a shard that needs nothing from the slot (it
// will be copied whole, at a snapshot newer than anything confirmed).
const noFloor = ^uint64(0)

// session connects, copies what is missing, and applies the stream until
// something fails. progressed says whether it got as far as applying.
func (w *worker) session(ctx context.Context) (progressed bool, err error) {
	conn, err := connect(ctx, w.dsn, map[string]string{
		"pgrouter.refsync":  "on", // lets refsync past the write guard
		"statement_timeout": "0",
		"lock_timeout":      "0",
	})
	if err != nil {
		return false, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	// One session per slot and shard: two would apply every change twice
	// (the same database listed under two DSNs, or a second refsync).
	var locked bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock(hashtext('pgrouter refsync'), hashtext($1))`, w.run.ref.Slot).Scan(&locked); err != nil {
		return false, fmt.Errorf("lock the shard for refsync: %w", err)
	}
	if !locked {
		return false, fmt.Errorf("another session holds refsync's lock for slot %s on this database: a previous connection of this refsync the shard has not closed yet (retried), "+
			"the database listed twice in router.yaml under different DSNs, or a second pgrouter refsync with the same slot (run one per slot)", w.run.ref.Slot)
	}
	st, err := setupShard(ctx, conn, w.run.ref.Slot, w.tables)
	if err != nil {
		return false, err
	}
	if confirmed := pglogrepl.LSN(w.run.confirmed.Load()); !st.fresh && (st.lsn < confirmed || w.recopy.Load()) {
		// The slot has moved past this shard (a restore from a backup, a
		// state row edited by hand, the slot moved by someone else): the
		// changes in between are gone from the source, so only a new copy
		// makes the shard whole again.
		w.log.Warn("the shard is behind what the slot still holds: copying its tables again",
			zap.Stringer("shard_lsn", st.lsn), zap.Stringer("slot_lsn", confirmed))
		st.fresh = true
	}
	if st.fresh {
		w.floor.Store(noFloor) // the copy's snapshot will be newer than anything confirmed
	} else {
		w.floor.Store(uint64(st.lsn))
	}
	var missing []config.TableName
	for _, t := range w.tables {
		if _, ok := st.tables[t]; !ok || st.fresh {
			missing = append(missing, t)
		}
	}
	if len(missing) > 0 {
		select {
		case w.copySlots <- struct{}{}:
		case <-ctx.Done():
			return false, ctx.Err()
		}
		w.log.Info("copying reference tables", zap.Stringers("tables", missing), zap.Bool("whole_shard", st.fresh))
		start := time.Now()
		fresh := st.fresh
		at, err := w.run.copyTables(ctx, w.name, conn, missing, fresh, func(at pglogrepl.LSN) {
			if fresh {
				w.floor.Store(uint64(at)) // before the hold ends: the slot may not pass it
			}
		})
		<-w.copySlots
		if err != nil {
			return false, fmt.Errorf("initial copy: %w", err)
		}
		w.recopy.Store(false)
		w.log.Info("copied reference tables", zap.Stringer("consistent_point", at), zap.Duration("took", time.Since(start)))
		if st.fresh {
			st.lsn = at
		}
		for _, t := range missing {
			st.tables[t] = at
		}
	}

	a := &applier{conn: conn, slot: w.run.ref.Slot, log: w.log, lsn: st.lsn, prepared: map[string]string{}, tables: map[tableKey]pglogrepl.LSN{}}
	for t, lsn := range st.tables {
		a.tables[tableKey(t)] = lsn
	}
	att := &attachment{w: w, lsn: st.lsn, queue: make(chan *logical.Txn, maxBatchTxns), gone: make(chan struct{}), kick: make(chan struct{})}
	defer close(att.gone)
	if !w.run.attach(ctx, att) {
		return false, ctx.Err()
	}
	// A kick (the shard could not take the stream's pace) ends the session
	// at once, even inside a batch: it re-attaches and replays from its lsn.
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-att.kick:
			cancel()
		case <-sctx.Done():
		}
	}()
	w.log.Info("shard attached to the stream", zap.Stringer("lsn", st.lsn))
	for {
		var batch []*logical.Txn
		select {
		case <-sctx.Done():
			if ctx.Err() == nil {
				return progressed, fmt.Errorf("the shard could not keep up with the stream (its queue stayed full for %s); re-attaching", w.run.opts.QueueWait)
			}
			return progressed, ctx.Err()
		case t := <-att.queue:
			batch = append(batch, t)
		}
		changes := len(batch[0].Changes)
	drain:
		for len(batch) < maxBatchTxns && changes < maxBatchChanges {
			select {
			case t := <-att.queue:
				batch = append(batch, t)
				changes += len(t.Changes)
			default:
				break drain
			}
		}
		applyCtx, cancelApply := context.WithTimeout(sctx, w.run.opts.ApplyTimeout)
		err := a.apply(applyCtx, batch)
		cancelApply()
		if err != nil {
			switch {
			case ctx.Err() == nil && sctx.Err() != nil:
				err = fmt.Errorf("the shard could not keep up with the stream (its queue stayed full for %s); re-attaching", w.run.opts.QueueWait)
			case errors.Is(err, context.DeadlineExceeded):
				err = fmt.Errorf("the shard took longer than %s to apply a batch: %w", w.run.opts.ApplyTimeout, err)
			}
			return progressed, err
		}
		progressed = true
		w.floor.Store(uint64(a.lsn))
	}
}
