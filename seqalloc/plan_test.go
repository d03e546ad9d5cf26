package seqalloc

import (
	"errors"
	"math"
	"strings"
	"testing"
)

var opts16 = Options{Stride: 16, Schemas: []string{"public"}, MinHeadroom: 100}

// fresh is a sequence as CREATE TABLE (id bigserial) leaves it.
func fresh(name string) *Sequence {
	return &Sequence{Name: name, Type: "bigint", Start: 1, Increment: 1, Min: 1, Max: 1<<63 - 1, LastValue: 1}
}

// strided is a sequence apply left in slot, with last handed out (0: none yet).
func strided(name string, slot, last int64) *Sequence {
	q := fresh(name)
	q.Increment, q.Start, q.LastValue = 16, slot+1, slot+1
	if last > 0 {
		q.LastValue, q.IsCalled = last, true
	}
	return q
}

func shard(name string, slot int64, seqs ...*Sequence) *Shard {
	sh := &Shard{Cluster: "main", Name: name, Slot: slot, Sequences: seqs}
	if slot >= 0 {
		sh.Stride, sh.RecordedAs = 16, name
	}
	return sh
}

func TestFirstAbove(t *testing.T) {
	cases := []struct{ floor, slot, stride, want int64 }{
		{0, 0, 16, 1}, {0, 3, 16, 4}, {0, 15, 16, 16}, {1, 0, 16, 17}, {16, 15, 16, 32},
		{100, 2, 16, 115}, {114, 2, 16, 115}, {115, 2, 16, 131}, {-5, 0, 16, 1}, {0, 0, 1, 1}, {41, 0, 1, 42},
	}
	cases = append(cases, []struct{ floor, slot, stride, want int64 }{
		{math.MinInt64, 0, 16, math.MinInt64 + 1}, {math.MinInt64, 3, 16, math.MinInt64 + 4}, {-17, 0, 16, -15},
		{math.MaxInt64 - 16, 14, 16, math.MaxInt64},
	}...)
	for _, c := range cases {
		got, fits := firstAbove(c.floor, c.slot, c.stride)
		if !fits || got != c.want || got <= c.floor || mod(got-1, c.stride) != c.slot {
			t.Errorf("firstAbove(%d, slot %d, stride %d) = %d, %v, want %d", c.floor, c.slot, c.stride, got, fits, c.want)
		}
	}
	for _, floor := range []int64{math.MaxInt64, math.MaxInt64 - 1, math.MaxInt64 - 15} {
		if v, fits := firstAbove(floor, 15, 16); fits {
			t.Errorf("firstAbove(%d, slot 15, stride 16) = %d: no such int64 exists", floor, v)
		}
	}
}

// TestHeadroomCannotOverflow: sequences whose range spans zero or all of
// int64 count their values without wrapping.
func TestHeadroomCannotOverflow(t *testing.T) {
	cases := []struct {
		q    Sequence
		want int64
	}{
		{Sequence{Increment: 1, Min: -1000, Max: math.MaxInt64, LastValue: -1000}, math.MaxInt64},
		{Sequence{Increment: 1, Min: 0, Max: math.MaxInt64, LastValue: 0}, math.MaxInt64},
		{Sequence{Increment: 16, Min: math.MinInt64, Max: math.MaxInt64, LastValue: math.MinInt64}, 1 << 60},
		{Sequence{Increment: 16, Min: 1, Max: 100, LastValue: 97, IsCalled: true}, 0},
		{Sequence{Increment: 16, Min: 1, Max: 100, LastValue: 84, IsCalled: true}, 1},
		{Sequence{Increment: -1, Min: -10, Max: -1, LastValue: -1}, 10},
	}
	for _, c := range cases {
		if got := c.q.Headroom(); got != c.want {
			t.Errorf("%+v: headroom %d, want %d", c.q, got, c.want)
		}
	}
}

