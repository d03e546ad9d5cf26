// Package move moves partitions of a cluster from one shard to another
// while clients keep writing: pgrouter move.
//
// Design (trigger-based change capture, as Slony and londiste did, rather
// than logical decoding: it needs no wal_level = logical on the shards, no
// replication slot that a crash could leave holding WAL, and makes every
// step an ordinary transaction that a rerun repeats harmlessly):
//
//  1. The ownership guard (package ownership) is installed on every shard
//     of the cluster; the source's rows for the partitions go to state
//     moving, so from then on every write in them also logs the written
//     rows' primary keys in pgrouter.move_log, in the writer's transaction.
//  2. Copy: one REPEATABLE READ snapshot of the source, taken after that,
//     copies the partitions' rows of every declared table to the target.
//  3. Catch-up: batches of logged keys are applied by reading the rows'
//     current state on the source and replacing them on the target (a key
//     whose row is gone, or left the partitions, is deleted there); applied
//     entries are then removed from the log. Applying an entry twice does
//     the same as once, so a crash anywhere loses nothing and doubles
//     nothing.
//  4. Cut-over: the source's partitions go to frozen, under a FOR UPDATE
//     lock on their rows that waits for the transactions writing in them
//     (the guard holds FOR KEY SHARE) and makes later writes fail with
//     40001; the log is drained; the target records the partitions as
//     owned and the phase in one transaction; the source forgets them; the
//     routers reload the map (every peer, whose reachability is checked
//     before the freeze).
//  5. Cleanup: the moved rows are deleted from the source (unless
//     --keep-source) and the move's state is removed.
//
// The move's state is a row of pgrouter.moves on the target, so --resume
// continues from the phase it records and --abort undoes a move that has not
// reached the cut-over's point of no return (the target owning the
// partitions).
package move

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgrouter/pgrouter/config"
	"github.com/pgrouter/pgrouter/ownership"
)

// Phases recorded in pgrouter.moves.
const (
	phaseCopy    = "copy"
	phaseCatchup = "catchup"
	phaseFrozen  = "frozen"
	phaseOwned   = "owned"
)

// Options of a move.
type Options struct {
	Cluster    string
	Partitions []int  // to move (not with Resume or Abort)
	Target     string // shard receiving them
	KeepSource bool   // leave the moved rows on the source
	DryRun     bool   // print the plan only
	Resume     bool   // continue the move recorded on the target
	Abort      bool   // undo the move recorded on the target
	// Log receives one line per step, and progress.
	Log func(format string, args ...any)
	// Routers reaches the routers serving the cluster (nil: none is told).
	Routers Routers
	// BatchSize is how many logged keys one catch-up step applies.
	BatchSize int
}

// Routers are the pgrouter instances serving the cluster, reached through
// their admin consoles.
type Routers interface {
	// Check fails when a router cannot be reached: the cut-over does not start.
	Check(ctx context.Context) error
	// Pause holds the routed calls of the partitions (PAUSE PARTITIONS), so
	// clients wait through the cut-over instead of retrying 40001.
	Pause(ctx context.Context, cluster string, partitions []int) error
	// Reload has them read the map again (RELOAD).
	Reload(ctx context.Context) error
	// Resume releases the paused calls (RESUME PARTITIONS).
	Resume(ctx context.Context, cluster string) error
}

// Result says what a move did.
type Result struct {
	Rows       int64         // copied by the snapshot
	Applied    int64         // logged changes applied
	Frozen     time.Duration // from the freeze to the target owning the partitions
	Removed    int64         // rows deleted from the source
	Source     string
	Target     string
	Partitions []int
}

// mover is one run.
type mover struct {
	opts       Options
	cluster    *config.Cluster
	conns      map[string]*pgx.Conn
	source     string
	target     string
	partitions []int
	tables     []*ownership.Table // as the source has them
	sourceHeld int                // partitions the source holds, for copy estimates
	res        Result
}

func (m *mover) log(format string, args ...any) {
	if m.opts.Log != nil {
		m.opts.Log(format, args...)
	}
}

