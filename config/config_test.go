package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestExampleFileLoads keeps router.yaml.example loadable, so it stays true.
func TestExampleFileLoads(t *testing.T) {
	t.Setenv("S0_PASSWORD", "pw0")
	t.Setenv("S1_PASSWORD", "pw1")
	t.Setenv("REFSYNC_PASSWORD", "pw2")
	dir := t.TempDir()
	data, err := os.ReadFile("../router.yaml.example")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "router.yaml")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "users.txt"), []byte(`"app" "secret"`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	def := Defaults()
	if cfg.Pool != def.Pool || cfg.Listen != def.Listen || cfg.Log != def.Log {
		t.Fatalf("the example's values differ from the defaults:\n%+v\n%+v", cfg.Pool, def.Pool)
	}
	sh := cfg.Clusters["main"].Shards[1]
	if sh.DSN != "postgres://app:pw1@10.0.0.2:5432/app" {
		t.Fatalf("dsn %q: ${ENV} not expanded", sh.DSN)
	}
	if len(sh.PartitionList) != 8 || sh.PartitionList[0] != 8 {
		t.Fatalf("partitions %v", sh.PartitionList)
	}
	var seqDefaults Sequences
	seqDefaults.setDefaults()
	if s := cfg.Sequences; s == nil || s.Stride != seqDefaults.Stride || s.MinHeadroom != seqDefaults.MinHeadroom ||
		s.CheckInterval != seqDefaults.CheckInterval || s.LockTimeout != seqDefaults.LockTimeout || len(s.Schemas) != 1 || s.Schemas[0] != "public" {
		t.Fatalf("the example's sequences section differs from the defaults: %+v", cfg.Sequences)
	}
	if cfg.Auth.UsersFile != filepath.Join(dir, "users.txt") {
		t.Fatalf("users_file not resolved next to the config: %q", cfg.Auth.UsersFile)
	}
}

const minimal = `
auth: {type: trust}
clusters:
  main:
    partitions: 4
    shards:
      - {name: s0, dsn: "host=127.0.0.1 port=5432", partitions: "0-1"}
      - {name: s1, dsn: "host=127.0.0.1 port=5433", partitions: "2,3"}
`

