package router

import (
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/pgrouter/pgrouter/config"
	"github.com/pgrouter/pgrouter/shardmap"
	"github.com/pgrouter/pgrouter/wire"
)

const routeConfig = `
auth: {type: trust}
clusters:
  main:
    hash: %s
    partitions: 8
    shards:
      - {name: s0, dsn: "host=h0", partitions: "0-1"}
      - {name: s1, dsn: "host=h1", partitions: "2-3"}
      - {name: s2, dsn: "host=h2", partitions: "4-5"}
      - {name: s3, dsn: "host=h3", partitions: "6-7"}
functions:
  - {name: get_user, key: i_username}
  - {name: add_user, key: i_username}
  - {name: user_by_id, key: 1}
  - {name: by_part, run_on: partition, key: p}
  - {name: count_users, run_on: all, merge: sum}
  - {name: any_fn, run_on: any}
  - {name: app.get_user, key: i_username}
  - {name: by_uuid, key: id}
`

// testRouter builds a router over four shards with a hand-made catalog.
func testRouter(t testing.TB, hash string) *Router {
	cfg, err := config.Parse("router.yaml", []byte(strings.Replace(routeConfig, "%s", hash, 1)))
	if err != nil {
		t.Fatal(err)
	}
	m, err := shardmap.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cl, _ := m.Cluster("main")
	r := New(cl)
	sig := func(names []string, types []uint32) *Signature {
		return &Signature{ArgNames: names, ArgTypes: types}
	}
	cat := &Catalog{sigs: map[*shardmap.Function][]*Signature{}}
	for _, f := range cl.Functions {
		var s *Signature
		switch f.Name {
		case "get_user":
			s = sig([]string{"i_username"}, []uint32{OIDText})
		case "add_user":
			s = sig([]string{"i_username", "i_email"}, []uint32{OIDText, OIDText})
		case "user_by_id":
			s = sig([]string{"i_id"}, []uint32{OIDInt8})
		case "by_part":
			s = sig([]string{"p"}, []uint32{OIDInt4})
		case "by_uuid":
			s = sig([]string{"id"}, []uint32{OIDUUID})
		default:
			s = sig(nil, nil)
		}
		if err := resolveKey(f, s); err != nil {
			t.Fatal(err)
		}
		cat.sigs[f] = []*Signature{s}
	}
	r.SetCatalog(cat)
	return r
}

// bind encodes a Bind body with the given parameters (nil = NULL) and formats.
func bind(formats []uint16, params ...[]byte) []byte {
	b := []byte("\x00\x00")
	b = binary.BigEndian.AppendUint16(b, uint16(len(formats)))
	for _, f := range formats {
		b = binary.BigEndian.AppendUint16(b, f)
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(params)))
	for _, p := range params {
		if p == nil {
			b = binary.BigEndian.AppendUint32(b, 0xffffffff)
			continue
		}
		b = binary.BigEndian.AppendUint32(b, uint32(len(p)))
		b = append(b, p...)
	}
	return binary.BigEndian.AppendUint16(b, 0)
}

// bindParams reads a Bind body as the proxy does before routing.
func bindParams(t testing.TB, body []byte) wire.BindMsg {
	t.Helper()
	if body == nil {
		return wire.BindMsg{} // a simple Query: no parameters
	}
	m, err := wire.ReadBind(body)
	if err != nil {
		t.Fatalf("test Bind: %v", err)
	}
	return m
}

func int8Bytes(v int64) []byte { return binary.BigEndian.AppendUint64(nil, uint64(v)) }
func int4Bytes(v int32) []byte { return binary.BigEndian.AppendUint32(nil, uint32(v)) }