// Run moves partitions, or resumes or aborts a move, as opts say.
func Run(ctx context.Context, cfg *config.Config, opts Options) (*Result, error) {
	cl, ok := cfg.Clusters[opts.Cluster]
	if !ok {
		return nil, fmt.Errorf("cluster %q is not in the config (it has %s)", opts.Cluster, strings.Join(cfg.ClusterNames(), ", "))
	}
	if cl.Hash != "hashtext" {
		return nil, fmt.Errorf("cluster %s uses hash: %s: moves need hash: hashtext, so that the shards compute a row's partition as the router does (hashtext, hashint4, hashint8)", cl.Name, cl.Hash)
	}
	if len(cl.Tables) == 0 {
		return nil, fmt.Errorf("cluster %s declares no tables: list its sharded tables and their key columns (tables: [{name: users, key: username}])", cl.Name)
	}
	if opts.BatchSize <= 0 {
		opts.BatchSize = 1000
	}
	m := &mover{opts: opts, cluster: cl, conns: map[string]*pgx.Conn{}}
	defer func() {
		for _, c := range m.conns {
			_ = c.Close(context.WithoutCancel(ctx))
		}
	}()
	for _, sh := range cl.Shards {
		conn, err := pgx.Connect(ctx, sh.DSN)
		if err != nil {
			return nil, fmt.Errorf("shard %s: %w", sh.Name, err)
		}
		m.conns[sh.Name] = conn
	}
	owners, err := m.owners(ctx)
	if err != nil {
		return nil, err
	}
	state, err := m.readState(ctx)
	if err != nil {
		return nil, err
	}
	switch {
	case opts.Abort || opts.Resume:
		if state == nil {
			return nil, fmt.Errorf("no move of cluster %s is in progress", cl.Name)
		}
		m.source, m.target, m.partitions = state.source, state.target, state.partitions
	case state != nil:
		return nil, fmt.Errorf("a move of partitions %s of cluster %s from %s to %s is in progress (phase %s): run pgrouter move --resume to finish it, or --abort to undo it",
			config.FormatPartitions(state.partitions), cl.Name, state.source, state.target, state.phase)
	default:
		if err := m.plan(owners); err != nil {
			return nil, err
		}
	}
	m.res.Source, m.res.Target, m.res.Partitions = m.source, m.target, m.partitions
	for _, owner := range owners {
		if owner == m.source {
			m.sourceHeld++
		}
	}
	if err := m.describe(ctx); err != nil {
		return nil, err
	}
	if opts.DryRun {
		return &m.res, m.printPlan(ctx)
	}
	if opts.Abort {
		return &m.res, m.abort(ctx, state.phase)
	}
	if err := m.install(ctx, owners); err != nil {
		return nil, err
	}
	phase := phaseCopy
	if state != nil {
		phase = state.phase
		m.log("resuming the move of partitions %s from %s to %s at phase %s", config.FormatPartitions(m.partitions), m.source, m.target, phase)
	} else if _, err := m.conns[m.target].Exec(ctx, `INSERT INTO pgrouter.moves (cluster, partitions, source, target, phase) VALUES ($1, $2, $3, $4, $5)`,
		cl.Name, m.partitions, m.source, m.target, phaseCopy); err != nil {
		return nil, fmt.Errorf("record the move on %s: %w", m.target, err)
	}
	return &m.res, m.run(ctx, phase)
}

// owners is the current partition -> shard map: what the shards record,
// router.yaml's where they record nothing.
func (m *mover) owners(ctx context.Context) (map[int]string, error) {
	out := map[int]string{}
	for _, sh := range m.cluster.Shards {
		for _, p := range sh.PartitionList {
			out[p] = sh.Name
		}
	}
	held := map[string][]int{}
	for name, conn := range m.conns {
		h, recorded, err := ownership.Read(ctx, conn, m.cluster.Name)
		if err != nil {
			return nil, fmt.Errorf("shard %s: read its partitions: %w", name, err)
		}
		if recorded {
			held[name] = h
		}
	}
	recorded, err := ownership.Owners(held)
	if err != nil {
		return nil, err
	}
	for p, name := range recorded {
		out[p] = name
	}
	return out, nil
}

