package router

import (
	"sync"
	"sync/atomic"

	"github.com/pgrouter/pgrouter/shardmap"
	"github.com/pgrouter/pgrouter/sqlstate"
	"github.com/pgrouter/pgrouter/wire"
)

// Router plans and routes statements for one cluster. It is safe for
// concurrent use; plans are cached by statement text.
type Router struct {
	Cluster *shardmap.Cluster
	index   functionIndex
	targets bool // some function has a target (HasTargets)

	catalog atomic.Pointer[Catalog]
	version atomic.Uint64 // bumped when the catalog changes

	mu sync.RWMutex
	// cache holds plans by statement text, one map per standard_conforming_strings
	// value (the text reads differently under each); a map keyed by the text
	// alone lets a lookup from a message's bytes skip copying them.
	cache      [2]map[string]*Plan
	cacheBytes int // statement text the cache holds
}

// std indexes Router.cache.
func std(standard bool) int {
	if standard {
		return 1
	}
	return 0
}

// The shared plan cache is bounded in entries and in the statement text it
// holds; past either it starts over (an application's statements are
// usually a small fixed set). A statement longer than planCacheMaxText is
// planned each time and never kept: a client sending distinct 8 MB
// statements must not make the router hold them (lexing is linear, so
// replanning a long statement costs about as much as receiving it).
const (
	planCacheLimit   = 8192
	planCacheBytes   = 8 << 20
	planCacheMaxText = 16 << 10
)

// New returns a Router for a cluster; its catalog is loaded separately.
func New(cl *shardmap.Cluster) *Router {
	r := &Router{Cluster: cl, index: newFunctionIndex(cl.Functions)}
	for _, f := range cl.Functions {
		r.targets = r.targets || f.TargetName != ""
	}
	r.resetCache()
	r.version.Store(versions.Add(1))
	return r
}

// versions numbers catalogs across all routers, so a plan made by the
// router of an older config generation is stale under the new one (a
// reload may change a function's declaration).
var versions atomic.Uint64

// SetCatalog installs function signatures and drops plans made without them.
func (r *Router) SetCatalog(c *Catalog) {
	r.catalog.Store(c)
	r.version.Store(versions.Add(1))
	r.mu.Lock()
	r.resetCache()
	r.mu.Unlock()
}

// resetCache empties the plan cache; the caller holds mu (or owns r).
func (r *Router) resetCache() {
	r.cache = [2]map[string]*Plan{{}, {}}
	r.cacheBytes = 0
}

// Catalog returns the loaded signatures (nil before the first load).
func (r *Router) Catalog() *Catalog { return r.catalog.Load() }

// Stale reports whether a plan was made with an older catalog.
func (r *Router) Stale(p *Plan) bool { return p.catalog != r.version.Load() }

// HasFunctions reports whether the cluster declares routed functions.
func (r *Router) HasFunctions() bool { return len(r.index) > 0 }

// HasTargets reports whether a declared function calls a target on the
// shards, so statements may need rewriting (Plan.Rewritten).
func (r *Router) HasTargets() bool { return r.targets }

// Plan returns the plan of a statement string, from the cache when it has
// been seen before.
func (r *Router) Plan(sql string, standard bool) *Plan {
	r.mu.RLock()
	p := r.cache[std(standard)][sql]
	r.mu.RUnlock()
	if p != nil {
		return p
	}
	return r.plan(sql, standard)
}

// PlanBytes is Plan for a statement read from a message: a statement seen
// before is found without copying the bytes (the common case: a driver
// parses the same texts over and over), a new one is copied once.
func (r *Router) PlanBytes(sql []byte, standard bool) *Plan {
	r.mu.RLock()
	p := r.cache[std(standard)][string(sql)]
	r.mu.RUnlock()
	if p != nil {
		return p
	}
	return r.plan(string(sql), standard)
}

