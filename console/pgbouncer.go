package console

import (
	"context"
	"runtime"
	"sort"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"

	"github.com/pgrouter/pgrouter/config"
	"github.com/pgrouter/pgrouter/pool"
	"github.com/pgrouter/pgrouter/proxy"
	"github.com/pgrouter/pgrouter/sqlstate"
)

// pgbouncer's console commands, on pgrouter's model. A pgbouncer
// "database" is what clients connect to and what a pool serves; in
// pgrouter clients connect to a cluster and pools serve shards, so a db
// argument (KILL, RECONNECT, DISABLE, ENABLE, WAIT_CLOSE) names a cluster
// (all its shards) or one shard, and SHOW DATABASES lists both.

// target resolves a db argument: the shards it covers and whether it names
// a cluster. An empty name is every shard.
func (con *Console) target(name string) (shards []string, cluster bool, err error) {
	m := con.srv.Map()
	if name == "" {
		all, err := con.shardNames("")
		return all, false, err
	}
	if cl, ok := m.Cluster(name); ok {
		for _, sh := range cl.Shards {
			shards = append(shards, sh.Name)
		}
		return shards, true, nil
	}
	if _, ok := m.Shard(name); ok {
		return []string{name}, false, nil
	}
	return nil, false, errorf(sqlstate.UndefinedObject, "pgrouter: no cluster or shard is named %q", name).
		WithHint("SHOW DATABASES lists the clusters and shards.")
}

// kill is KILL db: the db's clients are disconnected, its server
// connections closed, and its shards paused, as pgbouncer pauses a killed
// database until RESUME.
func (a *session) kill(name string) error {
	shards, cluster, err := a.target(name)
	if err != nil {
		return err
	}
	on := map[string]bool{}
	for _, sh := range shards {
		on[sh] = true
		a.srv.Pools().Pause(sh)
	}
	clients := a.srv.KillClients(func(c proxy.ClientStatus) bool {
		return (cluster && c.Database == name) || (c.Server != nil && on[c.Server.Shard()])
	})
	for _, sh := range shards {
		a.srv.Pools().Kill(sh)
	}
	a.log.Info("KILL", zap.String("target", name), zap.Int("clients", clients))
	return a.c.Send(&pgproto3.CommandComplete{CommandTag: []byte("KILL")})
}

// killClient is KILL_CLIENT id, an id SHOW CLIENTS shows.
func (a *session) killClient(arg string) error {
	id, err := strconv.ParseUint(arg, 10, 64)
	if err == nil && a.srv.KillClients(func(c proxy.ClientStatus) bool { return c.ID == id }) == 1 {
		a.log.Info("KILL_CLIENT", zap.Uint64("client_id", id))
		return a.c.Send(&pgproto3.CommandComplete{CommandTag: []byte("KILL_CLIENT")})
	}
	return errorf(sqlstate.UndefinedObject, "pgrouter: no client with id %q", arg).
		WithHint("SHOW CLIENTS lists the clients and their ids.")
}

// reconnect is RECONNECT [db].
func (a *session) reconnect(name string) error {
	shards, _, err := a.target(name)
	if err != nil {
		return err
	}
	for _, sh := range shards {
		a.srv.Pools().Reconnect(sh)
	}
	a.log.Info("RECONNECT", zap.Strings("shards", shards))
	return a.c.Send(&pgproto3.CommandComplete{CommandTag: []byte("RECONNECT")})
}

// setDisabled is DISABLE db and ENABLE db.
func (a *session) setDisabled(verb, name string) error {
	if _, _, err := a.target(name); err != nil {
		return err
	}
	a.srv.SetDisabled(name, verb == "DISABLE")
	a.log.Info(verb, zap.String("target", name))
	return a.c.Send(&pgproto3.CommandComplete{CommandTag: []byte(verb)})
}

