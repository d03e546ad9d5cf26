package bench

import (
	"context"
	"encoding/xml"
	"image/color"
	"image/png"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/pgrouter/pgrouter/shardmap"
)

// TestChart: the SVG is well-formed XML with a throughput bar per target
// and client count, a p50 and a p99 bar each, and a legend entry per
// target; the PNG of the same results has the same bars, in the targets'
// colours, and text.
func TestChart(t *testing.T) {
	var rs []*Result
	for _, c := range []int{1, 32, 128} {
		for i, target := range []string{"pgrouter", "pgbouncer <&> plproxy"} {
			rs = append(rs, &Result{Target: target, Protocol: "extended", Clients: c, TPS: float64(1000 * (c + i)), P50us: int64(100 * c), P99us: int64(300 * c)})
		}
	}
	dir := t.TempDir()
	if err := WriteChart(dir+"/c.svg", "a & b", rs); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(dir + "/c.svg")
	if err != nil {
		t.Fatal(err)
	}
	svg := string(data)
	dec := xml.NewDecoder(strings.NewReader(svg))
	for {
		if _, err := dec.Token(); err != nil {
			if err.Error() != "EOF" {
				t.Fatalf("not well-formed: %v\n%s", err, svg)
			}
			break
		}
	}
	if n := strings.Count(svg, "<rect x="); n != 6+12+2 {
		t.Fatalf("%d bars and legend boxes, want 6 tps + 12 latency + 2 legend:\n%s", n, svg)
	}
	if !strings.Contains(svg, "pgbouncer &lt;&amp;&gt; plproxy (extended)") {
		t.Fatal("target names are not escaped or lack their protocol")
	}
	if !strings.Contains(svg, ">1 client<") || !strings.Contains(svg, ">32 clients<") || strings.Contains(svg, "1 clients") {
		t.Fatalf(`client counts are not labelled "1 client", "32 clients":\n%s`, svg)
	}

	if err := WriteChart(dir+"/c.png", "a & b", rs); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(dir + "/c.png")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatal(err)
	}
	count := map[color.RGBA]int{}
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, a := img.At(x, y).RGBA()
			count[color.RGBA{uint8(r >> 8), uint8(g >> 8), uint8(bl >> 8), uint8(a >> 8)}]++
		}
	}
	if b.Dx() != 1000 || b.Dy() != 380 {
		t.Fatalf("PNG is %v", b)
	}
	// The tallest throughput bar (128 clients, second target) is the full
	// 260-pixel panel height; every bar is at least one pixel wide.
	for i := range 2 {
		if count[chartColors[i]] < 260 {
			t.Errorf("target %d: %d pixels of its colour", i, count[chartColors[i]])
		}
		if count[lighten(chartColors[i], 0.45)] < 3*260*3/10 {
			t.Errorf("target %d: %d pixels of its p99 colour", i, count[lighten(chartColors[i], 0.45)])
		}
	}
	if count[color.RGBA{0, 0, 0, 0xff}] < 500 {
		t.Errorf("%d black pixels: text and axes missing", count[color.RGBA{0, 0, 0, 0xff}])
	}
	for v, want := range map[float64]float64{0: 1, 1: 1, 1.5: 2, 14790: 20000, 44575: 50000, 230: 250, 2600: 5000} {
		if got := niceCeil(v); got != want {
			t.Errorf("niceCeil(%v) = %v, want %v", v, got, want)
		}
	}
	if err := WriteChart(dir+"/c.gif", "x", rs); err == nil {
		t.Fatal("a .gif chart was accepted")
	}
}

// TestProcessCPU reads this process's CPU time, which grows with work.
func TestProcessCPU(t *testing.T) {
	before, err := processCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	for start := time.Now(); time.Since(start) < 100*time.Millisecond; {
	}
	after, err := processCPU(os.Getpid())
	if err != nil || after <= before {
		t.Fatalf("CPU %v then %v (%v)", before, after, err)
	}
	if _, err := processCPU(1 << 30); err == nil {
		t.Fatal("no error for a process that does not exist")
	}
}

// TestIdle holds clients on a real server and reads this process's memory.
func TestIdle(t *testing.T) {
	r, err := Idle(context.Background(), servers[0].DSN("postgres"), 50, os.Getpid(), 10*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if r.Clients != 50 || r.RSSBefore <= 0 || r.RSSAfter <= 0 || r.LoginTime <= 0 {
		t.Fatalf("%+v", r)
	}
	if _, err := ProcessRSS(1 << 30); err == nil {
		t.Fatal("no error for a process that does not exist")
	}
}

// TestConnInfo: a shard DSN becomes a libpq connect string PL/Proxy can
// extend, keeping what sslmode meant (prefer, the default, stays prefer:
// it must not demand TLS from a shard without it).
func TestConnInfo(t *testing.T) {
	for dsn, want := range map[string]string{
		"postgres://u:p'w@h:5433/db?sslmode=disable": `host='h' port=5433 dbname='db' user='u' password='p\'w' sslmode=disable`,
		"postgres://u@h/db":                          `host='h' port=5432 dbname='db' user='u' sslmode=prefer`,
		"postgres://u@h/db?sslmode=require":          `host='h' port=5432 dbname='db' user='u' sslmode=require`,
	} {
		got, err := connInfo(dsn)
		if err != nil || got != want {
			t.Errorf("connInfo(%q) = %q, %v; want %q", dsn, got, err, want)
		}
	}
}

// TestInitPLProxyRefusesOtherHashes: PL/Proxy places keys with hashtext, so
// a cluster hashing otherwise is refused before anything is created.
func TestInitPLProxyRefusesOtherHashes(t *testing.T) {
	cl := &shardmap.Cluster{Name: "main", Hash: shardmap.XXHash64}
	if err := InitPLProxy(context.Background(), "postgres://nowhere.invalid/db", cl); err == nil || !strings.Contains(err.Error(), "hash: hashtext") {
		t.Fatalf("InitPLProxy with xxhash64: %v", err)
	}
}
