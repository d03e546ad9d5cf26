package main

import (
	"runtime/debug"
	"testing"
)

// TestDescribeBuild: a stamped version wins, a module version comes next,
// else "dev"; the commit Go recorded is shown short, marked when the tree
// was modified.
func TestDescribeBuild(t *testing.T) {
	vcs := []debug.BuildSetting{{Key: "vcs.revision", Value: "0123456789abcdef0123"}, {Key: "vcs.modified", Value: "true"}}
	for _, tc := range []struct {
		stamped, commit string
		bi              *debug.BuildInfo
		v, details      string
	}{
		{"1.2.3", "cafe", &debug.BuildInfo{GoVersion: "go1.26.0"}, "1.2.3", "commit cafe, go1.26.0"},
		{"1.2.3", "", &debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Version: "(devel)"}, Settings: vcs}, "1.2.3", "commit 0123456789ab+dirty, go1.26.0"},
		{"", "", &debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Version: "v0.9.0"}}, "v0.9.0", "go1.26.0"},
		{"", "", &debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Version: "(devel)"}, Settings: vcs[:1]}, "dev", "commit 0123456789ab, go1.26.0"},
	} {
		v, details := describeBuild(tc.stamped, tc.commit, tc.bi)
		if v != tc.v || details != tc.details {
			t.Errorf("describeBuild(%q, %q, %+v) = %q, %q; want %q, %q", tc.stamped, tc.commit, tc.bi.Main, v, details, tc.v, tc.details)
		}
	}
	if v, _ := describeBuild("", "", nil); v != "dev" {
		t.Errorf("no build info: %q", v)
	}
}
