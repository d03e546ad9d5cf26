package config

import (
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// AdminDatabase is the database name of the admin console; no cluster may
// use it, nor AdminAlias, the name pgbouncer's console has, which scripts
// and monitoring tools written for pgbouncer connect to.
const (
	AdminDatabase = "pgrouter"
	AdminAlias    = "pgbouncer"
)

// IsAdminDatabase reports whether a login to database is one to the console.
func IsAdminDatabase(database string) bool {
	return database == AdminDatabase || database == AdminAlias
}

var (
	nameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.-]*$`)
	envRE  = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}`)
)

// validate checks every key, resolves relative paths, expands ${ENV} in DSNs
// and parses partition lists. It reports all problems at once.
func (c *Config) validate() error {
	l := &errorList{file: c.Path, lines: c.lines}

	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		l.add("listen", "%q is not host:port", c.Listen)
	}
	if c.MetricsListen != "" {
		if _, _, err := net.SplitHostPort(c.MetricsListen); err != nil {
			l.add("metrics_listen", "%q is not host:port", c.MetricsListen)
		}
	}
	for i, u := range c.AdminUsers {
		if u == "" {
			l.add(fmt.Sprintf("admin_users[%d]", i), "is empty")
		}
	}
	if c.MaxReplicaLag <= 0 {
		l.add("max_replica_lag", "must be above zero")
	}
	if c.ShutdownTimeout < 0 {
		l.add("shutdown_timeout", "must not be negative")
	}
	if c.Health.Interval < 0 {
		l.add("health.interval", "must not be negative (0 disables the checks)")
	}
	if c.Health.Interval > 0 {
		if c.Health.Timeout <= 0 {
			l.add("health.timeout", "must be above zero")
		}
		if c.Health.Failures < 1 {
			l.add("health.failures", "%d must be at least 1", c.Health.Failures)
		}
		if strings.TrimSpace(c.Health.Query) == "" {
			l.add("health.query", "must not be empty")
		}
	}
	c.validatePeers(l)
	c.validateAuth(l)
	c.validateTLS(l)
	c.validatePool(l)
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		l.add("log.level", "%q is not one of debug, info, warn, error", c.Log.Level)
	}
	switch c.Log.Format {
	case "auto", "console", "json":
	default:
		l.add("log.format", "%q is not one of auto, console, json", c.Log.Format)
	}
	c.validateClusters(l)
	c.validateSequences(l)
	c.validateReference(l)
	return l.err()
}

// validateTables checks a cluster's sharded tables and splits their names.
func validateTables(l *errorList, path string, cl *Cluster) {
	seen := map[TableName]string{}
	for i, t := range cl.Tables {
		tp := fmt.Sprintf("%s.tables[%d]", path, i)
		if t == nil {
			l.add(tp, "is empty")
			continue
		}
		schema, name, qualified := strings.Cut(t.Name, ".")
		if !qualified {
			schema, name = "public", t.Name
		}
		if !identRE.MatchString(schema) || !identRE.MatchString(name) {
			l.add(tp+".name", "%q is not [schema.]table with plain identifiers (letters, digits, _ and $)", t.Name)
			continue
		}
		if !identRE.MatchString(t.Key) {
			l.add(tp+".key", "%q is not a column name (a plain identifier): the column whose value routed calls pass as their key", t.Key)
		}
		t.Table = TableName{Schema: strings.ToLower(schema), Name: strings.ToLower(name)}
		t.Key = strings.ToLower(t.Key)
		if prev, dup := seen[t.Table]; dup {
			l.add(tp+".name", "%s is already listed at %s", t.Table, prev)
		}
		seen[t.Table] = tp
	}
}

// MaxPeerID is the largest peer_id: the id takes 14 bits of the cancel
// key's process id (as in pgbouncer, whose peer ids have the same range).
const MaxPeerID = 16383