// plan analyzes a statement the cache does not hold and keeps the plan.
func (r *Router) plan(sql string, standard bool) *Plan {
	version := r.version.Load()
	p := analyze(sql, standard, r.index, r.catalog.Load())
	p.catalog = version
	p.ReadOnly = readOnly(p, standard)
	p.rewrite()
	if len(sql) > planCacheMaxText {
		return p
	}
	size := p.size()
	r.mu.Lock()
	cache := &r.cache[std(standard)]
	if len(r.cache[0])+len(r.cache[1]) >= planCacheLimit || r.cacheBytes+size > planCacheBytes {
		r.resetCache()
	}
	if _, ok := (*cache)[sql]; !ok {
		r.cacheBytes += size
	}
	(*cache)[sql] = p
	r.mu.Unlock()
	return p
}

// size estimates the memory a cached plan holds: its text, and its
// statements and calls, which grow with the text.
func (p *Plan) size() int {
	return 256 + len(p.SQL) + 96*(len(p.Statements)+len(p.Calls))
}

// Target says where a statement goes.
type Target uint8

// Targets.
const (
	TargetDefault Target = iota // no routed call: the unrouted rules apply
	TargetAny                   // any shard will do
	TargetShard                 // one shard
	TargetAll                   // every shard (a run_on all call)
	TargetSplit                 // some shards, each with its elements (Route.Split)
)

// Route is a routing decision.
type Route struct {
	Target Target
	Shard  *shardmap.Shard // TargetShard
	Call   *Call           // TargetAll, TargetSplit: the call whose results are combined
	Split  *Split          // TargetSplit: the shards and what each gets
	// ReadOnly: the statement only calls read_only functions and reads
	// (Plan.ReadOnly), so outside a transaction a replica may serve it.
	ReadOnly bool
	// Partition is the partition of the key a TargetShard route follows
	// (-1 for other targets), which a partition move may hold paused.
	Partition int
}

// Route decides where a planned statement goes; params are the Bind's
// (zero for a simple Query). For a cached plan it does not allocate on
// success.
func (r *Router) Route(p *Plan, params wire.BindMsg) (Route, *Error) {
	if p.Err != nil {
		return Route{}, p.Err
	}
	route := Route{Partition: -1}
	sawAny := false
	for i := range p.Calls {
		c := &p.Calls[i]
		switch c.Fn.RunOn {
		case shardmap.RunAll:
			if len(p.Statements) > 0 {
				// Every shard's server would keep the change, where pgrouter
				// cannot follow it to the client's next server.
				return Route{}, planError(sqlstate.FeatureNotSupported, "a call of %s (run_on: all) cannot be in a statement that changes session settings or state (SET, set_config, BEGIN, ...)", c.Fn.FullName())
			}
			if len(p.Calls) > 1 {
				return Route{}, planError(sqlstate.FeatureNotSupported, "a call of %s (run_on: all) must be alone in its statement", c.Fn.FullName())
			}
			return Route{Target: TargetAll, Call: c, Partition: -1}, nil
		case shardmap.RunAny:
			sawAny = true
			continue
		}
		var sh *shardmap.Shard
		var part int
		var err *Error
		if c.Fn.Partition >= 0 { // a constant partition
			sh, part = r.Cluster.ShardOf(c.Fn.Partition), c.Fn.Partition
		} else if c.Key.Kind == KeySplit {
			split, err := r.routeSplit(p, c, params)
			switch {
			case err != nil:
				return Route{}, err
			case split.Target == TargetSplit:
				return split, nil
			case split.Target == TargetAny:
				sawAny = true
				continue
			}
			sh, part = split.Shard, split.Partition
		} else if sh, part, err = r.shardFor(c, params); err != nil {
			return Route{}, err
		}
		if route.Shard != nil && route.Shard != sh {
			return Route{}, planError(sqlstate.FeatureNotSupported, "the statement calls %s for shard %s and for shard %s; one statement must stay on one shard", c.Fn.FullName(), route.Shard.Name, sh.Name)
		}
		route = Route{Target: TargetShard, Shard: sh, Partition: part}
	}
	switch {
	case route.Shard != nil:
		route.ReadOnly = p.ReadOnly
		return route, nil
	case sawAny || p.AnyShard:
		return Route{Target: TargetAny, Partition: -1}, nil
	}
	return Route{Target: TargetDefault, Partition: -1}, nil
}

