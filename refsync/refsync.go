package refsync

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
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
	// Progress is called during initial copies (about once a second per
	// table, and when a table is done); nil ignores them.
	Progress func(Progress)
	// Reload delivers new configurations (SIGHUP). Shards added or removed
	// are started or stopped without stopping the others; a changed
	// reference section restarts the stream.
	Reload <-chan *config.Config
	// StatusInterval is how often the slot's position is confirmed and
	// idle shards record how far they are current (default 1s).
	StatusInterval time.Duration
	// RetryMin and RetryMax bound the backoff for a shard or source that is
	// down (default 1s and 30s).
	RetryMin, RetryMax time.Duration
	// ApplyTimeout bounds one shard transaction (default 2m).
	ApplyTimeout time.Duration
	// QueueWait is how long the stream waits for a shard whose queue is
	// full before detaching it (default 10s), so one slow or frozen shard
	// holds up the others for at most that long; it re-attaches and replays
	// from its own position.
	QueueWait time.Duration
}

func (o *Options) defaults() {
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	if o.Progress == nil {
		o.Progress = func(Progress) {}
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
	if o.ApplyTimeout <= 0 {
		o.ApplyTimeout = 2 * time.Minute
	}
	if o.QueueWait <= 0 {
		o.QueueWait = 10 * time.Second
	}
}

// Run replicates the reference tables of cfg until ctx ends (then it
// returns nil). It returns an error when the source cannot be replicated
// from (see Preflight) or its slot belongs to something else; a source or
// shard that is down is retried.
func Run(ctx context.Context, cfg *config.Config, opts Options) error {
	opts.defaults()
	if cfg.Reference == nil {
		return errors.New("router.yaml has no reference section: nothing to replicate")
	}
	first := true
	for {
		r := &run{opts: opts, log: opts.Log, cfg: cfg, ref: cfg.Reference}
		next, err := r.serve(ctx, first)
		if err != nil || next == nil {
			return err
		}
		first = false
		cfg = next
	}
}

// run is one configuration's replication: the stream from the slot (owned
// by the goroutine in serve) and a worker per shard.
type run struct {
	opts Options
	log  *zap.Logger
	cfg  *config.Config
	ref  *config.Reference

	workers   map[string]*worker
	attachReq chan *attachment
	attached  []*attachment
	copySlots chan struct{}

	// confirmed is the position last confirmed to the slot; hold, when
	// not 0, caps it while a copy's snapshot is being taken.
	confirmed, hold atomic.Uint64

	dec        *logical.Decoder
	repl       *pgconn.PgConn
	sent       pglogrepl.LSN // end of the last transaction or mark handed to the shards
	lastMark   time.Time
	lastStatus time.Time
}

// serve prepares the source, starts the workers and runs the stream. It
// returns a configuration to restart with when a reload changed the
// reference section.
func (r *run) serve(ctx context.Context, first bool) (*config.Config, error) {
	var floor pglogrepl.LSN
	var keys map[config.TableName][]string
	backoff := r.opts.RetryMin
	for {
		var err error
		floor, keys, err = r.prepareSource(ctx)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return nil, nil
		}
		if errors.Is(err, ErrNotReady) && first {
			return nil, err
		}
		r.log.Error("cannot prepare the reference source; retrying", zap.Error(err), zap.Duration("retry_in", backoff))
		select {
		case <-ctx.Done():
			return nil, nil
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, r.opts.RetryMax)
	}
	r.confirmed.Store(uint64(floor))
	r.log.Info("replicating reference tables", zap.String("slot", r.ref.Slot), zap.Stringer("slot_lsn", floor),
		zap.Stringers("tables", r.ref.TableNames))

	r.dec = logical.NewDecoder(r.ref.TableNames, keys)
	r.attachReq = make(chan *attachment)
	r.copySlots = make(chan struct{}, 1)
	r.workers = map[string]*worker{}
	wctx, stopWorkers := context.WithCancel(ctx)
	defer func() {
		stopWorkers()
		for _, w := range r.workers {
			w.stop()
		}
		r.closeStream()
	}()
	for _, s := range shardsOf(r.cfg) {
		r.startWorker(wctx, s, floor)
	}
	return r.loop(ctx, wctx)
}

