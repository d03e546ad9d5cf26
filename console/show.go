package console

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgrouter/pgrouter/monitor"
	"github.com/pgrouter/pgrouter/pool"
	"github.com/pgrouter/pgrouter/proxy"
	"github.com/pgrouter/pgrouter/seqalloc"
	"github.com/pgrouter/pgrouter/shardmap"
)

// avgMicros is total/count in microseconds (0 when count is 0).
func avgMicros(total time.Duration, count int64) int64 {
	if count == 0 {
		return 0
	}
	return total.Microseconds() / count
}

func (c *Console) showShards() *resultSet {
	rs := &resultSet{cols: []column{
		{"cluster", oidText}, {"shard", oidText}, {"host", oidText}, {"port", oidInt8}, {"database", oidText},
		{"partitions", oidText}, {"state", oidText}, {"paused", oidBool}, {"sv_active", oidInt8}, {"sv_idle", oidInt8},
		{"cl_waiting", oidInt8}, {"xact_count", oidInt8}, {"query_count", oidInt8}, {"avg_query_us", oidInt8},
		{"check_latency_us", oidInt8}, {"state_since", oidTimestamptz}, {"last_error", oidText},
		{"refsync_lag_bytes", oidInt8}, {"refsync_lag_ms", oidInt8}, {"seq_ok", oidBool}, {"move", oidText},
		{"role", oidText}, {"replay_lag_ms", oidInt8}, {"fanin_lag_bytes", oidInt8},
	}}
	for _, st := range c.srv.ShardStatuses() {
		host, port, db := dsnTarget(st.Shard.DSN)
		var latency, lastErr any
		if st.Health.State == pool.HealthUp {
			latency = st.Health.Latency.Microseconds()
		}
		if st.Health.LastError != "" {
			lastErr = st.Health.LastError
		}
		var lagBytes, lagMS any
		if bytes, lag, ok := c.mon.RefsyncLag(st.Shard.Cluster, st.Shard.Name); ok {
			lagBytes, lagMS = bytes, lag.Milliseconds()
		}
		rs.add(st.Shard.Cluster, st.Shard.Name, host, port, db, partitionRanges(st.Shard.Partitions), st.Health.State, st.Paused,
			st.Stats.Active, st.Stats.Idle, st.Stats.Waiting, st.Counters.XactCount, st.Counters.QueryCount,
			avgMicros(st.Counters.QueryTime, st.Counters.QueryCount), latency, st.Health.Since, lastErr,
			lagBytes, lagMS, c.mon.SequencesOK(st.Shard.Cluster, st.Shard.Name), nullIfEmpty(c.mon.Move(st.Shard.Cluster, st.Shard.Name)),
			nullIfEmpty(st.Health.Role), replayLag(st.Health), faninLag(c.mon, st.Shard.Cluster, st.Shard.Name))
	}
	return rs
}

// faninLag is the central copy's lag behind a shard in bytes, NULL
// without fan-in or before the shard's copy.
func faninLag(mon *monitor.Monitor, cluster, shard string) any {
	if bytes, ok := mon.FaninLag(cluster, shard); ok {
		return bytes
	}
	return nil
}

// replayLag is a standby's replay lag in ms, NULL for a primary or a host
// whose role is not known.
func replayLag(h pool.Health) any {
	if h.Role != pool.RoleStandby {
		return nil
	}
	return h.Lag.Milliseconds()
}

