package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/pgrouter/pgrouter/config"
	"github.com/pgrouter/pgrouter/seqalloc"
	"github.com/pgrouter/pgrouter/shardmap"
)

func seqCmd() *cobra.Command {
	var path string
	cmd := &cobra.Command{
		Use:   "seq",
		Short: "Check or apply stride sequences on every shard",
		Long: `With stride S, the shard in slot k runs every sequence of the managed schemas
with INCREMENT BY S, handing out values that are k+1 modulo S, so no two shards
ever hand out the same id. Slots are recorded on the shards themselves.`,
	}
	cmd.PersistentFlags().StringVarP(&path, "config", "c", "router.yaml", "config file")

	check := &cobra.Command{
		Use:   "check",
		Short: "List every sequence on every shard; exit 1 if any could hand out a value another shard has",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runSeqCheck(cmd.Context(), cmd.OutOrStdout(), path)
		},
	}
	var eventTrigger bool
	apply := &cobra.Command{
		Use:   "apply",
		Short: "Give shards their slots and restart every sequence that could collide",
		Long: `apply gives every shard without a slot the lowest free one and restarts each
sequence that could collide (not striding, in another slot, reset, cycling)
at its shard's first value above the highest value of that sequence on any
shard. Sequences that are already safe are left alone, so a second run changes
nothing. It works in one transaction per shard and refuses, changing nothing,
when a sequence's type cannot hold the stride.

--event-trigger also installs an event trigger on every shard that strides the
sequences migrations create later (serial and identity columns included); only
a superuser may create one.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runSeqApply(cmd.Context(), cmd.OutOrStdout(), path, eventTrigger)
		},
	}
	apply.Flags().BoolVar(&eventTrigger, "event-trigger", false, "also install the event trigger that strides sequences created later (superuser only)")
	cmd.AddCommand(check, apply)
	return cmd
}

// loadSeqConfig loads a config that manages sequences.
func loadSeqConfig(path string) (*config.Config, []*shardmap.Cluster, error) {
	cfg, err := config.Load(path)
	if err != nil {
		return nil, nil, err
	}
	if cfg.Sequences == nil {
		return nil, nil, fmt.Errorf(`%s has no sequences section, so pgrouter does not manage sequences. Add one:
  sequences:
    stride: 1024        # fixed for the cluster's life: at least the most shards it will ever have
    schemas: [public]`, path)
	}
	m, err := shardmap.New(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	return cfg, m.Clusters(), nil
}

func runSeqCheck(ctx context.Context, out io.Writer, path string) error {
	cfg, clusters, err := loadSeqConfig(path)
	if err != nil {
		return err
	}
	report := seqalloc.Check(ctx, clusters, seqalloc.OptionsFrom(cfg))
	writeSeqReport(out, report)
	if n := report.Violations(); n > 0 {
		return fmt.Errorf("seq check: %s", count(n, "problem"))
	}
	return nil
}

// writeSeqReport prints a check as a table, then the problems and warnings
// with what to do about each, then a one-line verdict.
func writeSeqReport(out io.Writer, r *seqalloc.Report) {
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "cluster\tshard\tslot\tsequence\ttype\tincrement\tlast_value\tnext_value\theadroom\tverdict")
	var problems, warnings []string
	sequences := map[string]bool{}
	for _, row := range r.Rows {
		slot, seq, typ, inc, last, next, headroom := "-", row.Sequence, "", "", "", "", ""
		if row.Slot >= 0 {
			slot = strconv.FormatInt(row.Slot, 10)
		}
		if q := row.Seq; q != nil {
			sequences[q.Name] = true
			typ, inc, last, next = q.Type, strconv.FormatInt(q.Increment, 10), "-", "-"
			if q.IsCalled {
				last = strconv.FormatInt(q.LastValue, 10)
			}
			if n, ok := q.Next(); ok {
				next = strconv.FormatInt(n, 10)
			}
			headroom = strconv.FormatInt(q.Headroom(), 10)
		}
		verdict := string(row.Verdict)
		if row.Verdict.Violation() {
			verdict = strings.ToUpper(verdict)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", row.Cluster, row.Shard, slot, seq, typ, inc, last, next, headroom, verdict)
		if row.Detail == "" {
			continue
		}
		line := fmt.Sprintf("  %s/%s %s: %s", row.Cluster, row.Shard, row.Sequence, row.Detail)
		if row.Sequence == "" {
			line = fmt.Sprintf("  %s/%s: %s", row.Cluster, row.Shard, row.Detail)
		}
		if row.Verdict.Violation() {
			problems = append(problems, line)
		} else {
			warnings = append(warnings, line)
		}
	}
	_ = tw.Flush()
	if len(problems) > 0 {
		fmt.Fprintf(out, "\n%s:\n%s\n", count(len(problems), "problem"), strings.Join(problems, "\n"))
	}
	if len(warnings) > 0 {
		fmt.Fprintf(out, "\n%s:\n%s\n", count(len(warnings), "warning"), strings.Join(warnings, "\n"))
	}
	verdict := "every sequence strides in its shard's slot: no two shards can hand out the same value"
	if len(problems) > 0 {
		verdict = "values can collide: run pgrouter seq apply"
	}
	fmt.Fprintf(out, "\nstride %d, %s, %s: %s\n", r.Stride, count(len(r.Shards), "shard"), count(len(sequences), "sequence"), verdict)
}

func runSeqApply(ctx context.Context, out io.Writer, path string, eventTrigger bool) error {
	cfg, clusters, err := loadSeqConfig(path)
	if err != nil {
		return err
	}
	opts := seqalloc.OptionsFrom(cfg)
	for _, cl := range clusters {
		res, err := seqalloc.Apply(ctx, cl, opts, eventTrigger)
		if err != nil {
			return fmt.Errorf("seq apply: cluster %s: %w", cl.Name, err)
		}
		writeApplyResult(out, cl, res)
	}
	report := seqalloc.Check(ctx, clusters, opts)
	if n := report.Violations(); n > 0 {
		writeSeqReport(out, report)
		return fmt.Errorf("seq apply: %s remain", count(n, "problem"))
	}
	fmt.Fprintf(out, "check: stride %d, %s, every sequence strides in its shard's slot\n", opts.Stride, count(len(report.Shards), "shard"))
	return nil
}

// writeApplyResult prints what apply changed in one cluster.
func writeApplyResult(out io.Writer, cl *shardmap.Cluster, res *seqalloc.Result) {
	for _, sh := range cl.Shards {
		if slot, ok := res.NewSlots[sh.Name]; ok {
			fmt.Fprintf(out, "%s/%s: slot %d recorded on the shard\n", cl.Name, sh.Name, slot)
		}
	}
	for _, c := range res.Changes {
		next := "-"
		if n, ok := c.Sequence.Next(); ok {
			next = strconv.FormatInt(n, 10)
		}
		inc := fmt.Sprintf("increment %d -> %d", c.Sequence.Increment, res.Stride)
		if c.Sequence.Increment == res.Stride {
			inc = fmt.Sprintf("increment %d", res.Stride)
		}
		fmt.Fprintf(out, "%s/%s: %s %s, next value %s -> %d (%s)\n", cl.Name, c.Shard, c.Sequence.Name, inc, next, c.Restart, c.Why)
	}
	for _, sh := range res.Triggers {
		fmt.Fprintf(out, "%s/%s: event trigger installed: sequences created later stride by themselves\n", cl.Name, sh)
	}
	for _, w := range res.Warnings {
		fmt.Fprintf(out, "%s: warning: %s\n", cl.Name, w)
	}
	if !res.Changed() {
		fmt.Fprintf(out, "%s: nothing to change\n", cl.Name)
	}
}
