package seqalloc

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/pgrouter/pgrouter/shardmap"
)

// Verdict is the judgement of one sequence on one shard.
type Verdict string

// Verdicts. Violations could hand out a value another shard (or this
// shard, earlier) already handed out; warnings cannot, but need attention.
const (
	OK            Verdict = "ok"
	LowHeadroom   Verdict = "low headroom" // warning
	Missing       Verdict = "missing"      // warning: on other shards, not this one
	Unreachable   Verdict = "unreachable"
	NoSlot        Verdict = "no slot"
	DuplicateSlot Verdict = "duplicate slot"
	StrideChanged Verdict = "stride changed"
	NotStriding   Verdict = "not striding"
	WrongSlot     Verdict = "wrong slot"
	Cycles        Verdict = "cycles"
	Reset         Verdict = "reset"
	Descending    Verdict = "descending" // apply cannot fix it: it skips it
)

// Violation reports whether the verdict means values could collide (or,
// for Unreachable, that nobody can tell).
func (v Verdict) Violation() bool { return v != OK && v != LowHeadroom && v != Missing }

// Row is one sequence on one shard, judged.
type Row struct {
	Cluster, Shard string
	Slot           int64     // -1: none recorded
	Sequence       string    // "" on an Unreachable row
	Seq            *Sequence // nil when Missing or Unreachable
	Verdict        Verdict
	Detail         string // why, and what to do; "" when OK
}

// Report is the outcome of one check of every cluster.
type Report struct {
	Stride    int64
	CheckedAt time.Time
	Shards    []*Shard
	Rows      []Row
}

// Violations counts the rows whose values could collide.
func (r *Report) Violations() int {
	n := 0
	for _, row := range r.Rows {
		if row.Verdict.Violation() {
			n++
		}
	}
	return n
}

// ShardOK says whether every sequence on the shard is safe; known is false
// when the report has nothing to say about it (the shard was not checked, or
// could not be read).
func (r *Report) ShardOK(cluster, shard string) (ok, known bool) {
	ok = true
	for _, row := range r.Rows {
		if row.Cluster == cluster && row.Shard == shard {
			if row.Verdict == Unreachable {
				return false, false
			}
			known = true
			if row.Verdict.Violation() {
				ok = false
			}
		}
	}
	if !known {
		for _, sh := range r.Shards {
			if sh.Cluster == cluster && sh.Name == shard {
				known = true // read, with no sequences
			}
		}
	}
	return ok, known
}

// Check reads every shard of the clusters and judges every sequence;
// opts.Stride must be at least 1.
func Check(ctx context.Context, clusters []*shardmap.Cluster, opts Options) *Report {
	r := &Report{Stride: opts.Stride, CheckedAt: time.Now()}
	for _, cl := range clusters {
		shards := Read(ctx, cl, opts)
		r.Shards = append(r.Shards, shards...)
		r.Rows = append(r.Rows, Judge(shards, opts)...)
	}
	return r
}

// Judge gives every sequence of one cluster's shards its verdict.
func Judge(shards []*Shard, opts Options) []Row {
	bySlot := slotsBy(shards)
	names := map[string]bool{}
	for _, sh := range shards {
		if sh.Err != nil {
			continue
		}
		for _, q := range sh.Sequences {
			names[q.Name] = true
		}
	}
	all := make([]string, 0, len(names))
	for n := range names {
		all = append(all, n)
	}
	sort.Strings(all)

	var rows []Row
	for _, sh := range shards {
		if sh.Err != nil {
			rows = append(rows, Row{Cluster: sh.Cluster, Shard: sh.Name, Slot: -1, Verdict: Unreachable,
				Detail: fmt.Sprintf("cannot read the shard: %v", sh.Err)})
			continue
		}
		shardVerdict, shardDetail := slotProblem(sh, bySlot[sh.Slot], opts.Stride)
		for _, name := range all {
			row := Row{Cluster: sh.Cluster, Shard: sh.Name, Slot: sh.Slot, Sequence: name, Seq: sh.sequence(name)}
			switch {
			case row.Seq == nil:
				row.Verdict, row.Detail = Missing, "the other shards have this sequence; run the migration that creates it here"
			case shardVerdict != OK:
				row.Verdict, row.Detail = shardVerdict, shardDetail
			default:
				row.Verdict, row.Detail = judge(row.Seq, sh.Slot, opts)
			}
			rows = append(rows, row)
		}
	}
	return rows
}