func TestDefaultsAndUnits(t *testing.T) {
	cfg, err := Parse("router.yaml", []byte(minimal+`
pool:
  query_wait_timeout: 2
  server_idle_timeout: 1m30s
  max_message_size: 16MB
`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Pool.QueryWaitTimeout.D() != 2*time.Second || cfg.Pool.ServerIdleTimeout.D() != 90*time.Second {
		t.Fatalf("durations %v %v", cfg.Pool.QueryWaitTimeout, cfg.Pool.ServerIdleTimeout)
	}
	if cfg.Pool.MaxMessageSize != 16<<20 || cfg.Pool.Size != 20 || cfg.Pool.Mode != ModeTransaction || cfg.DefaultRoute != RouteError {
		t.Fatalf("defaults not applied: %+v", cfg.Pool)
	}
}

func TestValidationErrorsNameTheKey(t *testing.T) {
	cases := []struct {
		name, yaml, want string
	}{
		{"power of two", strings.Replace(minimal, "partitions: 4", "partitions: 12", 1),
			"router.yaml:5: clusters.main.partitions: 12 is not a power of two"},
		{"unknown key with hint", minimal + "pool:\n  sise: 3\n",
			"router.yaml:10: pool.sise: unknown key (did you mean size?)"},
		{"wrong type", minimal + "pool:\n  size: many\n",
			`router.yaml:10: pool.size: "many" is not an integer`},
		{"bad duration", minimal + "pool:\n  query_wait_timeout: soon\n",
			`pool.query_wait_timeout: "soon" is not a duration`},
		{"zero wait", minimal + "pool:\n  query_wait_timeout: 0\n",
			"pool.query_wait_timeout: must be above zero"},
		{"overlap", strings.Replace(minimal, `partitions: "2,3"`, `partitions: "1-3"`, 1),
			"router.yaml:8: clusters.main.shards[1].partitions: partition 1 is already assigned to shard s0"},
		{"gap", strings.Replace(minimal, `partitions: "2,3"`, `partitions: "2"`, 1),
			"router.yaml:6: clusters.main.shards: partitions 3 are not assigned to any shard"},
		{"out of range", strings.Replace(minimal, `partitions: "2,3"`, `partitions: "2-4"`, 1),
			`clusters.main.shards[1].partitions: "2-4" is outside 0-3`},
		{"duplicate shard", strings.Replace(minimal, "name: s1", "name: s0", 1),
			`clusters.main.shards[1].name: "s0" is already a shard of cluster main`},
		{"bad route", minimal + "default_route: s9\n",
			`router.yaml:9: default_route: "s9" is not error, any, or a shard of cluster main`},
		{"mode", minimal + "pool:\n  mode: statment\n",
			`pool.mode: "statment" is not one of session, transaction, statement`},
		{"users file required", strings.Replace(minimal, "type: trust", "type: md5", 1),
			"router.yaml:2: auth.users_file: required when auth.type is md5"},
		{"missing env", strings.Replace(minimal, "port=5433", "port=5433 password=${PGROUTER_TEST_UNSET}", 1),
			"clusters.main.shards[1].dsn: environment variable PGROUTER_TEST_UNSET is not set"},
		{"reserved cluster", strings.Replace(minimal, "main:", "pgrouter:", 1),
			`clusters.pgrouter: "pgrouter" is reserved for the admin console`},
		{"fallback", minimal + "fallback_cluster: other\n",
			`fallback_cluster: "other" is not a cluster`},
		{"peers without peer_id", minimal + "peers: {1: \"a:6432\", 2: \"b:6432\"}\n", "peer_id: required with peers"},
		{"peers without self", minimal + "peer_id: 3\npeers: {1: \"a:6432\", 2: \"b:6432\"}\n", "peers: has no entry for this instance's peer_id 3"},
		{"peer id range", minimal + "peer_id: 1\npeers: {1: \"a:6432\", 16384: \"b:6432\"}\n", "peers.16384: peer id 16384 is not between 1 and 16383"},
		{"peer address", minimal + "peer_id: 1\npeers: {1: \"a:6432\", 2: b}\n", `peers.2: "b" is not host:port`},
		{"peer key", minimal + "peer_id: 1\npeers: {1: \"a:6432\", two: \"b:6432\"}\n", `peers.two: "two" is not a number`},
		{"peer_id range", minimal + "peer_id: -1\n", "peer_id: -1 is not between 1 and 16383"},
		{"yaml syntax", "clusters: [", "router.yaml:1: did not find expected node content (not valid YAML)"},
		{"indented out of its list", "auth: {type: trust}\nclusters:\n  main:\n    partitions: 4\n    shards:\n      - name: s0\n        dsn: \"host=h\"\n        partitions: \"0-3\"\n      partitions: \"2-3\"\n",
			`router.yaml:9: did not find expected '-' indicator (not valid YAML): "      partitions: \"2-3\"": check its indentation against the lines above`},
		{"tab", "auth:\n\ttype: trust\n", `router.yaml:2: found character that cannot start any token (not valid YAML): "\ttype: trust": YAML is indented with spaces only, never tabs`},
		{"multi-line string, then an unterminated one", "listen: \"a\n  b\"\nauth: {type: trust}\nlog: {level: 'unterminated\n",
			"router.yaml:4: found unexpected end of stream"},
		{"flow mapping over lines, then a bad line", "functions:\n  - {name: f,\n     key: 1}\nclusters:\n  main:\n    partitions: 4\n    shards:\n      - name: s0\n    bad\n",
			"router.yaml:9: "},
		{"hash", strings.Replace(minimal, "partitions: 4", "partitions: 4\n    hash: md5", 1), `clusters.main.hash: "md5" is not one of xxhash64, hashtext`},
		{"function key missing", minimal + "functions:\n  - {name: get_user, run_on: hash}\n", "functions[0].key: required with run_on: hash"},
		{"function merge", minimal + "functions:\n  - {name: f, run_on: any, merge: sum}\n", "functions[0].merge: only with run_on: all or split"},
		{"fanin without target", minimal + "fanin:\n  tables: [users]\n", "fanin.target: required"},
		{"fanin without tables", minimal + "fanin:\n  target: \"host=x\"\n", "fanin.tables: at least one table is required"},
		{"fanin cluster", minimal + "fanin:\n  target: \"host=x\"\n  tables: [users]\n  cluster: nope\n", `fanin.cluster: "nope" is not a cluster`},
		{"fanin slot", minimal + "fanin:\n  target: \"host=x\"\n  tables: [users]\n  slot: Bad-Slot\n", `fanin.slot: "Bad-Slot" must be`},
		{"constant partition out of range", minimal + "functions:\n  - {name: f, run_on: partition, partition: 4}\n", "functions[0].partition: 4 is not a partition of cluster main (0-3)"},
		{"constant partition with a key", minimal + "functions:\n  - {name: f, run_on: partition, key: p, partition: 1}\n", "functions[0].partition: not used with a key"},
		{"constant partition on hash", minimal + "functions:\n  - {name: f, key: k, partition: 1}\n", "functions[0].partition: only with run_on: partition"},
		{"split on any", minimal + "functions:\n  - {name: f, run_on: any, split: [a]}\n", "functions[0].split: only with run_on: hash or partition"},
		{"split twice", minimal + "functions:\n  - {name: f, key: a, split: [a, A]}\n", "functions[0].split[1]: A is split twice"},
		{"key_transform", minimal + "functions:\n  - {name: f, key: a, key_transform: upper}\n", `functions[0].key_transform: "upper" is not one of text, lower, lower_ascii, value`},
		{"target routing differs", minimal + "functions:\n  - {name: f, key: a, target: g}\n  - {name: g, run_on: all}\n", "functions[0].target: public.g is declared at functions[1] with other routing"},
		{"function twice", minimal + "functions:\n  - {name: f, key: a}\n  - {name: public.F, key: a}\n", "functions[1].name: public.f is already declared at functions[0]"},
		{"stride below shards", minimal + "sequences: {stride: 1}\n", "sequences.stride: 1 is less than the 2 shards of cluster main"},
		{"no schemas", minimal + "sequences: {schemas: []}\n", "sequences.schemas: at least one schema is required"},
		{"lock timeout zero", minimal + "sequences: {lock_timeout: 0}\n", "sequences.lock_timeout: must be above zero and at most 50s"},
		{"reference source", minimal + "reference: {tables: [countries]}\n", "reference.source: required"},
		{"reference tables", minimal + "reference: {source: \"host=h\"}\n", "reference.tables: at least one table is required"},
		{"reference table name", minimal + "reference: {source: \"host=h\", tables: [\"a.b.c\"]}\n", `reference.tables[0]: "a.b.c" is not [schema.]table`},
		{"reference twice", minimal + "reference: {source: \"host=h\", tables: [Countries, public.countries]}\n", "reference.tables[1]: public.countries is already listed at reference.tables[0]"},
		{"reference slot", minimal + "reference: {source: \"host=h\", tables: [t], slot: Bad-Name}\n", `reference.slot: "Bad-Name" must be 1 to 40 lower-case letters`},
		{"reference slot with $", minimal + "reference: {source: \"host=h\", tables: [t], slot: a$b}\n", `reference.slot: "a$b" must be 1 to 40 lower-case letters`},
		{"reference publication", minimal + "reference: {source: \"host=h\", tables: [t], publication: Pub}\n", `reference.publication: "Pub" must be a lower-case identifier`},
		{"sequences typo", minimal + "sequences: {strid: 8}\n", "sequences.strid: unknown key (did you mean stride?)"},
		{"function run_on", minimal + "functions:\n  - {name: f, run_on: some}\n", `functions[0].run_on: "some" is not one of hash, partition, any, all`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("router.yaml", []byte(tc.yaml))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v\nwant an error containing %q", err, tc.want)
			}
		})
	}
}

