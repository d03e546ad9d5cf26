package shardmap

import "testing"

// Reference values from PostgreSQL 15 (DESIGN.md).
func TestHashReferenceValues(t *testing.T) {
	for _, tc := range []struct {
		key  string
		want int32
	}{{"", -1477818771}, {"a", 1075015857}, {"foo", 1955559433}} {
		if got := int32(HashBytes([]byte(tc.key))); got != tc.want {
			t.Errorf("hashtext(%q) = %d, want %d", tc.key, got, tc.want)
		}
	}
	if got := int32(HashInt4(0)); got != -272711505 {
		t.Errorf("hashint4(0) = %d", got)
	}
	if got := int32(HashInt4(1)); got != -1905060026 {
		t.Errorf("hashint4(1) = %d", got)
	}
	if got := int32(HashInt8(4294967296)); got != -1905060026 {
		t.Errorf("hashint8(4294967296) = %d", got)
	}
	for _, v := range []int64{0, 1, -1, 42, -2147483648, 2147483647} {
		if HashInt8(v) != HashInt4(int32(v)) {
			t.Errorf("hashint8(%d) differs from hashint4 for a value that fits in 32 bits", v)
		}
	}
}

func TestPartitionUsesSignedHashLikePLProxy(t *testing.T) {
	h := HashText.Text([]byte("")) // -1477818771: negative as int32
	if p := Partition(h, 16); p != int(int32(-1477818771)&15) {
		t.Fatalf("partition %d", p)
	}
	if XXHash64.Int(42, 8) != XXHash64.Int(42, 4) {
		t.Fatal("xxhash64 must hash every integer width the same (8-byte little endian)")
	}
}

func TestHashDoesNotAllocate(t *testing.T) {
	key := []byte("some user name")
	if n := testing.AllocsPerRun(100, func() { HashText.Text(key); XXHash64.Text(key); HashText.Int(7, 8) }); n != 0 {
		t.Fatalf("%v allocations", n)
	}
}
