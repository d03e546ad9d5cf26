package proxy_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// TestClientStateIsBounded: a client that prepares statements it never
// closes, or piles up SETs in a transaction that has not chosen its shard,
// gets 54000 naming pool.max_client_state once it would make pgrouter hold
// more, and can go on once it closes what it no longer needs.
func TestClientStateIsBounded(t *testing.T) {
	p := startProxy(t, proxyOpts{size: 1, extra: "  max_client_state: 64kB\n"})
	ctx := testContext(t, time.Minute)
	conn := p.connect(t, ctx)
	pad := strings.Repeat("x", 1000)
	refusedAt := 0
	for i := range 200 {
		_, err := conn.Prepare(ctx, fmt.Sprintf("s%d", i), fmt.Sprintf("SELECT %d, '%s'", i, pad))
		if err != nil {
			if pgCode(err) != "54000" || !strings.Contains(err.Error(), "pool.max_client_state") {
				t.Fatalf("statement %d: %v; want 54000 naming pool.max_client_state", i, err)
			}
			refusedAt = i
			break
		}
	}
	if refusedAt < 40 || refusedAt > 64 {
		t.Fatalf("refused at statement %d; want about 64kB / 1.2kB", refusedAt)
	}
	// The statements kept still work, and closing some makes room.
	var n int
	if err := conn.QueryRow(ctx, "s3").Scan(&n, new(string)); err != nil || n != 3 {
		t.Fatalf("s3: %d, %v", n, err)
	}
	for i := range 10 {
		if err := conn.Deallocate(ctx, fmt.Sprintf("s%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := conn.Prepare(ctx, "again", "SELECT 1, '"+pad+"'"); err != nil {
		t.Fatalf("after closing ten: %v", err)
	}

	// SETs of a transaction that has not chosen its shard are held until
	// it does; they count too.
	r := startRouting(t, proxyOpts{size: 1, extra: "  max_client_state: 64kB\n"})
	other := r.connect(t, ctx)
	if _, err := other.Exec(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	var err error
	for i := 0; i < 200 && err == nil; i++ {
		_, err = other.Exec(ctx, fmt.Sprintf("SET app.v%d = '%s'", i, pad))
	}
	if pgCode(err) != "54000" {
		t.Fatalf("SETs in an unpinned transaction: %v; want 54000", err)
	}
	if _, err := other.Exec(ctx, "ROLLBACK"); err != nil {
		t.Fatal(err)
	}
	if _, err := other.Exec(ctx, "SET app.after = '"+pad+"'"); err != nil {
		t.Fatalf("after the ROLLBACK released them: %v", err)
	}
}

// TestPortalsEndWithTheirTransaction: a driver that names a new portal for
// every query (JDBC's C_1, C_2, ...) must not fill its state budget, since
// PostgreSQL drops portals when their transaction ends; here 1,000 portals
// of a statement that changes a setting (the ones pgrouter tracks), one
// per transaction, against a 64 kB budget that holds about 450.
func TestPortalsEndWithTheirTransaction(t *testing.T) {
	p := startProxy(t, proxyOpts{size: 1, extra: "  max_client_state: 64kB\n"})
	c := rawLogin(t, p)
	if got := c.roundTrip(&pgproto3.Parse{Name: "s", Query: "SET application_name = 'portals'"}, &pgproto3.Sync{}); got != "ParseComplete Ready(I)" {
		t.Fatal(got)
	}
	for i := range 1000 {
		portal := fmt.Sprintf("C_%d", i)
		got := c.roundTrip(&pgproto3.Bind{DestinationPortal: portal, PreparedStatement: "s"}, &pgproto3.Execute{Portal: portal}, &pgproto3.Sync{})
		if got != "BindComplete Complete(SET) Ready(I)" {
			t.Fatalf("portal %d: %s", i, got)
		}
	}
}