// shard is one shard database, named as its cluster names it.
type shard struct{ name, dsn string }

// shardsOf lists every shard of every cluster once (two clusters naming the
// same database get one copy).
func shardsOf(cfg *config.Config) []shard {
	seen := map[string]bool{}
	var out []shard
	for _, name := range cfg.ClusterNames() {
		for _, s := range cfg.Clusters[name].Shards {
			if !seen[s.DSN] {
				seen[s.DSN] = true
				out = append(out, shard{name: s.Name, dsn: s.DSN})
			}
		}
	}
	return out
}

func (r *run) startWorker(ctx context.Context, s shard, floor pglogrepl.LSN) {
	w := &worker{run: r, name: s.name, dsn: s.dsn, tables: r.ref.TableNames, copySlots: r.copySlots,
		log: r.log.With(zap.String("shard", s.name))}
	r.workers[s.name] = w
	w.start(ctx, floor)
}

// prepareSource checks the source, makes the publication match the tables
// and creates the slot when it is missing. It returns the slot's confirmed
// position and each table's key columns.
func (r *run) prepareSource(ctx context.Context) (pglogrepl.LSN, map[config.TableName][]string, error) {
	src, err := r.sourceConn(ctx)
	if err != nil {
		return 0, nil, err
	}
	defer src.Close(context.WithoutCancel(ctx))
	if err := Preflight(ctx, src, r.ref); err != nil {
		return 0, nil, err
	}
	keys := map[config.TableName][]string{}
	for _, t := range r.ref.TableNames {
		def, err := logical.ReadTableDef(ctx, src, t)
		if err != nil {
			return 0, nil, err
		}
		keys[t] = def.Key
	}
	if err := r.ensurePublication(ctx, src); err != nil {
		return 0, nil, err
	}
	lsn, err := r.ensureSlot(ctx, src)
	return lsn, keys, err
}

func (r *run) ensurePublication(ctx context.Context, src *pgx.Conn) error {
	pub := pgx.Identifier{r.ref.Publication}.Sanitize()
	var list []string
	for _, t := range r.ref.TableNames {
		list = append(list, pgx.Identifier{t.Schema, t.Name}.Sanitize())
	}
	var all bool
	err := src.QueryRow(ctx, `SELECT puballtables FROM pg_publication WHERE pubname = $1`, r.ref.Publication).Scan(&all)
	if errors.Is(err, pgx.ErrNoRows) {
		if _, err := src.Exec(ctx, fmt.Sprintf("CREATE PUBLICATION %s FOR TABLE %s WITH (publish_via_partition_root = true)", pub, strings.Join(list, ", "))); err != nil {
			return fmt.Errorf("create publication %s: %w", r.ref.Publication, err)
		}
		r.log.Info("created the publication", zap.String("publication", r.ref.Publication))
		return nil
	}
	if err != nil {
		return fmt.Errorf("read publication %s: %w", r.ref.Publication, err)
	}
	// A publication made by hand may publish less than refsync needs:
	// only some actions, partitions under their own names, some rows or
	// columns. Each would lose changes without an error.
	if _, err := src.Exec(ctx, fmt.Sprintf("ALTER PUBLICATION %s SET (publish = 'insert, update, delete, truncate', publish_via_partition_root = true)", pub)); err != nil {
		return fmt.Errorf("set the options of publication %s: %w", r.ref.Publication, err)
	}
	if err := checkFilters(ctx, src, r.ref.Publication); err != nil {
		return err
	}
	if all {
		return nil
	}
	rows, err := src.Query(ctx, `SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = $1`, r.ref.Publication)
	if err != nil {
		return fmt.Errorf("read the tables of publication %s: %w", r.ref.Publication, err)
	}
	published, err := pgx.CollectRows(rows, pgx.RowToStructByPos[config.TableName])
	if err != nil {
		return fmt.Errorf("read the tables of publication %s: %w", r.ref.Publication, err)
	}
	for _, t := range r.ref.TableNames {
		if !slices.Contains(published, t) {
			if _, err := src.Exec(ctx, fmt.Sprintf("ALTER PUBLICATION %s ADD TABLE %s", pub, pgx.Identifier{t.Schema, t.Name}.Sanitize())); err != nil {
				return fmt.Errorf("add %s to publication %s: %w", t, r.ref.Publication, err)
			}
			r.log.Info("added a table to the publication", zap.Stringer("table", t))
		}
	}
	for _, t := range published {
		if !slices.Contains(r.ref.TableNames, t) {
			if _, err := src.Exec(ctx, fmt.Sprintf("ALTER PUBLICATION %s DROP TABLE %s", pub, pgx.Identifier{t.Schema, t.Name}.Sanitize())); err != nil {
				return fmt.Errorf("drop %s from publication %s: %w", t, r.ref.Publication, err)
			}
			r.log.Info("dropped a table from the publication; its copies on the shards stay as they are", zap.Stringer("table", t))
		}
	}
	return nil
}