// TestSequencesSection: no section means sequences are not managed; an
// empty one takes the defaults, and given keys (0 included) are kept.
func TestSequencesSection(t *testing.T) {
	cfg, err := Parse("router.yaml", []byte(minimal))
	if err != nil || cfg.Sequences != nil {
		t.Fatalf("no section: %+v, %v", cfg.Sequences, err)
	}
	cfg, err = Parse("router.yaml", []byte(minimal+"sequences: {}\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := Sequences{Stride: 1024, Schemas: []string{"public"}, MinHeadroom: 1_000_000,
		CheckInterval: Duration(time.Minute), LockTimeout: Duration(10 * time.Second)}
	if s := cfg.Sequences; s.Stride != want.Stride || len(s.Schemas) != 1 || s.Schemas[0] != "public" || s.MinHeadroom != want.MinHeadroom ||
		s.CheckInterval != want.CheckInterval || s.LockTimeout != want.LockTimeout {
		t.Fatalf("defaults: %+v", *s)
	}
	cfg, err = Parse("router.yaml", []byte(minimal+"sequences:\n  stride: 16\n  schemas: [app, billing]\n  check_interval: 0\n"))
	if err != nil {
		t.Fatal(err)
	}
	if s := cfg.Sequences; s.Stride != 16 || len(s.Schemas) != 2 || s.CheckInterval != 0 || s.MinHeadroom != want.MinHeadroom {
		t.Fatalf("given keys: %+v", *s)
	}
}

func TestReferenceSection(t *testing.T) {
	t.Setenv("PGROUTER_TEST_SRC", "secret")
	cfg, err := Parse("router.yaml", []byte(minimal+"reference:\n  source: postgres://app:${PGROUTER_TEST_SRC}@h/central\n  tables: [Countries, billing.plans]\n"))
	if err != nil {
		t.Fatal(err)
	}
	r := cfg.Reference
	want := []TableName{{"public", "countries"}, {"billing", "plans"}}
	if r.Source != "postgres://app:secret@h/central" || r.Slot != "pgrouter_refsync" || r.Publication != "pgrouter_refsync" ||
		len(r.TableNames) != 2 || r.TableNames[0] != want[0] || r.TableNames[1] != want[1] {
		t.Fatalf("reference: %+v", *r)
	}
}

func TestAllErrorsReportedAtOnce(t *testing.T) {
	_, err := Parse("r.yaml", []byte(minimal+"pool:\n  size: 0\n  max_client_conn: 0\n"))
	if err == nil || !strings.Contains(err.Error(), "pool.size") || !strings.Contains(err.Error(), "pool.max_client_conn") {
		t.Fatalf("want both errors, got %v", err)
	}
}

func TestFunctions(t *testing.T) {
	cfg, err := Parse("router.yaml", []byte(minimal+`
functions:
  - name: get_user
    key: i_username
  - name: app."Count"
    run_on: all
    merge: sum
  - name: by_pos
    run_on: partition
    key: 2
`))
	if err != nil {
		t.Fatal(err)
	}
	f := cfg.Functions
	if f[0].Schema != "public" || f[0].Proc != "get_user" || f[0].RunOn != RunOnHash || f[0].Cluster != "main" || f[0].Key != "i_username" {
		t.Fatalf("%+v", f[0])
	}
	if f[1].Schema != "app" || f[1].Proc != "Count" || f[1].Merge != "sum" {
		t.Fatalf("%+v", f[1])
	}
	if f[2].KeyPos != 2 || f[2].RunOn != RunOnPartition {
		t.Fatalf("%+v", f[2])
	}
}

func TestPartitions(t *testing.T) {
	got, err := ParsePartitions("0-3, 8,12-15", 16, 2)
	if err != nil || FormatPartitions(got) != "0-3,8,12-15" {
		t.Fatalf("%v %v", got, err)
	}
	if all, err := ParsePartitions("", 4, 1); err != nil || len(all) != 4 {
		t.Fatalf("single shard default: %v %v", all, err)
	}
	for _, bad := range []string{"3-1", "x", "1,1", "-1"} {
		if _, err := ParsePartitions(bad, 16, 2); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// TestPeers: peers decode with numeric ids, peer_user defaults to the
// first admin user, peer_password expands ${ENV}, and each config knows
// the hash of its text.
func TestPeers(t *testing.T) {
	t.Setenv("PGROUTER_TEST_PEER_PW", "s3cret")
	text := minimal + "admin_users: [ops, other]\npeer_id: 2\npeers: {1: \"10.0.0.1:6432\", 2: \"10.0.0.2:6432\"}\npeer_password: ${PGROUTER_TEST_PEER_PW}\nlisten_reuseport: true\n"
	cfg, err := Parse("router.yaml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.PeerID != 2 || len(cfg.Peers) != 2 || cfg.Peers[1] != "10.0.0.1:6432" || cfg.PeerUser != "ops" || cfg.PeerPassword != "s3cret" || !cfg.ListenReuseport {
		t.Fatalf("peering: %+v", cfg)
	}
	again, err := Parse("router.yaml", []byte(text+"# comment\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Hash) != 12 || cfg.Hash == again.Hash {
		t.Fatalf("hashes %q and %q of two different texts", cfg.Hash, again.Hash)
	}
}