func TestRoute(t *testing.T) {
	for _, hash := range []string{"xxhash64", "hashtext"} {
		r := testRouter(t, hash)
		cl := r.Cluster
		bob := cl.ShardOfHash(cl.Hash.Text([]byte("bob")))
		n42 := cl.ShardOfHash(cl.Hash.Int(42, 8))
		uid := cl.ShardOfHash(cl.Hash.Text([]byte("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")))
		textBob := bind(nil, []byte("bob"))
		cases := []struct {
			sql    string
			params []byte
			target Target
			shard  *shardmap.Shard
			code   string
		}{
			{"SELECT get_user('bob')", nil, TargetShard, bob, ""},
			{"SELECT * FROM get_user($1)", textBob, TargetShard, bob, ""},
			{"SELECT u.email FROM public.get_user($1) u WHERE u.x > 1", textBob, TargetShard, bob, ""},
			{"select GET_USER(E'b\\x6fb')", nil, TargetShard, bob, ""},
			{"SELECT get_user($$bob$$)", nil, TargetShard, bob, ""},
			{"SELECT get_user(U&'b\\006Fb')", nil, TargetShard, bob, ""},
			{"SELECT get_user('b'\n'ob')", nil, TargetShard, bob, ""},
			{`SELECT "get_user"('bob')`, nil, TargetShard, bob, ""},
			{"SELECT add_user(i_email => 'x@y', i_username => $1)", textBob, TargetShard, bob, ""},
			{"SELECT add_user(i_username := 'bob', i_email := lower('X'))", nil, TargetShard, bob, ""},
			{"SELECT get_user($1::text)", textBob, TargetShard, bob, ""},
			{"SELECT get_user(CAST($1 AS text))", textBob, TargetShard, bob, ""},
			{"SELECT get_user('bob'::pg_catalog.text)", nil, TargetShard, bob, ""},
			{"SELECT get_user((('bob')))", nil, TargetShard, bob, ""},
			{"SELECT get_user(text 'bob')", nil, TargetShard, bob, ""},
			{"CALL get_user('bob')", nil, TargetShard, bob, ""},
			{"SELECT user_by_id(42)", nil, TargetShard, n42, ""},
			{"SELECT user_by_id('42')", nil, TargetShard, n42, ""},
			{"SELECT user_by_id($1)", bind(nil, []byte(" 42 ")), TargetShard, n42, ""},
			{"SELECT user_by_id($1)", bind([]uint16{1}, int8Bytes(42)), TargetShard, n42, ""},
			{"SELECT user_by_id($1::int4)", bind([]uint16{1}, int4Bytes(42)), TargetShard, n42, ""},
			{"SELECT user_by_id($1)", bind(nil, []byte("forty-two")), 0, nil, "22P02"},
			{"SELECT by_uuid('A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11')", nil, TargetShard, uid, ""},
			{"SELECT by_uuid($1)", bind([]uint16{1}, []byte{0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38, 0x0a, 0x11}), TargetShard, uid, ""},
			{"SELECT get_user(NULL)", nil, 0, nil, "22004"},
			{"SELECT get_user($1)", bind(nil, nil), 0, nil, "22004"},
			{"SELECT get_user(lower($1))", textBob, 0, nil, "0A000"},
			{"SELECT get_user($2)", textBob, 0, nil, "08P01"},
			{"SELECT get_user('bob'), get_user('bob')", nil, TargetShard, bob, ""},
			{"SELECT by_part(5)", nil, TargetShard, cl.ShardOf(5), ""},
			{"SELECT by_part($1)", bind(nil, []byte("6")), TargetShard, cl.ShardOf(6), ""},
			{"SELECT by_part(8)", nil, 0, nil, "22003"},
			{"SELECT count_users()", nil, TargetAll, nil, ""},
			{"SELECT count_users(), get_user('a')", nil, 0, nil, "0A000"},
			{"SELECT any_fn()", nil, TargetAny, nil, ""},
			{"SELECT any_fn(), get_user('bob')", nil, TargetShard, bob, ""},
			{"SELECT app.get_user('bob')", nil, TargetShard, bob, ""},
			{"SELECT other.get_user('bob')", nil, TargetDefault, nil, ""},
			{`SELECT "GET_USER"('bob')`, nil, TargetDefault, nil, ""},
			{"SELECT 1", nil, TargetAny, nil, ""},
			{"SELECT 1 AS one, 'x'::text, $1::int", bind(nil, []byte("1")), TargetAny, nil, ""},
			{"SELECT now()", nil, TargetAny, nil, ""},
			{"SELECT pg_catalog.now(), version(), current_user", nil, TargetAny, nil, ""},
			{"SELECT public.now()", nil, TargetDefault, nil, ""},
			{"SELECT pg_sleep(1)", nil, TargetDefault, nil, ""},
			{"SELECT nextval('s')", nil, TargetDefault, nil, ""},
			{"SELECT my_fn()", nil, TargetDefault, nil, ""},
			{"SELECT * FROM users", nil, TargetDefault, nil, ""},
			{"SHOW search_path; SET work_mem = '1MB'; BEGIN; COMMIT", nil, TargetAny, nil, ""},
			{"", nil, TargetAny, nil, ""},
			{"SELECT 'get_user(''bob'')'", nil, TargetAny, nil, ""},
			{"-- get_user('bob')\nSELECT 1", nil, TargetAny, nil, ""},
			{"UPDATE users SET x = 1; SELECT get_user('bob')", nil, TargetShard, bob, ""},
		}
		for _, tc := range cases {
			p := r.Plan(tc.sql, true)
			got, err := r.Route(p, bindParams(t, tc.params))
			switch {
			case tc.code != "":
				if err == nil || err.Code != tc.code {
					t.Errorf("%s %q: got %+v, %v; want SQLSTATE %s", hash, tc.sql, got, err, tc.code)
				}
			case err != nil:
				t.Errorf("%s %q: %v", hash, tc.sql, err)
			case got.Target != tc.target || got.Shard != tc.shard:
				t.Errorf("%s %q: target %d shard %v; want %d %v", hash, tc.sql, got.Target, got.Shard, tc.target, tc.shard)
			}
		}
	}
}