// validatePeers checks peer_id and peers, and fills in peer_user.
func (c *Config) validatePeers(l *errorList) {
	if c.PeerID < 0 || c.PeerID > MaxPeerID {
		l.add("peer_id", "%d is not between 1 and %d (0: no peering)", c.PeerID, MaxPeerID)
	}
	for id, addr := range c.Peers {
		path := fmt.Sprintf("peers.%d", id)
		if id < 1 || id > MaxPeerID {
			l.add(path, "peer id %d is not between 1 and %d", id, MaxPeerID)
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			l.add(path, "%q is not host:port", addr)
		}
	}
	if len(c.Peers) > 0 {
		if c.PeerID == 0 {
			l.add("peer_id", "required with peers: this instance's id, one of the keys of peers")
		} else if _, ok := c.Peers[c.PeerID]; !ok {
			l.add("peers", "has no entry for this instance's peer_id %d: list every instance, this one included", c.PeerID)
		}
	}
	if c.PeerUser == "" && len(c.AdminUsers) > 0 {
		c.PeerUser = c.AdminUsers[0]
	}
	if pw, err := expandEnv(c.PeerPassword); err != nil {
		l.add("peer_password", "%v", err)
	} else {
		c.PeerPassword = pw
	}
}

// identRE is an identifier PostgreSQL accepts unquoted (then folded to
// lower case); reference tables and the names refsync creates use it.
var identRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_$]*$`)

// slotRE is a replication slot name refsync can use.
var slotRE = regexp.MustCompile(`^[a-z0-9_]{1,40}$`)

// tableNames checks a list of [schema.]table names (at least one) and
// splits and folds them.
func tableNames(l *errorList, path string, tables []string) []TableName {
	if len(tables) == 0 {
		l.add(path, "at least one table is required")
	}
	seen := map[TableName]string{}
	var out []TableName
	for i, t := range tables {
		at := fmt.Sprintf("%s[%d]", path, i)
		schema, name, qualified := strings.Cut(t, ".")
		if !qualified {
			schema, name = "public", t
		}
		if !identRE.MatchString(schema) || !identRE.MatchString(name) {
			l.add(at, "%q is not [schema.]table with plain identifiers (letters, digits, _ and $)", t)
			continue
		}
		tn := TableName{Schema: strings.ToLower(schema), Name: strings.ToLower(name)}
		if prev, dup := seen[tn]; dup {
			l.add(at, "%s is already listed at %s", tn, prev)
		}
		seen[tn] = at
		out = append(out, tn)
	}
	return out
}

// validateFanin checks the fanin section: its target, tables, cluster and
// the names it creates on the shards.
func (c *Config) validateFanin(l *errorList) {
	f := c.Fanin
	if f == nil {
		return
	}
	if f.Target == "" {
		l.add("fanin.target", "required: the DSN of the central database")
	} else if dsn, err := expandEnv(f.Target); err != nil {
		l.add("fanin.target", "%v", err)
	} else if _, err := pgconn.ParseConfig(dsn); err != nil {
		l.add("fanin.target", "not a valid connection string: %v", redactDSNError(err))
	} else {
		f.Target = dsn
	}
	f.TableNames = tableNames(l, "fanin.tables", f.Tables)
	switch {
	case f.Cluster == "" && len(c.Clusters) == 1:
		for name := range c.Clusters {
			f.Cluster = name
		}
	case f.Cluster == "":
		l.add("fanin.cluster", "required when there are several clusters")
	case c.Clusters[f.Cluster] == nil:
		l.add("fanin.cluster", "%q is not a cluster", f.Cluster)
	}
	// A shard's slot is Slot_<shard>, at most 63 lower-case letters, digits and _.
	if !slotRE.MatchString(f.Slot) {
		l.add("fanin.slot", "%q must be 1 to 40 lower-case letters, digits and underscores", f.Slot)
	}
	if cl := c.Clusters[f.Cluster]; cl != nil {
		for i, sh := range cl.Shards {
			if name := FaninSlot(f.Slot, sh.Name); !slotNameRE.MatchString(name) {
				l.add(fmt.Sprintf("clusters.%s.shards[%d].name", f.Cluster, i), "fan-in's slot for it, %q, is not a valid replication slot name (lower-case letters, digits and _, at most 63): rename the shard or set fanin.slot", name)
			}
		}
	}
	if !identRE.MatchString(f.Publication) || strings.ToLower(f.Publication) != f.Publication || len(f.Publication) > 63 {
		l.add("fanin.publication", "%q must be a lower-case identifier of at most 63 characters", f.Publication)
	}
}

// FaninSlot is the replication slot pgrouter fanin uses on a shard.
func FaninSlot(prefix, shard string) string { return prefix + "_" + shard }

// slotNameRE is what PostgreSQL accepts as a replication slot name.
var slotNameRE = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)

// validateReference checks the reference section and splits its table names.
func (c *Config) validateReference(l *errorList) {
	r := c.Reference
	if r == nil {
		return
	}
	if r.Source == "" {
		l.add("reference.source", "required: the DSN of the database the reference tables are written in")
	} else if dsn, err := expandEnv(r.Source); err != nil {
		l.add("reference.source", "%v", err)
	} else if _, err := pgconn.ParseConfig(dsn); err != nil {
		l.add("reference.source", "not a valid connection string: %v", redactDSNError(err))
	} else {
		r.Source = dsn
	}
	r.TableNames = tableNames(l, "reference.tables", r.Tables)
	// Replication slot names allow only lower-case letters, digits and _;
	// refsync names its temporary slots after it (+16 characters, of 63).
	if !slotRE.MatchString(r.Slot) {
		l.add("reference.slot", "%q must be 1 to 40 lower-case letters, digits and underscores", r.Slot)
	}
	if !identRE.MatchString(r.Publication) || strings.ToLower(r.Publication) != r.Publication || len(r.Publication) > 63 {
		l.add("reference.publication", "%q must be a lower-case identifier of at most 63 characters", r.Publication)
	}
}

// validateSequences checks that every cluster fits in the stride.
func (c *Config) validateSequences(l *errorList) {
	s := c.Sequences
	if s == nil {
		return
	}
	if s.Stride < 1 || s.Stride > 1<<20 {
		l.add("sequences.stride", "%d must be between 1 and 1048576", s.Stride)
	}
	for _, name := range c.ClusterNames() {
		if cl := c.Clusters[name]; cl != nil && int64(len(cl.Shards)) > s.Stride {
			l.add("sequences.stride", "%d is less than the %d shards of cluster %s: every shard needs its own slot", s.Stride, len(cl.Shards), name)
		}
	}
	if len(s.Schemas) == 0 {
		l.add("sequences.schemas", "at least one schema is required")
	}
	for i, schema := range s.Schemas {
		if schema == "" {
			l.add(fmt.Sprintf("sequences.schemas[%d]", i), "is empty")
		}
	}
	if s.MinHeadroom < 0 {
		l.add("sequences.min_headroom", "%d must not be negative", s.MinHeadroom)
	}
	if s.CheckInterval < 0 {
		l.add("sequences.check_interval", "must not be negative")
	}
	if s.LockTimeout <= 0 || s.LockTimeout.D() > 50*time.Second {
		l.add("sequences.lock_timeout", "must be above zero and at most 50s: apply holds locks on several servers at once, where PostgreSQL cannot see a deadlock")
	}
}

func (c *Config) validateAuth(l *errorList) {
	switch c.Auth.Type {
	case AuthTrust:
	case AuthMD5, AuthSCRAM:
		if c.Auth.UsersFile == "" {
			l.add("auth.users_file", "required when auth.type is %s", c.Auth.Type)
		}
	default:
		l.add("auth.type", "%q is not one of trust, md5, scram-sha-256", c.Auth.Type)
	}
	if c.Auth.UsersFile != "" {
		c.Auth.UsersFile = c.resolve(c.Auth.UsersFile)
		if _, err := os.Stat(c.Auth.UsersFile); err != nil {
			l.add("auth.users_file", "%v", err)
		}
	}
}

func (c *Config) validateTLS(l *errorList) {
	t := &c.TLS
	if t.Mode == "" {
		t.Mode = TLSDisable
		if t.Cert != "" || t.Key != "" {
			t.Mode = TLSAllow
		}
	}
	switch t.Mode {
	case TLSDisable:
		return
	case TLSAllow, TLSRequire:
	default:
		l.add("tls.mode", "%q is not one of disable, allow, require", t.Mode)
		return
	}
	if t.Cert == "" || t.Key == "" {
		l.add("tls", "mode %s needs both cert and key", t.Mode)
		return
	}
	t.Cert, t.Key = c.resolve(t.Cert), c.resolve(t.Key)
	if _, err := tls.LoadX509KeyPair(t.Cert, t.Key); err != nil {
		l.add("tls.cert", "cannot load the certificate and key: %v", err)
	}
}

func (c *Config) validatePool(l *errorList) {
	p := &c.Pool
	switch p.Mode {
	case ModeSession, ModeTransaction, ModeStatement:
	default:
		l.add("pool.mode", "%q is not one of session, transaction, statement", p.Mode)
	}
	if p.ReservePoolSize < 0 {
		l.add("pool.reserve_pool_size", "%d must not be negative", p.ReservePoolSize)
	}
	if p.Size < 1 {
		l.add("pool.size", "%d must be at least 1", p.Size)
	}
	if p.MinIdle < 0 || p.MinIdle > p.Size {
		l.add("pool.min_idle", "%d must be between 0 and pool.size (%d)", p.MinIdle, p.Size)
	}
	if p.MaxClientConn < 1 {
		l.add("pool.max_client_conn", "%d must be at least 1", p.MaxClientConn)
	}
	if p.ServerConnectTimeout <= 0 {
		l.add("pool.server_connect_timeout", "must be above zero")
	}
	if p.QueryWaitTimeout <= 0 {
		l.add("pool.query_wait_timeout", "must be above zero: a client waiting for a busy pool must get an error, not hang")
	}
	if p.ClientLoginTimeout <= 0 {
		l.add("pool.client_login_timeout", "must be above zero")
	}
	if p.ServerReadTimeout < 0 {
		l.add("pool.server_read_timeout", "must not be negative (0 turns it off)")
	}
	if p.ClientWriteTimeout < 0 {
		l.add("pool.client_write_timeout", "must not be negative (0 turns it off)")
	}
	if p.PreparedStatements < 0 {
		l.add("pool.prepared_statements", "%d must not be negative", p.PreparedStatements)
	}
	if p.MaxClientState < 64<<10 {
		l.add("pool.max_client_state", "%s must be at least 64kB", p.MaxClientState)
	}
	if p.MaxMessageSize < 8<<10 || p.MaxMessageSize > 1<<30 {
		l.add("pool.max_message_size", "%s must be between 8kB and 1GB", p.MaxMessageSize)
	}
}

func (c *Config) validateClusters(l *errorList) {
	if len(c.Clusters) == 0 {
		l.add("clusters", "at least one cluster is required")
		return
	}
	shardOwner := map[string]string{} // shard name -> cluster
	for _, name := range c.ClusterNames() {
		cl := c.Clusters[name]
		path := "clusters." + name
		if cl == nil {
			l.add(path, "is empty")
			continue
		}
		cl.Name = name
		if !nameRE.MatchString(name) {
			l.add(path, "%q is not a valid cluster name (letters, digits, _ . -)", name)
		}
		if IsAdminDatabase(name) {
			l.add(path, "%q is reserved for the admin console", name)
		}
		if cl.Partitions == 0 {
			cl.Partitions = 1
		}
		switch cl.Hash {
		case "":
			cl.Hash = "xxhash64"
		case "xxhash64", "hashtext":
		default:
			l.add(path+".hash", "%q is not one of xxhash64, hashtext", cl.Hash)
		}
		if cl.Partitions < 1 || cl.Partitions > 1<<16 || cl.Partitions&(cl.Partitions-1) != 0 {
			l.add(path+".partitions", "%d is not a power of two between 1 and 65536", cl.Partitions)
			continue
		}
		if len(cl.Shards) == 0 {
			l.add(path+".shards", "at least one shard is required")
			continue
		}
		owner := make([]string, cl.Partitions)
		for i, sh := range cl.Shards {
			sp := fmt.Sprintf("%s.shards[%d]", path, i)
			if sh == nil {
				l.add(sp, "is empty")
				continue
			}
			c.validateShard(l, sp, sh)
			if prev, dup := shardOwner[sh.Name]; dup && sh.Name != "" {
				l.add(sp+".name", "%q is already a shard of cluster %s (shard names are unique across clusters)", sh.Name, prev)
			}
			shardOwner[sh.Name] = name
			list, err := ParsePartitions(sh.Partitions, cl.Partitions, len(cl.Shards))
			if _, given := c.lines[sp+".partitions"]; given && strings.TrimSpace(sh.Partitions) == "" && len(cl.Shards) > 1 {
				list, err = []int{}, nil // partitions: "" is a shard ready to receive some (pgrouter move)
			}
			if err != nil {
				l.add(sp+".partitions", "%v", err)
				continue
			}
			sh.PartitionList = list
			for _, p := range list {
				if owner[p] != "" {
					l.add(sp+".partitions", "partition %d is already assigned to shard %s", p, owner[p])
					continue
				}
				owner[p] = sh.Name
			}
		}
		var missing []int
		for p, o := range owner {
			if o == "" {
				missing = append(missing, p)
			}
		}
		if len(missing) > 0 && len(missing) < cl.Partitions {
			l.add(path+".shards", "partitions %s are not assigned to any shard (every partition belongs to exactly one shard)", FormatPartitions(missing))
		}
		if cl.DefaultRoute != "" {
			c.validateRoute(l, path+".default_route", cl.DefaultRoute, cl)
		}
		validateTables(l, path, cl)
	}
	if c.DefaultRoute == "" {
		c.DefaultRoute = RouteError
	}
	switch {
	case c.DefaultRoute == RouteError || c.DefaultRoute == RouteAny:
	case len(c.Clusters) > 1:
		l.add("default_route", "%q names a shard, but there are several clusters: set clusters.<name>.default_route instead", c.DefaultRoute)
	default:
		for _, cl := range c.Clusters {
			if cl != nil {
				c.validateRoute(l, "default_route", c.DefaultRoute, cl)
			}
		}
	}
	if c.FallbackCluster != "" {
		if _, ok := c.Clusters[c.FallbackCluster]; !ok {
			l.add("fallback_cluster", "%q is not a cluster", c.FallbackCluster)
		}
	}
	c.validateFunctions(l)
	c.validateFanin(l)
}

func (c *Config) validateFunctions(l *errorList) {
	seen := map[string]string{}
	for i, f := range c.Functions {
		path := fmt.Sprintf("functions[%d]", i)
		if f == nil {
			l.add(path, "is empty")
			continue
		}
		schema, proc, err := splitFunctionName(f.Name)
		if err != nil {
			l.add(path+".name", "%v", err)
			continue
		}
		f.Schema, f.Proc = schema, proc
		full := schema + "." + proc
		if prev, dup := seen[full]; dup {
			l.add(path+".name", "%s is already declared at %s", full, prev)
		}
		seen[full] = path
		switch {
		case f.Cluster == "" && len(c.Clusters) == 1:
			for name := range c.Clusters {
				f.Cluster = name
			}
		case f.Cluster == "":
			l.add(path+".cluster", "required when there are several clusters")
		default:
			if _, ok := c.Clusters[f.Cluster]; !ok {
				l.add(path+".cluster", "%q is not a cluster", f.Cluster)
			}
		}
		if f.RunOn == "" {
			f.RunOn = RunOnAny
			if f.Key != "" {
				f.RunOn = RunOnHash
			}
		}
		if f.Partition != nil && f.RunOn != RunOnPartition {
			l.add(path+".partition", "only with run_on: partition")
		}
		switch f.RunOn {
		case RunOnPartition:
			switch {
			case f.Key == "" && f.Partition == nil:
				l.add(path+".key", "required with run_on: partition (an argument name or 1-based position), unless partition names a constant one")
			case f.Key != "" && f.Partition != nil:
				l.add(path+".partition", "not used with a key: the partition is the key argument's value")
			case f.Partition != nil && f.Cluster != "" && c.Clusters[f.Cluster] != nil && (*f.Partition < 0 || *f.Partition >= c.Clusters[f.Cluster].Partitions):
				l.add(path+".partition", "%d is not a partition of cluster %s (0-%d)", *f.Partition, f.Cluster, c.Clusters[f.Cluster].Partitions-1)
			}
		case RunOnHash:
			if f.Key == "" {
				l.add(path+".key", "required with run_on: %s (an argument name or 1-based position)", f.RunOn)
			}
		case RunOnAny, RunOnAll:
			if f.Key != "" {
				l.add(path+".key", "not used with run_on: %s", f.RunOn)
			}
		default:
			l.add(path+".run_on", "%q is not one of hash, partition, any, all", f.RunOn)
		}
		if pos, err := strconv.Atoi(f.Key); err == nil {
			if pos < 1 || pos > 100 {
				l.add(path+".key", "position %d must be between 1 and 100", pos)
			}
			f.KeyPos = pos
		} else if f.Key != "" {
			f.Key = foldName(f.Key)
		}
		c.validateFunctionExtras(l, path, f)
		switch f.Merge {
		case "":
			if f.RunOn == RunOnAll {
				f.Merge = "concat"
			}
		case "concat":
		case "sum", "min", "max", "bool_and", "bool_or":
			if f.RunOn != RunOnAll && len(f.Split) == 0 {
				l.add(path+".merge", "only with run_on: all or split")
			}
		default:
			l.add(path+".merge", "%q is not one of concat, sum, min, max, bool_and, bool_or", f.Merge)
		}
	}
	// pgrouter sends a call of a function with a target as a call of the
	// target, which then routes as the target when that is declared too
	// (PL/Proxy's TARGET of another proxy function): both must route alike.
	byName := map[string]*Function{}
	for _, f := range c.Functions {
		if f != nil {
			byName[f.Schema+"."+f.Proc] = f
		}
	}
	for i, f := range c.Functions {
		if f == nil || f.TargetProc == "" {
			continue
		}
		if g := byName[f.TargetSchema+"."+f.TargetProc]; g != nil && g != f && !sameRouting(f, g) {
			l.add(fmt.Sprintf("functions[%d].target", i), "%s.%s is declared at %s with other routing; a target that is declared must route as the function (cluster, run_on, key, key_transform, split, merge)",
				f.TargetSchema, f.TargetProc, seen[f.TargetSchema+"."+f.TargetProc])
		}
	}
}

// sameRouting reports whether two functions' calls route alike.
func sameRouting(f, g *Function) bool {
	return f.Cluster == g.Cluster && f.RunOn == g.RunOn && f.Key == g.Key && f.KeyTransform == g.KeyTransform &&
		f.Merge == g.Merge && slices.Equal(f.Split, g.Split)
}

// validateFunctionExtras checks what PL/Proxy's SPLIT, TARGET and RUN ON
// expressions became: split, target and key_transform.
func (c *Config) validateFunctionExtras(l *errorList, path string, f *Function) {
	switch f.KeyTransform {
	case "":
	case KeyTransformText, KeyTransformLower, KeyTransformLowerASCII, KeyTransformValue:
		if f.RunOn != RunOnHash {
			l.add(path+".key_transform", "only with run_on: hash")
		}
	default:
		l.add(path+".key_transform", "%q is not one of text, lower, lower_ascii, value", f.KeyTransform)
	}
	if len(f.Split) > 0 && f.RunOn != RunOnHash && f.RunOn != RunOnPartition {
		l.add(path+".split", "only with run_on: hash or partition (each element goes to the shard of its key element)")
	}
	seen := map[string]bool{}
	for i, a := range f.Split {
		if pos, err := strconv.Atoi(a); err == nil {
			if pos < 1 || pos > 100 {
				l.add(fmt.Sprintf("%s.split[%d]", path, i), "position %d must be between 1 and 100", pos)
			}
		} else if a == "" {
			l.add(fmt.Sprintf("%s.split[%d]", path, i), "is empty")
		} else {
			f.Split[i] = foldName(a)
		}
		if seen[f.Split[i]] {
			l.add(fmt.Sprintf("%s.split[%d]", path, i), "%s is split twice", a)
		}
		seen[f.Split[i]] = true
	}
	if f.Target != "" {
		schema, proc, err := splitFunctionName(f.Target)
		switch {
		case err != nil:
			l.add(path+".target", "%v", err)
		default:
			if !strings.Contains(f.Target, ".") {
				schema = f.Schema
			}
			f.TargetSchema, f.TargetProc = schema, proc
		}
	}
}

// splitFunctionName splits [schema.]name, folding unquoted parts to lower
// case as PostgreSQL does; "Quoted" parts keep their case.
func splitFunctionName(name string) (schema, proc string, err error) {
	parts := strings.Split(name, ".")
	if len(parts) > 2 || name == "" {
		return "", "", fmt.Errorf("%q is not [schema.]name", name)
	}
	for i, p := range parts {
		if p == "" {
			return "", "", fmt.Errorf("%q is not [schema.]name", name)
		}
		parts[i] = foldName(p)
	}
	if len(parts) == 1 {
		return "public", parts[0], nil
	}
	return parts[0], parts[1], nil
}

// foldName lower-cases an identifier unless it is double-quoted.
func foldName(s string) string {
	if len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"' {
		return strings.ReplaceAll(s[1:len(s)-1], `""`, `"`)
	}
	return strings.ToLower(s)
}

