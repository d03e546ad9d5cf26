package seqalloc

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgrouter/pgrouter/shardmap"
	"github.com/pgrouter/pgrouter/sqlstate"
)

// Change is one sequence that apply restarts.
type Change struct {
	Shard    string
	Slot     int64
	Sequence *Sequence // as it was before
	Restart  int64     // the first value it hands out afterwards
	Why      Verdict
}

// Result says what apply changed (or, on a refusal, would have changed) in
// one cluster.
type Result struct {
	Cluster string
	Stride  int64
	// NewSlots are the slots given to shards that had none.
	NewSlots map[string]int64
	Changes  []Change
	// Triggers lists the shards where the event trigger was installed or
	// updated.
	Triggers []string
	// Warnings need attention but were no reason to refuse.
	Warnings []string
}

// Changed reports whether apply changed anything.
func (r *Result) Changed() bool {
	return len(r.NewSlots) > 0 || len(r.Changes) > 0 || len(r.Triggers) > 0
}

// plan decides, from the shards' state, the slot of every shard and the
// restart value of every sequence that could collide. Every problem it cannot
// fix is gathered into one error wrapping ErrRefused.
func plan(shards []*Shard, opts Options) (*Result, error) {
	res := &Result{Stride: opts.Stride, NewSlots: map[string]int64{}}
	var refusals []string
	refuse := func(format string, args ...any) { refusals = append(refusals, fmt.Sprintf(format, args...)) }

	// Slots: recorded ones must be sound; shards without one get the lowest free.
	bySlot := slotsBy(shards)
	slots := make([]int64, len(shards))
	for i, sh := range shards {
		res.Cluster = sh.Cluster
		slots[i] = sh.Slot
		if sh.Slot < 0 {
			continue
		}
		if v, detail := slotProblem(sh, bySlot[sh.Slot], opts.Stride); v != OK && (v != DuplicateSlot || bySlot[sh.Slot][0] == sh) {
			refuse("shard %s: %s", sh.Name, detail) // a duplicate once, at its first shard
		}
	}
	free := int64(0)
	for i, sh := range shards {
		if slots[i] >= 0 {
			continue
		}
		for len(bySlot[free]) > 0 {
			free++
		}
		if free >= opts.Stride {
			refuse("shard %s: all %d slots of stride %d are taken, and the stride is fixed for the cluster's life: the cluster cannot have more shards (move partitions to the shards it has)",
				sh.Name, opts.Stride, opts.Stride)
			continue
		}
		slots[i] = free
		bySlot[free] = append(bySlot[free], sh)
		res.NewSlots[sh.Name] = free
	}

	// The highest value of each sequence anywhere: restarts go above it.
	highest := map[string]int64{}
	for _, sh := range shards {
		for _, q := range sh.Sequences {
			if hi, seen := highest[q.Name]; !seen || q.highest() > hi {
				highest[q.Name] = q.highest()
			}
		}
	}
	small, fewest, seqs := map[string][]string{}, map[string]int64{}, map[string]*Sequence{}
	for i, sh := range shards {
		slot := slots[i]
		if slot < 0 {
			continue
		}
		_, newSlot := res.NewSlots[sh.Name]
		for _, q := range sh.Sequences {
			verdict, detail := judge(q, slot, opts)
			switch {
			case verdict == Descending:
				res.Warnings = append(res.Warnings, fmt.Sprintf("shard %s: %s left alone: %s", sh.Name, q.Name, detail))
				continue
			case newSlot:
				// Whatever it looks like, a sequence of a shard that just got its
				// slot may sit below values other shards handed out in that slot
				// (a retired shard's rows moved elsewhere, a dumped schema).
				verdict = NoSlot
			case !verdict.Violation():
				if verdict == LowHeadroom {
					res.Warnings = append(res.Warnings, fmt.Sprintf("shard %s: %s: %s", sh.Name, q.Name, detail))
				}
				continue
			}
			floor := highest[q.Name]
			if q.Min > math.MinInt64 {
				floor = max(floor, q.Min-1)
			}
			restart, fits := firstAbove(floor, slot, opts.Stride)
			left := int64(0)
			if fits {
				left = valuesLeft(restart, q.Max, opts.Stride)
			}
			if left < max(opts.MinHeadroom, 1) {
				if len(small[q.Name]) == 0 || left < fewest[q.Name] {
					fewest[q.Name] = left
				}
				small[q.Name] = append(small[q.Name], sh.Name)
				seqs[q.Name] = q
				continue
			}
			res.Changes = append(res.Changes, Change{Shard: sh.Name, Slot: slot, Sequence: q, Restart: restart, Why: verdict})
		}
	}
	for _, name := range sortedKeys(small) {
		refuse("%s", tooSmall(seqs[name], small[name], fewest[name], opts))
	}
	if len(refusals) > 0 {
		return res, fmt.Errorf("%w: nothing was changed:\n  %s", ErrRefused, strings.Join(refusals, "\n  "))
	}
	return res, nil
}