// checkFilters refuses a publication that filters the rows or columns of a
// table (PostgreSQL 15's WHERE and column lists).
func checkFilters(ctx context.Context, src *pgx.Conn, pub string) error {
	var version int
	if err := src.QueryRow(ctx, `SELECT current_setting('server_version_num')::int`).Scan(&version); err != nil {
		return fmt.Errorf("read the source's version: %w", err)
	}
	if version < 150000 { // no row filters or column lists before 15
		return nil
	}
	var filtered []string
	err := src.QueryRow(ctx, `SELECT coalesce(array_agg(pr.prrelid::regclass::text), '{}') FROM pg_publication_rel pr
		JOIN pg_publication p ON p.oid = pr.prpubid WHERE p.pubname = $1 AND (pr.prqual IS NOT NULL OR pr.prattrs IS NOT NULL)`, pub).Scan(&filtered)
	if err != nil {
		return fmt.Errorf("read the tables of publication %s: %w", pub, err)
	}
	if len(filtered) > 0 {
		return fmt.Errorf("publication %s publishes only some rows or columns of %s, and the shards need whole tables: ALTER PUBLICATION %s SET TABLE ... without WHERE or column lists, or drop it and let refsync create it",
			pub, strings.Join(filtered, ", "), pgx.Identifier{pub}.Sanitize())
	}
	return nil
}

func (r *run) ensureSlot(ctx context.Context, src *pgx.Conn) (pglogrepl.LSN, error) {
	read := func() (plugin, db, here string, lsn pglogrepl.LSN, err error) {
		err = src.QueryRow(ctx, `SELECT coalesce(plugin, ''), coalesce(database, ''), current_database(), coalesce(confirmed_flush_lsn, '0/0')::text
			FROM pg_replication_slots WHERE slot_name = $1`, r.ref.Slot).Scan(&plugin, &db, &here, &lsn)
		return
	}
	plugin, db, here, lsn, err := read()
	if errors.Is(err, pgx.ErrNoRows) {
		repl, cerr := r.replicationConn(ctx)
		if cerr != nil {
			return 0, cerr
		}
		_, cerr = pglogrepl.CreateReplicationSlot(ctx, repl, r.ref.Slot, "pgoutput",
			pglogrepl.CreateReplicationSlotOptions{SnapshotAction: "NOEXPORT_SNAPSHOT", Mode: pglogrepl.LogicalReplication})
		repl.Close(context.WithoutCancel(ctx))
		if cerr != nil {
			return 0, fmt.Errorf("create replication slot %s: %w", r.ref.Slot, cerr)
		}
		r.log.Info("created the replication slot", zap.String("slot", r.ref.Slot))
		plugin, db, here, lsn, err = read()
	}
	if err != nil {
		return 0, fmt.Errorf("read replication slot %s: %w", r.ref.Slot, err)
	}
	if plugin != "pgoutput" || db != here {
		return 0, fmt.Errorf("replication slot %s exists but is not refsync's (plugin %q, database %q): set reference.slot to another name", r.ref.Slot, plugin, db)
	}
	return lsn, nil
}