// shardFor computes the shard owning a call's key, and the key's partition.
func (r *Router) shardFor(c *Call, params wire.BindMsg) (*shardmap.Shard, int, *Error) {
	var value []byte
	var bin, null bool
	switch c.Key.Kind {
	case KeyNull:
		null = true
	case KeyConst:
		value = unsafeBytes(c.Key.Const)
	case KeyParam:
		var ok bool
		value, bin, null, ok = params.Param(c.Key.Param)
		if !ok {
			return nil, -1, planError(sqlstate.ProtocolViolation, "the Bind for %s has no parameter $%d (its key %s)", c.Fn.FullName(), c.Key.Param+1, c.Key.Arg)
		}
	}
	if null {
		return nil, -1, &Error{Code: sqlstate.NullValueNotAllowed, Message: "pgrouter: shard key " + c.Key.Arg + " of " + c.Fn.FullName() + " is NULL"}
	}
	cl := r.Cluster
	if c.Fn.RunOn == shardmap.RunPartition {
		n, err := intKey(value, bin, c.Key.ParamType)
		if err != nil {
			return nil, -1, keyError(c, err)
		}
		if n < 0 || n >= int64(cl.Partitions) {
			return nil, -1, planError(sqlstate.NumericValueOutOfRange, "partition %d for %s is out of range 0-%d", n, c.Fn.FullName(), cl.Partitions-1)
		}
		return cl.ShardOf(int(n)), int(n), nil
	}
	part, err := partitionOf(cl, c.Fn, c.Key.Type, c.Key.ParamType, value, bin)
	if err != nil {
		return nil, -1, keyError(c, err)
	}
	return cl.ShardOf(part), part, nil
}

// partitionOf is the partition of a key value of a run_on hash function.
func partitionOf(cl *shardmap.Cluster, fn *shardmap.Function, keyType, paramType uint32, value []byte, bin bool) (int, error) {
	var h uint64
	var err error
	if fn.KeyTransform != "" {
		h, err = transformedHash(cl.Hash, fn.KeyTransform, keyType, paramType, value, bin)
	} else {
		h, err = hashKey(cl.Hash, keyType, paramType, value, bin)
	}
	if err != nil {
		return -1, err
	}
	return shardmap.Partition(h, cl.Partitions), nil
}

func keyError(c *Call, err error) *Error {
	return &Error{Code: sqlstate.InvalidTextRepresentation, Message: "pgrouter: shard key " + c.Key.Arg + " of " + c.Fn.FullName() + ": " + err.Error()}
}

// KeyShard returns the shard a text key belongs to, for SET pgrouter.key
// and /* pgrouter: key=... */.
func (r *Router) KeyShard(key string) *shardmap.Shard {
	return r.Cluster.ShardOfHash(r.Cluster.Hash.Text([]byte(key)))
}

// readOnly reports whether a plan may run on a replica: one SELECT whose
// routed calls all call read_only functions, that changes no session state,
// calls no undeclared function (which might write), and neither locks rows
// (FOR UPDATE, FOR SHARE, ...) nor creates a table (SELECT INTO).
func readOnly(p *Plan, standard bool) bool {
	if p.Err != nil || !p.Single || len(p.Statements) > 0 || p.Undeclared != "" || len(p.Calls) == 0 {
		return false
	}
	for i := range p.Calls {
		if fn := p.Calls[i].Fn; !fn.ReadOnly || fn.RunOn == shardmap.RunAll {
			return false
		}
	}
	l := NewLexer(p.SQL)
	l.StandardStrings = standard
	first := true
	for t := l.Next(); t.Kind != EOF; t = l.Next() {
		if t.Kind != Ident {
			first = false
			continue
		}
		switch {
		case first && !l.EqualFold(t, "select"):
			return false
		case l.EqualFold(t, "for"), l.EqualFold(t, "into"):
			return false
		}
		first = false
	}
	return true
}