// slotsBy groups the readable shards that record a slot by that slot.
func slotsBy(shards []*Shard) map[int64][]*Shard {
	by := map[int64][]*Shard{}
	for _, sh := range shards {
		if sh.Err == nil && sh.Slot >= 0 {
			by[sh.Slot] = append(by[sh.Slot], sh)
		}
	}
	return by
}

// slotProblem says what is wrong with a shard's recorded slot (OK when
// nothing is); same lists every shard recording that slot.
func slotProblem(sh *Shard, same []*Shard, stride int64) (Verdict, string) {
	switch {
	case sh.Slot < 0:
		return NoSlot, "the shard has no slot recorded: run pgrouter seq apply"
	case sh.Stride != stride:
		return StrideChanged, fmt.Sprintf("the shard was given slot %d with stride %d, router.yaml says %d: the stride is fixed for the cluster's life; put sequences.stride: %d back",
			sh.Slot, sh.Stride, stride, sh.Stride)
	case len(same) > 1:
		names := make([]string, len(same))
		for i, o := range same {
			names[i] = o.Name
			if o.RecordedAs != "" && o.RecordedAs != o.Name {
				names[i] += fmt.Sprintf(" (recorded as %s)", o.RecordedAs)
			}
		}
		return DuplicateSlot, fmt.Sprintf("shards %s all record slot %d and hand out the same values; a database copied from another keeps its slot: on the copy, DELETE FROM %s and run pgrouter seq apply",
			strings.Join(names, ", "), sh.Slot, slotTable)
	}
	return OK, ""
}

// judge gives one sequence of a shard with a sound slot its verdict.
func judge(q *Sequence, slot int64, opts Options) (Verdict, string) {
	if q.Increment < 0 {
		return Descending, "pgrouter strides ascending sequences only, and this one counts down the same values on every shard: make it ascending, or keep it out of sequences.schemas"
	}
	if q.Increment != opts.Stride {
		return NotStriding, fmt.Sprintf("increment %d, not the stride %d: run pgrouter seq apply", q.Increment, opts.Stride)
	}
	if q.Cycle {
		return Cycles, "the sequence cycles, so it would hand out its values again: run pgrouter seq apply (it sets NO CYCLE)"
	}
	next, ok := q.Next()
	if ok {
		if got := mod(next-1, opts.Stride); got != slot {
			return WrongSlot, fmt.Sprintf("next value %d belongs to slot %d, this shard owns slot %d: run pgrouter seq apply", next, got, slot)
		}
		if next < q.Start {
			return Reset, fmt.Sprintf("next value %d is below %d, where pgrouter seq apply started it, so it repeats values: run pgrouter seq apply", next, q.Start)
		}
		if q.ColumnMax != nil && next <= *q.ColumnMax {
			return Reset, fmt.Sprintf("next value %d is not above %d, already in %s: run pgrouter seq apply", next, *q.ColumnMax, q.Column)
		}
	}
	if h := q.Headroom(); h < opts.MinHeadroom {
		fix := "move the column and the sequence to bigint"
		if q.Type == "bigint" {
			fix = "raise its MAXVALUE"
		}
		return LowHeadroom, fmt.Sprintf("%d values left on this shard (min_headroom %d): %s", h, opts.MinHeadroom, fix)
	}
	return OK, ""
}

// mod is a mod m in 0..m-1 for any sign of a.
func mod(a, m int64) int64 { return (a%m + m) % m }