// attach hands a worker's attachment to the coordinator.
func (r *run) attach(ctx context.Context, a *attachment) bool {
	select {
	case r.attachReq <- a:
		return true
	case <-ctx.Done():
		return false
	}
}

func (r *run) progress(p Progress) { r.opts.Progress(p) }

// floor is the lowest position any shard needs: the slot is confirmed up to
// it and the stream restarts from it.
func (r *run) floor() pglogrepl.LSN {
	low := noFloor
	for _, w := range r.workers {
		low = min(low, w.floor.Load())
	}
	if h := r.hold.Load(); h != 0 {
		low = min(low, h)
	}
	if low == noFloor { // every shard is waiting for a copy
		return pglogrepl.LSN(r.confirmed.Load())
	}
	return pglogrepl.LSN(low)
}

// pollInterval bounds how long the coordinator waits for the stream before
// it looks at attach requests and reloads.
const pollInterval = 100 * time.Millisecond

// loop is the coordinator: it reads the stream, hands each transaction to
// every attached shard, confirms the slot and takes attachments and reloads.
func (r *run) loop(ctx, wctx context.Context) (*config.Config, error) {
	backoff := r.opts.RetryMin
	var nextTry time.Time
	failures := 0 // in a row: after a few, the source is prepared again (a slot or key may have changed)
	for {
		if ctx.Err() != nil {
			return nil, nil
		}
		select {
		case cfg := <-r.opts.Reload:
			if next := r.reload(wctx, cfg); next != nil {
				return next, nil
			}
		default:
		}
		r.takeAttachments()
		if r.repl == nil {
			wait := time.Until(nextTry)
			if wait > 0 {
				select {
				case <-ctx.Done():
				case a := <-r.attachReq:
					r.addAttachment(a)
				case cfg := <-r.opts.Reload:
					if next := r.reload(wctx, cfg); next != nil {
						return next, nil
					}
				case <-time.After(wait):
				}
				continue
			}
			if err := r.startStream(ctx); err != nil {
				if ctx.Err() != nil {
					return nil, nil
				}
				if failures++; failures >= 3 || errors.Is(err, errSlotGone) {
					r.log.Error("cannot stream from the reference source; preparing it again", zap.Error(err))
					return r.cfg, nil
				}
				r.log.Error("cannot stream from the reference source; retrying", zap.Error(err), zap.Duration("retry_in", backoff))
				nextTry = time.Now().Add(backoff)
				backoff = min(backoff*2, r.opts.RetryMax)
				continue
			}
			backoff = r.opts.RetryMin
		}
		if err := r.receive(ctx); err != nil {
			if ctx.Err() != nil {
				return nil, nil
			}
			if failures++; failures >= 3 {
				r.log.Error("the stream from the reference source keeps failing; preparing the source again", zap.Error(err))
				return r.cfg, nil
			}
			r.log.Error("the stream from the reference source ended; reconnecting", zap.Error(err), zap.Duration("retry_in", backoff))
			r.closeStream()
			nextTry = time.Now().Add(backoff)
			backoff = min(backoff*2, r.opts.RetryMax)
		}
	}
}

// takeAttachments takes pending attach requests without waiting.
func (r *run) takeAttachments() {
	for {
		select {
		case a := <-r.attachReq:
			r.addAttachment(a)
		default:
			return
		}
	}
}

