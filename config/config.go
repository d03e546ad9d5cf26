// Package config loads router.yaml: it decodes the file with every error
// naming its key path, fills in defaults, expands ${ENV} in DSNs and validates
// the result. A loaded *Config is never modified afterwards; a reload builds a
// new one and the caller swaps it in, so a bad file never half-applies.
package config

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"
)

// Config is the parsed and validated router.yaml.
type Config struct {
	Listen          string              `yaml:"listen"`
	MetricsListen   string              `yaml:"metrics_listen"` // Prometheus /metrics; "" disables
	AdminUsers      []string            `yaml:"admin_users"`    // users allowed into the admin console
	ShutdownTimeout Duration            `yaml:"shutdown_timeout"`
	Health          Health              `yaml:"health"`
	Auth            Auth                `yaml:"auth"`
	Pool            Pool                `yaml:"pool"`
	TLS             TLS                 `yaml:"tls"`
	Log             Log                 `yaml:"log"`
	Clusters        map[string]*Cluster `yaml:"clusters"`
	Functions       []*Function         `yaml:"functions"`
	DefaultRoute    string              `yaml:"default_route"`
	// DefaultRouteNotice: a statement sent to default_route's shard because
	// it calls no routed function gets a NOTICE naming the shard, so nobody
	// mistakes one shard's rows for the cluster's (the demo turns it on).
	DefaultRouteNotice bool       `yaml:"default_route_notice"`
	FallbackCluster    string     `yaml:"fallback_cluster"`
	Sequences          *Sequences `yaml:"sequences"` // nil: sequences are not managed
	Reference          *Reference `yaml:"reference"` // nil: no reference tables (refsync has nothing to do)
	Fanin              *Fanin     `yaml:"fanin"`     // nil: no central copy (pgrouter fanin has nothing to do)

	// ListenReuseport opens listen with SO_REUSEPORT, so that a new pgrouter
	// can start on the port beside a draining old one (a rolling upgrade).
	ListenReuseport bool `yaml:"listen_reuseport"`
	// MaxReplicaLag: a replica further behind its primary than this (or
	// whose lag is unknown) serves no read_only call.
	MaxReplicaLag Duration `yaml:"max_replica_lag"`
	// PeerID and Peers make several instances one service, as pgbouncer's
	// peering does: the cancel keys an instance gives its clients carry its
	// id, and a cancel request that reaches another instance (behind a load
	// balancer) is passed on to the one holding the client. Peers maps each
	// id, this instance's included, to its client address, which is also its
	// admin console's, where the fleet commands (PAUSE PEERS, ...) log in as
	// PeerUser (default: the first of admin_users) with PeerPassword.
	PeerID       int            `yaml:"peer_id"`
	Peers        map[int]string `yaml:"peers"`
	PeerUser     string         `yaml:"peer_user"`
	PeerPassword string         `yaml:"peer_password"` // ${ENV} expanded

	// Path is the file the config was read from ("" when built in memory).
	Path string `yaml:"-"`
	// Hash identifies the file's text (the first 12 hex digits of its
	// SHA-256), so that SHOW PEERS can show which instances run the same one.
	Hash string `yaml:"-"`
	// lines maps key paths to their line in the file, so that validation's
	// errors name the line too.
	lines map[string]int
}

// Auth selects how clients prove who they are.
type Auth struct {
	Type      string `yaml:"type"`       // trust | md5 | scram-sha-256
	UsersFile string `yaml:"users_file"` // pgbouncer format; relative to the config file
}

// Pool holds the pooling limits and timeouts, pgbouncer's names where they exist.
type Pool struct {
	Mode                   PoolMode `yaml:"mode"`
	Size                   int      `yaml:"size"`
	MinIdle                int      `yaml:"min_idle"`
	ReservePoolSize        int      `yaml:"reserve_pool_size"`
	ReservePoolTimeout     Duration `yaml:"reserve_pool_timeout"`
	MaxClientConn          int      `yaml:"max_client_conn"`
	ServerLifetime         Duration `yaml:"server_lifetime"`
	ServerIdleTimeout      Duration `yaml:"server_idle_timeout"`
	ServerConnectTimeout   Duration `yaml:"server_connect_timeout"`
	ServerCheckDelay       Duration `yaml:"server_check_delay"`
	ServerCheckQuery       string   `yaml:"server_check_query"`
	QueryWaitTimeout       Duration `yaml:"query_wait_timeout"`
	IdleTransactionTimeout Duration `yaml:"idle_transaction_timeout"`
	ClientIdleTimeout      Duration `yaml:"client_idle_timeout"`
	ClientLoginTimeout     Duration `yaml:"client_login_timeout"`
	ServerReadTimeout      Duration `yaml:"server_read_timeout"`
	ClientWriteTimeout     Duration `yaml:"client_write_timeout"`
	PreparedStatements     int      `yaml:"prepared_statements"`
	MaxMessageSize         ByteSize `yaml:"max_message_size"`
	// MaxClientState bounds what one client makes pgrouter hold between its
	// messages: named statements, portals, SETs of an unpinned transaction.
	MaxClientState ByteSize `yaml:"max_client_state"`
}

