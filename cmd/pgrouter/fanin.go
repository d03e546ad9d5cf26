package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/pgrouter/pgrouter/config"
	"github.com/pgrouter/pgrouter/fanin"
)

func faninCmd() *cobra.Command {
	var path string
	cmd := &cobra.Command{
		Use:   "fanin",
		Short: "Keep one central copy of sharded tables, current from every shard",
		Long: `fanin copies the tables listed in fanin.tables from every shard of the cluster
into the fanin.target database (each row tagged with its shard in the column
pgrouter_shard), then streams each shard's changes by logical decoding (a
publication and a pgoutput slot per shard, fanin.slot + "_" + shard) and applies
each shard transaction in one target transaction that also records the shard's
position in pgrouter.fanin_state: killing or restarting fanin, a shard or the
target loses and repeats nothing. A shard that is down delays only its own
rows. Applications cannot write the central tables (SQLSTATE 25006).

Signals: SIGHUP reloads router.yaml (shards added to the cluster are copied in
and streamed, shards removed stopped, the others go on); SIGTERM and SIGINT stop.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, log, err := loadWithLogger(path)
			if err != nil {
				return err
			}
			defer func() { _ = log.Sync() }()
			if cfg.Fanin == nil {
				return fmt.Errorf("%s has no fanin section: nothing to fan in", path)
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			reload := make(chan *config.Config)
			var wg sync.WaitGroup
			defer wg.Wait()
			defer stop() // before the Wait: ends reloadOnHUP
			wg.Go(func() { reloadOnHUP(ctx, path, log, reload) })
			return fanin.Run(ctx, cfg, fanin.Options{Log: log, Reload: reload, Progress: progressPrinter(os.Stderr, log, true)})
		},
	}
	cmd.PersistentFlags().StringVarP(&path, "config", "c", "router.yaml", "config file")
	status := &cobra.Command{
		Use:   "status",
		Short: "Show each shard's position in the target and its lag",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.Load(path)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			st, err := fanin.Status(ctx, cfg)
			if err != nil {
				return err
			}
			return writeFaninStatus(cmd.OutOrStdout(), st)
		},
	}
	cmd.AddCommand(status)
	return cmd
}

// writeFaninStatus prints one line per shard.
func writeFaninStatus(out io.Writer, st []fanin.ShardStatus) error {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SHARD\tSLOT\tAPPLIED LSN\tLAG BYTES\tROWS COPIED\tSYNCED TO\tERROR")
	for _, s := range st {
		lag, synced := "-", "-"
		if s.LagBytes >= 0 {
			lag = fmt.Sprint(s.LagBytes)
		}
		if s.SyncedTo != nil {
			synced = s.SyncedTo.UTC().Format(time.RFC3339)
		}
		lsn := s.LSN
		if !s.Copied {
			lsn = "(copy not done)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", s.Shard, s.Slot, lsn, lag, s.CopiedRows, synced, s.Err)
	}
	return tw.Flush()
}

// reloadOnHUP loads path on every SIGHUP and sends the configuration on
// reload, until ctx ends; a file with errors is logged and skipped.
func reloadOnHUP(ctx context.Context, path string, log *zap.Logger, reload chan<- *config.Config) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			next, err := config.Load(path)
			if err != nil {
				log.Error("SIGHUP: the config has errors; keeping the current one", zap.Error(err))
				continue
			}
			log.Info("SIGHUP: reloaded the config")
			select {
			case reload <- next:
			case <-ctx.Done():
				return
			}
		}
	}
}
