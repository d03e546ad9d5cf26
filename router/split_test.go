package router

import (
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/pgrouter/pgrouter/config"
	"github.com/pgrouter/pgrouter/shardmap"
	"github.com/pgrouter/pgrouter/sqlstate"
)

const splitConfig = `
auth: {type: trust}
clusters:
  main:
    hash: hashtext
    partitions: 8
    shards:
      - {name: s0, dsn: "host=h0", partitions: "0-1"}
      - {name: s1, dsn: "host=h1", partitions: "2-3"}
      - {name: s2, dsn: "host=h2", partitions: "4-5"}
      - {name: s3, dsn: "host=h3", partitions: "6-7"}
functions:
  - {name: get_users, key: names, split: [names, extra]}
  - {name: by_ids, key: ids, split: [ids]}
  - {name: get_user, key: name, target: get_user_v2}
  - {name: by_login, key: login, key_transform: lower}
  - {name: by_num_text, key: n, key_transform: text}
  - {name: on_five, run_on: partition, partition: 5}
  - {name: by_hash, key: h, key_transform: value}
`

// splitRouter builds a router with split, target and key_transform
// functions over four shards.
func splitRouter(t testing.TB) *Router {
	cfg, err := config.Parse("router.yaml", []byte(splitConfig))
	if err != nil {
		t.Fatal(err)
	}
	m, err := shardmap.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cl, _ := m.Cluster("main")
	r := New(cl)
	cat := &Catalog{sigs: map[*shardmap.Function][]*Signature{}}
	for _, f := range cl.Functions {
		var s *Signature
		switch f.Name {
		case "get_users":
			s = &Signature{ArgNames: []string{"names", "extra", "tag"}, ArgTypes: []uint32{1009, 1009, OIDText}, ArgElems: []uint32{OIDText, OIDText, 0}}
		case "by_ids":
			s = &Signature{ArgNames: []string{"ids"}, ArgTypes: []uint32{1016}, ArgElems: []uint32{OIDInt8}}
		case "get_user", "by_login":
			s = &Signature{ArgNames: []string{f.KeyName}, ArgTypes: []uint32{OIDText}, ArgElems: []uint32{0}}
		case "on_five":
			s = &Signature{ArgNames: []string{"x"}, ArgTypes: []uint32{OIDText}, ArgElems: []uint32{0}}
		case "by_hash":
			s = &Signature{ArgNames: []string{"h"}, ArgTypes: []uint32{OIDInt8}, ArgElems: []uint32{0}}
		case "by_num_text":
			s = &Signature{ArgNames: []string{"n"}, ArgTypes: []uint32{OIDInt4}, ArgElems: []uint32{0}}
		}
		if err := resolveKey(f, s); err != nil {
			t.Fatal(err)
		}
		cat.sigs[f] = []*Signature{s}
	}
	r.SetCatalog(cat)
	return r
}

func TestParseArrayText(t *testing.T) {
	for _, tc := range []struct {
		in    string
		elems []string // "<NULL>" for NULL
		err   error
	}{
		{`{a,b}`, []string{"a", "b"}, nil},
		{` { a , "b c" , NULL, "NULL", "x\"y\\z", "" } `, []string{"a", "b c", "<NULL>", "NULL", `x"y\z`, ""}, nil},
		{`{}`, nil, nil},
		{`[1:2]={x,y}`, []string{"x", "y"}, nil},
		{`{1,-2,3}`, []string{"1", "-2", "3"}, nil},
		{`{{a},{b}}`, nil, errMultiDim},
		{`[1:1][1:1]={{a}}`, nil, errMultiDim},
		{`{a,"b}`, nil, errBadArrayText},
		{`a,b`, nil, errBadArrayText},
		{`{a"b}`, nil, errBadArrayText},
	} {
		v, err := parseArrayText([]byte(tc.in))
		if err != tc.err {
			t.Errorf("%s: error %v, want %v", tc.in, err, tc.err)
		}
		if err != nil {
			continue
		}
		var got []string
		for i, e := range v.elems {
			if v.nulls[i] {
				got = append(got, "<NULL>")
				continue
			}
			got = append(got, string(e))
		}
		if !slices.Equal(got, tc.elems) {
			t.Errorf("%s: elements %q, want %q", tc.in, got, tc.elems)
		}
		if err == nil && len(v.elems) > 0 {
			// Encoding every element and reading it back gives them again.
			idx := make([]int, len(v.elems))
			for i := range idx {
				idx[i] = i
			}
			back, err := parseArrayText(v.encode(idx))
			if err != nil || !slices.EqualFunc(back.elems, v.elems, func(a, b []byte) bool { return string(a) == string(b) }) || !slices.Equal(back.nulls, v.nulls) {
				t.Errorf("%s: encoded %s reads back as %q, %v", tc.in, v.encode(idx), back.elems, err)
			}
		}
	}
}

