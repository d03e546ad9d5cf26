package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/pgrouter/pgrouter/config"
	"github.com/pgrouter/pgrouter/move"
	"github.com/pgrouter/pgrouter/peers"
)

func moveCmd() *cobra.Command {
	var (
		path, cluster, parts, target string
		keep, dry, resume, abort     bool
	)
	cmd := &cobra.Command{
		Use:   "move",
		Short: "Move partitions of a cluster to another shard while clients keep writing",
		Long: `move copies the rows of the given partitions of every table the cluster
declares (tables: in router.yaml) from the shard holding them to --to, at one
snapshot, applies the writes made meanwhile (logged on the source by the
ownership guard pgrouter installs on every shard), then cuts over: the
partitions are frozen on the source (writes in them get 40001 for a moment,
which clients retry), the last changes are applied, the target records them
as its own, the routers reload (every instance under peers:, which must all
be reachable before the cut-over starts) and the moved rows are deleted from
the source (unless --keep-source).

Ownership is recorded on the shards: a router with an old map gets 40001 from
the source and reads the new map; a router started from the same router.yaml
routes to the new owner. A move interrupted anywhere (SIGKILL, a shard
restart) is finished with --resume or undone with --abort until its cut-over
has recorded the target as owner. Needs hash: hashtext, a primary key on
every declared table, and a superuser in the shard DSNs.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.Load(path)
			if err != nil {
				return err
			}
			opts := move.Options{Cluster: cluster, Target: target, KeepSource: keep, DryRun: dry, Resume: resume, Abort: abort}
			if opts.Cluster == "" {
				if len(cfg.Clusters) != 1 {
					return errors.New("--cluster is required: the config has several clusters")
				}
				opts.Cluster = cfg.ClusterNames()[0]
			}
			if resume && abort {
				return errors.New("--resume and --abort exclude each other")
			}
			if !resume && !abort {
				if target == "" || parts == "" {
					return errors.New("--partitions and --to are required (or --resume, --abort)")
				}
				cl, ok := cfg.Clusters[opts.Cluster]
				if !ok {
					return fmt.Errorf("cluster %q is not in the config", opts.Cluster)
				}
				if opts.Partitions, err = config.ParsePartitions(parts, cl.Partitions, 2); err != nil {
					return fmt.Errorf("--partitions: %w", err)
				}
			}
			out := cmd.ErrOrStderr()
			opts.Log = func(format string, args ...any) { fmt.Fprintf(out, format+"\n", args...) }
			opts.Routers = newRouters(cfg, out)
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			res, err := move.Run(ctx, cfg, opts)
			if err != nil {
				return err
			}
			if !dry && !abort {
				fmt.Fprintf(cmd.OutOrStdout(), "moved partitions %s of cluster %s from %s to %s: %d rows copied, %d changes applied, frozen for %s, %d rows removed from %s\n",
					config.FormatPartitions(res.Partitions), opts.Cluster, res.Source, res.Target, res.Rows, res.Applied, res.Frozen.Round(1e6), res.Removed, res.Source)
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&path, "config", "c", "router.yaml", "config file")
	cmd.Flags().StringVar(&cluster, "cluster", "", "cluster (default: the only one)")
	cmd.Flags().StringVar(&parts, "partitions", "", "partitions to move: 6-7, or 3,5")
	cmd.Flags().StringVar(&target, "to", "", "shard to move them to")
	cmd.Flags().BoolVar(&keep, "keep-source", false, "leave the moved rows on the source")
	cmd.Flags().BoolVar(&dry, "dry-run", false, "print the plan and the rows to copy, change nothing")
	cmd.Flags().BoolVar(&resume, "resume", false, "finish the move in progress")
	cmd.Flags().BoolVar(&abort, "abort", false, "undo the move in progress (before its cut-over)")
	return cmd
}

// consoleRouters reaches the routers of a move: every instance under
// peers: (each must answer), or else the one at listen:, which is told when
// it answers (the move does not wait for a router that is not running: it
// reads the map the shards record when it starts).
type consoleRouters struct {
	all    []peers.Peer
	cred   peers.Credentials
	strict bool
	out    io.Writer
}

func newRouters(cfg *config.Config, out io.Writer) *consoleRouters {
	r := &consoleRouters{cred: peers.Credentials{User: cfg.PeerUser, Password: cfg.PeerPassword, Timeout: cfg.Pool.ServerConnectTimeout.D()}, out: out}
	r.all = peers.Others(cfg.Peers, 0)
	r.strict = len(r.all) > 0
	if !r.strict {
		host, port, err := net.SplitHostPort(cfg.Listen)
		if err == nil {
			if host == "" || host == "0.0.0.0" || host == "::" {
				host = "127.0.0.1"
			}
			r.all = []peers.Peer{{ID: 0, Addr: net.JoinHostPort(host, port)}}
		}
	}
	return r
}

// each runs a console command on every router; without peers a router that
// cannot be reached is a warning.
func (r *consoleRouters) each(ctx context.Context, command string) error {
	if r.cred.User == "" {
		if r.strict {
			return errors.New("no user to log into the routers' consoles with: set peer_user or admin_users")
		}
		return nil
	}
	var failed []error
	for _, p := range r.all {
		c, err := peers.Dial(ctx, p, r.cred)
		if err == nil {
			_, err = c.Exec(ctx, command)
			c.Close(ctx)
		}
		if err != nil {
			if !r.strict {
				fmt.Fprintf(r.out, "warning: %s: %v\n", command, err)
				continue
			}
			failed = append(failed, err)
		}
	}
	return errors.Join(failed...)
}

func (r *consoleRouters) Check(ctx context.Context) error {
	if !r.strict {
		return r.each(ctx, "SHOW VERSION")
	}
	if r.cred.User == "" {
		return errors.New("no user to log into the routers' consoles with: set peer_user or admin_users")
	}
	conns, err := peers.DialAll(ctx, r.all, r.cred)
	if err != nil {
		return err
	}
	peers.CloseAll(ctx, conns)
	return nil
}

func (r *consoleRouters) Pause(ctx context.Context, cluster string, parts []int) error {
	return r.each(ctx, fmt.Sprintf("PAUSE PARTITIONS %s %s", quoteName(cluster), config.FormatPartitions(parts)))
}

func (r *consoleRouters) Reload(ctx context.Context) error { return r.each(ctx, "RELOAD") }

func (r *consoleRouters) Resume(ctx context.Context, cluster string) error {
	return r.each(ctx, "RESUME PARTITIONS "+quoteName(cluster))
}

// quoteName double-quotes a name for the console.
func quoteName(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }
