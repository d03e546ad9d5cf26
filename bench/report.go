package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
)

// WriteTable prints one line per target and client count, the ratio
// against the first target, and the first error of any target that had
// errors.
func WriteTable(w io.Writer, rs []*Result) error {
	cpu, servers := false, false
	for _, r := range rs {
		cpu = cpu || r.CPUSecs > 0
		servers = servers || r.ServerConns > 0
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	head := "clients\ttarget\tprotocol\ttps\tratio\tp50 µs\tp95 µs\tp99 µs\tp99.9 µs\tmax µs\terrors\t"
	if cpu {
		head += "cpu µs/query\t"
	}
	if servers {
		head += "server conns\t"
	}
	fmt.Fprintln(tw, head)
	for _, r := range rs {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%.0f\t%.2f\t%d\t%d\t%d\t%d\t%d\t%d\t", r.Clients, r.Target, r.Protocol, r.TPS, r.Ratio, r.P50us, r.P95us, r.P99us, r.P999us, r.MaxUs, r.Errors)
		switch {
		case !cpu:
		case r.CPUSecs > 0:
			fmt.Fprintf(tw, "%.1f\t", r.CPUPerQus)
		default:
			fmt.Fprint(tw, "-\t")
		}
		switch {
		case !servers:
		case r.ServerConns > 0:
			fmt.Fprintf(tw, "%d\t", r.ServerConns)
		default:
			fmt.Fprint(tw, "-\t")
		}
		fmt.Fprintln(tw)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, r := range rs {
		if r.FirstErr != "" {
			fmt.Fprintf(w, "%s at %s: %d errors, the first: %s\n", r.Target, clientsLabel(r.Clients), r.Errors, r.FirstErr)
		}
	}
	return nil
}

// Report is the JSON form of a run: what was run and its results.
type Report struct {
	Workload string    `json:"workload"`
	Protocol string    `json:"protocol"`
	Duration string    `json:"duration_per_point"`
	Rounds   int       `json:"rounds"`
	Users    int       `json:"users"`
	Results  []*Result `json:"results"`
}

// WriteJSON writes the results to a file, for charts and comparisons.
func WriteJSON(path string, opts Options, rs []*Result) error {
	doc := Report{opts.Workload, opts.Protocol, opts.Duration.String(), opts.Rounds, opts.Users, rs}
	data, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(data, '\n'), 0o644)
}

// ReadJSON reads a file WriteJSON wrote, so a chart can be drawn again
// without running the benchmark again.
func ReadJSON(path string) (*Report, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var doc Report
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(doc.Results) == 0 {
		return nil, fmt.Errorf("%s: no results", path)
	}
	return &doc, nil
}
