package proxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgrouter/pgrouter/pool"
	"github.com/pgrouter/pgrouter/seqalloc"
	"github.com/pgrouter/pgrouter/shardmap"
)

// Version is pgrouter's version, set by the command at start (SHOW VERSION).
var Version = "dev"

// poolsByShard groups the pools by shard name.
func (s *Server) poolsByShard() map[string][]*pool.Pool {
	out := map[string][]*pool.Pool{}
	for _, p := range s.pools.Pools() {
		out[p.Shard()] = append(out[p.Shard()], p)
	}
	return out
}

// shardStatus is one shard's state, for SHOW SHARDS and /metrics.
type shardStatus struct {
	shard    *shardmap.Shard
	health   pool.Health
	paused   bool
	stats    pool.Stats    // summed over the shard's pools
	counters pool.Counters // summed over the shard's pools
}

// shardStatuses returns every shard's state in config order.
func (s *Server) shardStatuses() []shardStatus {
	byShard := s.poolsByShard()
	var out []shardStatus
	for _, sh := range s.gen.Load().allShards() {
		st := shardStatus{shard: sh, health: s.pools.Health(sh.Name), paused: s.pools.Paused(sh.Name)}
		for _, p := range byShard[sh.Name] {
			ps := p.Stats()
			st.stats.Active += ps.Active
			st.stats.Idle += ps.Idle
			st.stats.Waiting += ps.Waiting
			st.stats.Open += ps.Open
			st.stats.MaxWait = max(st.stats.MaxWait, ps.MaxWait)
			st.counters = addCounters(st.counters, p.Counters())
		}
		out = append(out, st)
	}
	return out
}

func addCounters(a, b pool.Counters) pool.Counters {
	a.XactCount += b.XactCount
	a.QueryCount += b.QueryCount
	a.XactTime += b.XactTime
	a.QueryTime += b.QueryTime
	a.WaitCount += b.WaitCount
	a.WaitTime += b.WaitTime
	a.Received += b.Received
	a.Sent += b.Sent
	return a
}

// subCounters is what moved from b to a.
func subCounters(a, b pool.Counters) pool.Counters {
	return pool.Counters{
		XactCount: a.XactCount - b.XactCount, QueryCount: a.QueryCount - b.QueryCount,
		XactTime: a.XactTime - b.XactTime, QueryTime: a.QueryTime - b.QueryTime,
		WaitCount: a.WaitCount - b.WaitCount, WaitTime: a.WaitTime - b.WaitTime,
		Received: a.Received - b.Received, Sent: a.Sent - b.Sent,
	}
}

// avgMicros is total/count in microseconds (0 when count is 0).
func avgMicros(total time.Duration, count int64) int64 {
	if count == 0 {
		return 0
	}
	return total.Microseconds() / count
}

func (s *Server) showShards() *resultSet {
	rs := &resultSet{cols: []column{
		{"cluster", oidText}, {"shard", oidText}, {"host", oidText}, {"port", oidInt8}, {"database", oidText},
		{"partitions", oidText}, {"state", oidText}, {"paused", oidBool}, {"sv_active", oidInt8}, {"sv_idle", oidInt8},
		{"cl_waiting", oidInt8}, {"xact_count", oidInt8}, {"query_count", oidInt8}, {"avg_query_us", oidInt8},
		{"check_latency_us", oidInt8}, {"state_since", oidTimestamptz}, {"last_error", oidText},
		{"refsync_lag_bytes", oidInt8}, {"refsync_lag_ms", oidInt8}, {"seq_ok", oidBool},
	}}
	for _, st := range s.shardStatuses() {
		host, port, db := dsnTarget(st.shard.DSN)
		var latency, lastErr any
		if st.health.State == pool.HealthUp {
			latency = st.health.Latency.Microseconds()
		}
		if st.health.LastError != "" {
			lastErr = st.health.LastError
		}
		var lagBytes, lagMS any
		if bytes, lag, ok := s.refsyncLag(st.shard.Cluster, st.shard.Name); ok {
			lagBytes, lagMS = bytes, lag.Milliseconds()
		}
		rs.add(st.shard.Cluster, st.shard.Name, host, port, db, partitionRanges(st.shard.Partitions), st.health.State, st.paused,
			st.stats.Active, st.stats.Idle, st.stats.Waiting, st.counters.XactCount, st.counters.QueryCount,
			avgMicros(st.counters.QueryTime, st.counters.QueryCount), latency, st.health.Since, lastErr,
			lagBytes, lagMS, s.seqOK(st.shard.Cluster, st.shard.Name))
	}
	return rs
}