// plan checks the requested move against the current map.
func (m *mover) plan(owners map[int]string) error {
	if _, ok := m.conns[m.opts.Target]; !ok {
		return fmt.Errorf("shard %q is not a shard of cluster %s", m.opts.Target, m.cluster.Name)
	}
	if len(m.opts.Partitions) == 0 {
		return errors.New("no partitions to move: --partitions 6-7, say")
	}
	m.target, m.partitions = m.opts.Target, slices.Clone(m.opts.Partitions)
	sort.Ints(m.partitions)
	for _, p := range m.partitions {
		if p < 0 || p >= m.cluster.Partitions {
			return fmt.Errorf("partition %d is outside 0-%d", p, m.cluster.Partitions-1)
		}
		owner := owners[p]
		if owner == m.target {
			return fmt.Errorf("partition %d is on %s already", p, m.target)
		}
		if m.source == "" {
			m.source = owner
		} else if owner != m.source {
			return fmt.Errorf("partitions %s are on several shards (%d on %s, %d on %s): move the partitions of one source at a time", config.FormatPartitions(m.partitions), m.partitions[0], m.source, p, owner)
		}
	}
	return nil
}

// describe reads the declared tables on the source and checks that the
// target has them with the same columns.
func (m *mover) describe(ctx context.Context) error {
	for _, t := range m.cluster.Tables {
		src, err := ownership.Describe(ctx, m.conns[m.source], t)
		if err != nil {
			return fmt.Errorf("shard %s: %w", m.source, err)
		}
		dst, err := ownership.Describe(ctx, m.conns[m.target], t)
		if err != nil {
			return fmt.Errorf("shard %s: %w", m.target, err)
		}
		if !slices.Equal(src.Columns, dst.Columns) || !slices.Equal(src.PK, dst.PK) || src.KeyType != dst.KeyType {
			return fmt.Errorf("table %s differs: %s has columns %s (primary key %s), %s has %s (primary key %s): create it on %s as on %s",
				t.Table, m.source, strings.Join(src.Columns, ", "), strings.Join(src.PK, ", "), m.target, strings.Join(dst.Columns, ", "), strings.Join(dst.PK, ", "), m.target, m.source)
		}
		m.tables = append(m.tables, src)
	}
	return nil
}

// in is the SQL condition "the row's key is in the moving partitions".
func (m *mover) in(t *ownership.Table, alias string) string {
	col := pgx.Identifier{t.Key}.Sanitize()
	if alias != "" {
		col = alias + "." + col
	}
	parts := make([]string, len(m.partitions))
	for i, p := range m.partitions {
		parts[i] = fmt.Sprint(p)
	}
	return fmt.Sprintf("%s IN (%s)", t.PartitionExpr(col, m.cluster.Partitions), strings.Join(parts, ", "))
}

func (m *mover) printPlan(ctx context.Context) error {
	m.log("move partitions %s of cluster %s from %s to %s", config.FormatPartitions(m.partitions), m.cluster.Name, m.source, m.target)
	for _, t := range m.tables {
		var n int64
		if err := m.conns[m.source].QueryRow(ctx, fmt.Sprintf("SELECT count(*) FROM %s WHERE %s", t.Ident(), m.in(t, ""))).Scan(&n); err != nil {
			return fmt.Errorf("count %s: %w", t.TableName, err)
		}
		m.log("  %s (key %s, primary key %s): %d rows to copy", t.TableName, t.Key, strings.Join(t.PK, ", "), n)
	}
	m.log("steps: install the ownership guard on every shard; log writes in the partitions on %s; copy them at one snapshot; apply the logged changes; freeze them on %s (writes there get 40001 and are retried); apply the rest; record %s as their owner; reload the routers; delete them from %s%s",
		m.source, m.source, m.target, m.source, map[bool]string{true: " (not: --keep-source)", false: ""}[m.opts.KeepSource])
	return nil
}

