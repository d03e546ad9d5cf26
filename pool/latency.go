package pool

import (
	"sync/atomic"
	"time"
)

// LatencyBounds are the upper bounds of the request-latency buckets, the
// ones Prometheus users expect for database calls (100µs to 10s).
var LatencyBounds = [...]time.Duration{
	100 * time.Microsecond, 250 * time.Microsecond, 500 * time.Microsecond,
	time.Millisecond, 2500 * time.Microsecond, 5 * time.Millisecond,
	10 * time.Millisecond, 25 * time.Millisecond, 50 * time.Millisecond,
	100 * time.Millisecond, 250 * time.Millisecond, 500 * time.Millisecond,
	time.Second, 2500 * time.Millisecond, 5 * time.Second, 10 * time.Second,
}

// latency is a lock-free histogram of request durations: one atomic add per
// request on the hot path, read by /metrics. Keeping it here (rather than a
// Prometheus histogram) keeps the metrics library out of the pool.
type latency struct {
	buckets [len(LatencyBounds) + 1]atomic.Int64 // the last one is +Inf
}

func (l *latency) observe(d time.Duration) {
	i := 0
	for i < len(LatencyBounds) && d > LatencyBounds[i] {
		i++
	}
	l.buckets[i].Add(1)
}

// Latency is a snapshot of a pool's request-latency histogram.
type Latency struct {
	// Counts[i] is the number of requests that took at most LatencyBounds[i]
	// and more than the bound before it; the last entry counts the rest.
	Counts [len(LatencyBounds) + 1]int64
}

// Latency returns the pool's request-latency histogram. Its sum and count
// are the QueryTime and QueryCount of Counters.
func (p *Pool) Latency() Latency {
	var out Latency
	for i := range out.Counts {
		out.Counts[i] = p.counters.latency.buckets[i].Load()
	}
	return out
}
