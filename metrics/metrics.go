// Package metrics serves pgrouter's Prometheus /metrics from the proxy's
// snapshot API and the monitor's latest polls.
package metrics

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pgrouter/pgrouter/monitor"
	"github.com/pgrouter/pgrouter/pool"
	"github.com/pgrouter/pgrouter/proxy"
)

// Metrics are read from the same state the admin console shows, at scrape
// time: nothing on the hot path updates a Prometheus object, so /metrics
// costs the proxy nothing between scrapes. Every counter is per instance;
// run any number of pgrouters side by side and sum them.

var (
	shardLabels = []string{"cluster", "shard"}
	poolLabels  = []string{"cluster", "shard", "user"}

	descClients       = prometheus.NewDesc("pgrouter_clients", "Client connections admitted (max_client_conn counts these).", nil, nil)
	descShardUp       = prometheus.NewDesc("pgrouter_shard_up", "1 when the latest health checks found the shard up, 0 when down; absent until the first check.", shardLabels, nil)
	descShardPaused   = prometheus.NewDesc("pgrouter_shard_paused", "1 while the shard is paused (PAUSE).", shardLabels, nil)
	descCheckLatency  = prometheus.NewDesc("pgrouter_shard_check_latency_seconds", "Round trip of the latest successful health check.", shardLabels, nil)
	descActive        = prometheus.NewDesc("pgrouter_pool_server_active", "Server connections in use by a client.", poolLabels, nil)
	descIdle          = prometheus.NewDesc("pgrouter_pool_server_idle", "Server connections idle in the pool.", poolLabels, nil)
	descWaiting       = prometheus.NewDesc("pgrouter_pool_clients_waiting", "Clients waiting for a server connection.", poolLabels, nil)
	descMaxWait       = prometheus.NewDesc("pgrouter_pool_maxwait_seconds", "How long the longest-waiting client has waited.", poolLabels, nil)
	descXacts         = prometheus.NewDesc("pgrouter_pool_transactions_total", "Transactions finished.", poolLabels, nil)
	descXactSeconds   = prometheus.NewDesc("pgrouter_pool_transaction_seconds_total", "Time spent in transactions.", poolLabels, nil)
	descWaits         = prometheus.NewDesc("pgrouter_pool_waits_total", "Requests that had to wait for a server connection.", poolLabels, nil)
	descWaitSeconds   = prometheus.NewDesc("pgrouter_pool_wait_seconds_total", "Time clients spent waiting for a server connection.", poolLabels, nil)
	descReceived      = prometheus.NewDesc("pgrouter_pool_received_bytes_total", "Bytes received from clients and sent to the shard.", poolLabels, nil)
	descSent          = prometheus.NewDesc("pgrouter_pool_sent_bytes_total", "Bytes received from the shard and sent to clients.", poolLabels, nil)
	descRequests      = prometheus.NewDesc("pgrouter_request_duration_seconds", "Duration of routed requests (a Query, or a batch up to Sync), from the first message to the last answer.", poolLabels, nil)
	descReloads       = prometheus.NewDesc("pgrouter_config_reloads_total", "RELOAD commands and SIGHUPs, by result.", []string{"result"}, nil)
	descSequencesOK   = prometheus.NewDesc("pgrouter_shard_sequences_ok", "1 when the latest stride check found every sequence of the shard safe, 0 when one could hand out another shard's values; absent when sequences are not managed or the shard was not read.", shardLabels, nil)
	descRefsyncBytes  = prometheus.NewDesc("pgrouter_refsync_lag_bytes", "Bytes of source WAL the shard's reference tables are behind (pgrouter refsync); absent without reference tables or before the shard's copy.", shardLabels, nil)
	descFaninBytes    = prometheus.NewDesc("pgrouter_fanin_lag_bytes", "Bytes of the shard's WAL the central copy is behind (pgrouter fanin); absent without a fanin section or before the shard's copy.", shardLabels, nil)
	descRefsyncLag    = prometheus.NewDesc("pgrouter_refsync_lag_seconds", "How old the newest source change the shard is sure to hold is, when it is behind.", shardLabels, nil)
	descDraining      = prometheus.NewDesc("pgrouter_shutting_down", "1 once a graceful shutdown has begun.", nil, nil)
	descStandby       = prometheus.NewDesc("pgrouter_shard_standby", "1 when the latest health check found the host a standby (pg_is_in_recovery()), 0 a primary; absent when it could not ask. Replicas are shards named <shard>/r<n>.", shardLabels, nil)
	descReplayLag     = prometheus.NewDesc("pgrouter_shard_replay_lag_seconds", "A standby's replay lag at the latest health check (0 when it replayed all it received).", shardLabels, nil)
	latencyBoundsSecs = func() []float64 {
		out := make([]float64, len(pool.LatencyBounds))
		for i, b := range pool.LatencyBounds {
			out[i] = b.Seconds()
		}
		return out
	}()
)

