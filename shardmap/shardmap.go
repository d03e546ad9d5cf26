// Package shardmap is the immutable picture of the clusters: which shards
// exist, which partitions each owns and where unrouted statements go. A Map
// is built once from a validated config and never changed; a reload builds a
// new Map and swaps the pointer, so a session always sees one consistent map.
package shardmap

import (
	"fmt"

	"github.com/pgrouter/pgrouter/config"
)

// Map holds every cluster and shard of one config generation.
type Map struct {
	clusters map[string]*Cluster
	names    []string
	shards   map[string]*Shard
	fallback *Cluster
}

// RunOn says where a routed function's call goes.
type RunOn uint8

// RunOn values (PL/Proxy's RUN ON forms).
const (
	RunHash      RunOn = iota // the shard owning hash(key)'s partition
	RunPartition              // the shard owning partition key
	RunAny                    // any one shard
	RunAll                    // every shard once, results combined
)

// Merge says how the results of a RunAll call are combined.
type Merge uint8

// Merge values.
const (
	MergeConcat Merge = iota // rows of every shard, in shard order
	MergeSum
	MergeMin
	MergeMax
	MergeBoolAnd
	MergeBoolOr
)

// Function is a declared routed function.
type Function struct {
	Schema, Name string
	Cluster      *Cluster
	RunOn        RunOn
	KeyName      string // argument name, or "" with KeyPos
	KeyPos       int    // 1-based argument position, or 0 with KeyName
	Merge        Merge
	ReadOnly     bool // a call outside a transaction may run on a replica
	// KeyTransform is the key's change before hashing: "" (none), "text",
	// "lower" or "lower_ascii" (config's key_transform).
	KeyTransform string
	// Split are the array arguments split element by element (names, or
	// 1-based positions as text), as PL/Proxy's SPLIT.
	Split []string
	// TargetSchema and TargetName are the function called on the shards
	// in its place (PL/Proxy's TARGET); empty without one.
	TargetSchema, TargetName string
	// Partition is a run_on partition function's constant partition
	// (PL/Proxy's RUN ON <n>), or -1: the key's value.
	Partition int
}

// Remote is the schema and name of the function the shards run for a
// call: the target when there is one.
func (f *Function) Remote() (schema, name string) {
	if f.TargetName != "" {
		return f.TargetSchema, f.TargetName
	}
	return f.Schema, f.Name
}

// FullName is schema.name as declared.
func (f *Function) FullName() string { return f.Schema + "." + f.Name }

// Cluster is a set of shards sharing one partition space.
type Cluster struct {
	Name       string
	Hash       HashFunc
	Partitions int
	Shards     []*Shard
	Default    Route
	Functions  []*Function
	owner      []*Shard // partition -> shard
	replicas   bool     // some shard has replicas
}

// Shard is one PostgreSQL database.
type Shard struct {
	Name       string
	DSN        string
	Cluster    string
	Index      int   // position in its cluster, which fixes fan-out order
	Partitions []int // sorted
	// Replicas are the shard's hot standbys, each a Shard of its own (own
	// pools and health checks) named "<shard>/r<n>" with Primary set.
	Replicas []*Shard
	Primary  *Shard // set on a replica
}

// HasReplicas reports whether any shard of the cluster has replicas.
func (c *Cluster) HasReplicas() bool { return c.replicas }

// ReplicaName is the name of a shard's i-th replica (from 1): a "/" no
// shard name may contain keeps it apart from them.
func ReplicaName(shard string, i int) string { return fmt.Sprintf("%s/r%d", shard, i) }

// RouteKind says how a statement without a routing key is placed.
type RouteKind int

// Route kinds.
const (
	RouteError RouteKind = iota // refuse with 0A000
	RouteAny                    // any shard of the cluster
	RouteShard                  // one named shard
)

// Route is a default placement.
type Route struct {
	Kind  RouteKind
	Shard *Shard // RouteShard only
}

