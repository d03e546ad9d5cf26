package proxy

import (
	"testing"

	"github.com/pgrouter/pgrouter/shardmap"
)

func TestPickUpAvoidsDownShards(t *testing.T) {
	shards := []*shardmap.Shard{{Name: "s0"}, {Name: "s1"}, {Name: "s2"}}
	down := map[string]bool{"s0": true, "s2": true}
	for range 100 {
		if got := pickUp(shards, func(n string) bool { return down[n] }); got.Name != "s1" {
			t.Fatalf("picked %s, which is down", got.Name)
		}
	}
	all := func(string) bool { return true }
	if got := pickUp(shards, all); got == nil {
		t.Fatal("all down: must still pick one (the call then gets the connection error)")
	}
}