// addAttachment adds a shard to the stream. A shard behind what the stream
// has already handed out needs the stream to start again from it; the
// shards already attached skip what they hold.
func (r *run) addAttachment(a *attachment) {
	r.attached = append(r.attached, a)
	if r.repl != nil && a.lsn < r.sent {
		r.log.Debug("restarting the stream for a shard that is behind", zap.String("shard", a.w.name), zap.Stringer("shard_lsn", a.lsn), zap.Stringer("stream_lsn", r.sent))
		r.closeStream()
	}
}

// errSlotGone says the slot was dropped: everything is prepared again, and
// shards, now behind the new slot, are copied again.
var errSlotGone = errors.New("the replication slot is gone")

func (r *run) startStream(ctx context.Context) error {
	conn, err := r.replicationConn(ctx)
	if err != nil {
		return err
	}
	if err := r.checkSlot(ctx, conn); err != nil {
		conn.Close(context.WithoutCancel(ctx))
		return err
	}
	from := r.floor()
	err = pglogrepl.StartReplication(ctx, conn, r.ref.Slot, from, pglogrepl.StartReplicationOptions{
		Mode:       pglogrepl.LogicalReplication,
		PluginArgs: []string{"proto_version '1'", "publication_names " + quoteLiteral(r.ref.Publication)},
	})
	if err != nil {
		conn.Close(context.WithoutCancel(ctx))
		return fmt.Errorf("start replication from slot %s at %s (is another refsync running?): %w", r.ref.Slot, from, err)
	}
	r.repl, r.sent = conn, from
	r.dec.Restart()
	r.log.Info("streaming from the reference source", zap.Stringer("from", from), zap.Int("shards_attached", len(r.attached)))
	return nil
}

// checkSlot makes sure the slot is still where this run left it: moved past
// a shard's position (by someone else: a second refsync with the same slot
// name, a hand-made pg_replication_slot_advance), it no longer has the
// changes that shard needs, and the shard must be copied again.
func (r *run) checkSlot(ctx context.Context, conn *pgconn.PgConn) error {
	res, err := conn.Exec(ctx, "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = "+quoteLiteral(r.ref.Slot)).ReadAll()
	if err != nil {
		return fmt.Errorf("read replication slot %s: %w", r.ref.Slot, err)
	}
	if len(res) != 1 || len(res[0].Rows) != 1 || res[0].Rows[0][0] == nil {
		return fmt.Errorf("%w: %s", errSlotGone, r.ref.Slot)
	}
	confirmed, err := pglogrepl.ParseLSN(string(res[0].Rows[0][0]))
	if err != nil {
		return fmt.Errorf("replication slot %s: %w", r.ref.Slot, err)
	}
	for _, w := range r.workers {
		if f := w.floor.Load(); f != noFloor && pglogrepl.LSN(f) < confirmed {
			r.log.Error("the slot was confirmed past this shard's position by something else (another refsync with the same slot?): copying the shard again",
				zap.String("shard", w.name), zap.Stringer("shard_lsn", pglogrepl.LSN(f)), zap.Stringer("slot_lsn", confirmed))
			w.recopy.Store(true)
		}
	}
	for _, a := range r.attached {
		if a.w.recopy.Load() {
			a.detach()
		}
	}
	r.confirmed.Store(max(r.confirmed.Load(), uint64(confirmed)))
	return nil
}

func (r *run) closeStream() {
	if r.repl != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		r.repl.Close(ctx)
		cancel()
		r.repl = nil
	}
}

