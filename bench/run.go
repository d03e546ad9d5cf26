package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/jackc/pgx/v5"
)

// Target is something the workloads run against, by DSN: pgrouter, a
// shard, pgbouncer, a PL/Proxy database. PID, when set, is the process
// whose CPU time each query costs is measured (from /proc). Protocol, when
// set, overrides Options.Protocol: pgbouncer before 1.21 cannot carry
// named prepared statements in transaction mode, so a fair comparison may
// run each target with the best protocol it supports. Admin, when set, is
// the DSN of the target's admin console (pgrouter's or pgbouncer's), where
// the server connections it holds are counted halfway through each slice.
type Target struct {
	Name, DSN string
	PID       int
	Protocol  string
	Admin     string
}

// Workloads by name: each is a statement and how to fill its parameters.
var Workloads = []string{"point", "lookup", "write", "fanout", "passthrough", "mixed"}

// Protocols: simple (Query), extended (Parse/Bind/Execute of an unnamed
// statement every time) and prepared (a named statement, Bind/Execute).
var Protocols = map[string]pgx.QueryExecMode{
	"simple":   pgx.QueryExecModeSimpleProtocol,
	"extended": pgx.QueryExecModeExec,
	"prepared": pgx.QueryExecModeCacheStatement,
}

// Options of a run.
type Options struct {
	Targets  []Target
	Workload string
	Clients  []int
	Duration time.Duration // per target and client count, split over Rounds
	Rounds   int
	Protocol string
	Users    int // as loaded by Init: keys are drawn from 0..Users-1
	// Progress is called after each slice of a round (done of total).
	Progress func(done, total int)
}

// Result is one target at one client count.
type Result struct {
	Target    string  `json:"target"`
	Protocol  string  `json:"protocol"`
	Clients   int     `json:"clients"`
	Queries   int64   `json:"queries"`
	Errors    int64   `json:"errors"`
	Seconds   float64 `json:"seconds"`
	TPS       float64 `json:"tps"`
	P50us     int64   `json:"p50_us"`
	P95us     int64   `json:"p95_us"`
	P99us     int64   `json:"p99_us"`
	P999us    int64   `json:"p999_us"`
	MaxUs     int64   `json:"max_us"`
	Ratio     float64 `json:"ratio"`                 // TPS over the first target's at the same client count
	CPUSecs   float64 `json:"cpu_seconds,omitempty"` // of Target.PID over the run
	CPUPerQus float64 `json:"cpu_us_per_query,omitempty"`
	// ServerConns is the most server connections Target.Admin reported.
	ServerConns int    `json:"server_conns,omitempty"`
	FirstErr    string `json:"first_error,omitempty"`
	histogram   *hdrhistogram.Histogram
}

// Run runs the workload against every target at every client count. For
// each client count the targets take turns, Rounds times, each turn a
// slice of Duration, so that slow drifts of a shared machine are spread
// over all of them.
func Run(ctx context.Context, opts Options) ([]*Result, error) {
	if opts.Rounds < 1 {
		opts.Rounds = 1
	}
	if _, ok := Protocols[opts.Protocol]; !ok {
		return nil, fmt.Errorf("protocol %q: use simple, extended or prepared", opts.Protocol)
	}
	opts.Targets = slices.Clone(opts.Targets)
	for i, t := range opts.Targets {
		if t.Protocol == "" {
			opts.Targets[i].Protocol = opts.Protocol
		}
		if _, ok := Protocols[opts.Targets[i].Protocol]; !ok {
			return nil, fmt.Errorf("protocol %q for %s: use simple, extended or prepared", opts.Targets[i].Protocol, t.Name)
		}
	}
	if opts.Users < 1 {
		return nil, errors.New("users must be at least 1 (as many as bench init loaded)")
	}
	if _, _, _, err := statement(opts.Workload, rand.New(rand.NewPCG(1, 2)), 1); err != nil {
		return nil, err
	}
	var out []*Result
	total, done := len(opts.Clients)*opts.Rounds*len(opts.Targets), 0
	slice := opts.Duration / time.Duration(opts.Rounds)
	for _, clients := range opts.Clients {
		results := make([]*Result, len(opts.Targets))
		for i, t := range opts.Targets {
			results[i] = &Result{Target: t.Name, Protocol: t.Protocol, Clients: clients, histogram: hdrhistogram.New(1, int64(time.Minute/time.Microsecond), 3)}
		}
		for range opts.Rounds {
			for i, t := range opts.Targets {
				if err := runSlice(ctx, t, opts, clients, slice, results[i]); err != nil {
					return out, fmt.Errorf("%s with %s: %w", t.Name, clientsLabel(clients), err)
				}
				done++
				if opts.Progress != nil {
					opts.Progress(done, total)
				}
			}
		}
		for _, r := range results {
			r.finish(results[0])
		}
		out = append(out, results...)
	}
	return out, nil
}

func (r *Result) finish(first *Result) {
	h := r.histogram
	r.TPS = float64(r.Queries) / r.Seconds
	r.P50us, r.P95us, r.P99us, r.P999us = h.ValueAtQuantile(50), h.ValueAtQuantile(95), h.ValueAtQuantile(99), h.ValueAtQuantile(99.9)
	r.MaxUs = h.Max()
	if r.Queries > 0 {
		r.CPUPerQus = r.CPUSecs * 1e6 / float64(r.Queries)
	}
	if first.TPS > 0 {
		r.Ratio = r.TPS / first.TPS
	}
}

