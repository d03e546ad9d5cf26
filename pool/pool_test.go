package pool

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgrouter/pgrouter/internal/pgtest"
	"github.com/pgrouter/pgrouter/internal/pgtest/testenv"
	"github.com/pgrouter/pgrouter/shardmap"
)

var server *pgtest.Server

func TestMain(m *testing.M) {
	testenv.Main(m, 1, pgtest.Options{}, func(s []*pgtest.Server) { server = s[0] })
}

func newPool(t *testing.T, size, minIdle int) *Pool {
	cc, err := pgconn.ParseConfig(server.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	p := New(Config{Shard: "s0", User: "postgres", Conn: cc, Settings: Settings{Size: size, MinIdle: minIdle,
		ConnectTimeout: 5 * time.Second, IdleTimeout: time.Minute, PreparedStatements: 8, MaxMessageSize: 1 << 20}}, nil)
	t.Cleanup(p.Close)
	return p
}

func TestAcquireWaitsThenTimesOut(t *testing.T) {
	p := newPool(t, 1, 0)
	ctx := context.Background()
	c1, err := p.Acquire(ctx, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = p.Acquire(ctx, 150*time.Millisecond)
	var wt *WaitTimeoutError
	if !errors.As(err, &wt) || time.Since(start) < 140*time.Millisecond || wt.Size != 1 {
		t.Fatalf("second acquire: %v after %s", err, time.Since(start))
	}
	if st := p.Stats(); st.Waiting != 0 || st.Active != 1 {
		t.Fatalf("stats after timeout %+v", st)
	}
	got := make(chan *Conn)
	go func() {
		c, err := p.Acquire(ctx, 5*time.Second)
		if err != nil {
			t.Error(err)
		}
		got <- c
	}()
	for deadline := time.Now().Add(5 * time.Second); p.Stats().Waiting != 1; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("waiter not queued: %+v", p.Stats())
		}
	}
	p.Release(c1)
	select {
	case c2 := <-got:
		if c2 != c1 {
			t.Fatal("the waiter did not get the released connection")
		}
		p.Release(c2)
	case <-time.After(2 * time.Second):
		t.Fatal("waiter not woken by Release")
	}
	if st := p.Stats(); st.Idle != 1 || st.Active != 0 || st.Open != 1 {
		t.Fatalf("final stats %+v", st)
	}
}