// tooSmall explains a sequence whose type or maxvalue leaves too few values
// per shard, with the statements that fix it.
func tooSmall(q *Sequence, shards []string, left int64, opts Options) string {
	fix := fmt.Sprintf("ALTER SEQUENCE %s AS bigint MAXVALUE 9223372036854775807", q.Name)
	if q.table != "" {
		fix = fmt.Sprintf("ALTER TABLE %s ALTER COLUMN %s TYPE bigint; %s", q.table, q.col, fix)
	}
	if q.Type == "bigint" && q.Max == math.MaxInt64 {
		fix = "its values already reach the top of bigint; renumber them, or give the column a new sequence"
	}
	return fmt.Sprintf("%s (%s, maxvalue %d) would have %d values left per shard with stride %d (shards %s), fewer than sequences.min_headroom %d: on every shard, %s",
		q.Name, q.Type, q.Max, left, opts.Stride, strings.Join(shards, ", "), opts.MinHeadroom, fix)
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// firstAbove is the smallest value v above floor in slot's residue class,
// v ≡ slot+1 (mod stride); fits is false when no such int64 exists.
func firstAbove(floor, slot, stride int64) (v int64, fits bool) {
	d := mod(slot-mod(floor, stride), stride) // v-1 = floor+d ≡ slot
	if floor > math.MaxInt64-1-d {
		return 0, false
	}
	return floor + 1 + d, true
}

// shardTx is one shard's connection with apply's transaction open on it.
type shardTx struct {
	name string
	conn *pgx.Conn
	tx   pgx.Tx
}

// Apply makes every sequence of the cluster stride safely: it gives shards
// without a slot a free one, and restarts each sequence that could collide
// at the first value of its shard's slot above the highest value of that
// sequence on any shard. Sequences that are already safe are not touched, so
// running it twice changes nothing the second time.
//
// It works in one transaction per shard, all open together: the sequences it
// restarts are locked (nextval waits) before their values are read, so no
// shard can hand out a value above the chosen start meanwhile. The shards
// commit one after another; if a commit fails, the error says which shards
// did, and running Apply again finishes the job.
func Apply(ctx context.Context, cl *shardmap.Cluster, opts Options, eventTrigger bool) (*Result, error) {
	txs := make([]*shardTx, 0, len(cl.Shards))
	defer func() {
		for _, st := range txs {
			_ = st.tx.Rollback(context.WithoutCancel(ctx)) // after Commit: a no-op
			_ = st.conn.Close(context.WithoutCancel(ctx))
		}
	}()
	// Open in config order, each taking the apply lock, so two applies queue.
	for _, sm := range cl.Shards {
		st, err := begin(ctx, sm, opts)
		if err != nil {
			return nil, err
		}
		txs = append(txs, st)
	}
	shards := make([]*Shard, len(txs))
	for i, st := range txs {
		shards[i] = &Shard{Cluster: cl.Name, Name: st.name}
		if err := readShard(ctx, st.tx, shards[i], opts.Schemas, opts.Skip); err != nil {
			return nil, fmt.Errorf("shard %s: read its slot and sequences: %w", st.name, err)
		}
	}
	if eventTrigger {
		if err := checkSuperuser(ctx, txs); err != nil {
			return nil, err
		}
	}

	// Lock what needs a restart, read the values again under the lock, and
	// plan with them; repeat if the values moved something new into the plan.
	locked := map[string]bool{}
	var res *Result
	for round := 0; ; round++ {
		var err error
		if res, err = plan(shards, opts); err != nil {
			return res, err
		}
		fresh := 0
		for _, c := range res.Changes {
			key := c.Shard + "\x00" + c.Sequence.Name
			if locked[key] {
				continue
			}
			st := txs[indexOf(shards, c.Shard)]
			// An ALTER takes the lock that nextval waits for; the increment
			// is set again below with the rest.
			if _, err := st.tx.Exec(ctx, fmt.Sprintf("ALTER SEQUENCE %s INCREMENT BY %d", c.Sequence.Name, opts.Stride)); err != nil {
				return nil, lockError(st.name, c.Sequence.Name, opts, err)
			}
			locked[key] = true
			fresh++
		}
		if fresh == 0 {
			break
		}
		if round == 3 {
			return nil, fmt.Errorf("the sequences keep changing while apply runs; try again")
		}
		for i, st := range txs {
			if err := readValues(ctx, st.tx, shards[i].Sequences); err != nil {
				return nil, fmt.Errorf("shard %s: %w", st.name, err)
			}
		}
	}

	for i, st := range txs {
		if slot, ok := res.NewSlots[st.name]; ok {
			if err := recordSlot(ctx, st.tx, cl.Name, st.name, slot, opts.Stride); err != nil {
				return nil, fmt.Errorf("shard %s: record slot %d: %w", st.name, slot, err)
			}
		}
		if eventTrigger {
			installed, err := installTrigger(ctx, st.tx, shards[i].Trigger, opts.Schemas)
			if err != nil {
				return nil, fmt.Errorf("shard %s: install the event trigger: %w", st.name, err)
			}
			if installed {
				res.Triggers = append(res.Triggers, st.name)
			}
		}
	}
	for _, c := range res.Changes {
		st := txs[indexOf(shards, c.Shard)]
		sql := fmt.Sprintf("ALTER SEQUENCE %s INCREMENT BY %d START WITH %d RESTART WITH %d NO CYCLE", c.Sequence.Name, opts.Stride, c.Restart, c.Restart)
		if _, err := st.tx.Exec(ctx, sql); err != nil {
			return nil, fmt.Errorf("shard %s: %s: %w", st.name, sql, err)
		}
	}

	var committed []string
	for _, st := range txs {
		if err := st.tx.Commit(ctx); err != nil {
			if len(committed) == 0 {
				return nil, fmt.Errorf("shard %s: commit: %w; nothing was changed", st.name, err)
			}
			return nil, fmt.Errorf("shard %s: commit: %w; shards %s were changed already: run apply again to finish", st.name, err, strings.Join(committed, ", "))
		}
		committed = append(committed, st.name)
	}
	return res, nil
}

func indexOf(shards []*Shard, name string) int {
	for i, sh := range shards {
		if sh.Name == name {
			return i
		}
	}
	panic("seqalloc: planned a change on an unknown shard " + name)
}

// begin connects to a shard, opens apply's transaction and takes the apply
// lock, waiting at most lock_timeout for another apply.
func begin(ctx context.Context, sm *shardmap.Shard, opts Options) (*shardTx, error) {
	conn, err := connect(ctx, sm.DSN, opts.ConnectTimeout)
	if err != nil {
		return nil, fmt.Errorf("shard %s: connect: %w", sm.Name, err)
	}
	tx, err := conn.Begin(ctx)
	if err == nil {
		_, err = tx.Exec(ctx, fmt.Sprintf("SET LOCAL lock_timeout = %d", opts.LockTimeout.Milliseconds()))
	}
	if err == nil {
		_, err = tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", int64(applyLockKey))
		if isLockTimeout(err) {
			err = fmt.Errorf("another pgrouter seq apply holds this shard (waited lock_timeout %v); or a shard earlier in router.yaml is the same database: %w", opts.LockTimeout, err)
		}
	}
	if err != nil {
		_ = conn.Close(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("shard %s: %w", sm.Name, err)
	}
	return &shardTx{name: sm.Name, conn: conn, tx: tx}, nil
}

func isLockTimeout(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == sqlstate.LockNotAvailable
}

func lockError(shard, seq string, opts Options, err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == sqlstate.DeadlockDetected {
		return fmt.Errorf("shard %s: locking %s deadlocked with a transaction of the application; nothing was changed: run apply again: %w", shard, seq, err)
	}
	if isLockTimeout(err) {
		return fmt.Errorf("shard %s: %s stayed in use by a transaction for lock_timeout (%v); nothing was changed: try again when it is quieter, or raise sequences.lock_timeout: %w",
			shard, seq, opts.LockTimeout, err)
	}
	return fmt.Errorf("shard %s: lock %s: %w", shard, seq, err)
}

// recordSlot writes the shard's slot into its own database.
func recordSlot(ctx context.Context, tx pgx.Tx, cluster, shard string, slot, stride int64) error {
	_, err := tx.Exec(ctx, `CREATE SCHEMA IF NOT EXISTS pgrouter;
CREATE TABLE IF NOT EXISTS `+slotTable+` (
	only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
	slot bigint NOT NULL CHECK (slot >= 0),
	stride bigint NOT NULL CHECK (stride > slot),
	cluster text NOT NULL,
	shard text NOT NULL,
	assigned_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE `+slotTable+` IS 'pgrouter: this shard''s sequence slot. Its sequences hand out values = slot+1 (mod stride). Do not copy this row to another shard.'`)
	if err != nil {
		return err
	}
	_, err = tx.Exec(ctx, "INSERT INTO "+slotTable+" (slot, stride, cluster, shard) VALUES ($1, $2, $3, $4)", slot, stride, cluster, shard)
	return err
}

// checkSuperuser refuses before anything changes when a shard's user cannot
// create event triggers.
func checkSuperuser(ctx context.Context, txs []*shardTx) error {
	var refused []string
	for _, st := range txs {
		var user string
		var super bool
		if err := st.tx.QueryRow(ctx, "SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user").Scan(&user, &super); err != nil {
			return fmt.Errorf("shard %s: %w", st.name, err)
		}
		if !super {
			refused = append(refused, fmt.Sprintf("shard %s: user %s is not a superuser", st.name, user))
		}
	}
	if len(refused) > 0 {
		return fmt.Errorf("%w: --event-trigger needs a superuser on every shard (PostgreSQL allows only superusers to create event triggers); nothing was changed:\n  %s\n"+
			"Run apply --event-trigger with superuser DSNs, or leave the flag off and run pgrouter seq apply after each migration that creates sequences",
			ErrRefused, strings.Join(refused, "\n  "))
	}
	return nil
}

// triggerBody is the event trigger function: every sequence created in a
// managed schema (CREATE SEQUENCE, serial and identity columns) is set to
// stride, starting at the first value of its shard's slot above what it has
// handed out already (ALTER TABLE ... ADD COLUMN bigserial numbers the
// existing rows first) and at or above its start.
const triggerBody = `
DECLARE
	own record;
	cmd record;
	seq record;
	floor bigint;
	first bigint;
BEGIN
	SELECT slot, stride INTO own FROM pgrouter.seq_slot;
	IF NOT FOUND THEN
		RETURN;
	END IF;
	FOR cmd IN SELECT objid FROM pg_event_trigger_ddl_commands()
			WHERE command_tag = 'CREATE SEQUENCE' AND object_type = 'sequence' AND schema_name = ANY (%s) LOOP
		SELECT seqstart, seqincrement INTO seq FROM pg_sequence WHERE seqrelid = cmd.objid;
		IF seq.seqincrement > 0 THEN
			EXECUTE format('SELECT CASE WHEN is_called THEN last_value ELSE %%s END FROM %%s', seq.seqstart - 1, cmd.objid::regclass) INTO floor;
			first := floor + 1 + ((own.slot - floor) %% own.stride + own.stride) %% own.stride;
			EXECUTE format('ALTER SEQUENCE %%s INCREMENT BY %%s START WITH %%s RESTART WITH %%s NO CYCLE',
				cmd.objid::regclass, own.stride, first, first);
		END IF;
	END LOOP;
END`

// installTrigger installs (or brings up to date) the event trigger; it
// reports whether it changed anything.
func installTrigger(ctx context.Context, tx pgx.Tx, exists bool, schemas []string) (bool, error) {
	quoted := make([]string, len(schemas))
	for i, s := range schemas {
		quoted[i] = "'" + strings.ReplaceAll(s, "'", "''") + "'"
	}
	body := fmt.Sprintf(triggerBody, "ARRAY["+strings.Join(quoted, ", ")+"]::text[]")
	var current *string
	if err := tx.QueryRow(ctx, "SELECT prosrc FROM pg_proc WHERE oid = to_regprocedure($1)", triggerFunc+"()").Scan(&current); err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return false, err
	}
	if exists && current != nil && *current == body {
		return false, nil
	}
	// Dollar quoting cannot clash: the body contains no dollar sign.
	_, err := tx.Exec(ctx, `CREATE SCHEMA IF NOT EXISTS pgrouter;
CREATE OR REPLACE FUNCTION `+triggerFunc+`() RETURNS event_trigger LANGUAGE plpgsql
	SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $pgrouter$`+body+`$pgrouter$`)
	if err != nil {
		return false, err
	}
	if !exists {
		_, err = tx.Exec(ctx, `CREATE EVENT TRIGGER `+triggerName+` ON ddl_command_end
	WHEN TAG IN ('CREATE SEQUENCE', 'CREATE TABLE', 'ALTER TABLE') EXECUTE FUNCTION `+triggerFunc+`()`)
	}
	return true, err
}