// install puts the ownership guard on every shard, recording what each holds
// now where nothing is recorded yet.
func (m *mover) install(ctx context.Context, owners map[int]string) error {
	for _, sh := range m.cluster.Shards {
		var held []int
		for p, name := range owners {
			if name == sh.Name {
				held = append(held, p)
			}
		}
		sort.Ints(held)
		conn := m.conns[sh.Name]
		var tables []*ownership.Table
		for _, t := range m.cluster.Tables {
			d, err := ownership.Describe(ctx, conn, t)
			if err != nil {
				return fmt.Errorf("shard %s: %w", sh.Name, err)
			}
			tables = append(tables, d)
		}
		if err := ownership.Install(ctx, conn, m.cluster.Name, sh.Name, m.cluster.Partitions, held, tables); err != nil {
			return fmt.Errorf("shard %s: install the ownership guard: %w", sh.Name, err)
		}
	}
	return nil
}

// state is the move recorded on the target.
type state struct {
	partitions     []int
	source, target string
	phase          string
}

// readState finds the move in progress for the cluster, on any shard (it is
// recorded on its target).
func (m *mover) readState(ctx context.Context) (*state, error) {
	var found *state
	for name, conn := range m.conns {
		var exists bool
		if err := conn.QueryRow(ctx, "SELECT to_regclass('pgrouter.moves') IS NOT NULL").Scan(&exists); err != nil {
			return nil, fmt.Errorf("shard %s: %w", name, err)
		}
		if !exists {
			continue
		}
		var st state
		err := conn.QueryRow(ctx, "SELECT partitions, source, target, phase FROM pgrouter.moves WHERE cluster = $1", m.cluster.Name).Scan(&st.partitions, &st.source, &st.target, &st.phase)
		if errors.Is(err, pgx.ErrNoRows) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("shard %s: read pgrouter.moves: %w", name, err)
		}
		if st.target != name {
			return nil, fmt.Errorf("shard %s records a move to %s", name, st.target)
		}
		found = &st
	}
	return found, nil
}

