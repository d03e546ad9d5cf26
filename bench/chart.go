package bench

import (
	"fmt"
	"html"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

// WriteChart draws the results, throughput per target and client count on
// the left and p50 and p99 latency on the right, as an SVG or a PNG by the
// file's extension.
func WriteChart(path, title string, rs []*Result) error {
	var c canvas
	switch ext := strings.ToLower(filepath.Ext(path)); ext {
	case ".svg":
		c = &svgCanvas{}
	case ".png":
		c = &pngCanvas{}
	default:
		return fmt.Errorf("chart %s: draw a .svg or a .png", path)
	}
	if err := drawChart(c, title, rs); err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := c.encode(f); err != nil {
		f.Close()
		return fmt.Errorf("chart %s: %w", path, err)
	}
	return f.Close()
}

// canvas is what the chart is drawn on. Both formats share one layout, so
// the SVG and the PNG of a run show the same thing.
type canvas interface {
	start(width, height int)
	rect(x, y, w, h float64, c color.RGBA, tooltip string)
	line(x1, y1, x2, y2 float64, c color.RGBA)
	// text draws s with its baseline at y; anchor is "start", "middle" or "end".
	text(x, y float64, s, anchor string)
	encode(w io.Writer) error
}

var chartColors = []color.RGBA{
	{0x1f, 0x77, 0xb4, 0xff}, {0xff, 0x7f, 0x0e, 0xff}, {0x2c, 0xa0, 0x2c, 0xff},
	{0xd6, 0x27, 0x28, 0xff}, {0x94, 0x67, 0xbd, 0xff}, {0x8c, 0x56, 0x4b, 0xff},
}

var (
	black = color.RGBA{0, 0, 0, 0xff}
	grid  = color.RGBA{0xdd, 0xdd, 0xdd, 0xff}
)

// lighten mixes c with white, for the p99 bar next to its p50 bar.
func lighten(c color.RGBA, f float64) color.RGBA {
	mix := func(v uint8) uint8 { return uint8(float64(v) + (255-float64(v))*f) }
	return color.RGBA{mix(c.R), mix(c.G), mix(c.B), 0xff}
}

func drawChart(cv canvas, title string, rs []*Result) error {
	if len(rs) == 0 {
		return fmt.Errorf("no results to draw")
	}
	var targets, legend []string
	var clients []int
	seenT, seenC := map[string]bool{}, map[int]bool{}
	for _, r := range rs {
		if !seenT[r.Target] {
			seenT[r.Target] = true
			targets = append(targets, r.Target)
			l := r.Target
			if r.Protocol != "" {
				l += " (" + r.Protocol + ")"
			}
			legend = append(legend, l)
		}
		if !seenC[r.Clients] {
			seenC[r.Clients] = true
			clients = append(clients, r.Clients)
		}
	}
	const panelW, panelH, top, left, gap = 420.0, 260.0, 50.0, 60.0, 80.0
	width, height := left+2*panelW+gap+20, top+panelH+70
	cv.start(int(width), int(height))
	cv.text(left, 20, title, "start")
	panel := func(x0 float64, label string, value func(*Result) []float64, names []string) {
		maxV := 0.0
		for _, r := range rs {
			for _, v := range value(r) {
				maxV = max(maxV, v)
			}
		}
		maxV = niceCeil(maxV)
		cv.text(x0, top-8, label, "start")
		for i := 0; i <= 4; i++ {
			y := top + panelH - panelH*float64(i)/4
			cv.line(x0, y, x0+panelW, y, grid)
			cv.text(x0-4, y+4, fmt.Sprintf("%.0f", maxV*float64(i)/4), "end")
		}
		cv.line(x0, top+panelH, x0+panelW, top+panelH, black)
		groupW := panelW / float64(len(clients))
		barW := groupW * 0.8 / float64(len(targets)*len(names))
		for ci, c := range clients {
			gx := x0 + groupW*float64(ci) + groupW*0.1
			cv.text(gx+groupW*0.4, top+panelH+16, clientsLabel(c), "middle")
			k := 0
			for ti, t := range targets {
				for _, r := range rs {
					if r.Target != t || r.Clients != c {
						continue
					}
					for vi, v := range value(r) {
						h := panelH * v / maxV
						col := lighten(chartColors[ti%len(chartColors)], 0.45*float64(vi))
						cv.rect(gx+barW*float64(k), top+panelH-h, barW*0.9, h, col, fmt.Sprintf("%s %s %s: %.0f", t, clientsLabel(c), names[vi], v))
						k++
					}
				}
			}
		}
	}
	panel(left, "throughput (queries/s)", func(r *Result) []float64 { return []float64{r.TPS} }, []string{"tps"})
	panel(left+panelW+gap, "latency (us): p50 solid, p99 light", func(r *Result) []float64 { return []float64{float64(r.P50us), float64(r.P99us)} }, []string{"p50", "p99"})
	step := min(250, (width-left)/float64(len(legend)))
	for ti, l := range legend {
		x := left + float64(ti)*step
		cv.rect(x, height-24, 12, 12, chartColors[ti%len(chartColors)], "")
		cv.text(x+16, height-14, l, "start")
	}
	return nil
}

// niceCeil rounds an axis maximum up to 1, 2, 2.5 or 5 times a power of
// ten, so the four grid lines carry round numbers.
func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if v <= m*p {
			return m * p
		}
	}
	return 10 * p
}

