package proxy

import "testing"

// BenchmarkNewStatement: naming a client's statement, done for every named
// Parse (a driver preparing per connection, or per transaction).
func BenchmarkNewStatement(b *testing.B) {
	def := []byte("SELECT abalance FROM pgbench_accounts WHERE aid = $1\x00\x00\x01\x00\x00\x00\x17")
	b.ReportAllocs()
	for b.Loop() {
		newStatement(def, queryInfo{}, nil)
	}
}