func TestBrokenConnectionIsClosedAndSlotFreed(t *testing.T) {
	p := newPool(t, 1, 0)
	ctx := context.Background()
	c, err := p.Acquire(ctx, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.MarkBroken()
	p.Release(c)
	if st := p.Stats(); st.Open != 0 || st.Idle != 0 {
		t.Fatalf("broken connection kept: %+v", st)
	}
	c2, err := p.Acquire(ctx, time.Second)
	if err != nil || c2 == c {
		t.Fatalf("no fresh connection: %v", err)
	}
	p.Release(c2)
}

// TestTerminatedIdleConnectionIsReplaced kills an idle connection's backend:
// the next Acquire notices without sending anything and opens a new one.
func TestTerminatedIdleConnectionIsReplaced(t *testing.T) {
	p := newPool(t, 2, 0)
	ctx := context.Background()
	c, err := p.Acquire(ctx, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	pid := c.PID
	p.Release(c)
	if err := server.Exec(ctx, "postgres", fmt.Sprintf("SELECT pg_terminate_backend(%d)", pid)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	p.mu.Lock()
	c.lastUsed = time.Now().Add(-2 * checkAfterIdle)
	p.mu.Unlock()
	c2, err := p.Acquire(ctx, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Release(c2)
	if c2.PID == pid {
		t.Fatal("got the terminated connection back")
	}
	if _, err := c2.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
}

func TestMaintainEnforcesIdleTimeoutLifetimeAndMinIdle(t *testing.T) {
	p := newPool(t, 4, 2)
	ctx := context.Background()
	p.maintain(ctx, time.Now())
	if st := p.Stats(); st.Idle != 2 || st.Open != 2 {
		t.Fatalf("min_idle warm-up: %+v", st)
	}
	var held []*Conn
	for range 4 {
		c, err := p.Acquire(ctx, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	for _, c := range held {
		p.Release(c)
	}
	p.maintain(ctx, time.Now().Add(2*time.Minute)) // past server_idle_timeout
	if st := p.Stats(); st.Idle != 2 || st.Open != 2 {
		t.Fatalf("idle timeout should keep min_idle=2: %+v", st)
	}
	p.cfg.Lifetime = time.Hour
	p.maintain(ctx, time.Now().Add(2*time.Hour)) // past server_lifetime: all go, then min_idle refills
	if st := p.Stats(); st.Idle != 2 || st.Open != 2 {
		t.Fatalf("after lifetime: %+v", st)
	}
}

func TestConnectErrorNamesTheShard(t *testing.T) {
	cc, _ := pgconn.ParseConfig("postgres://postgres@127.0.0.1:1/postgres?sslmode=disable")
	p := New(Config{Shard: "gone", Conn: cc, Settings: Settings{Size: 1, ConnectTimeout: time.Second, MaxMessageSize: 1 << 20}}, nil)
	defer p.Close()
	_, err := p.Acquire(context.Background(), time.Second)
	var ce *ConnectError
	if !errors.As(err, &ce) || ce.Shard != "gone" {
		t.Fatalf("%v", err)
	}
	if st := p.Stats(); st.Open != 0 {
		t.Fatalf("failed dial kept a slot: %+v", st)
	}
}

func TestSetPicksServerUser(t *testing.T) {
	s := NewSet(SetConfig{Settings: Settings{Size: 1, ConnectTimeout: time.Second, MaxMessageSize: 1 << 20},
		Password: func(user string) (string, bool) { return "pw-" + user, true }})
	defer s.Close()
	withUser := &shardmap.Shard{Name: "a", DSN: "postgres://app@h/db"}
	without := &shardmap.Shard{Name: "b", DSN: "host=h dbname=db"}
	p1, _ := s.Get(withUser, "alice")
	p2, _ := s.Get(without, "alice")
	p3, _ := s.Get(without, "alice")
	if p1.User() != "app" || p2.User() != "alice" || p2 != p3 || p2.cfg.Conn.Password != "pw-alice" {
		t.Fatalf("users %q %q, same pool %v", p1.User(), p2.User(), p2 == p3)
	}
	for dsn, want := range map[string]string{
		"postgres://u:p@h/db": "u", "postgresql://h/db?user=q": "q", "host=h user='x y'": "x y", "user = z host=h": "z",
		`host=h password='a\' user=b' user=c`: "c", "host=h": "",
	} {
		if got, _ := dsnUser(dsn); got != want {
			t.Errorf("%q: %q want %q", dsn, got, want)
		}
	}
}

// TestReleaseServesAClientWhoseDialIsSlow: a client that started a dial
// also waits in the queue, so a connection released meanwhile serves it
// at once; the dialed connection joins the pool when it is up, and a dial
// that fails after its client was served gives its slot back.
func TestReleaseServesAClientWhoseDialIsSlow(t *testing.T) {
	p := newPool(t, 3, 0)
	dialing := make(chan struct{}, 1)
	gate := make(chan error)
	var slow atomic.Bool
	d := &net.Dialer{}
	p.cfg.Conn.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		if slow.Load() {
			dialing <- struct{}{}
			if err := <-gate; err != nil {
				return nil, err
			}
		}
		return d.DialContext(ctx, network, addr)
	}
	ctx := context.Background()
	c1, err := p.Acquire(ctx, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	slow.Store(true)
	type got struct {
		c   *Conn
		err error
	}
	second := make(chan got, 1)
	go func() {
		c, err := p.Acquire(ctx, 10*time.Second)
		second <- got{c, err}
	}()
	<-dialing // the second client's dial is in progress
	p.Release(c1)
	var g got
	select {
	case g = <-second:
	case <-time.After(5 * time.Second):
		close(gate)
		t.Fatal("the second client still waits for its own dial although a connection was released")
	}
	if g.err != nil || g.c != c1 {
		t.Fatalf("second client got %v, %v; want the released connection %d while its dial hangs", g.c, g.err, c1.ID)
	}
	gate <- nil // the dial completes: its connection goes idle
	waitStats(t, p, func(st Stats) bool { return st.Open == 2 && st.Idle == 1 })

	// A third client: served by the idle one. A fourth dials (hanging),
	// is served by a release, then its dial fails: the slot is given back.
	c3, err := p.Acquire(ctx, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		c, err := p.Acquire(ctx, 10*time.Second)
		second <- got{c, err}
	}()
	<-dialing
	p.Release(c3)
	g4 := <-second
	if g4.err != nil || g4.c != c3 {
		t.Fatalf("fourth client got %v, %v", g4.c, g4.err)
	}
	gate <- errors.New("refused")
	waitStats(t, p, func(st Stats) bool { return st.Open == 2 })
	p.Release(g4.c)
	p.Release(g.c)
}

func waitStats(t *testing.T, p *Pool, ok func(Stats) bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !ok(p.Stats()) {
		if time.Now().After(deadline) {
			t.Fatalf("pool stats %+v", p.Stats())
		}
		time.Sleep(10 * time.Millisecond)
	}
}
