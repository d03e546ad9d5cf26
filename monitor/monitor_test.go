package monitor_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/pgrouter/pgrouter/config"
	"github.com/pgrouter/pgrouter/internal/pgtest"
	"github.com/pgrouter/pgrouter/internal/pgtest/testenv"
	"github.com/pgrouter/pgrouter/monitor"
	"github.com/pgrouter/pgrouter/proxy"
)

var shards []*pgtest.Server

func TestMain(m *testing.M) {
	testenv.Main(m, 2, pgtest.Options{}, func(s []*pgtest.Server) { shards = s })
}

// writeConfig writes a router.yaml over both shards, with the given
// top-level sections.
func writeConfig(t *testing.T, path, extra string) {
	t.Helper()
	var b strings.Builder
	b.WriteString("listen: 127.0.0.1:0\nauth:\n  type: trust\nclusters:\n  main:\n    partitions: 2\n    shards:\n")
	for i, s := range shards {
		fmt.Fprintf(&b, "      - name: s%d\n        dsn: %s\n        partitions: \"%d\"\n", i, s.DSN("postgres"), i)
	}
	b.WriteString(extra)
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestSequencesFollowReload: the stride check starts with the server's
// config, judges each shard, and a reload that drops the sequences section
// clears the verdicts at once, while a reload that brings it back judges
// again.
func TestSequencesFollowReload(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := shards[1].Exec(ctx, "postgres", "DROP SEQUENCE IF EXISTS mon_seq; CREATE SEQUENCE mon_seq INCREMENT 1"); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "router.yaml")
	const managed = "sequences:\n  stride: 2\n  check_interval: 50ms\n"
	writeConfig(t, path, managed)
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	log := zaptest.NewLogger(t)
	srv, err := proxy.NewServer(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	mon := monitor.Start(srv, log)
	defer mon.Close()

	judged := func() (any, any) { return mon.SequencesOK("main", "s0"), mon.SequencesOK("main", "s1") }
	waitFor(t, "both shards judged", func() bool {
		s0, s1 := judged()
		return s0 == true && s1 == false
	})
	if report, ok := mon.CheckSequences(); !ok || len(report.Rows) == 0 {
		t.Fatalf("CheckSequences with a sequences section: managed %v, report %v", ok, report)
	}

	writeConfig(t, path, "")
	if _, err := srv.Reload(); err != nil {
		t.Fatal(err)
	}
	if s0, s1 := judged(); s0 != nil || s1 != nil {
		t.Fatalf("after a reload without sequences: seq_ok %v, %v; want NULL at once", s0, s1)
	}
	if _, ok := mon.CheckSequences(); ok {
		t.Fatal("CheckSequences checked without a sequences section")
	}

	writeConfig(t, path, managed)
	if _, err := srv.Reload(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "judged again after the reload", func() bool {
		s0, s1 := judged()
		return s0 == true && s1 == false
	})
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