// nullIfEmpty is s, or NULL for "".
func nullIfEmpty(s string) any {
	if s == "" {
		return nil
	}
	return s
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

func (c *Console) showPools() *resultSet {
	rs := &resultSet{cols: []column{
		{"database", oidText}, {"shard", oidText}, {"user", oidText}, {"cl_active", oidInt8}, {"cl_waiting", oidInt8},
		{"sv_active", oidInt8}, {"sv_idle", oidInt8}, {"sv_login", oidInt8}, {"maxwait", oidInt8}, {"maxwait_us", oidInt8},
		{"pool_mode", oidText}, {"paused", oidBool},
	}}
	cfg, shards := c.srv.Config(), c.srv.Map()
	// A client belongs to a pool while a server of that pool is linked to
	// it; between transactions (outside session mode) it belongs to none.
	linked := map[*pool.Pool]int{}
	for _, cl := range c.srv.Clients() {
		if cl.Server != nil {
			linked[cl.Server.Pool()]++
		}
	}
	for _, p := range c.srv.Pools().Pools() {
		cluster := ""
		if sh, ok := shards.Shard(p.Shard()); ok {
			cluster = sh.Cluster
		}
		st := p.Stats()
		rs.add(cluster, p.Shard(), p.User(), linked[p], st.Waiting, st.Active, st.Idle,
			st.Open-st.Active-st.Idle, int64(st.MaxWait/time.Second), (st.MaxWait % time.Second).Microseconds(),
			cfg.Pool.Mode, st.Paused)
	}
	return rs
}

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

func (c *Console) showClients() *resultSet {
	rs := &resultSet{cols: []column{
		{"type", oidText}, {"user", oidText}, {"database", oidText}, {"state", oidText}, {"addr", oidText}, {"port", oidInt8},
		{"local_addr", oidText}, {"local_port", oidInt8}, {"connect_time", oidTimestamptz}, {"request_time", oidTimestamptz},
		{"wait", oidInt8}, {"wait_us", oidInt8}, {"link", oidInt8}, {"shard", oidText}, {"remote_pid", oidInt8},
		{"tls", oidBool}, {"application_name", oidText}, {"id", oidInt8},
	}}
	for _, cl := range c.srv.Clients() {
		addr, port := splitAddr(cl.Remote)
		laddr, lport := splitAddr(cl.Local)
		var wait time.Duration
		if cl.State == proxy.ClientWaiting && !cl.LastRequest.IsZero() {
			wait = time.Since(cl.LastRequest)
		}
		var link, shard, pid any
		if cl.Server != nil {
			link, shard, pid = cl.Server.ID, cl.Server.Shard(), cl.Server.PID
		}
		rs.add("C", cl.User, cl.Database, cl.State, addr, port, laddr, lport, cl.Connected, cl.LastRequest,
			int64(wait/time.Second), (wait % time.Second).Microseconds(), link, shard, pid, cl.TLS, cl.AppName, cl.ID)
	}
	return rs
}

func (c *Console) showServers() *resultSet {
	rs := &resultSet{cols: []column{
		{"type", oidText}, {"user", oidText}, {"database", oidText}, {"shard", oidText}, {"state", oidText},
		{"addr", oidText}, {"port", oidInt8}, {"local_addr", oidText}, {"local_port", oidInt8},
		{"connect_time", oidTimestamptz}, {"request_time", oidTimestamptz}, {"link", oidInt8}, {"remote_pid", oidInt8},
		{"tls", oidBool}, {"id", oidInt8}, {"close_needed", oidInt8}, {"role", oidText},
	}}
	shards := c.srv.Map()
	for _, p := range c.srv.Pools().Pools() {
		cluster := ""
		if sh, ok := shards.Shard(p.Shard()); ok {
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
			closeNeeded := 0
			if sv.CloseNeeded {
				closeNeeded = 1
			}
			rs.add("S", p.User(), cluster, p.Shard(), state, addr, port, laddr, lport, sv.Created, sv.LastUsed, link, sv.PID, sv.TLS, sv.ID, closeNeeded,
				nullIfEmpty(c.srv.Pools().Health(p.Shard()).Role))
		}
	}
	return rs
}

func (c *Console) showStats() *resultSet {
	rs := &resultSet{cols: []column{
		{"database", oidText}, {"shard", oidText},
		{"total_xact_count", oidInt8}, {"total_query_count", oidInt8}, {"total_received", oidInt8}, {"total_sent", oidInt8},
		{"total_xact_time", oidInt8}, {"total_query_time", oidInt8}, {"total_wait_time", oidInt8},
		{"avg_xact_count", oidInt8}, {"avg_query_count", oidInt8}, {"avg_recv", oidInt8}, {"avg_sent", oidInt8},
		{"avg_xact_time", oidInt8}, {"avg_query_time", oidInt8}, {"avg_wait_time", oidInt8},
	}}
	window, span := c.mon.StatsWindow()
	perSec := func(n int64) int64 {
		if span <= 0 {
			return 0
		}
		return int64(float64(n) / span.Seconds())
	}
	for _, st := range c.srv.ShardStatuses() {
		c, w := st.Counters, window[st.Shard.Name]
		rs.add(st.Shard.Cluster, st.Shard.Name,
			c.XactCount, c.QueryCount, c.Received, c.Sent, c.XactTime.Microseconds(), c.QueryTime.Microseconds(), c.WaitTime.Microseconds(),
			perSec(w.XactCount), perSec(w.QueryCount), perSec(w.Received), perSec(w.Sent),
			avgMicros(w.XactTime, w.XactCount), avgMicros(w.QueryTime, w.QueryCount), avgMicros(w.WaitTime, w.WaitCount))
	}
	return rs
}

func (c *Console) showFunctions() *resultSet {
	rs := &resultSet{cols: []column{
		{"cluster", oidText}, {"function", oidText}, {"run_on", oidText}, {"key", oidText}, {"merge", oidText},
		{"signatures", oidText}, {"loaded", oidBool}, {"split", oidText}, {"target", oidText}, {"key_transform", oidText},
	}}
	for _, cl := range c.srv.Map().Clusters() {
		cat := c.srv.Catalog(cl.Name)
		for _, f := range cl.Functions {
			var key, merge any
			switch {
			case f.KeyName != "":
				key = f.KeyName
			case f.KeyPos > 0:
				key = "$" + strconv.Itoa(f.KeyPos)
			case f.Partition >= 0:
				key = "partition " + strconv.Itoa(f.Partition) // a constant one (RUN ON <n>)
			}
			if f.RunOn == shardmap.RunAll || len(f.Split) > 0 {
				merge = f.Merge.String()
			}
			sigs := cat.Signatures(f)
			texts := make([]string, len(sigs))
			for i, sig := range sigs {
				texts[i] = sig.String(f)
			}
			var split, target, transform any
			if len(f.Split) > 0 {
				split = strings.Join(f.Split, ", ")
			}
			if f.TargetName != "" {
				target = f.TargetSchema + "." + f.TargetName
			}
			if f.KeyTransform != "" {
				transform = f.KeyTransform
			}
			rs.add(cl.Name, f.FullName(), f.RunOn.String(), key, merge, strings.Join(texts, "; "), len(sigs) > 0, split, target, transform)
		}
	}
	return rs
}

// seqListTimeout bounds SHOW SEQUENCES' read of every shard when sequences
// are not managed.
const seqListTimeout = time.Minute

// showSequences checks every shard's sequences now. With a sequences
// section each gets its verdict (and the report becomes the latest, for
// SHOW SHARDS); without one they are listed as they are. A shard that
// cannot be read is reported in a warning, and the others are still shown.
func (c *Console) showSequences(ctx context.Context, warn func(string)) (*resultSet, error) {
	rs := &resultSet{cols: []column{
		{"cluster", oidText}, {"shard", oidText}, {"slot", oidInt8}, {"sequence", oidText}, {"data_type", oidText},
		{"increment", oidInt8}, {"last_value", oidInt8}, {"next_value", oidInt8}, {"max_value", oidInt8},
		{"headroom", oidInt8}, {"verdict", oidText}, {"detail", oidText},
	}}
	var rows []seqalloc.Row
	report, managed := c.mon.CheckSequences()
	if managed {
		rows = report.Rows
	} else {
		warn("sequences are not managed (router.yaml has no sequences section): they are listed without verdicts")
		ctx, cancel := context.WithTimeout(ctx, seqListTimeout)
		defer cancel()
		cfg := c.srv.Config()
		for _, cl := range c.srv.Map().Clusters() {
			for _, sh := range seqalloc.Read(ctx, cl, seqalloc.Options{ConnectTimeout: cfg.Pool.ServerConnectTimeout.D()}) {
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
			if managed {
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