// svgCanvas writes SVG elements; bars carry their value as a tooltip.
type svgCanvas struct{ b strings.Builder }

func hex(c color.RGBA) string { return fmt.Sprintf("#%02x%02x%02x", c.R, c.G, c.B) }

func (s *svgCanvas) start(width, height int) {
	fmt.Fprintf(&s.b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="11">`+"\n", width, height)
	s.b.WriteString(`<rect width="100%" height="100%" fill="white"/>` + "\n")
}

func (s *svgCanvas) rect(x, y, w, h float64, c color.RGBA, tooltip string) {
	fmt.Fprintf(&s.b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s">`, x, y, w, h, hex(c))
	if tooltip != "" {
		fmt.Fprintf(&s.b, `<title>%s</title>`, html.EscapeString(tooltip))
	}
	s.b.WriteString("</rect>\n")
}

func (s *svgCanvas) line(x1, y1, x2, y2 float64, c color.RGBA) {
	fmt.Fprintf(&s.b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s"/>`+"\n", x1, y1, x2, y2, hex(c))
}

func (s *svgCanvas) text(x, y float64, str, anchor string) {
	fmt.Fprintf(&s.b, `<text x="%.1f" y="%.1f" text-anchor="%s">%s</text>`+"\n", x, y, anchor, html.EscapeString(str))
}

func (s *svgCanvas) encode(w io.Writer) error {
	_, err := io.WriteString(w, s.b.String()+"</svg>\n")
	return err
}

// pngCanvas paints on an image with the 7x13 bitmap font from
// golang.org/x/image, so a PNG needs no font files on the machine.
type pngCanvas struct{ img *image.RGBA }

func (p *pngCanvas) start(width, height int) {
	p.img = image.NewRGBA(image.Rect(0, 0, width, height))
	draw.Draw(p.img, p.img.Bounds(), image.White, image.Point{}, draw.Src)
}

func (p *pngCanvas) rect(x, y, w, h float64, c color.RGBA, _ string) {
	r := image.Rect(int(x+0.5), int(y+0.5), int(x+w+0.5), int(y+h+0.5))
	draw.Draw(p.img, r, image.NewUniform(c), image.Point{}, draw.Src)
}

// line draws the horizontal and vertical lines the chart uses.
func (p *pngCanvas) line(x1, y1, x2, y2 float64, c color.RGBA) {
	r := image.Rect(int(x1+0.5), int(y1+0.5), int(x2+0.5)+1, int(y2+0.5)+1)
	draw.Draw(p.img, r, image.NewUniform(c), image.Point{}, draw.Src)
}

func (p *pngCanvas) text(x, y float64, s, anchor string) {
	d := font.Drawer{Dst: p.img, Src: image.Black, Face: basicfont.Face7x13}
	w := float64(d.MeasureString(s).Round())
	switch anchor {
	case "middle":
		x -= w / 2
	case "end":
		x -= w
	}
	d.Dot = fixed.P(int(x+0.5), int(y+0.5))
	d.DrawString(s)
}

func (p *pngCanvas) encode(w io.Writer) error { return png.Encode(w, p.img) }

// clientsLabel is an axis label: "1 client", "32 clients".
func clientsLabel(n int) string {
	if n == 1 {
		return "1 client"
	}
	return fmt.Sprintf("%d clients", n)
}