// suspend is SUSPEND: PAUSE of every shard, then the state says so until
// RESUME. pgrouter holds no client data in buffers between requests, so
// what pgbouncer flushes is already flushed when no server is in use.
func (a *session) suspend() error {
	shards, err := a.shardNames("")
	if err != nil {
		return err
	}
	for _, sh := range shards {
		a.srv.Pools().Pause(sh)
	}
	if err := a.waitIdle(shards); err != nil {
		return err
	}
	a.suspended.Store(true)
	a.log.Info("SUSPEND")
	return a.c.Send(&pgproto3.CommandComplete{CommandTag: []byte("SUSPEND")})
}

// waitClose is WAIT_CLOSE [db]: it returns once no server connection that
// RECONNECT or KILL marked is still open (at once when none is marked).
func (a *session) waitClose(ctx context.Context, name string) error {
	shards, _, err := a.target(name)
	if err != nil {
		return err
	}
	for {
		left := 0
		for _, sh := range shards {
			left += a.srv.Pools().CloseNeeded(sh)
		}
		if left == 0 {
			return a.c.Send(&pgproto3.CommandComplete{CommandTag: []byte("WAIT_CLOSE")})
		}
		if a.srv.Draining() {
			return proxy.ShutdownError()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// showDatabases lists a row per cluster and per shard, with pgbouncer's
// columns: a cluster's host and port are NULL (it is many servers), its
// current_connections the sum of its shards'.
func (con *Console) showDatabases() *resultSet {
	rs := &resultSet{cols: []column{
		{"name", oidText}, {"host", oidText}, {"port", oidInt8}, {"database", oidText}, {"force_user", oidText},
		{"pool_size", oidInt8}, {"min_pool_size", oidInt8}, {"reserve_pool", oidInt8}, {"pool_mode", oidText},
		{"max_connections", oidInt8}, {"current_connections", oidInt8}, {"paused", oidInt8}, {"disabled", oidInt8},
	}}
	cfg := con.srv.Config()
	open := map[string]int{}
	for _, p := range con.srv.Pools().Pools() {
		open[p.Shard()] += p.Stats().Open
	}
	flag := func(b bool) int64 {
		if b {
			return 1
		}
		return 0
	}
	pc := cfg.Pool
	for _, cl := range con.srv.Map().Clusters() {
		total, paused := 0, true
		for _, sh := range cl.Shards {
			total += open[sh.Name]
			paused = paused && con.srv.Pools().Paused(sh.Name)
		}
		rs.add(cl.Name, nil, nil, cl.Name, nil, pc.Size, pc.MinIdle, pc.ReservePoolSize, string(pc.Mode), 0, total,
			flag(paused && len(cl.Shards) > 0), flag(con.srv.Disabled(cl.Name)))
		for _, sh := range cl.Shards {
			host, port, db := dsnTarget(sh.DSN)
			var user any
			if cc, err := pgconn.ParseConfig(sh.DSN); err == nil && cc.User != "" {
				user = cc.User
			}
			rs.add(sh.Name, host, port, db, user, pc.Size, pc.MinIdle, pc.ReservePoolSize, string(pc.Mode), 0, open[sh.Name],
				flag(con.srv.Pools().Paused(sh.Name)), flag(con.srv.Disabled(sh.Name)))
		}
	}
	return rs
}

// showLists counts pgrouter's lists as pgbouncer names them. pgrouter
// keeps no free lists (Go's allocator does), and resolves DNS through the
// system, so those rows are 0.
func (con *Console) showLists() *resultSet {
	rs := &resultSet{cols: []column{{"list", oidText}, {"items", oidInt8}}}
	m := con.srv.Map()
	databases := 0
	for _, cl := range m.Clusters() {
		databases += 1 + len(cl.Shards)
	}
	pools := con.srv.Pools().Pools()
	users := map[string]bool{}
	usedServers := 0
	for _, p := range pools {
		users[p.User()] = true
		usedServers += p.Stats().Open
	}
	clients := con.srv.Clients()
	for _, c := range clients {
		users[c.User] = true
	}
	for _, row := range []struct {
		name string
		n    int
	}{
		{"databases", databases}, {"users", len(users)}, {"pools", len(pools)},
		{"free_clients", 0}, {"used_clients", len(clients)}, {"login_clients", con.srv.LoginCount()},
		{"free_servers", 0}, {"used_servers", usedServers},
		{"dns_names", 0}, {"dns_zones", 0}, {"dns_queries", 0}, {"dns_pending", 0},
	} {
		rs.add(row.name, row.n)
	}
	return rs
}

// showUsers lists the users pgrouter knows now: those of admin_users, of
// the pools and of the clients logged in.
func (con *Console) showUsers() *resultSet {
	rs := &resultSet{cols: []column{{"name", oidText}, {"pool_mode", oidText}}}
	users := map[string]bool{}
	for _, u := range con.srv.Config().AdminUsers {
		users[u] = true
	}
	for _, p := range con.srv.Pools().Pools() {
		if p.User() != "" {
			users[p.User()] = true
		}
	}
	for _, c := range con.srv.Clients() {
		users[c.User] = true
	}
	names := make([]string, 0, len(users))
	for u := range users {
		names = append(names, u)
	}
	sort.Strings(names)
	for _, u := range names {
		rs.add(u, nil) // NULL: the pool mode is pool.mode's, as pgbouncer's empty column says
	}
	return rs
}

// statsRow is one shard's counters: totals since start, and the window the
// monitor's last period covered.
type statsRow struct {
	cluster, shard string
	total, window  pool.Counters
}

func (con *Console) statsRows() ([]statsRow, time.Duration) {
	window, span := con.mon.StatsWindow()
	var out []statsRow
	for _, st := range con.srv.ShardStatuses() {
		out = append(out, statsRow{st.Shard.Cluster, st.Shard.Name, st.Counters, window[st.Shard.Name]})
	}
	return out, span
}

// perSecond is n over span in whole units per second (0 before the first
// period ends).
func perSecond(n int64, span time.Duration) int64 {
	if span <= 0 {
		return 0
	}
	return int64(float64(n) / span.Seconds())
}

var statsCols = []column{{"database", oidText}, {"shard", oidText}, {"xact_count", oidInt8}, {"query_count", oidInt8},
	{"bytes_received", oidInt8}, {"bytes_sent", oidInt8}, {"xact_time", oidInt8}, {"query_time", oidInt8}, {"wait_time", oidInt8}}

// showStatsTotals is SHOW STATS's totals alone (times in µs).
func (con *Console) showStatsTotals() *resultSet {
	rs := &resultSet{cols: statsCols}
	rows, _ := con.statsRows()
	for _, r := range rows {
		t := r.total
		rs.add(r.cluster, r.shard, t.XactCount, t.QueryCount, t.Received, t.Sent, t.XactTime.Microseconds(), t.QueryTime.Microseconds(), t.WaitTime.Microseconds())
	}
	return rs
}

// showStatsAverages is SHOW STATS's averages alone: counts and bytes per
// second over the last period, times in µs per transaction, query, wait.
func (con *Console) showStatsAverages() *resultSet {
	rs := &resultSet{cols: statsCols}
	rows, span := con.statsRows()
	for _, r := range rows {
		w := r.window
		rs.add(r.cluster, r.shard, perSecond(w.XactCount, span), perSecond(w.QueryCount, span), perSecond(w.Received, span), perSecond(w.Sent, span),
			avgMicros(w.XactTime, w.XactCount), avgMicros(w.QueryTime, w.QueryCount), avgMicros(w.WaitTime, w.WaitCount))
	}
	return rs
}

// showTotals sums SHOW STATS over every shard, as name/value rows.
func (con *Console) showTotals() *resultSet {
	rs := &resultSet{cols: []column{{"name", oidText}, {"value", oidInt8}}}
	rows, span := con.statsRows()
	var t, w pool.Counters
	for _, r := range rows {
		t, w = t.Add(r.total), w.Add(r.window)
	}
	for _, kv := range []struct {
		name string
		v    int64
	}{
		{"total_xact_count", t.XactCount}, {"total_query_count", t.QueryCount},
		{"total_client_bytes", t.Received}, {"total_server_bytes", t.Sent},
		{"total_xact_time", t.XactTime.Microseconds()}, {"total_query_time", t.QueryTime.Microseconds()}, {"total_wait_time", t.WaitTime.Microseconds()},
		{"avg_xact_count", perSecond(w.XactCount, span)}, {"avg_query_count", perSecond(w.QueryCount, span)},
		{"avg_client_bytes", perSecond(w.Received, span)}, {"avg_server_bytes", perSecond(w.Sent, span)},
		{"avg_xact_time", avgMicros(w.XactTime, w.XactCount)}, {"avg_query_time", avgMicros(w.QueryTime, w.QueryCount)},
		{"avg_wait_time", avgMicros(w.WaitTime, w.WaitCount)},
	} {
		rs.add(kv.name, kv.v)
	}
	return rs
}

// showState is pgbouncer's SHOW STATE: active, paused (some shard is) and
// suspended, as yes/no.
func (con *Console) showState() *resultSet {
	rs := &resultSet{cols: []column{{"key", oidText}, {"value", oidText}}}
	shards, _ := con.shardNames("")
	paused := false
	for _, sh := range shards {
		paused = paused || con.srv.Pools().Paused(sh)
	}
	suspended := con.suspended.Load() && paused
	yes := func(b bool) string {
		if b {
			return "yes"
		}
		return "no"
	}
	rs.add("active", yes(!paused))
	rs.add("paused", yes(paused && !suspended))
	rs.add("suspended", yes(suspended))
	return rs
}

// showMem reports what pgrouter's memory is, in pgbouncer's columns: Go's
// heap and stacks (size 1: bytes; used, free, memtotal in bytes) and the
// sessions (used: clients logged in).
func (con *Console) showMem() *resultSet {
	rs := &resultSet{cols: []column{{"name", oidText}, {"size", oidInt8}, {"used", oidInt8}, {"free", oidInt8}, {"memtotal", oidInt8}}}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	rs.add("go_heap", 1, ms.HeapInuse, ms.HeapIdle-ms.HeapReleased, ms.HeapSys-ms.HeapReleased)
	rs.add("go_stacks", 1, ms.StackInuse, ms.StackSys-ms.StackInuse, ms.StackSys)
	rs.add("go_other", 1, ms.Sys-ms.HeapSys-ms.StackSys, 0, ms.Sys-ms.HeapSys-ms.StackSys)
	rs.add("client_sessions", 0, len(con.srv.Clients()), 0, 0)
	return rs
}

// notSupported answers SHOW SOCKETS and SHOW FDS, which describe
// pgbouncer's own internals.
func notSupported(what string) error {
	return errorf(sqlstate.FeatureNotSupported, "pgrouter: SHOW %s is not supported: it lists pgbouncer's sockets and the file descriptors it passes to a new process on an online restart", what).
		WithHint("SHOW CLIENTS and SHOW SERVERS list the connections; rolling restarts use listen_reuseport.")
}

// pauseParts is PAUSE PARTITIONS cluster spec and RESUME PARTITIONS cluster.
func (a *session) pauseParts(cmd adminCommand) error {
	cl, ok := a.srv.Map().Cluster(cmd.what)
	if !ok {
		return errorf(sqlstate.UndefinedObject, "pgrouter: cluster %q does not exist", cmd.what).
			WithHint("SHOW DATABASES lists the clusters.")
	}
	if cmd.verb == "RESUME" {
		a.srv.ResumePartitions(cl.Name)
		a.log.Info("RESUME PARTITIONS", zap.String("cluster", cl.Name))
		return a.c.Send(&pgproto3.CommandComplete{CommandTag: []byte("RESUME")})
	}
	parts, err := config.ParsePartitions(cmd.spec, cl.Partitions, 2)
	if err != nil {
		return errorf(sqlstate.SyntaxError, "pgrouter: PAUSE PARTITIONS %s %s: %v", cl.Name, cmd.spec, err).
			WithHint("Partitions are numbers or ranges: 6-7, or 3,5.")
	}
	a.srv.PausePartitions(cl.Name, parts)
	a.log.Info("PAUSE PARTITIONS", zap.String("cluster", cl.Name), zap.Ints("partitions", parts))
	return a.c.Send(&pgproto3.CommandComplete{CommandTag: []byte("PAUSE")})
}