func (c *Config) validateShard(l *errorList, path string, sh *Shard) {
	switch {
	case sh.Name == "":
		l.add(path+".name", "required")
	case !nameRE.MatchString(sh.Name):
		l.add(path+".name", "%q is not a valid shard name (letters, digits, _ . -)", sh.Name)
	case sh.Name == RouteError || sh.Name == RouteAny:
		l.add(path+".name", "%q is reserved (it is a default_route keyword)", sh.Name)
	}
	if sh.DSN == "" {
		l.add(path+".dsn", "required")
		return
	}
	dsn, err := expandEnv(sh.DSN)
	if err != nil {
		l.add(path+".dsn", "%v", err)
		return
	}
	sh.DSN = dsn
	if _, err := pgconn.ParseConfig(dsn); err != nil {
		l.add(path+".dsn", "not a valid connection string: %v", redactDSNError(err))
	}
	for i, r := range sh.Replicas {
		rp := fmt.Sprintf("%s.replicas[%d]", path, i)
		dsn, err := expandEnv(r)
		if err != nil {
			l.add(rp, "%v", err)
			continue
		}
		if _, err := pgconn.ParseConfig(dsn); err != nil {
			l.add(rp, "not a valid connection string: %v", redactDSNError(err))
			continue
		}
		sh.Replicas[i] = dsn
	}
}