func TestRouteErrorsNameFunctionAndArgument(t *testing.T) {
	r := testRouter(t, "xxhash64")
	_, err := r.Route(r.Plan("SELECT get_user(lower($1))", true), wire.BindMsg{})
	if err == nil || !strings.Contains(err.Message, "i_username") || !strings.Contains(err.Message, "public.get_user") {
		t.Fatalf("%v", err)
	}
	_, err = r.Route(r.Plan("SELECT get_user(NULL)", true), wire.BindMsg{})
	if err == nil || err.Message != "pgrouter: shard key i_username of public.get_user is NULL" {
		t.Fatalf("%v", err)
	}
}

func TestOverrideComment(t *testing.T) {
	for sql, want := range map[string]Override{
		"/* pgrouter: shard=s1 */ SELECT * FROM t": {Shard: "s1", Set: true},
		"  /*pgrouter: key=bob*/ UPDATE t":         {Key: "bob", Set: true},
		"/* other */ SELECT 1":                     {},
		"SELECT 1 /* pgrouter: shard=s1 */":        {},
	} {
		if got := parseOverride(sql); got != want {
			t.Errorf("%q: %+v", sql, got)
		}
	}
}

func TestCatalogNotLoaded(t *testing.T) {
	r := testRouter(t, "xxhash64")
	r.SetCatalog(nil)
	_, err := r.Route(r.Plan("SELECT get_user('bob')", true), wire.BindMsg{})
	if err == nil || err.Code != "55000" {
		t.Fatalf("%v", err)
	}
}

// BenchmarkRouteCached measures the routing decision for a statement seen
// before: plan cache lookup, key read from the Bind, hash and shard.
func BenchmarkRouteCached(b *testing.B) {
	r := testRouter(b, "hashtext")
	sql := "SELECT * FROM get_user($1)"
	params := bindParams(b, bind(nil, []byte("some.user@example.com")))
	r.Plan(sql, true)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		p := r.Plan(sql, true)
		if _, err := r.Route(p, params); err != nil {
			b.Fatal(err)
		}
	}
}

