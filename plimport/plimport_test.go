package plimport

import (
	"strings"
	"testing"
)

// TestParseBody: the PL/Proxy statements import reads, and what it marks.
func TestParseBody(t *testing.T) {
	args := []Arg{{Name: "i_username", Type: "text"}, {Name: "i_id", Type: "bigint"}, {Name: "names", Type: "text[]"}, {Name: "ids", Type: "bigint[]"}, {Name: "n", Type: "numeric"}}
	for _, tc := range []struct {
		body, runOn, key, problem string
		transform, split, target  string
	}{
		{"CLUSTER 'c'; RUN ON hashtext(i_username);", "hash", "i_username", "", "", "", ""},
		{"cluster 'c';\n run on hashtext( i_username::text ); -- same hash", "hash", "i_username", "", "", "", ""},
		{"CLUSTER 'c'; RUN ON hashint8($2);", "hash", "i_id", "", "", "", ""},
		{"CLUSTER 'c'; RUN ON hashtext(i_id);", "hash", "i_id", "hashtext(i_id) of a bigint", "", "", ""},
		{"CLUSTER 'c'; RUN ON hashtext(i_id::text);", "hash", "i_id", "", "text", "", ""},
		{"CLUSTER 'c'; RUN ON hashtext(n::text);", "hash", "n", "hashtext(n) of a numeric", "", "", ""},
		{"CLUSTER 'c'; RUN ON hashtext(lower(i_username));", "hash", "i_username", "", "lower", "", ""},
		{"CLUSTER 'c'; RUN ON hashtext(lower(i_id));", "hash", "i_id", "lower() of a bigint", "lower", "", ""},
		{"CLUSTER 'c'; RUN ON hashtext(upper(i_username));", "", "", "RUN ON an expression", "", "", ""},
		{"CLUSTER 'c'; RUN ON hashtext(names); SPLIT names;", "hash", "names", "", "", "names", ""},
		{"CLUSTER 'c'; SPLIT ALL; RUN ON hashint8(ids);", "hash", "ids", "", "", "names,ids", ""},
		{"CLUSTER 'c'; SPLIT $4, names; RUN ON hashint8($4);", "hash", "ids", "", "", "ids,names", ""},
		{"CLUSTER 'c'; SPLIT i_username; RUN ON hashtext(i_username);", "hash", "i_username", "i_username is not an array argument", "", "i_username", ""},
		{"CLUSTER 'c'; TARGET other; RUN ON ALL;", "all", "", "", "", "", "other"},
		{`CLUSTER 'c'; TARGET app."Other"; RUN ON hashtext(i_username);`, "hash", "i_username", "", "", "", `app."Other"`},
		{"CLUSTER 'c'; RUN ON hashtext(i_username::bytea);", "hash", "i_username", "the cast ::bytea", "", "", ""},
		{"CLUSTER 'c'; /* all */ RUN ON ALL;", "all", "", "", "", "", ""},
		{"CLUSTER 'c';", "any", "", "", "", "", ""},
		{"CLUSTER 'c'; RUN ON 2;", "partition", "", "", "", "", ""},
		{"CLUSTER 'c'; RUN ON i_id;", "hash", "i_id", "", "value", "", ""},
		{"CLUSTER 'c'; RUN ON $2;", "hash", "i_id", "", "value", "", ""},
		{"CLUSTER 'c'; RUN ON i_username;", "hash", "i_username", "a text hash", "value", "", ""},
		{"CLUSTER 'c'; RUN ON nothere;", "hash", "nothere", "not an argument", "value", "", ""},
		{"CONNECT 'dbname=x';", "any", "", "CONNECT to one database", "", "", ""},
		{"CLUSTER 'c'; RUN ON ALL; SELECT 1;", "all", "", "a SELECT body", "", "", ""},
	} {
		f := &Function{Name: "f", Args: args}
		parseBody(f, tc.body)
		problems := strings.Join(f.Problems, "; ")
		if f.RunOn != tc.runOn || f.Key != tc.key || (tc.problem == "") != (problems == "") || !strings.Contains(problems, tc.problem) {
			t.Errorf("%q: run_on %q key %q problems %q; want %q %q %q", tc.body, f.RunOn, f.Key, problems, tc.runOn, tc.key, tc.problem)
		}
		if f.KeyTransform != tc.transform || strings.Join(f.Split, ",") != tc.split || f.Target != tc.target {
			t.Errorf("%q: key_transform %q split %q target %q; want %q %q %q", tc.body, f.KeyTransform, f.Split, f.Target, tc.transform, tc.split, tc.target)
		}
		if tc.body != "CONNECT 'dbname=x';" && f.Cluster != "c" {
			t.Errorf("%q: cluster %q", tc.body, f.Cluster)
		}
	}
}

// TestTranslate: shards per distinct connect string, partitions as ranges,
// functions translated or commented.
func TestTranslate(t *testing.T) {
	db := &Database{Clusters: map[string]*Cluster{"c": {Name: "c", Partitions: []string{"a", "a", "b", "a"}}}, Functions: []*Function{
		{Schema: "public", Name: "get", Cluster: "c", RunOn: "hash", Key: "k"},
		{Schema: "app", Name: "all", Cluster: "c", RunOn: "all"},
		{Schema: "public", Name: "odd", Cluster: "c", Problems: []string{"RUN ON an expression"}},
		{Schema: "public", Name: "many", Cluster: "c", RunOn: "hash", Key: "ids", Split: []string{"ids", "tags"}, Target: "many_v2"},
		{Schema: "public", Name: "nop_split", Cluster: "c", RunOn: "hash", Key: "k", Split: []string{"ids"}},
		{Schema: "public", Name: "ci", Cluster: "c", RunOn: "hash", Key: "login", KeyTransform: "lower"},
		{Schema: "public", Name: "third", Cluster: "c", RunOn: "partition", Partition: 2},
		{Schema: "public", Name: "alike", Cluster: "c", RunOn: "hash", Key: "k"},
		{Schema: "public", Name: "alike", Cluster: "c", RunOn: "hash", Key: "k"},
		{Schema: "public", Name: "unlike", Cluster: "c", RunOn: "hash", Key: "k"},
		{Schema: "public", Name: "unlike", Cluster: "c", RunOn: "all"},
	}, Ctype: "C"}
	text, problems := Translate(db, "src")
	for _, want := range []string{`{name: c_0, dsn: "a", partitions: "0-1,3"}`, `{name: c_1, dsn: "b", partitions: "2"}`,
		"- {name: get, cluster: c, key: k}", "- {name: app.all, cluster: c, run_on: all}", "# NOT TRANSLATED: odd (RUN ON an expression)",
		`- {name: many, cluster: c, key: ids, split: [ids, tags], target: "many_v2"}`, "- {name: nop_split, cluster: c, key: k}",
		"- {name: ci, cluster: c, key: login, key_transform: lower_ascii}", "- {name: third, cluster: c, run_on: partition, partition: 2}"} {
		if !strings.Contains(text, want) {
			t.Errorf("missing %q in:\n%s", want, text)
		}
	}
	if strings.Count(text, "- {name: alike,") != 1 || strings.Count(text, "# NOT TRANSLATED: unlike (its 2 overloads") != 2 {
		t.Errorf("overloads:\n%s", text)
	}
	if len(problems) != 3 || !strings.HasPrefix(problems[0], "odd: ") || !strings.HasPrefix(problems[1], "unlike: ") {
		t.Errorf("problems: %v", problems)
	}
}