// runSlice connects the clients, then runs them for d.
func runSlice(ctx context.Context, t Target, opts Options, clients int, d time.Duration, r *Result) error {
	cc, err := pgx.ParseConfig(t.DSN)
	if err != nil {
		return err
	}
	cc.DefaultQueryExecMode = Protocols[t.Protocol]
	conns := make([]*pgx.Conn, clients)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close(context.WithoutCancel(ctx))
			}
		}
	}()
	for i := range conns {
		if conns[i], err = pgx.ConnectConfig(ctx, cc); err != nil {
			return fmt.Errorf("connect: %w", err)
		}
	}
	cpuBefore, err := processCPU(t.PID)
	if err != nil {
		return err
	}
	// Each client's histogram and counts are made before and merged after
	// the timed window: neither allocation nor merging is measured.
	type clientResult struct {
		h             *hdrhistogram.Histogram
		queries, errs int64
		firstErr      string
	}
	res := make([]clientResult, len(conns))
	for i := range res {
		res[i].h = hdrhistogram.New(1, int64(time.Minute/time.Microsecond), 3)
	}
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(d)
	for i, conn := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cr := &res[i]
			rng := rand.New(rand.NewPCG(uint64(i), uint64(start.UnixNano())))
			for time.Now().Before(deadline) && ctx.Err() == nil {
				sql, args, want := mustStatement(opts.Workload, rng, opts.Users)
				began := time.Now()
				rows, err := conn.Query(ctx, sql, args...)
				if err == nil {
					n := 0
					for rows.Next() {
						n++
					}
					rows.Close()
					err = rows.Err()
					if err == nil && want >= 0 && n != want { // a key on the wrong shard finds nothing
						err = fmt.Errorf("%s returned %d rows, want %d", sql, n, want)
					}
				}
				if err != nil {
					cr.errs++
					if cr.firstErr == "" {
						cr.firstErr = err.Error()
					}
					if conn.IsClosed() {
						break
					}
					continue
				}
				_ = cr.h.RecordValue(max(time.Since(began).Microseconds(), 1))
				cr.queries++
			}
		}()
	}
	if t.Admin != "" {
		if err := sampleServers(ctx, t.Admin, start.Add(d/2), r); err != nil {
			wg.Wait()
			return err
		}
	}
	wg.Wait()
	r.Seconds += time.Since(start).Seconds()
	for _, cr := range res {
		r.histogram.Merge(cr.h)
		r.Queries += cr.queries
		r.Errors += cr.errs
		if r.FirstErr == "" {
			r.FirstErr = cr.firstErr
		}
	}
	cpuAfter, err := processCPU(t.PID)
	if err != nil {
		return err
	}
	r.CPUSecs += cpuAfter - cpuBefore
	return ctx.Err()
}

// sampleServers waits until at, then records the server connections the
// admin console at dsn reports, when more than recorded before.
func sampleServers(ctx context.Context, dsn string, at time.Time, r *Result) error {
	t := time.NewTimer(time.Until(at))
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
		return nil
	}
	n, err := serverConns(ctx, dsn)
	if err != nil {
		return err
	}
	r.ServerConns = max(r.ServerConns, n)
	return nil
}

// processCPU is the user and system CPU seconds a process has used (0 for
// pid 0), from /proc/PID/stat in clock ticks of 1/100 s.
func processCPU(pid int) (float64, error) {
	if pid == 0 {
		return 0, nil
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("read the CPU time of process %d: %w", pid, err)
	}
	// pid (comm) state ppid ... utime stime: fields 14 and 15, counted
	// after the command name, which may hold spaces.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	fields := strings.Fields(string(data[i+1:]))
	if len(fields) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	utime, err1 := strconv.ParseInt(fields[11], 10, 64)
	stime, err2 := strconv.ParseInt(fields[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return float64(utime+stime) / 100, nil
}

// statement returns a workload's next statement, its arguments and the
// rows it must return (-1: any number; a fan-out through PL/Proxy returns
// one row per shard).
func statement(workload string, rng *rand.Rand, users int) (string, []any, int, error) {
	user := func() string { return Username(rng.IntN(users)) }
	switch workload {
	case "point":
		return "SELECT * FROM bench_get_user($1)", []any{user()}, 1, nil
	case "lookup": // point's call with no row check: the baseline of one shard behind a pooler does the same work
		return "SELECT * FROM bench_get_user($1)", []any{user()}, -1, nil
	case "write":
		return "SELECT * FROM bench_add_balance($1, 1)", []any{user()}, 1, nil
	case "fanout":
		return "SELECT * FROM bench_count_users()", nil, -1, nil
	case "passthrough":
		return "SELECT 1", nil, 1, nil
	case "mixed": // mostly reads, some writes, a few fan-outs
		switch n := rng.IntN(100); {
		case n < 80:
			return statement("point", rng, users)
		case n < 95:
			return statement("write", rng, users)
		default:
			return statement("fanout", rng, users)
		}
	}
	return "", nil, 0, fmt.Errorf("workload %q: use one of %v", workload, Workloads)
}

func mustStatement(workload string, rng *rand.Rand, users int) (string, []any, int) {
	sql, args, want, err := statement(workload, rng, users)
	if err != nil {
		panic(err) // Run checked the workload
	}
	return sql, args, want
}
