package router

import (
	"bytes"
	"slices"
	"strings"
	"testing"

	"github.com/pgrouter/pgrouter/shardmap"
)

func TestParseCommand(t *testing.T) {
	cases := []struct {
		sql  string
		want Command
	}{
		{"SET pgrouter.shard = 's1'", Command{Kind: CmdSetOver, Name: OverShard, Value: "s1"}},
		{"set session pgrouter.key to 'bob';", Command{Kind: CmdSetOver, Name: OverKey, Value: "bob"}},
		{"SET pgrouter.shard TO s2", Command{Kind: CmdSetOver, Name: OverShard, Value: "s2"}},
		{"SET pgrouter.shard = DEFAULT", Command{Kind: CmdResetOver, Name: OverShard, Value: "default"}},
		{"RESET pgrouter.shard", Command{Kind: CmdResetOver, Name: OverShard}},
		{"show pgrouter.key", Command{Kind: CmdShowOver, Name: OverKey}},
		{"SET pgrouter.shard = 's1'; SELECT 1", Command{}},
		{"SHOW search_path", Command{}},
		{"BEGIN", Command{Kind: CmdBegin, Text: "BEGIN"}},
		{" begin isolation level serializable ; ", Command{Kind: CmdBegin, Text: "begin isolation level serializable"}},
		{"START TRANSACTION READ ONLY", Command{Kind: CmdBegin, Text: "START TRANSACTION READ ONLY"}},
		{"BEGIN; SELECT 1", Command{}},
		{"COMMIT", Command{Kind: CmdCommit, Text: "COMMIT"}},
		{"end", Command{Kind: CmdCommit, Text: "end"}},
		{"COMMIT AND CHAIN", Command{}},
		{"COMMIT PREPARED 'x'", Command{}},
		{"ROLLBACK", Command{Kind: CmdRollback, Text: "ROLLBACK"}},
		{"ROLLBACK TO SAVEPOINT a", Command{Kind: CmdSavepoint, Name: "a", Value: SavepointRollback, Text: "ROLLBACK TO SAVEPOINT a"}},
		{"SET LOCAL statement_timeout = 5; SET search_path = app", Command{Kind: CmdSets, Tags: []string{"SET", "SET"}}},
		{"RESET work_mem", Command{Kind: CmdSets, Tags: []string{"RESET"}}},
		{"SET CONSTRAINTS ALL DEFERRED", Command{}},
		{"SET ROLE app", Command{}},
		{"RESET ALL", Command{}},
		{"SET x.y = 1; SELECT 2", Command{}},
		{"", Command{}},
	}
	for _, c := range cases {
		got := ParseCommand(c.sql, true)
		if got.Kind != c.want.Kind || got.Name != c.want.Name || got.Value != c.want.Value || got.Text != c.want.Text || !slices.Equal(got.Tags, c.want.Tags) {
			t.Errorf("ParseCommand(%q) = %+v, want %+v", c.sql, got, c.want)
		}
	}
}

// textValues are shard values in text format, "NULL" standing for SQL NULL.
func textValues(s ...string) [][]byte {
	out := make([][]byte, len(s))
	for i := range s {
		if s[i] != "NULL" {
			out[i] = []byte(s[i])
		}
	}
	return out
}

func TestReduce(t *testing.T) {
	vals := textValues
	cases := []struct {
		m    shardmap.Merge
		in   [][]byte
		want string
	}{
		{shardmap.MergeSum, vals("1", "2", "NULL", "39"), "42"},
		{shardmap.MergeSum, vals("9223372036854775807", "1"), "9223372036854775808"},
		{shardmap.MergeSum, vals("1.5", "-0.25", "3"), "4.25"},
		{shardmap.MergeSum, vals("-0.5", "0.25"), "-0.25"},
		{shardmap.MergeSum, vals("1e3", "1"), "1001"},
		{shardmap.MergeSum, vals("999.99", "0.01", "-1000"), "0.00"},
		{shardmap.MergeSum, vals("-999.5", "0.25", "-0.75"), "-1000.00"},
		{shardmap.MergeSum, vals("0012", "+3.", ".5"), "15.5"},
		{shardmap.MergeSum, vals("-0.001", "0.0005"), "-0.0005"},
		{shardmap.MergeSum, vals("-0", "0"), "0"},
		{shardmap.MergeSum, vals(strings.Repeat("9", numericMaxInt), "1"), "1" + strings.Repeat("0", numericMaxInt)},
		{shardmap.MergeSum, vals("NaN", "1"), "NaN"},
		{shardmap.MergeSum, vals("Infinity", "1.5e300"), "Infinity"},
		{shardmap.MergeMin, vals("-10", "-9.99", "3"), "-10"},
		{shardmap.MergeMax, vals("-0.5", "-0.25", "-1"), "-0.25"},
		{shardmap.MergeMax, vals("1.10", "1.1", "1.09"), "1.10"},
		{shardmap.MergeMin, vals("1e-5", "0.001"), "1e-5"},
		{shardmap.MergeSum, vals("NULL", "NULL"), "NULL"},
		{shardmap.MergeMin, vals("10", "9", "NULL", "11"), "9"},
		{shardmap.MergeMax, vals("10", "9.5", "100"), "100"},
		{shardmap.MergeMax, vals("b", "abc"), "b"},
		{shardmap.MergeBoolAnd, vals("t", "t", "f"), "f"},
		{shardmap.MergeBoolAnd, vals("t", "NULL"), "t"},
		{shardmap.MergeBoolOr, vals("f", "f", "t"), "t"},
	}
	for _, c := range cases {
		got, err := Reduce(c.m, c.in)
		if err != nil {
			t.Errorf("Reduce(%d, %q): %v", c.m, c.in, err)
			continue
		}
		s := string(got)
		if got == nil {
			s = "NULL"
		}
		if s != c.want {
			t.Errorf("Reduce(%d, %q) = %s, want %s", c.m, c.in, s, c.want)
		}
	}
	if _, err := Reduce(shardmap.MergeSum, vals("1", "x")); err == nil {
		t.Error("sum of a non-number succeeded")
	}
	for _, tooLong := range []string{strings.Repeat("9", numericMaxInt+1), "1." + strings.Repeat("9", numericMaxFrac+1)} {
		for _, m := range []shardmap.Merge{shardmap.MergeSum, shardmap.MergeMax} {
			if _, err := Reduce(m, vals("1", tooLong)); err == nil || !strings.Contains(err.Error(), "beyond numeric's range") {
				t.Errorf("Reduce(%d) of a %d-character value: %v; want an error naming numeric's range", m, len(tooLong), err)
			}
		}
	}
	if _, err := Reduce(shardmap.MergeBoolOr, vals("1")); err == nil {
		t.Error("bool_or of a non-boolean succeeded")
	}
}