// Health configures the periodic check of every shard that SHOW SHARDS and
// run_on any rely on.
type Health struct {
	Interval Duration `yaml:"interval"` // 0 disables the checks
	Timeout  Duration `yaml:"timeout"`  // per check, connect included
	Failures int      `yaml:"failures"` // consecutive failed checks that mark a shard down
	Query    string   `yaml:"query"`
}

// Sequences configures stride sequences (pgrouter seq, and the check serve
// runs). It is a pointer because the stride is fixed for the cluster's life:
// pgrouter never picks one unless the file says so (an empty "sequences: {}"
// takes the defaults below).
type Sequences struct {
	// Stride is the increment of every sequence; shard slots run 0..stride-1.
	Stride int64 `yaml:"stride"`
	// Schemas whose sequences are managed.
	Schemas []string `yaml:"schemas"`
	// MinHeadroom is the fewest values a shard's sequence must have left:
	// apply refuses a sequence that would have fewer, check warns.
	MinHeadroom int64 `yaml:"min_headroom"`
	// CheckInterval is how often serve checks the shards (0: only at start).
	CheckInterval Duration `yaml:"check_interval"`
	// LockTimeout bounds how long apply waits for a busy sequence or for
	// another apply.
	LockTimeout Duration `yaml:"lock_timeout"`
}

// Sequence defaults.
const (
	DefaultStride      = 1024
	DefaultMinHeadroom = 1_000_000
)

// Reference configures pgrouter refsync: tables written in one source
// database and replicated to every shard of every cluster.
type Reference struct {
	// Source is the DSN of the database the tables are written in; it needs
	// wal_level = logical and a user with REPLICATION.
	Source string `yaml:"source"`
	// Tables as [schema.]name (unqualified means public).
	Tables []string `yaml:"tables"`
	// Slot and Publication name what refsync creates on the source.
	Slot        string `yaml:"slot"`
	Publication string `yaml:"publication"`

	// TableNames are Tables split and case-folded by validation.
	TableNames []TableName `yaml:"-"`
}

// Fanin is the central copy of sharded tables that pgrouter fanin keeps:
// every shard's rows of the tables, in one target database.
type Fanin struct {
	// Target is the DSN of the central database (${ENV} expanded).
	Target string `yaml:"target"`
	// Tables as [schema.]name (unqualified means public); every shard of
	// the cluster has them, with a primary key.
	Tables []string `yaml:"tables"`
	// Cluster whose shards are fanned in (may be omitted with one cluster).
	Cluster string `yaml:"cluster"`
	// Slot and Publication name what fanin creates on every shard; a
	// shard's slot is Slot_<shard>.
	Slot        string `yaml:"slot"`
	Publication string `yaml:"publication"`

	// TableNames are Tables split and case-folded by validation.
	TableNames []TableName `yaml:"-"`
}

func (f *Fanin) setDefaults() {
	*f = Fanin{Slot: "pgrouter_fanin", Publication: "pgrouter_fanin"}
}

// TableName is a schema-qualified table name, case-folded as PostgreSQL
// folds unquoted identifiers.
type TableName struct{ Schema, Name string }

func (t TableName) String() string { return t.Schema + "." + t.Name }

func (r *Reference) setDefaults() {
	*r = Reference{Slot: "pgrouter_refsync", Publication: "pgrouter_refsync"}
}

func (s *Sequences) setDefaults() {
	*s = Sequences{
		Stride:        DefaultStride,
		Schemas:       []string{"public"},
		MinHeadroom:   DefaultMinHeadroom,
		CheckInterval: Duration(time.Minute),
		LockTimeout:   Duration(10 * time.Second),
	}
}

// IsAdmin reports whether user may use the admin console.
func (c *Config) IsAdmin(user string) bool {
	for _, u := range c.AdminUsers {
		if u == user {
			return true
		}
	}
	return false
}

// TLS configures encryption between clients and pgrouter. Connections from
// pgrouter to shards use TLS as their DSN's sslmode says.
type TLS struct {
	Mode string `yaml:"mode"` // disable | allow | require; default allow with cert and key, else disable
	Cert string `yaml:"cert"` // PEM certificate chain, relative to the config file
	Key  string `yaml:"key"`  // PEM private key
}

// TLS modes.
const (
	TLSDisable = "disable"
	TLSAllow   = "allow"
	TLSRequire = "require"
)

