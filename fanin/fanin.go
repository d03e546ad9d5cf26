// Package fanin keeps one central copy of sharded tables: every shard's
// rows of them in a target database, current through each shard's logical
// replication stream (pgrouter fanin). It is refsync's mirror: refsync
// sends one source to every shard, fanin every shard to one target.
//
// Each shard has a worker of its own, so a shard that is down or slow
// delays only its own rows. A worker publishes the tables on its shard,
// creates its replication slot there and, the first time, copies the
// tables at the slot's snapshot into the target (rows tagged with the
// shard in pgrouter_shard); from then on it applies the shard's
// transactions in order, each in one target transaction together with the
// shard's position in pgrouter.fanin_state, and confirms the slot up to
// what the target holds. Killed anywhere, it resumes from that position:
// nothing is applied twice and nothing is lost.
package fanin

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"

	"github.com/pgrouter/pgrouter/config"
	"github.com/pgrouter/pgrouter/logical"
)

// Options tune Run; the zero value takes the defaults.
type Options struct {
	Log *zap.Logger
	// StatusInterval is how often a worker confirms its slot and records,
	// when the shard is idle, that the target is current (default 1s).
	StatusInterval time.Duration
	// RetryMin and RetryMax bound the backoff for a shard or target that is
	// down (default 1s and 30s).
	RetryMin, RetryMax time.Duration
	// Progress is called during initial copies (about once a second per
	// table, and when a table is done); nil ignores them.
	Progress func(logical.Progress)
	// Reload delivers new configurations (SIGHUP): shards added are copied
	// in and streamed, shards removed stopped, without stopping the others;
	// a changed fanin section restarts every worker.
	Reload <-chan *config.Config
}

func (o *Options) defaults() {
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	if o.Progress == nil {
		o.Progress = func(logical.Progress) {}
	}
	if o.StatusInterval <= 0 {
		o.StatusInterval = time.Second
	}
	if o.RetryMin <= 0 {
		o.RetryMin = time.Second
	}
	if o.RetryMax < o.RetryMin {
		o.RetryMax = max(30*time.Second, o.RetryMin)
	}
}

// Run keeps the central copy of cfg's fanin section current until ctx
// ends, then stops every worker and returns nil.
func Run(ctx context.Context, cfg *config.Config, opts Options) error {
	opts.defaults()
	if cfg.Fanin == nil {
		return errors.New("router.yaml has no fanin section: nothing to fan in")
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	running := map[string]*runningWorker{} // by shard name
	stop := func(name string) {
		r := running[name]
		r.cancel()
		<-r.done
		delete(running, name)
	}
	apply := func(cfg *config.Config) {
		f := cfg.Fanin
		wanted := map[string]*config.Shard{}
		for _, sh := range cfg.Clusters[f.Cluster].Shards {
			wanted[sh.Name] = sh
		}
		for name, r := range running {
			if sh := wanted[name]; sh == nil || sh.DSN != r.w.dsn || !sameFanin(f, r.w.fanin) {
				opts.Log.Info("stopping the fan-in of a shard", zap.String("shard", name))
				stop(name)
			}
		}
		for name, sh := range wanted {
			if running[name] != nil {
				continue
			}
			var peers []string
			for other := range wanted {
				if other != name {
					peers = append(peers, other)
				}
			}
			w := &worker{cfg: cfg, fanin: f, shard: name, dsn: sh.DSN, slot: config.FaninSlot(f.Slot, name), opts: opts,
				partitions: sh.PartitionList, peers: peers, log: opts.Log.With(zap.String("shard", name))}
			wctx, cancel := context.WithCancel(ctx)
			r := &runningWorker{w: w, cancel: cancel, done: make(chan struct{})}
			running[name] = r
			wg.Go(func() {
				defer close(r.done)
				w.loop(wctx)
			})
		}
	}
	apply(cfg)
	for {
		select {
		case <-ctx.Done():
			for name := range running {
				stop(name)
			}
			return nil
		case next := <-opts.Reload:
			if next.Fanin == nil {
				opts.Log.Warn("the reloaded config has no fanin section; keeping the current one")
				continue
			}
			apply(next)
		}
	}
}

// runningWorker is a worker and how to stop it.
type runningWorker struct {
	w      *worker
	cancel context.CancelFunc
	done   chan struct{}
}

// sameFanin reports whether two fanin sections fan in the same way.
func sameFanin(a, b *config.Fanin) bool {
	return a.Target == b.Target && a.Cluster == b.Cluster && a.Slot == b.Slot && a.Publication == b.Publication &&
		slices.Equal(a.TableNames, b.TableNames)
}

// worker fans one shard in.
type worker struct {
	cfg   *config.Config
	fanin *config.Fanin
	shard string
	dsn   string
	slot  string
	opts  Options
	log   *zap.Logger
	// partitions are the shard's in router.yaml (what it holds when it
	// records no ownership); peers the cluster's other shards.
	partitions []int
	peers      []string
}

// loop runs sessions until ctx ends, backing off after failures.
func (w *worker) loop(ctx context.Context) {
	backoff := w.opts.RetryMin
	for ctx.Err() == nil {
		started := time.Now()
		err := w.session(ctx)
		if ctx.Err() != nil {
			return
		}
		if time.Since(started) > time.Minute {
			backoff = w.opts.RetryMin // it ran a while: a new failure
		}
		w.log.Warn("fan-in of the shard stopped; retrying", zap.Error(err), zap.Duration("in", backoff))
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff + time.Duration(rand.Int64N(int64(backoff)/4+1))):
		}
		backoff = min(2*backoff, w.opts.RetryMax)
	}
}