// setState moves the source's rows for the partitions to a state, under a
// FOR UPDATE lock that waits for the transactions writing in them.
func (m *mover) setState(ctx context.Context, from []string, to string) error {
	tx, err := m.conns[m.source].Begin(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if _, err := tx.Exec(ctx, "SELECT 1 FROM pgrouter.partitions WHERE cluster = $1 AND partition = ANY ($2) FOR UPDATE", m.cluster.Name, m.partitions); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, "UPDATE pgrouter.partitions SET state = $3 WHERE cluster = $1 AND partition = ANY ($2) AND state = ANY ($4)", m.cluster.Name, m.partitions, to, from); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// run carries the move on from phase.
func (m *mover) run(ctx context.Context, phase string) error {
	dst := m.conns[m.target]
	if phase == phaseCopy {
		if err := m.setState(ctx, []string{ownership.Owned}, ownership.Moving); err != nil {
			return fmt.Errorf("start logging writes in the partitions on %s: %w", m.source, err)
		}
		if err := m.copy(ctx); err != nil {
			return err
		}
		phase = phaseCatchup
	}
	r := m.opts.Routers
	if phase == phaseCatchup {
		if err := m.catchUp(ctx); err != nil {
			return err
		}
		if r != nil {
			if err := r.Check(ctx); err != nil {
				return fmt.Errorf("the cut-over did not start: %w (the move stays in catch-up: run pgrouter move --resume once the routers can be reached, or --abort)", err)
			}
		}
	}
	if r != nil && phase != phaseOwned {
		// From here until the routers have the new map, calls for the
		// partitions wait in the routers; they are released whatever happens.
		defer func() {
			if err := r.Resume(context.WithoutCancel(ctx), m.cluster.Name); err != nil {
				m.log("warning: resume the partitions on the routers: %v (RESUME PARTITIONS %s on their consoles)", err, m.cluster.Name)
			}
		}()
		if err := r.Pause(ctx, m.cluster.Name, m.partitions); err != nil {
			return fmt.Errorf("the cut-over did not start: pause the partitions on the routers: %w", err)
		}
	}
	if phase == phaseCatchup {
		start := time.Now()
		if err := m.setState(ctx, []string{ownership.Moving, ownership.Owned}, ownership.Frozen); err != nil {
			return fmt.Errorf("freeze the partitions on %s: %w", m.source, err)
		}
		if _, err := dst.Exec(ctx, "UPDATE pgrouter.moves SET phase = $2, updated = now() WHERE cluster = $1", m.cluster.Name, phaseFrozen); err != nil {
			return err
		}
		m.log("cut-over: partitions %s frozen on %s; writes in them wait or get 40001 until %s owns them", config.FormatPartitions(m.partitions), m.source, m.target)
		phase = phaseFrozen
		defer func() { m.res.Frozen = time.Since(start) }()
	}
	if phase == phaseFrozen {
		for {
			n, err := m.applyBatch(ctx)
			if err != nil {
				return err
			}
			if n == 0 {
				break
			}
		}
		tx, err := dst.Begin(ctx)
		if err != nil {
			return err
		}
		defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
		if _, err := tx.Exec(ctx, `INSERT INTO pgrouter.partitions (cluster, partition, state) SELECT $1, p, 'owned' FROM unnest($2::int[]) p
			ON CONFLICT (cluster, partition) DO UPDATE SET state = 'owned'`, m.cluster.Name, m.partitions); err != nil {
			return fmt.Errorf("record %s as the owner: %w", m.target, err)
		}
		if _, err := tx.Exec(ctx, "UPDATE pgrouter.moves SET phase = $2, updated = now() WHERE cluster = $1", m.cluster.Name, phaseOwned); err != nil {
			return err
		}
		if err := tx.Commit(ctx); err != nil {
			return fmt.Errorf("record %s as the owner: %w", m.target, err)
		}
		m.log("cut-over: %s owns partitions %s", m.target, config.FormatPartitions(m.partitions))
		phase = phaseOwned
	}
	// phaseOwned: the point of no return is behind.
	if _, err := m.conns[m.source].Exec(ctx, "DELETE FROM pgrouter.partitions WHERE cluster = $1 AND partition = ANY ($2)", m.cluster.Name, m.partitions); err != nil {
		return fmt.Errorf("forget the partitions on %s: %w", m.source, err)
	}
	if r != nil {
		if err := r.Reload(ctx); err != nil {
			m.log("warning: %v; a router that missed the reload reads the new map when %s refuses one of its writes, or at its next start", err, m.source)
		}
		// Release the held calls now, to the new map (also on a --resume
		// after a kill that left them held).
		if err := r.Resume(ctx, m.cluster.Name); err != nil {
			m.log("warning: resume the partitions on the routers: %v (RESUME PARTITIONS %s on their consoles)", err, m.cluster.Name)
		}
	}
	if !m.opts.KeepSource {
		// A transaction that began on the source before the routers had the
		// new map could still write a moved row there: while the row exists
		// the guard refuses it (40001), once removed its UPDATE would match
		// nothing and report success. Remove only after those transactions.
		m.waitOlderTransactions(ctx)
	}
	if !m.opts.KeepSource {
		if err := m.removeSource(ctx); err != nil {
			return err
		}
	}
	if _, err := m.conns[m.source].Exec(ctx, "DELETE FROM pgrouter.move_log WHERE cluster = $1", m.cluster.Name); err != nil {
		return err
	}
	if _, err := dst.Exec(ctx, "DELETE FROM pgrouter.moves WHERE cluster = $1", m.cluster.Name); err != nil {
		return err
	}
	m.log("done: partitions %s of cluster %s are on %s", config.FormatPartitions(m.partitions), m.cluster.Name, m.target)
	return nil
}

// replicaTx begins a transaction on a shard that writes moved rows (see
// replica).
func (m *mover) replicaTx(ctx context.Context, shard string) (pgx.Tx, error) {
	tx, err := m.conns[shard].Begin(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := tx.Exec(ctx, replica); err != nil {
		_ = tx.Rollback(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("shard %s: %s (the move needs a superuser on the shards): %w", shard, replica, err)
	}
	return tx, nil
}

// replica is set on the sessions that write the moved rows: ordinary
// triggers (the guard) and foreign keys do not fire for them, as for
// logical replication's apply. It needs a superuser.
const replica = "SET LOCAL session_replication_role = replica"

// copy copies the partitions' rows at one snapshot of the source.
func (m *mover) copy(ctx context.Context) error {
	src, err := m.conns[m.source].BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return err
	}
	defer func() { _ = src.Rollback(context.WithoutCancel(ctx)) }()
	dst, err := m.replicaTx(ctx, m.target)
	if err != nil {
		return err
	}
	defer func() { _ = dst.Rollback(context.WithoutCancel(ctx)) }()
	m.res.Rows = 0
	for _, t := range m.tables {
		if _, err := dst.Exec(ctx, fmt.Sprintf("DELETE FROM %s WHERE %s", t.Ident(), m.in(t, ""))); err != nil {
			return fmt.Errorf("empty the partitions of %s on %s: %w", t.TableName, m.target, err)
		}
		var estimate float64 // the table's rows times the share of the source's partitions moving
		if err := src.QueryRow(ctx, "SELECT greatest(reltuples, 0) FROM pg_class WHERE oid = $1::regclass", t.Ident()).Scan(&estimate); err != nil {
			return fmt.Errorf("estimate the rows of %s: %w", t.TableName, err)
		}
		if held := m.sourceHeld; held > 0 {
			estimate = estimate * float64(len(m.partitions)) / float64(held)
		}
		progress := &countingWriter{every: time.Second, report: func(n int64) { m.log("copying %s: %d of about %d rows", t.TableName, n, int64(estimate)) }}
		n, err := pipe(ctx, src, dst, t, fmt.Sprintf("SELECT %s FROM %s WHERE %s", columnList(t, ""), t.Ident(), m.in(t, "")), progress)
		if err != nil {
			return fmt.Errorf("copy %s: %w", t.TableName, err)
		}
		m.log("copied %s: %d rows", t.TableName, n)
		m.res.Rows += n
	}
	if _, err := dst.Exec(ctx, "UPDATE pgrouter.moves SET phase = $2, rows_copied = $3, updated = now() WHERE cluster = $1", m.cluster.Name, phaseCatchup, m.res.Rows); err != nil {
		return err
	}
	if err := dst.Commit(ctx); err != nil {
		return fmt.Errorf("copy: commit on %s: %w", m.target, err)
	}
	return src.Commit(ctx)
}

func columnList(t *ownership.Table, alias string) string {
	cols := make([]string, len(t.Columns))
	for i, c := range t.Columns {
		cols[i] = pgx.Identifier{c}.Sanitize()
		if alias != "" {
			cols[i] = alias + "." + cols[i]
		}
	}
	return strings.Join(cols, ", ")
}

// countingWriter counts the rows of a text COPY stream (one line each),
// and, with report set, is reported every so often by pipe.
type countingWriter struct {
	n      atomic.Int64
	every  time.Duration
	report func(n int64)
}

func (c *countingWriter) Write(b []byte) (int, error) {
	for _, x := range b {
		if x == '\n' {
			c.n.Add(1)
		}
	}
	return len(b), nil
}

// pipe copies the rows query selects on src into t on dst, in text format;
// c, when not nil, counts them (and reports progress).
func pipe(ctx context.Context, src, dst pgx.Tx, t *ownership.Table, query string, c *countingWriter) (int64, error) {
	pr, pw := io.Pipe()
	if c == nil {
		c = &countingWriter{}
	}
	if c.report != nil {
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			tick := time.NewTicker(c.every)
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
					c.report(c.n.Load())
				}
			}
		}()
		defer func() { close(stop); <-done }()
	}
	copied := make(chan error, 1)
	go func() {
		_, err := src.Conn().PgConn().CopyTo(ctx, io.MultiWriter(pw, c), "COPY ("+query+") TO STDOUT")
		pw.CloseWithError(err)
		copied <- err
	}()
	_, err := dst.Conn().PgConn().CopyFrom(ctx, pr, fmt.Sprintf("COPY %s (%s) FROM STDIN", t.Ident(), columnList(t, "")))
	pr.CloseWithError(errors.New("the target stopped the copy"))
	if srcErr := <-copied; srcErr != nil {
		return 0, srcErr
	}
	if err != nil {
		return 0, err
	}
	return c.n.Load(), nil
}

