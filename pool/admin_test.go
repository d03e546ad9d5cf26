package pool

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/pgrouter/pgrouter/shardmap"
)

// TestPauseHoldsAcquiresUntilResume: a paused pool hands out nothing (not
// even idle connections), its waiters time out with Paused set, and Resume
// releases the ones still waiting.
func TestPauseHoldsAcquiresUntilResume(t *testing.T) {
	s := NewSet(SetConfig{Settings: Settings{Size: 2, ConnectTimeout: 5 * time.Second, MaxMessageSize: 1 << 20}})
	defer s.Close()
	sh := &shardmap.Shard{Name: "s0", DSN: server.DSN("postgres")}
	p, err := s.Get(sh, "postgres")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	c, err := p.Acquire(ctx, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	s.Pause("s0")
	if s.Busy("s0") != 1 || !s.Paused("s0") {
		t.Fatalf("busy %d paused %v", s.Busy("s0"), s.Paused("s0"))
	}
	p.Release(c) // goes idle: a paused pool gives it to nobody
	_, err = p.Acquire(ctx, 100*time.Millisecond)
	var wt *WaitTimeoutError
	if !errors.As(err, &wt) || !wt.Paused {
		t.Fatalf("acquire while paused: %v; want a paused wait timeout", err)
	}
	got := make(chan error, 1)
	go func() {
		c, err := p.Acquire(ctx, 5*time.Second)
		if err == nil {
			p.Release(c)
		}
		got <- err
	}()
	time.Sleep(100 * time.Millisecond)
	if st := p.Stats(); st.Waiting != 1 || st.MaxWait < 50*time.Millisecond {
		t.Fatalf("waiter not held: %+v", st)
	}
	s.Resume("s0")
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Resume did not release the waiter")
	}
	// A pool made while its shard is paused starts paused.
	s.Pause("s0")
	q, _ := s.Get(sh, "other")
	if !q.Stats().Paused {
		t.Fatal("new pool of a paused shard is not paused")
	}
	s.Resume("s0")
}

// TestReconfigureAndRetire: a smaller size closes surplus connections as
// they come back; a retired pool is closed and the Set makes a fresh one.
func TestReconfigureAndRetire(t *testing.T) {
	st := Settings{Size: 3, ConnectTimeout: 5 * time.Second, MaxMessageSize: 1 << 20}
	s := NewSet(SetConfig{Settings: st})
	defer s.Close()
	sh := &shardmap.Shard{Name: "s0", DSN: server.DSN("postgres")}
	p, _ := s.Get(sh, "postgres")
	ctx := context.Background()
	var conns []*Conn
	for range 3 {
		c, err := p.Acquire(ctx, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	st.Size = 1
	s.Configure(st)
	for _, c := range conns {
		p.Release(c)
	}
	if got := p.Stats(); got.Open != 1 || got.Idle != 1 {
		t.Fatalf("after shrinking to 1: %+v", got)
	}
	c, _ := p.Acquire(ctx, time.Second)
	s.Retire([]*shardmap.Shard{{Name: "s0", DSN: sh.DSN + "&application_name=moved"}}) // DSN changed
	if !p.Closed() {
		t.Fatal("pool of a changed DSN not retired")
	}
	p.Release(c) // the busy connection closes when given back
	if got := p.Stats(); got.Open != 0 {
		t.Fatalf("retired pool still has connections: %+v", got)
	}
	if _, err := s.Get(sh, "postgres"); !errors.Is(err, ErrRetired) {
		t.Fatalf("Get with the old DSN after a reload: %v; want ErrRetired", err)
	}
	moved := &shardmap.Shard{Name: "s0", DSN: sh.DSN + "&application_name=moved"}
	if q, err := s.Get(moved, "postgres"); err != nil || q == p {
		t.Fatalf("Get with the new DSN: %v (same pool %v)", err, q == p)
	}
}

// TestHealthMarksDownAndUp checks a real server: up, down after the
// configured failures once stopped, up again after a restart.
func TestHealthMarksDownAndUp(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s := NewSet(SetConfig{Settings: Settings{Size: 1, ConnectTimeout: time.Second, MaxMessageSize: 1 << 20}})
	defer s.Close()
	sh := &shardmap.Shard{Name: "s0", DSN: server.DSN("postgres")}
	s.Watch([]*shardmap.Shard{sh}, HealthConfig{Interval: 50 * time.Millisecond, Timeout: 500 * time.Millisecond, Failures: 2, Query: "SELECT 1"})
	waitState := func(want string) {
		t.Helper()
		for s.Health("s0").State != want {
			if ctx.Err() != nil {
				t.Fatalf("shard never became %s: %+v", want, s.Health("s0"))
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitState(HealthUp)
	if h := s.Health("s0"); h.Latency <= 0 || h.Failures != 0 {
		t.Fatalf("up: %+v", h)
	}
	server.Halt()
	waitState(HealthDown)
	if h := s.Health("s0"); h.Failures < 2 || h.LastError == "" || !s.Down("s0") {
		t.Fatalf("down: %+v", h)
	}
	if err := server.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	waitState(HealthUp)
	s.Watch(nil, HealthConfig{}) // stops the checker
	if h := s.Health("s0"); h.State != HealthUnknown {
		t.Fatalf("unwatched shard: %+v", h)
	}
}