// dsnTarget returns the host, port and database a DSN connects to.
func dsnTarget(dsn string) (host string, port any, db string) {
	cc, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return "", nil, ""
	}
	return cc.Host, int(cc.Port), cc.Database
}

// partitionRanges writes a sorted partition list as "0-7,12".
func partitionRanges(parts []int) string {
	var b strings.Builder
	for i := 0; i < len(parts); {
		j := i
		for j+1 < len(parts) && parts[j+1] == parts[j]+1 {
			j++
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Itoa(parts[i]))
		if j > i {
			b.WriteString("-" + strconv.Itoa(parts[j]))
		}
		i = j + 1
	}
	return b.String()
}

func (s *Server) showPools() *resultSet {
	rs := &resultSet{cols: []column{
		{"database", oidText}, {"shard", oidText}, {"user", oidText}, {"cl_active", oidInt8}, {"cl_waiting", oidInt8},
		{"sv_active", oidInt8}, {"sv_idle", oidInt8}, {"sv_login", oidInt8}, {"maxwait", oidInt8}, {"maxwait_us", oidInt8},
		{"pool_mode", oidText}, {"paused", oidBool},
	}}
	gen := s.gen.Load()
	clients := map[[2]string]int{} // (cluster, user) -> logged-in clients not waiting
	for _, sess := range s.sessionList() {
		if !sess.waiting.Load() {
			clients[[2]string{sess.clusterName(), sess.user}]++
		}
	}
	for _, p := range s.pools.Pools() {
		cluster := ""
		if sh, ok := gen.shards.Shard(p.Shard()); ok {
			cluster = sh.Cluster
		}
		st := p.Stats()
		rs.add(cluster, p.Shard(), p.User(), clients[[2]string{cluster, p.User()}], st.Waiting, st.Active, st.Idle,
			st.Open-st.Active-st.Idle, int64(st.MaxWait/time.Second), (st.MaxWait % time.Second).Microseconds(),
			gen.cfg.Pool.Mode, st.Paused)
	}
	return rs
}

// clientInfo is what SHOW CLIENTS shows of a session.
type clientInfo struct {
	state  string
	server *pool.Conn
}

func (s *session) info() clientInfo {
	s.mu.Lock()
	c := s.linked
	s.mu.Unlock()
	switch {
	case s.waiting.Load():
		return clientInfo{state: "waiting"}
	case c != nil:
		return clientInfo{state: "active", server: c}
	}
	return clientInfo{state: "idle"}
}

// clusterName is the client's database; adopt may change s.cluster, but
// never its name, so this is safe from any goroutine.
func (s *session) clusterName() string { return s.dbName }

func splitAddr(a net.Addr) (string, any) {
	if a == nil {
		return "", nil
	}
	host, port, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String(), nil
	}
	p, _ := strconv.Atoi(port)
	return host, p
}

