package bench

import (
	"context"
	"encoding/xml"
	"os"
	"strings"
	"testing"
	"time"
)

// TestChart: the SVG is well-formed XML with a throughput bar per target
// and client count, a p50 and a p99 bar each, and a legend entry per target.
func TestChart(t *testing.T) {
	var rs []*Result
	for _, c := range []int{1, 32, 128} {
		for i, target := range []string{"pgrouter", "pgbouncer <&> plproxy"} {
			rs = append(rs, &Result{Target: target, Clients: c, TPS: float64(1000 * (c + i)), P50us: int64(100 * c), P99us: int64(300 * c)})
		}
	}
	var sb strings.Builder
	if err := drawChart(&sb, "a & b", rs); err != nil {
		t.Fatal(err)
	}
	svg := sb.String()
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
	if !strings.Contains(svg, "pgbouncer &lt;&amp;&gt; plproxy") {
		t.Fatal("target names are not escaped")
	}
	if err := WriteChart(t.TempDir()+"/c.png", "x", rs); err == nil {
		t.Fatal("a .png chart was accepted; only .svg is drawn")
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
	if _, err := processRSS(1 << 30); err == nil {
		t.Fatal("no error for a process that does not exist")
	}
}
