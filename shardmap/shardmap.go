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

// Cluster is a set of shards sharing one partition space.
type Cluster struct {
	Name       string
	Partitions int
	Shards     []*Shard
	Default    Route
	owner      []*Shard // partition -> shard
}

// Shard is one PostgreSQL database.
type Shard struct {
	Name       string
	DSN        string
	Cluster    string
	Index      int   // position in its cluster, which fixes fan-out order
	Partitions []int // sorted
}

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
		cl := &Cluster{Name: name, Partitions: cc.Partitions, owner: make([]*Shard, cc.Partitions)}
		for i, sc := range cc.Shards {
			sh := &Shard{Name: sc.Name, DSN: sc.DSN, Cluster: name, Index: i, Partitions: sc.PartitionList}
			for _, p := range sc.PartitionList {
				cl.owner[p] = sh
			}
			cl.Shards = append(cl.Shards, sh)
			m.shards[sh.Name] = sh
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