func TestParseSavepoint(t *testing.T) {
	for _, tc := range []struct {
		sql        string
		verb, name string
	}{
		{"SAVEPOINT a", SavepointCreate, "a"},
		{"savepoint \"My Point\";", SavepointCreate, "My Point"},
		{"RELEASE a", SavepointRelease, "a"},
		{"release savepoint B", SavepointRelease, "b"},
		{"ROLLBACK TO a", SavepointRollback, "a"},
		{"rollback work to savepoint a", SavepointRollback, "a"},
		{"ROLLBACK TRANSACTION TO SAVEPOINT a", SavepointRollback, "a"},
		{"ROLLBACK", "", ""},
		{"SAVEPOINT a; SELECT 1", "", ""},
		{"RELEASE", "", ""},
	} {
		cmd := ParseCommand(tc.sql, true)
		if tc.verb == "" {
			if cmd.Kind == CmdSavepoint {
				t.Errorf("%q: read as a savepoint command", tc.sql)
			}
			continue
		}
		if cmd.Kind != CmdSavepoint || cmd.Value != tc.verb || cmd.Name != tc.name {
			t.Errorf("%q: %+v, want %s %q", tc.sql, cmd, tc.verb, tc.name)
		}
	}
}

// BenchmarkReduceLongNumeric: summing values of numeric's full length is
// linear in their digits (big.Int's parsing was quadratic).
func BenchmarkReduceLongNumeric(b *testing.B) {
	v := [][]byte{[]byte(strings.Repeat("9", numericMaxInt) + "." + strings.Repeat("9", numericMaxFrac)), []byte("1")}
	b.SetBytes(int64(len(v[0])))
	for b.Loop() {
		if _, err := Reduce(shardmap.MergeSum, v); err != nil {
			b.Fatal(err)
		}
	}
}

// TestMerged: what a merged fan-out sends, from the shards' values, in
// text and in binary, and the SQLSTATE of what cannot be merged or sent.
func TestMerged(t *testing.T) {
	v := textValues
	for _, tc := range []struct {
		m      shardmap.Merge
		values [][]byte
		oid    uint32
		binary bool
		want   []byte
		code   string
	}{
		{shardmap.MergeSum, v("40", "2"), OIDInt8, false, []byte("42"), ""},
		{shardmap.MergeSum, v("40", "2"), OIDInt8, true, []byte{0, 0, 0, 0, 0, 0, 0, 42}, ""},
		{shardmap.MergeSum, v("NULL", "NULL"), OIDInt8, true, nil, ""},
		{shardmap.MergeMax, v("b", "a"), OIDText, true, []byte("b"), ""},
		{shardmap.MergeBoolAnd, v("t", "f"), OIDBool, true, []byte{0}, ""},
		{shardmap.MergeSum, v("1", "x"), OIDInt8, false, nil, "42804"},
		{shardmap.MergeSum, v("2147483647", "1"), OIDInt4, true, nil, "0A000"},
		{shardmap.MergeMax, v("1", "2"), 1186 /* interval */, true, nil, "0A000"},
	} {
		got, err := Merged("public.f", tc.m, tc.values, tc.oid, tc.binary)
		code := ""
		if err != nil {
			code = err.Code
			if !strings.Contains(err.Message, "public.f") {
				t.Errorf("error %q does not name the function", err.Message)
			}
		}
		if code != tc.code || !bytes.Equal(got, tc.want) || (tc.want == nil) != (got == nil) {
			t.Errorf("Merged(%d, %q, oid %d, binary %v) = %v, %v; want %v, %q", tc.m, tc.values, tc.oid, tc.binary, got, err, tc.want, tc.code)
		}
	}
}