// binaryInt8Array encodes int8 values as a binary array parameter.
func binaryInt8Array(vals ...int64) []byte {
	b := binary.BigEndian.AppendUint32(nil, 1)
	b = binary.BigEndian.AppendUint32(b, 0)
	b = binary.BigEndian.AppendUint32(b, OIDInt8)
	b = binary.BigEndian.AppendUint32(b, uint32(len(vals)))
	b = binary.BigEndian.AppendUint32(b, 1)
	for _, v := range vals {
		b = binary.BigEndian.AppendUint32(b, 8)
		b = binary.BigEndian.AppendUint64(b, uint64(v))
	}
	return b
}

func TestRouteSplit(t *testing.T) {
	r := splitRouter(t)
	cl := r.Cluster
	shardOf := func(name string) string { return cl.ShardOfHash(cl.Hash.Text([]byte(name))).Name }
	names := []string{"alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"}
	want := map[string][]string{} // shard -> its names, in order
	for _, n := range names {
		want[shardOf(n)] = append(want[shardOf(n)], n)
	}
	if len(want) < 2 {
		t.Fatalf("test names all belong to one shard: %v", want)
	}

	check := func(t *testing.T, rt Route, read func(i int) []string) {
		t.Helper()
		if rt.Target != TargetSplit {
			t.Fatalf("target %v, want a split", rt.Target)
		}
		got := map[string][]string{}
		for i, sh := range rt.Split.Shards {
			got[sh.Name] = read(i)
		}
		for sh, ns := range want {
			if !slices.Equal(got[sh], ns) {
				t.Errorf("shard %s got %q, want %q", sh, got[sh], ns)
			}
		}
		if len(got) != len(want) {
			t.Errorf("shards %v, want %v", got, want)
		}
	}
	elems := func(b []byte) []string {
		v, err := parseArrayText(b)
		if err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		var out []string
		for _, e := range v.elems {
			out = append(out, string(e))
		}
		return out
	}

	t.Run("text parameters", func(t *testing.T) {
		p := r.Plan("SELECT * FROM get_users($1, $2, $3)", true)
		arr := "{" + strings.Join(names, ",") + "}"
		extra := strings.ToUpper(arr)
		params := bindParams(t, bind(nil, []byte(arr), []byte(extra), []byte("tag")))
		rt, err := r.Route(p, params)
		if err != nil {
			t.Fatal(err)
		}
		check(t, rt, func(i int) []string {
			got := bindParams(t, append([]byte("\x00\x00"), append(rt.Split.Params[i], 0, 0)...))
			a, _, _, _ := got.Param(0)
			x, _, _, _ := got.Param(1)
			tag, _, _, _ := got.Param(2)
			// The second split array follows the key's elements; the third
			// argument goes unchanged.
			if up := elems(x); !slices.Equal(up, strings.Split(strings.ToUpper(strings.Join(elems(a), ",")), ",")) || string(tag) != "tag" {
				t.Errorf("shard %s: extra %q, tag %q for names %q", rt.Split.Shards[i].Name, up, tag, elems(a))
			}
			return elems(a)
		})
		if rt.Split.SQL != nil {
			t.Errorf("parameters only, yet the text changes: %q", rt.Split.SQL)
		}
	})

	t.Run("constants", func(t *testing.T) {
		quoted := make([]string, len(names))
		for i, n := range names {
			quoted[i] = "'" + n + "'"
		}
		sql := "SELECT * FROM get_users(ARRAY[" + strings.Join(quoted, ", ") + "], '{" + strings.ToUpper(strings.Join(names, ",")) + "}'::text[], 'x')"
		p := r.Plan(sql, true)
		rt, err := r.Route(p, bindParams(t, nil))
		if err != nil {
			t.Fatal(err)
		}
		check(t, rt, func(i int) []string {
			// Each shard's text holds its names in both arrays.
			s := rt.Split.SQL[i]
			var ns []string
			for _, n := range names {
				if strings.Contains(s, "'"+n+"'") {
					ns = append(ns, n)
					if !strings.Contains(s, `"`+strings.ToUpper(n)+`"`) {
						t.Errorf("shard text %s lacks %s's element of the second array", s, n)
					}
				} else if strings.Contains(s, strings.ToUpper(n)) {
					t.Errorf("shard text %s has %s's element of the second array", s, n)
				}
			}
			return ns
		})
	})

	t.Run("binary int8 parameter", func(t *testing.T) {
		p := r.Plan("SELECT * FROM by_ids($1)", true)
		ids := []int64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
		rt, err := r.Route(p, bindParams(t, bind([]uint16{1}, binaryInt8Array(ids...))))
		if err != nil {
			t.Fatal(err)
		}
		if rt.Target != TargetSplit {
			t.Fatalf("target %v", rt.Target)
		}
		seen := 0
		for i, sh := range rt.Split.Shards {
			got := bindParams(t, append([]byte("\x00\x00"), append(rt.Split.Params[i], 0, 0)...))
			v, bin, _, _ := got.Param(0)
			a, err := parseArrayBinary(v)
			if err != nil || !bin {
				t.Fatalf("shard %s: %v", sh.Name, err)
			}
			for _, e := range a.elems {
				id := int64(binary.BigEndian.Uint64(e))
				if own := cl.ShardOfHash(cl.Hash.Int(id, 8)); own != sh {
					t.Errorf("id %d sent to %s, owned by %s", id, sh.Name, own.Name)
				}
				seen++
			}
		}
		if seen != len(ids) {
			t.Errorf("%d ids sent, want %d", seen, len(ids))
		}
	})

	t.Run("one shard goes unchanged", func(t *testing.T) {
		var same []string
		for _, n := range names {
			if shardOf(n) == shardOf("alice") {
				same = append(same, n)
			}
		}
		p := r.Plan("SELECT * FROM get_users($1, $1, 'x')", true)
		rt, err := r.Route(p, bindParams(t, bind(nil, []byte("{"+strings.Join(same, ",")+"}"))))
		if err != nil || rt.Target != TargetShard || rt.Shard.Name != shardOf("alice") {
			t.Fatalf("route %+v, %v; want shard %s", rt, err, shardOf("alice"))
		}
	})

	t.Run("empty and NULL go to any shard", func(t *testing.T) {
		p := r.Plan("SELECT * FROM get_users($1, $2, 'x')", true)
		for _, args := range [][][]byte{{[]byte("{}"), []byte("{}")}, {nil, nil}} {
			rt, err := r.Route(p, bindParams(t, bind(nil, args...)))
			if err != nil || rt.Target != TargetAny {
				t.Errorf("%q: route %v, %v; want any shard", args, rt.Target, err)
			}
		}
	})

	t.Run("errors", func(t *testing.T) {
		p := r.Plan("SELECT * FROM get_users($1, $2, 'x')", true)
		for _, tc := range []struct {
			a, b []byte
			code string
		}{
			{[]byte("{a,b}"), []byte("{c}"), sqlstate.InvalidParameterValue},
			{[]byte("{a,b}"), nil, sqlstate.InvalidParameterValue},
			{[]byte("{a,NULL}"), []byte("{c,d}"), sqlstate.NullValueNotAllowed},
			{[]byte("{{a},{b}}"), []byte("{c,d}"), sqlstate.FeatureNotSupported},
			{[]byte("{a,b"), []byte("{c,d}"), sqlstate.InvalidTextRepresentation},
		} {
			_, err := r.Route(p, bindParams(t, bind(nil, tc.a, tc.b)))
			if err == nil || err.Code != tc.code {
				t.Errorf("%s, %s: error %v, want %s", tc.a, tc.b, err, tc.code)
			}
		}
		if p := r.Plan("SELECT * FROM get_users(array_agg(x), $1, 'x') FROM t", true); p.Err == nil || p.Err.Code != sqlstate.FeatureNotSupported {
			t.Errorf("expression as split argument: %v", p.Err)
		}
	})
}

