package seqalloc

import (
	"errors"
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
		sh.Stride = 16
	}
	return sh
}

func TestFirstAbove(t *testing.T) {
	cases := []struct{ floor, slot, stride, want int64 }{
		{0, 0, 16, 1}, {0, 3, 16, 4}, {0, 15, 16, 16}, {1, 0, 16, 17}, {16, 15, 16, 32},
		{100, 2, 16, 115}, {114, 2, 16, 115}, {115, 2, 16, 131}, {-5, 0, 16, 1}, {0, 0, 1, 1}, {41, 0, 1, 42},
	}
	for _, c := range cases {
		got := firstAbove(c.floor, c.slot, c.stride)
		if got != c.want || got <= c.floor || mod(got-1, c.stride) != c.slot {
			t.Errorf("firstAbove(%d, slot %d, stride %d) = %d, want %d", c.floor, c.slot, c.stride, got, c.want)
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
		if c.Restart != int64(i+1) || c.Why != NoSlot && c.Why != NotStriding {
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
	down := fresh("public.d")
	down.Increment, down.Min, down.Max, down.Start, down.LastValue = -1, -1000, -1, -1, -1
	cases := []struct {
		name   string
		shards []*Shard
		want   []string
	}{
		{"duplicate slot", []*Shard{shard("s0", 1), shard("s1", 1)}, []string{"shards s0 and s1 both record slot 1", "DELETE FROM pgrouter.seq_slot"}},
		{"stride changed", []*Shard{{Cluster: "main", Name: "s0", Slot: 0, Stride: 8}}, []string{"given with stride 8, router.yaml says 16", "sequences.stride: 8"}},
		{"slots full", []*Shard{shard("a", -1), shard("b", -1)}, []string{"shard b: all 1 slots are taken"}},
		{"type too small", []*Shard{shard("s0", -1, small), shard("s1", -1, small)},
			[]string{"public.s (smallint, maxvalue 32767) would have 2048 values left per shard", "(shards s0, s1)",
				"ALTER TABLE public.t ALTER COLUMN id TYPE bigint; ALTER SEQUENCE public.s AS bigint"}},
		{"descending", []*Shard{shard("s0", -1, down)}, []string{"public.d counts down"}},
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