// Log configures the process log.
type Log struct {
	Level  string `yaml:"level"`  // debug | info | warn | error
	Format string `yaml:"format"` // auto | console | json
}

// Cluster is one set of shards that share a schema and a partition space.
type Cluster struct {
	Hash         string   `yaml:"hash"` // xxhash64 | hashtext
	Partitions   int      `yaml:"partitions"`
	Shards       []*Shard `yaml:"shards"`
	DefaultRoute string   `yaml:"default_route"`
	// Tables are the cluster's sharded tables: each row lives on the shard
	// that owns the partition of its key column, hashed as routed
	// functions' keys are. pgrouter move copies them, and guards them on
	// the shards once ownership is recorded there.
	Tables []*Table `yaml:"tables"`

	// Name is the cluster's key in the clusters map.
	Name string `yaml:"-"`
	// Owners is the partition -> shard map recorded on the shards by
	// pgrouter move (package ownership), read by the router at start and
	// reload; it overrides the shards' partitions where it has an entry.
	Owners map[int]string `yaml:"-"`
}

// Table is a sharded table and its key column.
type Table struct {
	Name string `yaml:"name"` // [schema.]table
	Key  string `yaml:"key"`

	// Table is Name split and folded by validation.
	Table TableName `yaml:"-"`
}

// Shard is one PostgreSQL database that owns some partitions of its cluster.
type Shard struct {
	Name       string `yaml:"name"`
	DSN        string `yaml:"dsn"`
	Partitions string `yaml:"partitions"` // "0-7", "8,9,12-15"
	// Replicas are hot standbys of the shard (DSNs, ${ENV} expanded): calls
	// of read_only functions go to one within max_replica_lag.
	Replicas []string `yaml:"replicas"`

	// PartitionList is Partitions parsed, sorted and de-duplicated by validation.
	PartitionList []int `yaml:"-"`
}

// Function declares a server-side function whose calls pgrouter routes.
type Function struct {
	Name    string `yaml:"name"`    // [schema.]name; unqualified means public
	Cluster string `yaml:"cluster"` // optional when there is one cluster
	RunOn   string `yaml:"run_on"`  // hash | partition | any | all (default: hash with a key, else any)
	Key     string `yaml:"key"`     // argument name or 1-based position (hash, partition)
	Merge   string `yaml:"merge"`   // all only: concat | sum | min | max | bool_and | bool_or
	// ReadOnly: the function only reads, so a call outside a transaction may
	// run on a replica of its shard.
	ReadOnly bool `yaml:"read_only"`
	// KeyTransform hashes a changed key, as PL/Proxy's RUN ON
	// hashtext(x::text) (text) and hashtext(lower(x)) (lower, lower_ascii),
	// or takes an integer key as the hash itself, as RUN ON x (value).
	KeyTransform string `yaml:"key_transform"`
	// Split names array arguments (names or 1-based positions) whose
	// elements are sent each to the shard of its key element, as PL/Proxy's
	// SPLIT: every shard is called once with its elements.
	Split []string `yaml:"split"`
	// Partition is a constant partition for run_on: partition without a
	// key, as PL/Proxy's RUN ON <n>.
	Partition *int `yaml:"partition"`
	// Target is the function called on the shards instead of Name
	// ([schema.]name; unqualified means Name's schema), as PL/Proxy's TARGET.
	Target string `yaml:"target"`

	// Schema and Proc are Name split and case-folded by validation.
	Schema string `yaml:"-"`
	Proc   string `yaml:"-"`
	// KeyPos is Key when it is a position (1-based), else 0.
	KeyPos int `yaml:"-"`
	// TargetSchema and TargetProc are Target split and folded by validation
	// (empty without a target).
	TargetSchema, TargetProc string `yaml:"-"`
}

// key_transform values.
const (
	KeyTransformText       = "text"        // hash the key's text form
	KeyTransformLower      = "lower"       // hash lower(key) under a UTF-8 locale (Unicode case mapping)
	KeyTransformLowerASCII = "lower_ascii" // hash lower(key) under the C locale (ASCII letters only)
	KeyTransformValue      = "value"       // the integer key is the hash itself (RUN ON x)
)

// run_on values.
const (
	RunOnHash      = "hash"
	RunOnPartition = "partition"
	RunOnAny       = "any"
	RunOnAll       = "all"
)

// PoolMode is when a client gives its server connection back: at
// disconnect (session), at the end of each transaction (transaction), or
// after each statement, transactions refused (statement).
type PoolMode string

// Pool modes.
const (
	ModeSession     PoolMode = "session"
	ModeTransaction PoolMode = "transaction"
	ModeStatement   PoolMode = "statement"
)

// Shared reports whether a server connection serves other clients between
// this client's transactions, so nothing the client leaves on it may
// outlive its transaction.
func (m PoolMode) Shared() bool { return m != ModeSession }

