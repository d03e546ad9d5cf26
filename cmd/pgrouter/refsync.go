package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/pgrouter/pgrouter/config"
	"github.com/pgrouter/pgrouter/logical"
	"github.com/pgrouter/pgrouter/refsync"
)

func refsyncCmd() *cobra.Command {
	var path string
	cmd := &cobra.Command{
		Use:   "refsync",
		Short: "Replicate the reference tables from reference.source to every shard",
		Long: `refsync copies the tables listed in reference.tables from the source database to
every shard of every cluster, then streams their changes by logical decoding
(a publication and a pgoutput slot on the source) and applies each source
transaction on each shard in commit order, in one shard transaction that also
records the position in pgrouter.refsync_state: killing or restarting refsync,
a shard or the source loses and repeats nothing. Shards that are down are
retried and catch up. Applications cannot write the copies (SQLSTATE 25006).

Signals: SIGHUP reloads router.yaml (shards added get their copy, tables added
are copied and join the stream); SIGTERM and SIGINT stop.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, log, err := loadWithLogger(path)
			if err != nil {
				return err
			}
			defer func() { _ = log.Sync() }()
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return runRefsync(ctx, cfg, log, path, os.Stderr)
		},
	}
	cmd.PersistentFlags().StringVarP(&path, "config", "c", "router.yaml", "config file")
	status := &cobra.Command{
		Use:   "status",
		Short: "Show each shard's position and lag behind the source",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.Load(path)
			if err != nil {
				return err
			}
			if cfg.Reference == nil {
				return fmt.Errorf("%s has no reference section", path)
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			return writeRefsyncStatus(cmd.OutOrStdout(), refsync.ReadStatus(ctx, cfg))
		},
	}
	cmd.AddCommand(status)
	return cmd
}

// runRefsync runs refsync until ctx ends, reloading path on SIGHUP and
// drawing copy progress on progressOut.
func runRefsync(ctx context.Context, cfg *config.Config, log *zap.Logger, path string, progressOut *os.File) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	reload := make(chan *config.Config)
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { reloadOnHUP(ctx, path, log, reload) })
	return refsync.Run(ctx, cfg, refsync.Options{
		Log:      log,
		Reload:   reload,
		Progress: progressPrinter(progressOut, log, false),
	})
}

// progressPrinter draws a bar per table on a terminal and logs the progress
// every 10 seconds otherwise; fromShard says the copy goes from the shard
// (fanin) rather than to it (refsync).
func progressPrinter(out *os.File, log *zap.Logger, fromShard bool) func(logical.Progress) {
	fi, err := out.Stat()
	terminal := err == nil && fi.Mode()&os.ModeCharDevice != 0
	var mu sync.Mutex
	lastLog := map[string]time.Time{}
	return func(p logical.Progress) {
		mu.Lock()
		defer mu.Unlock()
		key := p.Shard + " " + p.Table.String()
		if terminal {
			fmt.Fprintf(out, "\r%s", progressLine(p, fromShard))
			if p.Done {
				fmt.Fprintln(out)
			}
			return
		}
		if p.Done || time.Since(lastLog[key]) >= 10*time.Second {
			lastLog[key] = time.Now()
			log.Info("copy progress", zap.String("shard", p.Shard), zap.Stringer("table", p.Table),
				zap.Int64("rows", p.Rows), zap.Int64("estimated_rows", p.Total), zap.Bool("done", p.Done))
		}
	}
}

// progressLine is one line of a copy's progress bar.
func progressLine(p logical.Progress, fromShard bool) string {
	const width = 30
	frac := 1.0
	if p.Total > 0 && !p.Done {
		frac = min(float64(p.Rows)/float64(p.Total), 1)
	}
	filled := int(frac * width)
	bar := strings.Repeat("=", filled) + strings.Repeat(" ", width-filled)
	if fromShard {
		return fmt.Sprintf("copy %-10s %-24s → target [%s] %3.0f%% %d rows", p.Shard, p.Table, bar, frac*100, p.Rows)
	}
	return fmt.Sprintf("copy %-24s → %-10s [%s] %3.0f%% %d rows", p.Table, p.Shard, bar, frac*100, p.Rows)
}

// writeRefsyncStatus prints the slot and one line per shard.
func writeRefsyncStatus(out io.Writer, st *refsync.Status) error {
	if st.SourceErr != nil {
		fmt.Fprintf(out, "source: unreachable: %v\n", st.SourceErr)
	} else {
		fmt.Fprintf(out, "source: at %s\n", st.SourceLSN)
		if st.Slot == nil {
			fmt.Fprintln(out, "slot: not created yet (pgrouter refsync creates it)")
		} else {
			active := "no refsync streaming"
			if st.Slot.Active {
				active = "refsync streaming"
			}
			fmt.Fprintf(out, "slot: confirmed %s, %s retained, %s\n", st.Slot.Confirmed, formatBytes(st.Slot.RetainedBytes), active)
		}
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CLUSTER\tSHARD\tLSN\tLAG BYTES\tLAG\tTABLES\tSTATE")
	for _, s := range st.Shards {
		switch {
		case s.Err != nil:
			fmt.Fprintf(tw, "%s\t%s\t-\t-\t-\t-\tunreachable: %v\n", s.Cluster, s.Shard, s.Err)
		case !s.Copied:
			fmt.Fprintf(tw, "%s\t%s\t-\t-\t-\t-\tnot copied yet\n", s.Cluster, s.Shard)
		default:
			lag := "-"
			if st.SourceErr == nil {
				lag = s.Lag.Round(time.Millisecond).String()
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%d\tstreaming\n", s.Cluster, s.Shard, s.LSN, s.LagBytes, lag, s.Tables)
		}
	}
	return tw.Flush()
}

func formatBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