func TestPlanFreshCluster(t *testing.T) {
	shards := []*Shard{shard("s0", -1, fresh("public.a")), shard("s1", -1, fresh("public.a")), shard("s2", -1, fresh("public.a"))}
	res, err := plan(shards, opts16)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.NewSlots) != 3 || res.NewSlots["s0"] != 0 || res.NewSlots["s1"] != 1 || res.NewSlots["s2"] != 2 {
		t.Fatalf("slots %v", res.NewSlots)
	}
	if len(res.Changes) != 3 {
		t.Fatalf("changes %+v", res.Changes)
	}
	for i, c := range res.Changes {
		if c.Restart != int64(i+1) || c.Why != NoSlot {
			t.Errorf("%s restarts at %d (%s), want %d", c.Shard, c.Restart, c.Why, i+1)
		}
	}
}

// TestPlanRestartsAboveEveryShard: values already handed out anywhere (the
// sequence or its column) are below every restart, and a new shard takes the
// lowest free slot, not its position in the file.
func TestPlanRestartsAboveEveryShard(t *testing.T) {
	used := fresh("public.a")
	used.LastValue, used.IsCalled = 500, true
	col := int64(900)
	withRows := strided("public.a", 2, 35) // 35 ≡ 3: slot 2
	withRows.ColumnMax = &col              // explicit ids inserted above the sequence
	shards := []*Shard{shard("s0", 0, strided("public.a", 0, 17)), shard("new", -1, used), shard("s2", 2, withRows)}
	res, err := plan(shards, opts16)
	if err != nil {
		t.Fatal(err)
	}
	if res.NewSlots["new"] != 1 || len(res.NewSlots) != 1 {
		t.Fatalf("slots %v, want new in the free slot 1", res.NewSlots)
	}
	got := map[string]int64{}
	for _, c := range res.Changes {
		got[c.Shard] = c.Restart
	}
	// Highest anywhere is 900 = 56·16+4: slot 1 (≡2) restarts at 914, slot 2 (≡3) at 915; s0 is fine.
	if len(got) != 2 || got["new"] != 914 || got["s2"] != 915 {
		t.Fatalf("restarts %v, want new 914 and s2 915 (s2 is behind its column)", got)
	}
}

// TestPlanRestartsEveryNewSlotSequence: a shard taking a free slot (here
// the slot of a retired shard whose rows, up to 4097, moved to s1) restarts
// even a sequence that already strides in that slot, above every value.
func TestPlanRestartsEveryNewSlotSequence(t *testing.T) {
	moved := int64(4097)
	s1 := strided("public.a", 1, 4098)
	s1.ColumnMax = &moved
	dumped := strided("public.a", 0, 0) // START 1 INCREMENT 16, from a schema dump
	res, err := plan([]*Shard{shard("new", -1, dumped), shard("s1", 1, s1)}, opts16)
	if err != nil {
		t.Fatal(err)
	}
	if res.NewSlots["new"] != 0 || len(res.Changes) != 1 || res.Changes[0].Shard != "new" || res.Changes[0].Why != NoSlot || res.Changes[0].Restart != 4113 {
		t.Fatalf("slots %v, changes %+v; want new restarted in slot 0 above 4097 (4113)", res.NewSlots, res.Changes)
	}
}

// TestPlanSkipsDescending: a descending sequence cannot stride; apply warns
// and leaves it, so it does not block the others (check reports it).
func TestPlanSkipsDescending(t *testing.T) {
	down := fresh("public.d")
	down.Increment, down.Min, down.Max, down.Start, down.LastValue = -1, -1000, -1, -1, -1
	res, err := plan([]*Shard{shard("s0", -1, down, fresh("public.a"))}, opts16)
	if err != nil || len(res.Changes) != 1 || res.Changes[0].Sequence.Name != "public.a" || len(res.Warnings) != 1 || !strings.Contains(res.Warnings[0], "public.d left alone") {
		t.Fatalf("plan: %+v, %v", res, err)
	}
}

func TestPlanLeavesConformingSequencesAlone(t *testing.T) {
	shards := []*Shard{shard("s0", 0, strided("public.a", 0, 33)), shard("s1", 1, strided("public.a", 1, 0))}
	res, err := plan(shards, opts16)
	if err != nil || res.Changed() {
		t.Fatalf("plan of a conforming cluster: %+v, %v", res, err)
	}
}

