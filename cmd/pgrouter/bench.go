package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgrouter/pgrouter/bench"
	"github.com/pgrouter/pgrouter/config"
	"github.com/pgrouter/pgrouter/seqalloc"
	"github.com/pgrouter/pgrouter/shardmap"
)

func benchCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Load a benchmark dataset and measure pgrouter against direct connections, pgbouncer and PL/Proxy",
	}
	var (
		path, cluster, plproxy string
		users                  int
	)
	initCmd := &cobra.Command{
		Use:   "init",
		Short: "Create the benchmark schema on every shard and load users where the cluster's hash places them",
		Long: `init creates bench_users and the functions bench_get_user (routed by key),
bench_add_balance (routed by key) and bench_count_users (run on all shards) on
every shard of the cluster, loads --users users (COPY per shard, each on the
shard that owns its username), and strides the shards' sequences when
router.yaml has a sequences section. With --plproxy DSN it also creates a
PL/Proxy cluster over the same shards and the same functions as proxy
functions in that database (the cluster must use hash: hashtext). router.yaml
must declare the functions; init says so when it does not:

` + bench.Functions,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runBenchInit(cmd.Context(), cmd.OutOrStdout(), path, cluster, plproxy, users)
		},
	}
	initCmd.Flags().StringVarP(&path, "config", "c", "router.yaml", "config file")
	initCmd.Flags().StringVar(&cluster, "cluster", "", "cluster to load (default: the only one)")
	initCmd.Flags().StringVar(&plproxy, "plproxy", "", "also create the PL/Proxy functions in this database")
	initCmd.Flags().IntVar(&users, "users", 100000, "users to load")

	var (
		targets             []string
		workload            string
		protocols           []string
		clients             []int
		duration            time.Duration
		rounds, runUsers    int
		jsonPath, chartPath string
		cpus, admins        []string
		equalConns          bool
	)
	runCmd := &cobra.Command{
		Use:   "run",
		Short: "Run a workload against targets in interleaved rounds and compare them",
		Long: `run measures each --target NAME=DSN at each client count. The targets take
turns, --rounds times, each turn a slice of --duration, so a shared machine's
drift falls on all of them; it prints per target throughput, latency
percentiles (HdrHistogram), errors, and the ratio to the first target.

Workloads: point (routed read by key), lookup (point's call without its
row check, for a baseline of one shard behind a pooler, which holds some of
the keys only), write (routed update), fanout (run on all shards),
passthrough (SELECT 1 through the pool), mixed (80% point, 15% write, 5%
fanout).

--protocol sets the protocol of every target, NAME=PROTOCOL one target's:
pgbouncer before 1.21 cannot carry named prepared statements (prepared) in
transaction mode, so such a target runs simple or extended.

--admin NAME=DSN counts the server connections the target holds, from SHOW
POOLS on its admin console halfway through each turn; --equal-connections
fails the run (exit 1, after the table) unless all targets held as many,
so that a pooler is compared with another on equal server connections.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			opts := bench.Options{Workload: workload, Clients: clients, Duration: duration, Rounds: rounds, Protocol: "extended", Users: runUsers}
			for _, t := range targets {
				name, dsn, ok := strings.Cut(t, "=")
				if !ok || name == "" || dsn == "" {
					return fmt.Errorf("--target %q: want NAME=DSN", t)
				}
				opts.Targets = append(opts.Targets, bench.Target{Name: name, DSN: dsn})
			}
			if len(opts.Targets) == 0 {
				return fmt.Errorf("at least one --target NAME=DSN is needed")
			}
			for _, p := range protocols {
				name, proto, ok := strings.Cut(p, "=")
				if !ok {
					opts.Protocol = p
					continue
				}
				if !setTarget(opts.Targets, name, func(t *bench.Target) { t.Protocol = proto }) {
					return fmt.Errorf("--protocol %q: no --target named %s", p, name)
				}
			}
			for _, c := range cpus {
				name, pid, ok := strings.Cut(c, "=")
				n, err := strconv.Atoi(pid)
				if !ok || err != nil || n <= 0 {
					return fmt.Errorf("--cpu %q: want NAME=PID", c)
				}
				if !setTarget(opts.Targets, name, func(t *bench.Target) { t.PID = n }) {
					return fmt.Errorf("--cpu %q: no --target named %s", c, name)
				}
			}
			for _, a := range admins {
				name, dsn, ok := strings.Cut(a, "=")
				if !ok || dsn == "" {
					return fmt.Errorf("--admin %q: want NAME=DSN", a)
				}
				if !setTarget(opts.Targets, name, func(t *bench.Target) { t.Admin = dsn }) {
					return fmt.Errorf("--admin %q: no --target named %s", a, name)
				}
			}
			if equalConns {
				for _, t := range opts.Targets {
					if t.Admin == "" {
						return fmt.Errorf("--equal-connections: target %s has no --admin %s=DSN to count its server connections with", t.Name, t.Name)
					}
				}
			}
			opts.Progress = benchProgress(os.Stderr)
			rs, err := bench.Run(cmd.Context(), opts)
			if err != nil {
				return err
			}
			if err := bench.WriteTable(cmd.OutOrStdout(), rs); err != nil {
				return err
			}
			if jsonPath != "" {
				if err := bench.WriteJSON(jsonPath, opts, rs); err != nil {
					return err
				}
			}
			if chartPath != "" {
				if err := bench.WriteChart(chartPath, chartTitle(workload), rs); err != nil {
					return err
				}
			}
			if err := bench.Failures(rs); err != nil {
				return err
			}
			if equalConns {
				return bench.EqualConnections(rs)
			}
			return nil
		},
	}
	runCmd.Flags().StringArrayVar(&targets, "target", nil, "NAME=DSN to measure (repeat; the first is the baseline of the ratios)")
	runCmd.Flags().StringVar(&workload, "workload", "point", "point | lookup | write | fanout | passthrough | mixed")
	runCmd.Flags().IntSliceVar(&clients, "clients", []int{1, 32, 128}, "client counts")
	runCmd.Flags().DurationVar(&duration, "duration", 30*time.Second, "time per target and client count (split over the rounds)")
	runCmd.Flags().IntVar(&rounds, "rounds", 3, "turns each target takes per client count")
	runCmd.Flags().StringArrayVar(&protocols, "protocol", nil, "simple | extended | prepared (default extended) for every target, or NAME=PROTOCOL for one (repeat)")
	runCmd.Flags().IntVar(&runUsers, "users", 100000, "users bench init loaded (keys are drawn from them)")
	runCmd.Flags().StringVar(&jsonPath, "json", "", "also write the results to this JSON file")
	runCmd.Flags().StringVar(&chartPath, "chart", "", "also draw throughput and latency per target and client count in this .svg or .png file")
	runCmd.Flags().StringArrayVar(&admins, "admin", nil, "NAME=DSN of the target's admin console (pgrouter's database pgrouter, pgbouncer's pgbouncer): count the server connections it holds")
	runCmd.Flags().BoolVar(&equalConns, "equal-connections", false, "fail the run unless every target held as many server connections (needs --admin for each)")
	runCmd.Flags().StringArrayVar(&cpus, "cpu", nil, "NAME=PID: measure the CPU time the target's process (pgrouter, pgbouncer) spends per query, from /proc")
	var (
		idleTarget string
		idleN      int
		idlePID    int
		idleHold   time.Duration
	)
	idleCmd := &cobra.Command{
		Use:   "idle",
		Short: "Log many clients in and hold them idle; report the memory the proxy's process grew by",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r, err := bench.Idle(cmd.Context(), idleTarget, idleN, idlePID, idleHold)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%d clients logged in and ran a query each in %s\n", r.Clients, r.LoginTime.Round(time.Millisecond))
			if idlePID != 0 {
				fmt.Fprintf(cmd.OutOrStdout(), "process %d resident memory: %.1f MB before, %.1f MB with the clients (%.1f KB per client)\n",
					idlePID, float64(r.RSSBefore)/1e6, float64(r.RSSAfter)/1e6, float64(r.RSSAfter-r.RSSBefore)/1e3/float64(r.Clients))
			}
			return nil
		},
	}
	idleCmd.Flags().StringVar(&idleTarget, "target", "", "DSN to log in to (pgrouter, pgbouncer)")
	idleCmd.Flags().IntVar(&idleN, "clients", 10000, "clients to hold (the open-files limit must allow them)")
	idleCmd.Flags().IntVar(&idlePID, "pid", 0, "process whose resident memory is read (pgrouter's, pgbouncer's)")
	idleCmd.Flags().DurationVar(&idleHold, "hold", 3*time.Second, "how long to hold them before reading the memory")
	var fromJSON, toChart string
	chartCmd := &cobra.Command{
		Use:   "chart",
		Short: "Draw the chart of a run again from its --json file",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			doc, err := bench.ReadJSON(fromJSON)
			if err != nil {
				return err
			}
			return bench.WriteChart(toChart, chartTitle(doc.Workload), doc.Results)
		},
	}
	chartCmd.Flags().StringVar(&fromJSON, "json", "", "results written by bench run --json")
	chartCmd.Flags().StringVar(&toChart, "chart", "", "the .svg or .png file to draw")
	_ = chartCmd.MarkFlagRequired("json")
	_ = chartCmd.MarkFlagRequired("chart")
	cmd.AddCommand(initCmd, runCmd, idleCmd, chartCmd)
	return cmd
}

func runBenchInit(ctx context.Context, out io.Writer, path, clusterName, plproxy string, users int) error {
	cfg, err := config.Load(path)
	if err != nil {
		return err
	}
	m, err := shardmap.New(cfg)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	clusters := m.Clusters()
	var cl *shardmap.Cluster
	switch {
	case clusterName != "":
		var ok bool
		if cl, ok = m.Cluster(clusterName); !ok {
			return fmt.Errorf("%s has no cluster %s", path, clusterName)
		}
	case len(clusters) == 1:
		cl = clusters[0]
	default:
		return fmt.Errorf("%s has %d clusters: name one with --cluster", path, len(clusters))
	}
	start := time.Now()
	if err := bench.Init(ctx, cl, users); err != nil {
		return err
	}
	fmt.Fprintf(out, "%s: %d users loaded on %d shards in %s\n", cl.Name, users, len(cl.Shards), time.Since(start).Round(time.Millisecond))
	if cfg.Sequences != nil {
		if _, err := seqalloc.Apply(ctx, cl, seqalloc.OptionsFrom(cfg), false); err != nil {
			return fmt.Errorf("stride the sequences: %w", err)
		}
		fmt.Fprintf(out, "%s: sequences strided by %d\n", cl.Name, cfg.Sequences.Stride)
	}
	if plproxy != "" {
		if err := bench.InitPLProxy(ctx, plproxy, cl); err != nil {
			return err
		}
		fmt.Fprintf(out, "%s: PL/Proxy functions created over %d partitions\n", cl.Name, cl.Partitions)
	}
	if missing := bench.MissingFunctions(cl); len(missing) > 0 {
		fmt.Fprintf(out, "\n%s does not route %s as the workloads need. Add to it (then RELOAD a running pgrouter):\n\n%s\n",
			path, strings.Join(missing, ", "), bench.Functions)
		return fmt.Errorf("the data is loaded, but %s does not declare the benchmark's functions (see above): bench run would fail every query", path)
	}
	return nil
}

// benchProgress draws a progress bar on a terminal and nothing otherwise.
func benchProgress(out *os.File) func(done, total int) {
	fi, err := out.Stat()
	if err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		return nil
	}
	return func(done, total int) {
		const width = 30
		filled := done * width / total
		fmt.Fprintf(out, "\r[%s%s] %d/%d", strings.Repeat("=", filled), strings.Repeat(" ", width-filled), done, total)
		if done == total {
			fmt.Fprintln(out)
		}
	}
}

func chartTitle(workload string) string {
	return fmt.Sprintf("pgrouter bench: %s workload", workload)
}

// setTarget applies set to the target called name and reports whether
// there is one.
func setTarget(ts []bench.Target, name string, set func(*bench.Target)) bool {
	for i := range ts {
		if ts[i].Name == name {
			set(&ts[i])
			return true
		}
	}
	return false
}