// collector exports a Server's state to Prometheus.
type collector struct {
	s   *proxy.Server
	mon *monitor.Monitor
}

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descClients, descShardUp, descShardPaused, descCheckLatency, descActive, descIdle,
		descWaiting, descMaxWait, descXacts, descXactSeconds, descWaits, descWaitSeconds, descReceived, descSent,
		descRequests, descReloads, descDraining, descSequencesOK, descRefsyncBytes, descRefsyncLag, descFaninBytes, descStandby, descReplayLag} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	s := c.s
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	gauge(descClients, float64(s.ClientCount()))
	gauge(descDraining, b2f(s.Draining()))
	reloadsOK, reloadsFailed := s.ReloadCounts()
	counter(descReloads, float64(reloadsOK), "ok")
	counter(descReloads, float64(reloadsFailed), "failed")

	cluster := map[string]string{}
	for _, st := range s.ShardStatuses() {
		sh := st.Shard
		cluster[sh.Name] = sh.Cluster
		switch st.Health.State {
		case pool.HealthUp:
			gauge(descShardUp, 1, sh.Cluster, sh.Name)
			gauge(descCheckLatency, st.Health.Latency.Seconds(), sh.Cluster, sh.Name)
		case pool.HealthDown:
			gauge(descShardUp, 0, sh.Cluster, sh.Name)
		}
		gauge(descShardPaused, b2f(st.Paused), sh.Cluster, sh.Name)
		switch st.Health.Role {
		case pool.RoleStandby:
			gauge(descStandby, 1, sh.Cluster, sh.Name)
			gauge(descReplayLag, st.Health.Lag.Seconds(), sh.Cluster, sh.Name)
		case pool.RolePrimary:
			gauge(descStandby, 0, sh.Cluster, sh.Name)
		}
		if ok, isBool := c.mon.SequencesOK(sh.Cluster, sh.Name).(bool); isBool {
			gauge(descSequencesOK, b2f(ok), sh.Cluster, sh.Name)
		}
		if bytes, lag, ok := c.mon.RefsyncLag(sh.Cluster, sh.Name); ok {
			gauge(descRefsyncBytes, float64(bytes), sh.Cluster, sh.Name)
			gauge(descRefsyncLag, lag.Seconds(), sh.Cluster, sh.Name)
		}
		if bytes, ok := c.mon.FaninLag(sh.Cluster, sh.Name); ok {
			gauge(descFaninBytes, float64(bytes), sh.Cluster, sh.Name)
		}
	}
	for _, p := range s.Pools().Pools() {
		cl, ok := cluster[p.Shard()]
		if !ok {
			continue // retired by a reload, still draining
		}
		labels := []string{cl, p.Shard(), p.User()}
		st, cn := p.Stats(), p.Counters()
		gauge(descActive, float64(st.Active), labels...)
		gauge(descIdle, float64(st.Idle), labels...)
		gauge(descWaiting, float64(st.Waiting), labels...)
		gauge(descMaxWait, st.MaxWait.Seconds(), labels...)
		counter(descXacts, float64(cn.XactCount), labels...)
		counter(descXactSeconds, cn.XactTime.Seconds(), labels...)
		counter(descWaits, float64(cn.WaitCount), labels...)
		counter(descWaitSeconds, cn.WaitTime.Seconds(), labels...)
		counter(descReceived, float64(cn.Received), labels...)
		counter(descSent, float64(cn.Sent), labels...)

		lat := p.Latency()
		buckets := make(map[float64]uint64, len(latencyBoundsSecs))
		var cum uint64
		for i, bound := range latencyBoundsSecs {
			cum += uint64(lat.Counts[i])
			buckets[bound] = cum
		}
		count := cum + uint64(lat.Counts[len(lat.Counts)-1])
		ch <- prometheus.MustNewConstHistogram(descRequests, count, cn.QueryTime.Seconds(), buckets, labels...)
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// Handler serves /metrics: pgrouter's own metrics plus the Go runtime's and
// the process's (CPU seconds, resident memory, open files).
func Handler(srv *proxy.Server, mon *monitor.Monitor) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collector{srv, mon}, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}
