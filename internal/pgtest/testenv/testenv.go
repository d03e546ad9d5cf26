// Package testenv is the test-side glue around pgtest: servers shared by a
// package's tests (TestMain) and servers owned by one test. It lives apart
// from pgtest because pgtest also runs in the pgrouter binary (demo), which
// should not link the testing package or goleak.
package testenv

import (
	"context"
	"fmt"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pgrouter/pgrouter/internal/pgtest"
)

// Main starts n servers for a package, hands them to use, runs the tests,
// stops the servers and fails the run when goroutines leaked. It does not
// return.
func Main(m *testing.M, n int, opts pgtest.Options, use func([]*pgtest.Server)) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	servers, err := pgtest.StartN(ctx, n, opts)
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "start PostgreSQL:", err)
		os.Exit(1)
	}
	use(servers)
	code := m.Run()
	for _, s := range servers {
		_ = s.Stop()
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goroutines leaked:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// Freeze stops a server and all its backends with SIGSTOP. The returned
// thaw (SIGCONT) may be called any number of times; it also runs when the
// test ends, so a failing test never leaves a server frozen for the next.
func Freeze(t testing.TB, s *pgtest.Server) (thaw func()) {
	t.Helper()
	if err := s.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	thaw = sync.OnceFunc(func() {
		if err := s.Signal(syscall.SIGCONT); err != nil {
			t.Error(err)
		}
	})
	t.Cleanup(thaw)
	return thaw
}

// Servers starts n servers for one test and stops them when it ends.
func Servers(t testing.TB, n int, opts pgtest.Options) []*pgtest.Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	servers, err := pgtest.StartN(ctx, n, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, s := range servers {
			_ = s.Stop()
		}
	})
	return servers
}

// WaitEqual waits until every table on every shard equals the source's
// (compared by pgtest.Checksum), and fails the test after timeout.
func WaitEqual(t *testing.T, src string, shards []string, timeout time.Duration, tables ...string) {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(timeout)
	for {
		diff := ""
		for _, table := range tables {
			want, err := pgtest.Checksum(ctx, src, table)
			if err != nil {
				t.Fatal(err)
			}
			for i, dsn := range shards {
				got, err := pgtest.Checksum(ctx, dsn, table)
				if err != nil {
					diff = fmt.Sprintf("shard %d %s: %v", i, table, err)
				} else if got != want {
					diff = fmt.Sprintf("shard %d %s: %.40s, source %.40s", i, table, got, want)
				}
			}
		}
		if diff == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("shards differ from the source after %s: %s", timeout, diff)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
