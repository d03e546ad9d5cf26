// Package monitor runs pgrouter's pollers: the stride check of every
// shard's sequences, where refsync has brought every shard, and the
// per-period pool counters SHOW STATS averages over. It reads the shards
// and the proxy's snapshot API, never a client's traffic; the admin console
// and /metrics read what it keeps.
package monitor

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/pgrouter/pgrouter/config"
	"github.com/pgrouter/pgrouter/move"
	"github.com/pgrouter/pgrouter/proxy"
	"github.com/pgrouter/pgrouter/refsync"
	"github.com/pgrouter/pgrouter/seqalloc"
	"github.com/pgrouter/pgrouter/shardmap"
)

// Monitor owns the pollers of one proxy.Server.
//
// Locks: mu is a leaf (taken under the server's reload lock, when a reload
// hands over a new config, and by the pollers to store a result); stats.mu
// is a leaf too.
type Monitor struct {
	log  *zap.Logger
	srv  *proxy.Server
	ctx  context.Context // ends at Close
	stop context.CancelFunc
	wg   sync.WaitGroup // one per poller goroutine

	mu      sync.Mutex
	current *round // the config in force; a poll of another round stores nothing
	closed  bool

	// seqReport is the latest stride check (nil: none yet, or sequences are
	// not managed); refsyncStatus the latest read of refsync's positions
	// (nil: none yet, or no reference tables). Both are stored under mu by
	// storeIfCurrent and read without it.
	seqReport     atomic.Pointer[seqalloc.Report]
	refsyncStatus atomic.Pointer[refsync.Status]
	// faninStatus is the latest read of fan-in's positions (nil: none).
	faninStatus atomic.Pointer[faninView]
	moves       atomic.Pointer[[]move.Status] // partition moves in progress
	stats       statsSampler
}

// round is one config the pollers work for, until its context ends (with
// the config, or with the monitor).
type round struct {
	ctx    context.Context
	cfg    *config.Config
	shards *shardmap.Map
}

// Start starts the pollers for srv's config, and again for each config a
// reload swaps in. Close stops them.
func Start(srv *proxy.Server, log *zap.Logger) *Monitor {
	if log == nil {
		log = zap.NewNop()
	}
	m := &Monitor{log: log, srv: srv}
	m.ctx, m.stop = context.WithCancel(context.Background())
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		m.stats.run(m.ctx, srv.Pools())
	}()
	srv.Subscribe(m.follow)
	return m
}

// Close stops the pollers and waits for them.
func (m *Monitor) Close() {
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	m.stop()
	m.wg.Wait()
}

// follow starts the pollers for a config the server put in force. Their
// round ends with the config (a reload, or the server's close) or with the
// monitor, whichever comes first, so Close never waits on a poll of a config
// the server still runs (or one a reload swapped in as the server closed).
func (m *Monitor) follow(ctx context.Context, cfg *config.Config, shards *shardmap.Map) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return
	}
	rctx, cancel := context.WithCancel(m.ctx)
	context.AfterFunc(ctx, cancel)
	r := &round{ctx: rctx, cfg: cfg, shards: shards}
	m.current = r
	if cfg.Sequences == nil {
		m.seqReport.Store(nil)
	} else {
		m.repeat(r, cfg.Sequences.CheckInterval.D(), func() { m.checkSequences(r) })
	}
	if cfg.Reference == nil {
		m.refsyncStatus.Store(nil)
	} else {
		m.watchRefsync(r)
	}
	if cfg.Fanin == nil {
		m.faninStatus.Store(nil)
	} else {
		m.watchFanin(r)
	}
	tables := false
	for _, cl := range cfg.Clusters {
		tables = tables || len(cl.Tables) > 0
	}
	if tables {
		m.watchMoves(r)
	} else {
		m.moves.Store(nil)
	}
}

// repeat runs f now and then every interval (only once when interval is 0)
// until the round ends or the monitor closes. The caller holds mu.
func (m *Monitor) repeat(r *round, interval time.Duration, f func()) {
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		for {
			f()
			if interval <= 0 {
				return
			}
			select {
			case <-r.ctx.Done():
				return
			case <-time.After(interval):
			}
		}
	}()
}

// storeIfCurrent runs store, which keeps what a poll of r found, unless a
// reload has replaced r: a poll that outlived its config must not overwrite
// what the new one stored (under mu, so the check and the store are one
// step).
func (m *Monitor) storeIfCurrent(r *round, store func()) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.current == r {
		store()
	}
}

// currentRound is the config in force.
func (m *Monitor) currentRound() *round {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.current
}