// catchUp applies the log until it is short, so the freeze is brief.
func (m *mover) catchUp(ctx context.Context) error {
	for {
		n, err := m.applyBatch(ctx)
		if err != nil {
			return err
		}
		var backlog int64
		if err := m.conns[m.source].QueryRow(ctx, "SELECT count(*) FROM pgrouter.move_log WHERE cluster = $1", m.cluster.Name).Scan(&backlog); err != nil {
			return err
		}
		m.log("catch-up: %d changes applied, %d behind", m.res.Applied, backlog)
		if n < int64(m.opts.BatchSize) || backlog < int64(m.opts.BatchSize)/10 {
			return nil
		}
	}
}

// logEntry is one logged key.
type logEntry struct {
	id  int64
	tbl string
	pk  json.RawMessage
}

// applyBatch applies up to BatchSize logged keys: each key's row is
// replaced on the target by its current state on the source (or deleted
// there when it is gone or left the partitions), then the entries are
// removed from the log. It returns how many entries it applied.
func (m *mover) applyBatch(ctx context.Context) (int64, error) {
	src := m.conns[m.source]
	rows, err := src.Query(ctx, "SELECT id, tbl, pk FROM pgrouter.move_log WHERE cluster = $1 ORDER BY id LIMIT $2", m.cluster.Name, m.opts.BatchSize)
	if err != nil {
		return 0, fmt.Errorf("read the move log on %s: %w", m.source, err)
	}
	var entries []logEntry
	for rows.Next() {
		var e logEntry
		if err := rows.Scan(&e.id, &e.tbl, &e.pk); err != nil {
			return 0, err
		}
		entries = append(entries, e)
	}
	if err := rows.Err(); err != nil {
		return 0, err
	}
	if len(entries) == 0 {
		return 0, nil
	}
	byTable := map[string][]json.RawMessage{}
	ids := make([]int64, len(entries))
	for i, e := range entries {
		byTable[e.tbl] = append(byTable[e.tbl], e.pk)
		ids[i] = e.id
	}
	readTx, err := src.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return 0, err
	}
	defer func() { _ = readTx.Rollback(context.WithoutCancel(ctx)) }()
	dst, err := m.replicaTx(ctx, m.target)
	if err != nil {
		return 0, err
	}
	defer func() { _ = dst.Rollback(context.WithoutCancel(ctx)) }()
	for _, t := range m.tables {
		keys := byTable[t.Schema+"."+t.Name]
		if len(keys) == 0 {
			continue
		}
		doc, err := json.Marshal(keys)
		if err != nil {
			return 0, err
		}
		pkCols := make([]string, len(t.PK))
		for i, c := range t.PK {
			pkCols[i] = pgx.Identifier{c}.Sanitize()
		}
		pkList := strings.Join(pkCols, ", ")
		keysSQL := fmt.Sprintf("SELECT %s FROM jsonb_populate_recordset(NULL::%s, %s::jsonb)", pkList, t.Ident(), quote(string(doc)))
		if _, err := dst.Exec(ctx, fmt.Sprintf("DELETE FROM %s WHERE (%s) IN (%s)", t.Ident(), pkList, keysSQL)); err != nil {
			return 0, fmt.Errorf("apply changes to %s on %s: %w", t.TableName, m.target, err)
		}
		if _, err := pipe(ctx, readTx, dst, t, fmt.Sprintf("SELECT %s FROM %s WHERE (%s) IN (%s) AND %s", columnList(t, ""), t.Ident(), pkList, keysSQL, m.in(t, "")), nil); err != nil {
			return 0, fmt.Errorf("apply changes to %s: %w", t.TableName, err)
		}
	}
	if err := dst.Commit(ctx); err != nil {
		return 0, fmt.Errorf("apply changes on %s: %w", m.target, err)
	}
	_ = readTx.Rollback(ctx)
	if _, err := src.Exec(ctx, "DELETE FROM pgrouter.move_log WHERE id = ANY ($1)", ids); err != nil {
		return 0, fmt.Errorf("trim the move log on %s: %w", m.source, err)
	}
	m.res.Applied += int64(len(entries))
	return int64(len(entries)), nil
}