func TestPlanRefusals(t *testing.T) {
	small := fresh("public.s")
	small.Type, small.Max = "smallint", 32767
	small.table, small.col = "public.t", "id"
	top := int64(math.MaxInt64)
	full := fresh("public.f")
	full.table, full.col, full.ColumnMax = "public.f", "id", &top
	cases := []struct {
		name   string
		shards []*Shard
		want   []string
	}{
		{"duplicate slot", []*Shard{shard("s0", 1), {Cluster: "main", Name: "s3", Slot: 1, Stride: 16, RecordedAs: "s0"}},
			[]string{"shards s0, s3 (recorded as s0) all record slot 1", "on the copy, DELETE FROM pgrouter.seq_slot"}},
		{"stride changed", []*Shard{{Cluster: "main", Name: "s0", Slot: 0, Stride: 8}}, []string{"given slot 0 with stride 8, router.yaml says 16", "sequences.stride: 8"}},
		{"slots full", []*Shard{shard("a", -1), shard("b", -1)}, []string{"shard b: all 1 slots of stride 1 are taken", "cannot have more shards"}},
		{"top of bigint", []*Shard{shard("s0", -1, full)}, []string{"public.f (bigint", "already reach the top of bigint"}},
		{"type too small", []*Shard{shard("s0", -1, small), shard("s1", -1, small)},
			[]string{"public.s (smallint, maxvalue 32767) would have 2048 values left per shard", "(shards s0, s1)",
				"ALTER TABLE public.t ALTER COLUMN id TYPE bigint; ALTER SEQUENCE public.s AS bigint"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			o := opts16
			switch c.name {
			case "slots full":
				o.Stride = 1
			case "type too small":
				o.MinHeadroom = 10000
			}
			_, err := plan(c.shards, o)
			if !errors.Is(err, ErrRefused) {
				t.Fatalf("err = %v, want a refusal", err)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("refusal %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestJudge(t *testing.T) {
	col := int64(100)
	behind := strided("public.a", 1, 34) // next 50 ≤ 100 in the column
	behind.ColumnMax = &col
	below := strided("public.a", 1, 0)
	below.Start, below.LastValue = 34, 18 // restarted below where apply started it
	cycles := strided("public.a", 1, 18)
	cycles.Cycle = true
	exhausted := strided("public.a", 1, 18)
	exhausted.Max = 20
	cases := []struct {
		name   string
		q      *Sequence
		want   Verdict
		detail string
	}{
		{"ok", strided("public.a", 1, 18), OK, ""},
		{"not striding", fresh("public.a"), NotStriding, "increment 1, not the stride 16"},
		{"wrong slot", strided("public.a", 0, 17), WrongSlot, "next value 33 belongs to slot 0, this shard owns slot 1"},
		{"behind its column", behind, Reset, "next value 50 is not above 100"},
		{"restarted low", below, Reset, "next value 18 is below 34"},
		{"cycles", cycles, Cycles, "cycles"},
		{"descending", &Sequence{Name: "public.d", Increment: -1, Min: -100, Max: -1, LastValue: -1}, Descending, "ascending sequences only"},
		{"exhausted", exhausted, LowHeadroom, "0 values left"},
	}
	for _, c := range cases {
		got, detail := judge(c.q, 1, opts16)
		if got != c.want || !strings.Contains(detail, c.detail) {
			t.Errorf("%s: %s %q, want %s %q", c.name, got, detail, c.want, c.detail)
		}
	}
	rows := Judge([]*Shard{shard("s0", 0, strided("public.a", 0, 0)), shard("s1", 0, strided("public.a", 0, 0), strided("public.b", 0, 0)),
		{Cluster: "main", Name: "s2", Slot: -1, Err: errors.New("connection refused")}}, opts16)
	verdicts := map[string]Verdict{}
	for _, r := range rows {
		verdicts[r.Shard+" "+r.Sequence] = r.Verdict
	}
	want := map[string]Verdict{"s0 public.a": DuplicateSlot, "s0 public.b": Missing, "s1 public.a": DuplicateSlot, "s1 public.b": DuplicateSlot, "s2 ": Unreachable}
	if len(verdicts) != len(want) {
		t.Fatalf("rows %v, want %v", verdicts, want)
	}
	for k, v := range want {
		if verdicts[k] != v {
			t.Errorf("%s: %s, want %s", k, verdicts[k], v)
		}
	}
}