func TestRouteCachedDoesNotAllocate(t *testing.T) {
	r := testRouter(t, "xxhash64")
	sql := "SELECT user_by_id($1)"
	params := bindParams(t, bind([]uint16{1}, int8Bytes(7)))
	r.Plan(sql, true)
	if n := testing.AllocsPerRun(200, func() {
		if _, err := r.Route(r.Plan(sql, true), params); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Fatalf("%v allocations per cached routing decision", n)
	}
	// From a message's bytes, as the proxy plans a Query or a Parse: a
	// statement seen before is found without copying them.
	msg := []byte(sql)
	if n := testing.AllocsPerRun(200, func() {
		if p := r.PlanBytes(msg, true); p.SQL != sql {
			t.Fatal("another plan")
		}
	}); n != 0 {
		t.Fatalf("%v allocations per cached plan from bytes", n)
	}
}

// FuzzRoute plans and routes arbitrary statements against the test
// cluster: no panics, and any shard chosen belongs to the cluster.
func FuzzRoute(f *testing.F) {
	for _, s := range []string{"SELECT get_user('bob')", "SELECT add_user(i_email => $2, i_username => $1::text)", "SELECT user_by_id(CAST($1 AS int8))", "SELECT by_part(-1)", "SELECT count_users(); x", "/* pgrouter: shard=s1 */ SELECT get_user(", "SELECT get_user((('a'"} {
		f.Add(s, []byte("42"))
	}
	r := testRouter(f, "hashtext")
	f.Fuzz(func(t *testing.T, sql string, param []byte) {
		p := analyze(sql, true, r.index, r.Catalog())
		route, err := r.Route(p, bindParams(t, bind(nil, param, param)))
		if err == nil && route.Target == TargetShard {
			if s, ok := r.Cluster.ShardNamed(route.Shard.Name); !ok || s != route.Shard {
				t.Fatalf("%q routed to a shard outside the cluster", sql)
			}
		}
	})
}

// TestPlanCacheIsBounded: the plan cache keeps neither long statements nor
// more than planCacheBytes of text, however many distinct statements
// clients send (40 distinct 8 MB statements once stayed cached, 440 MB).
func TestPlanCacheIsBounded(t *testing.T) {
	r := testRouter(t, "hashtext")
	long := "select get_user('a') -- " + strings.Repeat("x", 4<<20)
	if p := r.Plan(long, true); len(p.Calls) != 1 {
		t.Fatalf("long statement planned %d calls; want 1", len(p.Calls))
	}
	if len(r.cache[0])+len(r.cache[1]) != 0 {
		t.Fatalf("a %d-byte statement was cached", len(long))
	}
	pad := strings.Repeat("y", planCacheMaxText-100)
	for i := range 2000 {
		r.Plan("select get_user('a') -- "+strconv.Itoa(i)+pad, true)
		if r.cacheBytes > planCacheBytes {
			t.Fatalf("after %d statements the cache holds %d bytes; limit %d", i+1, r.cacheBytes, planCacheBytes)
		}
	}
	held := 0
	for k := range r.cache[1] {
		held += len(k)
	}
	if held > planCacheBytes || len(r.cache[1]) == 0 {
		t.Fatalf("cache holds %d statements, %d bytes of text; want some, at most %d bytes", len(r.cache[1]), held, planCacheBytes)
	}
	short := "select get_user($1)"
	first := r.Plan(short, true)
	if second := r.Plan(short, true); first != second {
		t.Fatal("a short statement is not cached")
	}
}

// BenchmarkPlanLiteralKeys measures what a simple-protocol client costs
// when every call names its key as a literal (pgbench's :id, most ORMs in
// simple mode): each text is new, so it is planned from scratch.
func BenchmarkPlanLiteralKeys(b *testing.B) {
	r := testRouter(b, "hashtext")
	texts := make([]string, 1<<16)
	for i := range texts {
		texts[i] = fmt.Sprintf("select * from get_user('user%d')", i)
	}
	b.ReportAllocs()
	b.ResetTimer()
	i := 0
	for b.Loop() {
		p := r.Plan(texts[i&(len(texts)-1)], true)
		if _, err := r.Route(p, wire.BindMsg{}); err != nil {
			b.Fatal(err)
		}
		i++
	}
}