// receive waits up to pollInterval for one message and handles it, and
// confirms the slot when the status interval has passed.
func (r *run) receive(ctx context.Context) error {
	if time.Since(r.lastStatus) >= r.opts.StatusInterval {
		if err := r.sendStatus(ctx); err != nil {
			return err
		}
	}
	rctx, cancel := context.WithTimeout(ctx, pollInterval)
	msg, err := r.repl.ReceiveMessage(rctx)
	cancel()
	if err != nil {
		if pgconn.Timeout(err) && ctx.Err() == nil {
			return nil
		}
		return err
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
			t, err := r.dec.Add(xld.WALData)
			if err != nil {
				return err
			}
			if t != nil {
				r.dispatch(ctx, t)
			}
		case pglogrepl.PrimaryKeepaliveMessageByteID:
			ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(msg.Data[1:])
			if err != nil {
				return err
			}
			// Every transaction that committed before ServerWALEnd has been
			// sent, so shards can record that they are current up to it.
			if !r.dec.InTransaction() && ka.ServerWALEnd > r.sent && time.Since(r.lastMark) >= r.opts.StatusInterval {
				r.lastMark = time.Now()
				r.dispatch(ctx, &logical.Txn{CommitLSN: ka.ServerWALEnd, EndLSN: ka.ServerWALEnd, Time: ka.ServerTime})
			}
			if ka.ReplyRequested {
				return r.sendStatus(ctx)
			}
		}
	case *pgproto3.ErrorResponse:
		return pgconn.ErrorResponseToPgError(msg)
	case *pgproto3.CopyDone:
		return errors.New("the source ended the stream")
	}
	return nil
}

// sendStatus confirms the slot up to the lowest position any shard needs,
// and asks for a keepalive (which carries the source's WAL position).
func (r *run) sendStatus(ctx context.Context) error {
	r.lastStatus = time.Now()
	low := max(r.floor(), pglogrepl.LSN(r.confirmed.Load())) // the slot never moves back
	r.confirmed.Store(uint64(low))
	err := pglogrepl.SendStandbyStatusUpdate(ctx, r.repl, pglogrepl.StandbyStatusUpdate{WALWritePosition: low, ReplyRequested: true})
	if err != nil {
		return fmt.Errorf("confirm the slot at %s: %w", low, err)
	}
	return nil
}

// dispatch hands a transaction to every attached shard, dropping the
// attachments of workers that have stopped.
func (r *run) dispatch(ctx context.Context, t *logical.Txn) {
	kept := r.attached[:0]
	for _, a := range r.attached {
		select {
		case a.queue <- t:
			kept = append(kept, a)
			continue
		default:
		}
		timer := time.NewTimer(r.opts.QueueWait)
		select {
		case a.queue <- t:
			kept = append(kept, a)
		case <-a.gone:
		case <-timer.C:
			r.log.Warn("a shard cannot keep up with the stream: detaching it until it has caught up", zap.String("shard", a.w.name),
				zap.Duration("queue_full_for", r.opts.QueueWait))
			a.detach()
		case <-ctx.Done():
			timer.Stop()
			return
		}
		timer.Stop()
	}
	clear(r.attached[len(kept):])
	r.attached = kept
	r.sent = t.EndLSN
}

// reload applies a new configuration: shards added or removed are started
// or stopped; anything else that changed in the reference section restarts
// everything with the new configuration (returned).
func (r *run) reload(wctx context.Context, cfg *config.Config) *config.Config {
	if cfg.Reference == nil {
		r.log.Warn("the reloaded configuration has no reference section; keeping the current one")
		return nil
	}
	if !reflect.DeepEqual(cfg.Reference, r.ref) {
		r.log.Info("the reference section changed: restarting replication with it")
		return cfg
	}
	want := map[string]shard{}
	for _, s := range shardsOf(cfg) {
		want[s.name] = s
	}
	for name, w := range r.workers {
		if s, ok := want[name]; !ok || s.dsn != w.dsn {
			w.stop()
			delete(r.workers, name)
			r.log.Info("stopped keeping a shard current", zap.String("shard", name))
		}
	}
	low := r.floor()
	for _, s := range shardsOf(cfg) {
		if _, ok := r.workers[s.name]; !ok {
			r.startWorker(wctx, s, low)
			r.log.Info("started keeping a shard current", zap.String("shard", s.name))
		}
	}
	r.cfg = cfg
	return nil
}