func connect(ctx context.Context, dsn string, params map[string]string) (*pgx.Conn, error) {
	return logical.Connect(ctx, dsn, "pgrouter fanin", params)
}

func (w *worker) replicationConn(ctx context.Context) (*pgconn.PgConn, error) {
	conn, err := logical.ReplicationConn(ctx, w.dsn, "pgrouter fanin")
	if err != nil {
		return nil, fmt.Errorf("connect to shard %s for replication (needs wal_level = logical and a role with REPLICATION): %w", w.shard, err)
	}
	return conn, nil
}

// session connects, copies the shard when the target has not got it yet,
// and applies its stream until an error or ctx ends.
func (w *worker) session(ctx context.Context) error {
	target, err := connect(ctx, w.fanin.Target, map[string]string{"pgrouter.fanin": "on"})
	if err != nil {
		return fmt.Errorf("the target: %w", err)
	}
	defer target.Close(context.WithoutCancel(ctx))
	shard, err := connect(ctx, w.dsn, nil)
	if err != nil {
		return fmt.Errorf("shard %s: %w", w.shard, err)
	}
	defer shard.Close(context.WithoutCancel(ctx))
	st, err := setupTarget(ctx, target, w.shard, w.slot)
	if err != nil {
		return err
	}
	keys := map[config.TableName][]string{}
	tables := slices.Clone(w.fanin.TableNames)
	for _, t := range tables {
		def, err := logical.ReadTableDef(ctx, shard, t)
		if err != nil {
			return fmt.Errorf("shard %s: %w", w.shard, err)
		}
		keys[t] = def.Key
	}
	view, err := newPartitionView(ctx, w.cfg, shard)
	if err != nil {
		return fmt.Errorf("shard %s: %w", w.shard, err)
	}
	if view != nil { // its ownership records come with the stream
		tables = append(tables, partitionsTable)
		keys[partitionsTable] = []string{"cluster", "partition"}
	}
	if err := ensurePublication(ctx, shard, w.fanin.Publication, tables); err != nil {
		return fmt.Errorf("shard %s: %w", w.shard, err)
	}
	var slotExists bool
	if err := shard.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = $1)`, w.slot).Scan(&slotExists); err != nil {
		return fmt.Errorf("shard %s: read its replication slots: %w", w.shard, err)
	}
	if st.copied && !slotExists {
		w.log.Warn("the shard's replication slot is gone (dropped by hand?): copying the shard again", zap.String("slot", w.slot))
		st.copied = false
	}
	if !st.copied {
		if st.lsn, err = w.copy(ctx, target, shard, slotExists, view); err != nil {
			return err
		}
	} else if view != nil {
		if st.holds == nil { // recorded by a fanin that did not follow moves
			st.holds, st.writes = w.partitions, w.partitions
		}
		view.restore(st.holds, st.writes)
	}
	shard.Close(ctx)
	return w.stream(ctx, target, st.lsn, tables, keys, view)
}

// filter follows a transaction's changes of the shard's ownership records
// and drops its changes of rows in partitions the shard does not hold, as
// of each change; it returns the partitions the shard started writing in.
func (w *worker) filter(t *logical.Txn, view *partitionView) (gained []int) {
	if view == nil {
		return nil
	}
	kept := t.Changes[:0]
	for i := range t.Changes {
		c := &t.Changes[i]
		if c.Kind != 'T' && c.Rel.Table == partitionsTable {
			gained = append(gained, view.follow(c)...)
			continue
		}
		if view.skip(c) {
			continue
		}
		kept = append(kept, *c)
	}
	t.Changes = kept
	return gained
}

// stream applies the shard's transactions from position from on.
func (w *worker) stream(ctx context.Context, target *pgx.Conn, from pglogrepl.LSN, tables []config.TableName, keys map[config.TableName][]string, view *partitionView) error {
	repl, err := w.replicationConn(ctx)
	if err != nil {
		return err
	}
	defer repl.Close(context.WithoutCancel(ctx))
	err = pglogrepl.StartReplication(ctx, repl, w.slot, from, pglogrepl.StartReplicationOptions{
		Mode:       pglogrepl.LogicalReplication,
		PluginArgs: []string{"proto_version '1'", "publication_names '" + w.fanin.Publication + "'"},
	})
	if err != nil {
		return fmt.Errorf("start replication from slot %s at %s on shard %s (is another fanin running?): %w", w.slot, from, w.shard, err)
	}
	w.log.Info("streaming the shard into the target", zap.Stringer("from", from))
	dec := logical.NewDecoder(tables, keys)
	app := newApplier(target, w.shard, view)
	at := from // the target holds everything before it
	var lastStatus, lastMark time.Time
	status := func() error {
		lastStatus = time.Now()
		return pglogrepl.SendStandbyStatusUpdate(ctx, repl, pglogrepl.StandbyStatusUpdate{WALWritePosition: at, ReplyRequested: true})
	}
	flush := func() error {
		lsn, err := app.flush(ctx)
		if lsn > at {
			at = lsn
		}
		return err
	}
	for {
		if time.Since(lastStatus) >= w.opts.StatusInterval {
			if err := status(); err != nil {
				return fmt.Errorf("confirm slot %s at %s: %w", w.slot, at, err)
			}
		}
		// Transactions queued are applied as soon as the stream pauses.
		wait := 200 * time.Millisecond
		if app.queued() {
			wait = 2 * time.Millisecond
		}
		rctx, cancel := context.WithTimeout(ctx, wait)
		msg, err := repl.ReceiveMessage(rctx)
		cancel()
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case pgconn.Timeout(err):
			if err := flush(); err != nil {
				return err
			}
			continue
		case err != nil:
			return fmt.Errorf("shard %s's stream: %w", w.shard, err)
		}
		switch msg := msg.(type) {
		case *pgproto3.CopyData:
			if len(msg.Data) == 0 {
				return errors.New("empty message in the replication stream")
			}
			switch msg.Data[0] {
			case pglogrepl.XLogDataByteID:
				xld, err := pglogrepl.ParseXLogData(msg.Data[1:])
				if err != nil {
					return err
				}
				t, err := dec.Add(xld.WALData)
				if err != nil {
					return fmt.Errorf("shard %s's stream: %w", w.shard, err)
				}
				if t == nil || applied(t, at) {
					continue
				}
				gained := w.filter(t, view)
				if len(gained) > 0 {
					// Everything before this transaction first, then, once the
					// old shards' streams are past the cut-over, the rest.
					if err := flush(); err != nil {
						return err
					}
					if err := w.waitReleased(ctx, target, gained); err != nil {
						return err
					}
					app.also(view.retag(w.shard, gained))
					app.add(t)
					if err := flush(); err != nil {
						return err
					}
					w.log.Info("the shard owns partitions now; their central rows are tagged with it", zap.Ints("partitions", gained))
					continue
				}
				if app.add(t) {
					if err := flush(); err != nil {
						return err
					}
				}
			case pglogrepl.PrimaryKeepaliveMessageByteID:
				ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(msg.Data[1:])
				if err != nil {
					return err
				}
				// Everything before ServerWALEnd has been sent: an idle shard
				// records that the target is current up to it.
				if !dec.InTransaction() && ka.ServerWALEnd > at && time.Since(lastMark) >= w.opts.StatusInterval {
					lastMark = time.Now()
					app.add(&logical.Txn{CommitLSN: ka.ServerWALEnd, EndLSN: ka.ServerWALEnd, Time: ka.ServerTime})
					if err := flush(); err != nil {
						return err
					}
				}
				if ka.ReplyRequested {
					if err := status(); err != nil {
						return err
					}
				}
			}
		case *pgproto3.ErrorResponse:
			return pgconn.ErrorResponseToPgError(msg)
		case *pgproto3.CopyDone:
			return fmt.Errorf("shard %s ended the stream", w.shard)
		}
	}
}