func (s *Server) showClients() *resultSet {
	rs := &resultSet{cols: []column{
		{"type", oidText}, {"user", oidText}, {"database", oidText}, {"state", oidText}, {"addr", oidText}, {"port", oidInt8},
		{"local_addr", oidText}, {"local_port", oidInt8}, {"connect_time", oidTimestamptz}, {"request_time", oidTimestamptz},
		{"wait", oidInt8}, {"wait_us", oidInt8}, {"link", oidInt8}, {"shard", oidText}, {"remote_pid", oidInt8},
		{"tls", oidBool}, {"application_name", oidText}, {"id", oidInt8},
	}}
	sessions := s.sessionList()
	sort.Slice(sessions, func(i, j int) bool { return sessions[i].id < sessions[j].id })
	for _, sess := range sessions {
		in := sess.info()
		addr, port := splitAddr(sess.conn.RemoteAddr())
		laddr, lport := splitAddr(sess.conn.LocalAddr())
		var req time.Time
		if ns := sess.lastRequest.Load(); ns != 0 {
			req = time.Unix(0, ns)
		}
		var wait time.Duration
		if in.state == "waiting" && !req.IsZero() {
			wait = time.Since(req)
		}
		var link, shard, pid any
		if in.server != nil {
			link, shard, pid = in.server.ID, in.server.Shard(), in.server.PID
		}
		_, isTLS := sess.conn.(*tls.Conn)
		rs.add("C", sess.user, sess.clusterName(), in.state, addr, port, laddr, lport, sess.connected, req,
			int64(wait/time.Second), (wait % time.Second).Microseconds(), link, shard, pid, isTLS, sess.appName, sess.id)
	}
	return rs
}

func (s *Server) showServers() *resultSet {
	rs := &resultSet{cols: []column{
		{"type", oidText}, {"user", oidText}, {"database", oidText}, {"shard", oidText}, {"state", oidText},
		{"addr", oidText}, {"port", oidInt8}, {"local_addr", oidText}, {"local_port", oidInt8},
		{"connect_time", oidTimestamptz}, {"request_time", oidTimestamptz}, {"link", oidInt8}, {"remote_pid", oidInt8},
		{"tls", oidBool}, {"id", oidInt8},
	}}
	gen := s.gen.Load()
	for _, p := range s.pools.Pools() {
		cluster := ""
		if sh, ok := gen.shards.Shard(p.Shard()); ok {
			cluster = sh.Cluster
		}
		for _, sv := range p.Servers() {
			addr, port := splitAddr(sv.Remote)
			laddr, lport := splitAddr(sv.Local)
			var link any
			if sv.Client != 0 {
				link = sv.Client
			}
			state := sv.State.String()
			rs.add("S", p.User(), cluster, p.Shard(), state, addr, port, laddr, lport, sv.Created, sv.LastUsed, link, sv.PID, sv.TLS, sv.ID)
		}
	}
	return rs
}

func (s *Server) showStats() *resultSet {
	rs := &resultSet{cols: []column{
		{"database", oidText}, {"shard", oidText},
		{"total_xact_count", oidInt8}, {"total_query_count", oidInt8}, {"total_received", oidInt8}, {"total_sent", oidInt8},
		{"total_xact_time", oidInt8}, {"total_query_time", oidInt8}, {"total_wait_time", oidInt8},
		{"avg_xact_count", oidInt8}, {"avg_query_count", oidInt8}, {"avg_recv", oidInt8}, {"avg_sent", oidInt8},
		{"avg_xact_time", oidInt8}, {"avg_query_time", oidInt8}, {"avg_wait_time", oidInt8},
	}}
	window, span := s.stats.window()
	perSec := func(n int64) int64 {
		if span <= 0 {
			return 0
		}
		return int64(float64(n) / span.Seconds())
	}
	for _, st := range s.shardStatuses() {
		c, w := st.counters, window[st.shard.Name]
		rs.add(st.shard.Cluster, st.shard.Name,
			c.XactCount, c.QueryCount, c.Received, c.Sent, c.XactTime.Microseconds(), c.QueryTime.Microseconds(), c.WaitTime.Microseconds(),
			perSec(w.XactCount), perSec(w.QueryCount), perSec(w.Received), perSec(w.Sent),
			avgMicros(w.XactTime, w.XactCount), avgMicros(w.QueryTime, w.QueryCount), avgMicros(w.WaitTime, w.WaitCount))
	}
	return rs
}