func (c *Config) validateRoute(l *errorList, path, route string, cl *Cluster) {
	if route == RouteError || route == RouteAny {
		return
	}
	for _, sh := range cl.Shards {
		if sh != nil && sh.Name == route {
			return
		}
	}
	l.add(path, "%q is not error, any, or a shard of cluster %s", route, cl.Name)
}

// resolve makes a path relative to the config file's folder absolute.
func (c *Config) resolve(p string) string {
	if filepath.IsAbs(p) || c.Path == "" {
		return p
	}
	return filepath.Join(filepath.Dir(c.Path), p)
}

// RouteFor returns the default route that applies to a cluster.
func (c *Config) RouteFor(cl *Cluster) string {
	if cl.DefaultRoute != "" {
		return cl.DefaultRoute
	}
	return c.DefaultRoute
}

func expandEnv(s string) (string, error) {
	var missing []string
	out := envRE.ReplaceAllStringFunc(s, func(m string) string {
		name := envRE.FindStringSubmatch(m)[1]
		v, ok := os.LookupEnv(name)
		if !ok {
			missing = append(missing, name)
		}
		return v
	})
	if len(missing) > 0 {
		return "", fmt.Errorf("environment variable %s is not set", strings.Join(missing, ", "))
	}
	return out, nil
}