// Auth types.
const (
	AuthTrust = "trust"
	AuthMD5   = "md5"
	AuthSCRAM = "scram-sha-256"
)

// Route names with a fixed meaning in default_route.
const (
	RouteError = "error"
	RouteAny   = "any"
)

// Defaults follows pgbouncer where the concept is the same and the design's
// example file elsewhere; every value is documented in router.yaml.example.
func Defaults() Config {
	return Config{
		Listen: "0.0.0.0:6432",
		Auth:   Auth{Type: AuthSCRAM},
		Pool: Pool{
			Mode:                 ModeTransaction,
			Size:                 20,
			MaxClientConn:        10000,
			ServerLifetime:       Duration(time.Hour),
			ServerIdleTimeout:    Duration(10 * time.Minute),
			ServerConnectTimeout: Duration(5 * time.Second),
			ServerCheckDelay:     Duration(30 * time.Second),
			ServerCheckQuery:     "SELECT 1",
			ReservePoolTimeout:   Duration(5 * time.Second),
			QueryWaitTimeout:     Duration(30 * time.Second),
			ClientLoginTimeout:   Duration(60 * time.Second),
			ClientWriteTimeout:   Duration(60 * time.Second),
			PreparedStatements:   256,
			MaxMessageSize:       64 << 20,
			MaxClientState:       16 << 20,
		},
		Log:             Log{Level: "info", Format: "auto"},
		DefaultRoute:    RouteError,
		ShutdownTimeout: Duration(30 * time.Second),
		MaxReplicaLag:   Duration(10 * time.Second),
		Health:          Health{Interval: Duration(5 * time.Second), Timeout: Duration(2 * time.Second), Failures: 2, Query: "SELECT 1"},
	}
}

// KeyDefaults is Defaults with the optional sections present (as "key: {}"
// gives them) and the keys of each cluster under "*", for SHOW CONFIG's
// default column.
func KeyDefaults() Config {
	c := Defaults()
	c.Sequences, c.Reference = &Sequences{}, &Reference{}
	c.Sequences.setDefaults()
	c.Reference.setDefaults()
	c.Clusters = map[string]*Cluster{"*": {Hash: "xxhash64", Partitions: 1}}
	return c
}

// Load reads, decodes and validates a config file.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(path, data)
}

// Parse decodes and validates config text; path is used in messages and to
// resolve relative file names.
func Parse(path string, data []byte) (*Config, error) {
	cfg := Defaults()
	cfg.Path = path
	sum := sha256.Sum256(data)
	cfg.Hash = hex.EncodeToString(sum[:6])
	if err := decode(path, data, &cfg); err != nil {
		return nil, err
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return &cfg, nil
}

// Clone copies the config deeply enough to set each cluster's Owners on the
// copy (package proxy reads the partition map again with the same config).
func (c *Config) Clone() *Config {
	out := *c
	out.Clusters = make(map[string]*Cluster, len(c.Clusters))
	for name, cl := range c.Clusters {
		cp := *cl
		cp.Owners = nil
		out.Clusters[name] = &cp
	}
	return &out
}

// ClusterNames returns the cluster names in a stable order.
func (c *Config) ClusterNames() []string {
	names := make([]string, 0, len(c.Clusters))
	for name := range c.Clusters {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

// Error is a validation error that names the file and key path.
type Error struct {
	File string
	Line int // 0 when unknown
	Path string
	Msg  string
}

func (e *Error) Error() string {
	where := e.File
	if where == "" {
		where = "router.yaml"
	}
	if e.Line > 0 {
		where = fmt.Sprintf("%s:%d", where, e.Line)
	}
	if e.Path == "" {
		return where + ": " + e.Msg
	}
	return where + ": " + e.Path + ": " + e.Msg
}

// errorList gathers validation errors so one run reports all of them.
type errorList struct {
	file  string
	lines map[string]int // key path -> line in the file (decode's)
	errs  []error
}

// add records an error at a key path, with the line of the path or of its
// nearest ancestor written in the file (a missing key is reported where its
// section is).
func (l *errorList) add(path, format string, args ...any) {
	e := &Error{File: l.file, Path: path, Msg: fmt.Sprintf(format, args...)}
	for p := path; p != "" && e.Line == 0; p = parentPath(p) {
		e.Line = l.lines[p]
	}
	l.errs = append(l.errs, e)
}

// parentPath drops a key path's last step: "a.b[2].c" -> "a.b[2]" -> "a.b".
func parentPath(p string) string {
	if i := strings.LastIndexAny(p, ".["); i >= 0 {
		return p[:i]
	}
	return ""
}

func (l *errorList) err() error { return errors.Join(l.errs...) }