func (s *Server) showFunctions() *resultSet {
	rs := &resultSet{cols: []column{
		{"cluster", oidText}, {"function", oidText}, {"run_on", oidText}, {"key", oidText}, {"merge", oidText},
		{"signatures", oidText}, {"loaded", oidBool},
	}}
	gen := s.gen.Load()
	for _, cl := range gen.shards.Clusters() {
		cat := gen.routers[cl.Name].Catalog()
		for _, f := range cl.Functions {
			var key, merge any
			switch {
			case f.KeyName != "":
				key = f.KeyName
			case f.KeyPos > 0:
				key = "$" + strconv.Itoa(f.KeyPos)
			}
			if f.RunOn == shardmap.RunAll {
				merge = f.Merge.String()
			}
			sigs := cat.Signatures(f)
			texts := make([]string, len(sigs))
			for i, sig := range sigs {
				texts[i] = sig.String(f)
			}
			rs.add(cl.Name, f.FullName(), f.RunOn.String(), key, merge, strings.Join(texts, "; "), len(sigs) > 0)
		}
	}
	return rs
}

// showSequences checks every shard's sequences now. With a sequences
// section each gets its verdict (and the report becomes the latest, for
// SHOW SHARDS); without one they are listed as they are. A shard that
// cannot be read is reported in a warning, and the others are still shown.
func (s *Server) showSequences(warn func(string)) (*resultSet, error) {
	rs := &resultSet{cols: []column{
		{"cluster", oidText}, {"shard", oidText}, {"slot", oidInt8}, {"sequence", oidText}, {"data_type", oidText},
		{"increment", oidInt8}, {"last_value", oidInt8}, {"next_value", oidInt8}, {"max_value", oidInt8},
		{"headroom", oidInt8}, {"verdict", oidText}, {"detail", oidText},
	}}
	gen := s.gen.Load()
	var rows []seqalloc.Row
	if gen.cfg.Sequences != nil {
		rows = s.checkSequences(gen).Rows
	} else {
		warn("sequences are not managed (router.yaml has no sequences section): they are listed without verdicts")
		ctx, cancel := context.WithTimeout(s.ctx, seqCheckTimeout)
		defer cancel()
		for _, cl := range gen.shards.Clusters() {
			for _, sh := range seqalloc.Read(ctx, cl, seqalloc.Options{ConnectTimeout: gen.cfg.Pool.ServerConnectTimeout.D()}) {
				if sh.Err != nil {
					rows = append(rows, seqalloc.Row{Cluster: sh.Cluster, Shard: sh.Name, Slot: sh.Slot, Verdict: seqalloc.Unreachable})
					warn(fmt.Sprintf("shard %s: cannot read its sequences: %v", sh.Name, sh.Err))
				}
				for _, q := range sh.Sequences {
					rows = append(rows, seqalloc.Row{Cluster: sh.Cluster, Shard: sh.Name, Slot: sh.Slot, Sequence: q.Name, Seq: q})
				}
			}
		}
	}
	for _, r := range rows {
		if r.Verdict == seqalloc.Unreachable {
			if gen.cfg.Sequences != nil {
				warn(fmt.Sprintf("shard %s: %s", r.Shard, r.Detail))
			}
			continue
		}
		var slot, verdict, detail, typ, inc, last, next, maxv, headroom any
		if r.Slot >= 0 {
			slot = r.Slot
		}
		if r.Verdict != "" {
			verdict = string(r.Verdict)
		}
		if r.Detail != "" {
			detail = r.Detail
		}
		if q := r.Seq; q != nil {
			typ, inc, maxv, headroom = q.Type, q.Increment, q.Max, q.Headroom()
			if q.IsCalled {
				last = q.LastValue
			}
			if n, ok := q.Next(); ok {
				next = n
			}
		}
		rs.add(r.Cluster, r.Shard, slot, r.Sequence, typ, inc, last, next, maxv, headroom, verdict, detail)
	}
	return rs, nil
}
