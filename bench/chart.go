package bench

import (
	"fmt"
	"html"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// WriteChart draws the results as an SVG: throughput per target and
// client count on the left, p50 and p99 latency on the right.
func WriteChart(path, title string, rs []*Result) error {
	if ext := strings.ToLower(filepath.Ext(path)); ext != ".svg" {
		return fmt.Errorf("chart %s: only .svg is drawn", path)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := drawChart(f, title, rs); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

var chartColors = []string{"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"}

func drawChart(w io.Writer, title string, rs []*Result) error {
	var targets []string
	var clients []int
	seenT, seenC := map[string]bool{}, map[int]bool{}
	for _, r := range rs {
		if !seenT[r.Target] {
			seenT[r.Target] = true
			targets = append(targets, r.Target)
		}
		if !seenC[r.Clients] {
			seenC[r.Clients] = true
			clients = append(clients, r.Clients)
		}
	}
	if len(rs) == 0 {
		return fmt.Errorf("no results to draw")
	}
	const panelW, panelH, top, left, gap = 420.0, 260.0, 50.0, 60.0, 80.0
	width, height := left+2*panelW+gap+20, top+panelH+70
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" font-family="sans-serif" font-size="11">`+"\n", width, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/><text x="%.0f" y="20" font-size="14">%s</text>`+"\n", left, html.EscapeString(title))
	panel := func(x0 float64, label string, value func(*Result) []float64, names []string) {
		maxV := 0.0
		for _, r := range rs {
			for _, v := range value(r) {
				maxV = max(maxV, v)
			}
		}
		if maxV == 0 {
			maxV = 1
		}
		fmt.Fprintf(&b, `<text x="%.0f" y="%.0f">%s</text>`+"\n", x0, top-8, html.EscapeString(label))
		fmt.Fprintf(&b, `<line x1="%.0f" y1="%.0f" x2="%.0f" y2="%.0f" stroke="black"/>`+"\n", x0, top+panelH, x0+panelW, top+panelH)
		for i := 0; i <= 4; i++ {
			y := top + panelH - panelH*float64(i)/4
			fmt.Fprintf(&b, `<line x1="%.0f" y1="%.1f" x2="%.0f" y2="%.1f" stroke="#ddd"/><text x="%.0f" y="%.1f" text-anchor="end">%.0f</text>`+"\n",
				x0, y, x0+panelW, y, x0-4, y+4, maxV*float64(i)/4)
		}
		groupW := panelW / float64(len(clients))
		barW := groupW * 0.8 / float64(len(targets)*len(names))
		for ci, c := range clients {
			gx := x0 + groupW*float64(ci) + groupW*0.1
			fmt.Fprintf(&b, `<text x="%.1f" y="%.0f" text-anchor="middle">%d clients</text>`+"\n", gx+groupW*0.4, top+panelH+16, c)
			k := 0
			for ti, t := range targets {
				for _, r := range rs {
					if r.Target != t || r.Clients != c {
						continue
					}
					for vi, v := range value(r) {
						h := panelH * v / maxV
						opacity := 1.0 - 0.45*float64(vi)
						fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s" fill-opacity="%.2f"><title>%s %d clients %s: %.0f</title></rect>`+"\n",
							gx+barW*float64(k), top+panelH-h, barW*0.9, h, chartColors[ti%len(chartColors)], opacity, html.EscapeString(t), c, names[vi], v)
						k++
					}
				}
			}
		}
	}
	panel(left, "throughput (queries/s)", func(r *Result) []float64 { return []float64{r.TPS} }, []string{"tps"})
	panel(left+panelW+gap, "latency (µs): p50 solid, p99 light", func(r *Result) []float64 { return []float64{float64(r.P50us), float64(r.P99us)} }, []string{"p50", "p99"})
	for ti, t := range targets {
		x := left + float64(ti)*150
		fmt.Fprintf(&b, `<rect x="%.0f" y="%.0f" width="12" height="12" fill="%s"/><text x="%.0f" y="%.0f">%s</text>`+"\n",
			x, height-24, chartColors[ti%len(chartColors)], x+16, height-14, html.EscapeString(t))
	}
	b.WriteString("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}