// New builds a Map from a validated config.
func New(cfg *config.Config) (*Map, error) {
	m := &Map{clusters: map[string]*Cluster{}, shards: map[string]*Shard{}}
	for _, name := range cfg.ClusterNames() {
		cc := cfg.Clusters[name]
		hash, ok := ParseHashFunc(cc.Hash)
		if !ok {
			return nil, fmt.Errorf("cluster %s: unknown hash %q", name, cc.Hash)
		}
		cl := &Cluster{Name: name, Hash: hash, Partitions: cc.Partitions, owner: make([]*Shard, cc.Partitions)}
		byName := map[string]*Shard{}
		for i, sc := range cc.Shards {
			sh := &Shard{Name: sc.Name, DSN: sc.DSN, Cluster: name, Index: i}
			for j, dsn := range sc.Replicas {
				sh.Replicas = append(sh.Replicas, &Shard{Name: ReplicaName(sc.Name, j+1), DSN: dsn, Cluster: name, Index: i, Primary: sh})
				cl.replicas = true
			}
			for _, p := range sc.PartitionList {
				cl.owner[p] = sh
			}
			cl.Shards = append(cl.Shards, sh)
			m.shards[sh.Name] = sh
			byName[sh.Name] = sh
		}
		for p, owner := range cc.Owners { // recorded on the shards by a move: it wins
			if sh, ok := byName[owner]; ok && p >= 0 && p < cc.Partitions {
				cl.owner[p] = sh
			}
		}
		for p, sh := range cl.owner {
			if sh != nil {
				sh.Partitions = append(sh.Partitions, p)
			}
		}
		for p, sh := range cl.owner {
			if sh == nil {
				return nil, fmt.Errorf("cluster %s: partition %d has no shard", name, p)
			}
		}
		switch route := cfg.RouteFor(cc); route {
		case config.RouteError:
			cl.Default = Route{Kind: RouteError}
		case config.RouteAny:
			cl.Default = Route{Kind: RouteAny}
		default:
			sh, ok := m.shards[route]
			if !ok || sh.Cluster != name {
				return nil, fmt.Errorf("cluster %s: default_route %q is not one of its shards", name, route)
			}
			cl.Default = Route{Kind: RouteShard, Shard: sh}
		}
		m.clusters[name] = cl
		m.names = append(m.names, name)
	}
	if cfg.FallbackCluster != "" {
		m.fallback = m.clusters[cfg.FallbackCluster]
	}
	for _, fc := range cfg.Functions {
		cl := m.clusters[fc.Cluster]
		if cl == nil {
			return nil, fmt.Errorf("function %s: unknown cluster %q", fc.Name, fc.Cluster)
		}
		f := &Function{Schema: fc.Schema, Name: fc.Proc, Cluster: cl, KeyName: fc.Key, KeyPos: fc.KeyPos, ReadOnly: fc.ReadOnly,
			KeyTransform: fc.KeyTransform, Split: fc.Split, Partition: -1}
		if fc.Partition != nil {
			f.Partition = *fc.Partition
		}
		if fc.TargetProc != "" && (fc.TargetSchema != fc.Schema || fc.TargetProc != fc.Proc) {
			f.TargetSchema, f.TargetName = fc.TargetSchema, fc.TargetProc
		}
		if fc.KeyPos > 0 {
			f.KeyName = ""
		}
		switch fc.RunOn {
		case config.RunOnHash:
			f.RunOn = RunHash
		case config.RunOnPartition:
			f.RunOn = RunPartition
		case config.RunOnAll:
			f.RunOn = RunAll
		default:
			f.RunOn = RunAny
		}
		f.Merge = map[string]Merge{"sum": MergeSum, "min": MergeMin, "max": MergeMax, "bool_and": MergeBoolAnd, "bool_or": MergeBoolOr}[fc.Merge]
		cl.Functions = append(cl.Functions, f)
	}
	return m, nil
}

// Cluster returns the cluster a client names as its database. A name that is
// no cluster gets the fallback cluster when one is configured.
func (m *Map) Cluster(database string) (*Cluster, bool) {
	if cl, ok := m.clusters[database]; ok {
		return cl, true
	}
	if m.fallback != nil {
		return m.fallback, true
	}
	return nil, false
}

// Clusters returns every cluster in name order.
func (m *Map) Clusters() []*Cluster {
	out := make([]*Cluster, len(m.names))
	for i, name := range m.names {
		out[i] = m.clusters[name]
	}
	return out
}

// Shard returns a shard by name.
func (m *Map) Shard(name string) (*Shard, bool) {
	sh, ok := m.shards[name]
	return sh, ok
}

// ShardOf returns the shard that owns a partition.
func (c *Cluster) ShardOf(partition int) *Shard { return c.owner[partition] }

// ShardOfHash returns the shard that owns a hash value's partition.
func (c *Cluster) ShardOfHash(hash uint64) *Shard { return c.owner[Partition(hash, c.Partitions)] }

// ShardNamed returns one of the cluster's shards, or of their replicas, by name.
func (c *Cluster) ShardNamed(name string) (*Shard, bool) {
	for _, sh := range c.Shards {
		if sh.Name == name {
			return sh, true
		}
		for _, r := range sh.Replicas { // a replica's server, holding a READ ONLY transaction
			if r.Name == name {
				return r, true
			}
		}
	}
	return nil, false
}

// String is the run_on name used in router.yaml.
func (r RunOn) String() string {
	switch r {
	case RunHash:
		return "hash"
	case RunPartition:
		return "partition"
	case RunAny:
		return "any"
	case RunAll:
		return "all"
	}
	return "unknown"
}

// String is the merge name used in router.yaml.
func (m Merge) String() string {
	switch m {
	case MergeConcat:
		return "concat"
	case MergeSum:
		return "sum"
	case MergeMin:
		return "min"
	case MergeMax:
		return "max"
	case MergeBoolAnd:
		return "bool_and"
	case MergeBoolOr:
		return "bool_or"
	}
	return "unknown"
}