func TestRouteTargetAndKeyTransform(t *testing.T) {
	r := splitRouter(t)
	cl := r.Cluster
	p := r.Plan(`SELECT * FROM public.get_user('bob') JOIN get_user($1) ON true`, true)
	if want := `SELECT * FROM public.get_user_v2('bob') JOIN public.get_user_v2($1) ON true`; p.Rewritten != want {
		t.Fatalf("rewritten %q, want %q", p.Rewritten, want)
	}
	// The rewritten text routes as the original did, and is not rewritten again.
	q := r.Plan(p.Rewritten, true)
	if q.Rewritten != "" || len(q.Calls) != 2 {
		t.Fatalf("rewritten text: rewritten %q, %d calls", q.Rewritten, len(q.Calls))
	}
	rt, err := r.Route(q, bindParams(t, bind(nil, []byte("bob"))))
	if bob := cl.ShardOfHash(cl.Hash.Text([]byte("bob"))); err != nil || rt.Shard != bob {
		t.Fatalf("route %v, %v; want %s", rt.Shard, err, bob.Name)
	}
	if p := r.Plan(`SELECT 'get_user(1)', get_users_count()`, true); p.Rewritten != "" {
		t.Errorf("no call of get_user, yet rewritten: %q", p.Rewritten)
	}

	for _, login := range []string{"Alice", "BOB", "ÉLODIE", "Zoë"} {
		rt, err := r.Route(r.Plan("SELECT by_login($1)", true), bindParams(t, bind(nil, []byte(login))))
		if want := cl.ShardOfHash(cl.Hash.Text([]byte(strings.ToLower(login)))); err != nil || rt.Shard != want {
			t.Errorf("by_login(%s): %v, %v; want %s", login, rt.Shard, err, want.Name)
		}
	}
	for _, n := range []string{"42", " 42", "+42"} {
		rt, err := r.Route(r.Plan("SELECT by_num_text($1)", true), bindParams(t, bind(nil, []byte(n))))
		if want := cl.ShardOfHash(cl.Hash.Text([]byte("42"))); err != nil || rt.Shard != want {
			t.Errorf("by_num_text(%q): %v, %v; want %s", n, rt.Shard, err, want.Name)
		}
	}
	// RUN ON h: the value is the hash, masked (negative ones too).
	for h, part := range map[int64]int{5: 5, 13: 5, -1: 7, -8: 0, 1 << 40: 0} {
		rt, err := r.Route(r.Plan("SELECT by_hash($1)", true), bindParams(t, bind([]uint16{1}, int8Bytes(h))))
		if err != nil || rt.Partition != part {
			t.Errorf("by_hash(%d): partition %d, %v; want %d", h, rt.Partition, err, part)
		}
	}
	// RUN ON 5: always partition 5's shard, whatever the arguments.
	for _, arg := range []string{"a", "b", "zzz"} {
		rt, err := r.Route(r.Plan("SELECT on_five($1)", true), bindParams(t, bind(nil, []byte(arg))))
		if err != nil || rt.Shard != cl.ShardOf(5) || rt.Shard.Name != "s2" || rt.Partition != 5 {
			t.Errorf("on_five(%s): %+v, %v; want s2, partition 5", arg, rt, err)
		}
	}
	rt, err = r.Route(r.Plan("SELECT by_num_text($1)", true), bindParams(t, bind([]uint16{1}, int4Bytes(42))))
	if want := cl.ShardOfHash(cl.Hash.Text([]byte("42"))); err != nil || rt.Shard != want {
		t.Errorf("by_num_text(binary 42): %v, %v; want %s", rt.Shard, err, want.Name)
	}
}

// BenchmarkRouteSplit: routing a split call of 100 text keys sent as one
// text array parameter over four shards (hashing, grouping, and each
// shard's parameters written anew).
func BenchmarkRouteSplit(b *testing.B) {
	r := splitRouter(b)
	p := r.Plan("SELECT * FROM get_users($1, $2, 'x')", true)
	var names []string
	for i := range 100 {
		names = append(names, fmt.Sprintf("user%d", i))
	}
	arr := []byte("{" + strings.Join(names, ",") + "}")
	params := bindParams(b, bind(nil, arr, arr))
	b.ReportAllocs()
	for b.Loop() {
		if rt, err := r.Route(p, params); err != nil || rt.Target != TargetSplit {
			b.Fatal(rt.Target, err)
		}
	}
}