func quote(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// waitOlderTransactions waits, up to a minute, until no transaction that
// began on the source before now is still open.
func (m *mover) waitOlderTransactions(ctx context.Context) {
	src := m.conns[m.source]
	var cutoff time.Time
	if err := src.QueryRow(ctx, "SELECT now()").Scan(&cutoff); err != nil {
		return
	}
	deadline := time.Now().Add(time.Minute)
	for {
		var open int
		err := src.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND backend_type = 'client backend'
			AND pid <> pg_backend_pid() AND xact_start < $1`, cutoff).Scan(&open)
		if err != nil || open == 0 {
			return
		}
		if time.Now().After(deadline) {
			m.log("warning: %d transactions older than the cut-over are still open on %s after a minute; removing the moved rows anyway", open, m.source)
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// removeSource deletes the moved rows from the source.
func (m *mover) removeSource(ctx context.Context) error {
	tx, err := m.replicaTx(ctx, m.source)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	m.res.Removed = 0
	for _, t := range m.tables {
		tag, err := tx.Exec(ctx, fmt.Sprintf("DELETE FROM %s WHERE %s", t.Ident(), m.in(t, "")))
		if err != nil {
			return fmt.Errorf("delete the moved rows of %s from %s: %w", t.TableName, m.source, err)
		}
		m.res.Removed += tag.RowsAffected()
	}
	if err := tx.Commit(ctx); err != nil {
		return err
	}
	m.log("removed %d moved rows from %s", m.res.Removed, m.source)
	return nil
}

// abort undoes a move that has not reached the point of no return: the
// source holds the partitions again, the target's copies are deleted.
func (m *mover) abort(ctx context.Context, phase string) error {
	if phase == phaseOwned {
		return fmt.Errorf("the move of partitions %s to %s is past its cut-over (%s owns them): run pgrouter move --resume to finish it", config.FormatPartitions(m.partitions), m.target, m.target)
	}
	if err := m.setState(ctx, []string{ownership.Moving, ownership.Frozen}, ownership.Owned); err != nil {
		return fmt.Errorf("give the partitions back to %s: %w", m.source, err)
	}
	tx, err := m.replicaTx(ctx, m.target)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	for _, t := range m.tables {
		if _, err := tx.Exec(ctx, fmt.Sprintf("DELETE FROM %s WHERE %s", t.Ident(), m.in(t, ""))); err != nil {
			return fmt.Errorf("delete the copies of %s from %s: %w", t.TableName, m.target, err)
		}
	}
	if _, err := tx.Exec(ctx, "DELETE FROM pgrouter.moves WHERE cluster = $1", m.cluster.Name); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return err
	}
	if _, err := m.conns[m.source].Exec(ctx, "DELETE FROM pgrouter.move_log WHERE cluster = $1", m.cluster.Name); err != nil {
		return err
	}
	m.log("aborted: partitions %s stay on %s", config.FormatPartitions(m.partitions), m.source)
	return nil
}