// redactDSNError keeps pgconn's explanation but not the connection string,
// which may carry a password.
func redactDSNError(err error) string {
	msg := err.Error()
	if i := strings.LastIndex(msg, ": "); i >= 0 && strings.Contains(msg, "cannot parse") {
		return msg[i+2:]
	}
	return msg
}

// ParsePartitions parses a shard's partition list: "all", "5", "0-7" or a
// comma-separated mix ("0-3,8,12-15"), each in [0, count).
func ParsePartitions(spec string, count, shards int) ([]int, error) {
	spec = strings.TrimSpace(spec)
	if spec == "" {
		if shards == 1 {
			spec = "all"
		} else {
			return nil, fmt.Errorf("required when a cluster has several shards (e.g. \"0-%d\")", count/2-1)
		}
	}
	if spec == "all" {
		out := make([]int, count)
		for i := range out {
			out[i] = i
		}
		return out, nil
	}
	seen := map[int]bool{}
	for _, item := range strings.Split(spec, ",") {
		item = strings.TrimSpace(item)
		lo, hi, isRange := strings.Cut(item, "-")
		a, errA := strconv.Atoi(strings.TrimSpace(lo))
		b := a
		var errB error
		if isRange {
			b, errB = strconv.Atoi(strings.TrimSpace(hi))
		}
		if errA != nil || errB != nil || a > b {
			return nil, fmt.Errorf("%q is not a partition number or range like 0-7", item)
		}
		if a < 0 || b >= count {
			return nil, fmt.Errorf("%q is outside 0-%d (the cluster has %d partitions)", item, count-1, count)
		}
		for p := a; p <= b; p++ {
			if seen[p] {
				return nil, fmt.Errorf("partition %d is listed twice", p)
			}
			seen[p] = true
		}
	}
	out := make([]int, 0, len(seen))
	for p := range seen {
		out = append(out, p)
	}
	sort.Ints(out)
	return out, nil
}

// FormatPartitions writes a sorted partition list back in its compact form.
func FormatPartitions(list []int) string {
	var parts []string
	for i := 0; i < len(list); {
		j := i
		for j+1 < len(list) && list[j+1] == list[j]+1 {
			j++
		}
		if i == j {
			parts = append(parts, strconv.Itoa(list[i]))
		} else {
			parts = append(parts, fmt.Sprintf("%d-%d", list[i], list[j]))
		}
		i = j + 1
	}
	return strings.Join(parts, ",")
}
