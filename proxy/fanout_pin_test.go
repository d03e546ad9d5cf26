package proxy_test

import (
	"testing"
	"time"

	"github.com/pgrouter/pgrouter/proxy"
)

// TestRoutingFanoutLeavesTransactionFree: in a transaction that has not
// chosen its shard, fan-outs sent as one unnamed pipeline (Parse, Bind,
// Describe, Execute, Sync: node-postgres, lib/pq) leave it free, so the
// transaction's first write still chooses its shard. (The Parse replayed
// before the fan-out used to pin the transaction to a random shard.)
func TestRoutingFanoutLeavesTransactionFree(t *testing.T) {
	p := startRouting(t, proxyOpts{size: 4})
	ctx := testContext(t, time.Minute)
	conn := p.connect(t, ctx)
	a, b := twoKeysOnDifferentShards(t)
	for _, k := range []string{a, b} {
		if _, err := conn.Exec(ctx, "BEGIN"); err != nil {
			t.Fatal(err)
		}
		// run_on all, then a read_only split over both keys' shards.
		for _, sql := range []string{"select * from rt_list_users() where $1::text is not null", "select username from rt_get_users($1)", "select * from rt_list_users() where $1::text is not null"} {
			arg := []byte(`{"` + a + `","` + b + `"}`)
			if rr := conn.PgConn().ExecParams(ctx, sql, [][]byte{arg}, nil, nil, nil).Read(); rr.Err != nil {
				t.Fatalf("%s in a transaction: %v", sql, rr.Err)
			}
		}
		if _, err := conn.Exec(ctx, "select rt_add_user($1, $2)", k, email(k)); err != nil {
			t.Fatalf("the transaction's first write after fan-outs: %v", err)
		}
		if _, err := conn.Exec(ctx, "COMMIT"); err != nil {
			t.Fatal(err)
		}
		if n := shardQueryInt(t, shardIndex(t, k), "SELECT count(*) FROM rt_users WHERE username = "+proxy.QuoteLiteral(k)); n != 1 {
			t.Fatalf("%s: %d rows on its shard", k, n)
		}
	}
}
