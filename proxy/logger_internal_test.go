package proxy

import (
	"net"
	"sync"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// TestSessionLoggerIsBuiltOnce: a client's log lines carry its id, address,
// user and database, and the logger built on first use is the same one for
// every caller, the cancel goroutine included (run with -race).
func TestSessionLoggerIsBuiltOnce(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	s := &session{srv: &Server{log: zap.New(core)}, conn: a, id: 42, user: "alice", dbName: "main"}
	if s.log.Load() != nil {
		t.Fatal("logger built before use")
	}
	var wg sync.WaitGroup
	got := make([]*zap.Logger, 8)
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i] = s.logger()
			got[i].Info("hello")
		}()
	}
	wg.Wait()
	for _, l := range got {
		if l != got[0] {
			t.Fatal("two loggers built for one client")
		}
	}
	if logs.Len() != len(got) {
		t.Fatalf("%d lines logged", logs.Len())
	}
	fields := logs.All()[0].ContextMap()
	if fields["client_id"] != uint64(42) || fields["user"] != "alice" || fields["database"] != "main" || fields["remote"] != "pipe" {
		t.Fatalf("fields %v", fields)
	}
}
