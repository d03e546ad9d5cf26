package console

import (
	"reflect"
	"strings"
	"testing"

	"github.com/pgrouter/pgrouter/config"
	"github.com/pgrouter/pgrouter/proxy"
	"github.com/pgrouter/pgrouter/sqlstate"
)

func TestParseAdmin(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []adminCommand
		err  bool
	}{
		{in: "SHOW SHARDS", want: []adminCommand{{verb: "SHOW", what: "SHARDS"}}},
		{in: "show pools;", want: []adminCommand{{verb: "SHOW", what: "POOLS"}}},
		{in: " Show\tClients ; show servers;;", want: []adminCommand{{verb: "SHOW", what: "CLIENTS"}, {verb: "SHOW", what: "SERVERS"}}},
		{in: "PAUSE", want: []adminCommand{{verb: "PAUSE", what: ""}}},
		{in: "pause s1", want: []adminCommand{{verb: "PAUSE", what: "s1"}}},
		{in: `RESUME "s-1"`, want: []adminCommand{{verb: "RESUME", what: "s-1"}}},
		{in: "RELOAD; SHUTDOWN", want: []adminCommand{{verb: "RELOAD", what: ""}, {verb: "SHUTDOWN", what: ""}}},
		{in: "pause peers; Resume PEERS; reload Peers", want: []adminCommand{{verb: "PAUSE", fleet: true}, {verb: "RESUME", fleet: true}, {verb: "RELOAD", fleet: true}}},
		{in: `PAUSE "peers"`, want: []adminCommand{{verb: "PAUSE", what: "peers"}}}, // a shard of that name
		{in: "show peers; SHOW instance", want: []adminCommand{{verb: "SHOW", what: "PEERS"}, {verb: "SHOW", what: "INSTANCE"}}},
		{in: "", want: nil},
		{in: " ; ", want: nil},
		{in: "SHOW", err: true},
		{in: "SHOW SHARDS POOLS", err: true},
		{in: "SHOW TABLES", err: true},
		{in: "RELOAD now", err: true},
		{in: "SHUTDOWN PEERS", err: true},
		{in: "PAUSE a b", err: true},
		{in: "SELECT 1", err: true},
		{in: "SHOW SHARDS; DROP TABLE users", err: true}, // nothing runs when any part is unknown
	} {
		got, err := parseAdmin(tc.in)
		if tc.err {
			if err == nil || err.(*proxy.Error).Code != sqlstate.SyntaxError || !strings.Contains(err.(*proxy.Error).Hint, "SHOW SHARDS") {
				t.Errorf("%q: %v, want 42601 listing the commands", tc.in, err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%q: %v %v, want %v", tc.in, got, err, tc.want)
		}
	}
}

// FuzzAdminParse: no input panics the console parser, and whatever it
// accepts is one of the known commands.
func FuzzAdminParse(f *testing.F) {
	for _, s := range []string{"SHOW SHARDS", "pause s1; resume s1", `RESUME "x""y"`, "SHOW", ";;", "\x00SHOW\x00POOLS"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		cmds, err := parseAdmin(in)
		if err != nil {
			return
		}
		for _, c := range cmds {
			switch c.verb {
			case "SHOW", "RELOAD", "SHUTDOWN", "PAUSE", "RESUME":
			default:
				t.Fatalf("%q parsed to unknown verb %q", in, c.verb)
			}
		}
	})
}

func TestPartitionRangesAndMasking(t *testing.T) {
	if got := partitionRanges([]int{0, 1, 2, 3, 5, 8, 9}); got != "0-3,5,8-9" {
		t.Errorf("partitionRanges: %q", got)
	}
	for in, want := range map[string]string{
		"postgres://app:secret@h:5432/db?sslmode=disable":          "postgres://app:xxxxx@h:5432/db?sslmode=disable",
		"postgres://app@h/db?password=secret":                      "postgres://app@h/db?password=xxxxx",
		"host=h user=app password=secret dbname=db":                "host=h user=app password=xxxxx dbname=db",
		"host=h password='s e\\'cret' dbname=db":                   "host=h password=xxxxx dbname=db",
		"host=h password=se\\ cret dbname=db":                      "host=h password=xxxxx dbname=db",
		"host=h sslpassword=keypass dbname=db":                     "host=h sslpassword=xxxxx dbname=db",
		"postgres://app@h/db?sslpassword=keypass&sslmode=require":  "postgres://app@h/db?sslpassword=xxxxx&sslmode=require",
		"postgresql://app:se%40cret@h1:5432,h2:5433/db?password=x": "postgresql://app:xxxxx@h1:5432,h2:5433/db?password=xxxxx",
		"postgres://app:p@ss@h/db":                                 "postgres://app:xxxxx@h/db",
		"postgres://h/db?application_name=a&PassWord=x":            "postgres://h/db?application_name=a&PassWord=xxxxx",
	} {
		if got := maskPassword(in); got != want {
			t.Errorf("maskPassword(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestFlattenPeers: SHOW CONFIG names the peers by id and never shows
// peer_password.
func TestFlattenPeers(t *testing.T) {
	cfg := config.Config{PeerID: 1, Peers: map[int]string{1: "a:6432", 2: "b:6432"}, PeerUser: "ops", PeerPassword: "s3cret"}
	out := map[string]string{}
	flatten("", reflect.ValueOf(&cfg).Elem(), out)
	if out["peers.1"] != "a:6432" || out["peers.2"] != "b:6432" || out["peer_id"] != "1" || out["peer_user"] != "ops" || out["peer_password"] != "xxxxx" {
		t.Fatalf("flattened: peers.1=%q peers.2=%q peer_id=%q peer_user=%q peer_password=%q", out["peers.1"], out["peers.2"], out["peer_id"], out["peer_user"], out["peer_password"])
	}
}
