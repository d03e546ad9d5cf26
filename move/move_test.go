package move

import "testing"

// TestStatusString: SHOW SHARDS' move column.
func TestStatusString(t *testing.T) {
	st := Status{Cluster: "main", Partitions: []int{6, 7}, Source: "s1", Target: "s2", Phase: "catchup", RowsCopied: 5035, Behind: 12}
	if got, want := st.String(), "6-7 from s1 to s2: catchup, 5035 rows copied, 12 changes behind"; got != want {
		t.Fatalf("%q, want %q", got, want)
	}
	st.Behind = -1
	if got, want := st.String(), "6-7 from s1 to s2: catchup, 5035 rows copied"; got != want {
		t.Fatalf("%q, want %q", got, want)
	}
}
