// Package plimport reads a PL/Proxy database (its plproxy functions and
// clusters) and writes the router.yaml that serves the same calls:
// pgrouter import-plproxy.
package plimport

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
)

// Function is a plproxy function as its body declares it.
type Function struct {
	Schema, Name string
	Args         []Arg // in order
	Cluster      string
	RunOn        string // "hash", "all", "any", "partition" or "" (not translated)
	Key          string // RUN ON hashtext(Key) ... : the argument hashed
	Partition    int    // RUN ON <number>
	KeyTransform string // "text", "lower" (Translate picks lower_ascii for a C ctype) or "value"
	Split        []string
	Target       string
	// Problems are what the body does that router.yaml cannot say.
	Problems []string
}

// Arg is a function argument.
type Arg struct{ Name, Type string }

// Cluster is a PL/Proxy cluster: its partitions' connect strings in order.
type Cluster struct {
	Name       string
	Partitions []string
}

// Database is what import reads.
type Database struct {
	Functions []*Function
	Clusters  map[string]*Cluster
	// Problems are clusters that could not be read.
	Problems []string
	// Ctype is the database's LC_CTYPE, which decides what lower() does
	// to non-ASCII letters (the C locale changes only ASCII ones).
	Ctype string
}

// Read reads the plproxy functions of a database and the clusters they use.
func Read(ctx context.Context, conn *pgx.Conn) (*Database, error) {
	rows, err := conn.Query(ctx, `SELECT n.nspname, p.proname, p.prosrc,
			coalesce(p.proargnames, '{}'), coalesce(p.proargmodes::text[], '{}'),
			array(SELECT format_type(t, NULL) FROM unnest(coalesce(p.proallargtypes, p.proargtypes::oid[])) t)
		FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang JOIN pg_namespace n ON n.oid = p.pronamespace
		WHERE l.lanname = 'plproxy' ORDER BY n.nspname, p.proname`)
	if err != nil {
		return nil, fmt.Errorf("read the plproxy functions: %w", err)
	}
	db := &Database{Clusters: map[string]*Cluster{}}
	defer rows.Close()
	for rows.Next() {
		var schema, name, src string
		var names, modes, types []string
		if err := rows.Scan(&schema, &name, &src, &names, &modes, &types); err != nil {
			return nil, err
		}
		f := &Function{Schema: schema, Name: name}
		for i, typ := range types {
			mode := "i"
			if i < len(modes) {
				mode = modes[i]
			}
			if mode == "o" || mode == "t" { // OUT and TABLE columns are results
				continue
			}
			arg := Arg{Type: typ}
			if i < len(names) {
				arg.Name = names[i]
			}
			f.Args = append(f.Args, arg)
		}
		parseBody(f, src)
		db.Functions = append(db.Functions, f)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	rows.Close()
	if err := conn.QueryRow(ctx, `SELECT datctype FROM pg_database WHERE datname = current_database()`).Scan(&db.Ctype); err != nil {
		return nil, fmt.Errorf("read the database's LC_CTYPE: %w", err)
	}
	for _, f := range db.Functions {
		if f.Cluster == "" || db.Clusters[f.Cluster] != nil {
			continue
		}
		cl, err := readCluster(ctx, conn, f.Cluster)
		if err != nil {
			db.Problems = append(db.Problems, fmt.Sprintf("cluster %s: %v", f.Cluster, err))
			db.Clusters[f.Cluster] = &Cluster{Name: f.Cluster}
			continue
		}
		db.Clusters[f.Cluster] = cl
	}
	return db, nil
}

// partitionOption is a SQL/MED partition option: p0, p1, partition_0, ...
var partitionOption = regexp.MustCompile(`^p(?:artition_?)?(\d+)$`)

// readCluster reads a cluster from its plproxy foreign server, else from
// plproxy.get_cluster_partitions (the configuration functions of PL/Proxy
// before SQL/MED).
func readCluster(ctx context.Context, conn *pgx.Conn, name string) (*Cluster, error) {
	var options []string
	err := conn.QueryRow(ctx, `SELECT coalesce(s.srvoptions, '{}') FROM pg_foreign_server s JOIN pg_foreign_data_wrapper w ON w.oid = s.srvfdw
		WHERE w.fdwname = 'plproxy' AND s.srvname = $1`, name).Scan(&options)
	switch {
	case err == nil:
		byIndex := map[int]string{}
		for _, o := range options {
			key, value, _ := strings.Cut(o, "=")
			if m := partitionOption.FindStringSubmatch(key); m != nil {
				n, _ := strconv.Atoi(m[1])
				byIndex[n] = value
			}
		}
		cl := &Cluster{Name: name, Partitions: make([]string, len(byIndex))}
		for i := range cl.Partitions {
			v, ok := byIndex[i]
			if !ok {
				return nil, fmt.Errorf("its partitions are not numbered 0 to %d", len(byIndex)-1)
			}
			cl.Partitions[i] = v
		}
		return cl, nil
	case !errors.Is(err, pgx.ErrNoRows):
		return nil, err
	}
	rows, err := conn.Query(ctx, "SELECT plproxy.get_cluster_partitions($1)", name)
	if err != nil {
		return nil, fmt.Errorf("no plproxy foreign server of that name, and plproxy.get_cluster_partitions: %w", err)
	}
	parts, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("plproxy.get_cluster_partitions: %w", err)
	}
	return &Cluster{Name: name, Partitions: parts}, nil
}

// statements splits a plproxy body into its statements: at semicolons
// outside quotes, parentheses and comments, comments removed.
func statements(src string) []string {
	var out []string
	var b strings.Builder
	depth := 0
	for i := 0; i < len(src); i++ {
		c := src[i]
		switch {
		case c == '-' && i+1 < len(src) && src[i+1] == '-':
			for i < len(src) && src[i] != '\n' {
				i++
			}
			b.WriteByte(' ')
			continue
		case c == '/' && i+1 < len(src) && src[i+1] == '*':
			end := strings.Index(src[i+2:], "*/")
			if end < 0 {
				i = len(src)
			} else {
				i += end + 3
			}
			b.WriteByte(' ')
			continue
		case c == '\'' || c == '"':
			j := i + 1
			for j < len(src) && (src[j] != c || (j+1 < len(src) && src[j+1] == c)) {
				if src[j] == c {
					j++
				}
				j++
			}
			b.WriteString(src[i:min(j+1, len(src))])
			i = j
			continue
		case c == '(':
			depth++
		case c == ')':
			depth--
		case c == ';' && depth == 0:
			if s := strings.TrimSpace(b.String()); s != "" {
				out = append(out, s)
			}
			b.Reset()
			continue
		}
		b.WriteByte(c)
	}
	if s := strings.TrimSpace(b.String()); s != "" {
		out = append(out, s)
	}
	return out
}

var (
	runOnHash = regexp.MustCompile(`(?is)^run\s+on\s+(hashtext|hashint4|hashint8)\s*\(\s*("?[A-Za-z_][A-Za-z0-9_$]*"?|\$\d+)\s*(::\s*[A-Za-z_ ]+?)?\s*\)$`)
	runOnNum  = regexp.MustCompile(`(?is)^run\s+on\s+(\d+)$`)
	// An argument that is the hash itself.
	runOnArg = regexp.MustCompile(`(?is)^run\s+on\s+("?[A-Za-z_][A-Za-z0-9_$]*"?|\$\d+)$`)
	// hashtext(lower(x)), as PL/Proxy users write for case-insensitive keys.
	runOnLower = regexp.MustCompile(`(?is)^run\s+on\s+hashtext\s*\(\s*lower\s*\(\s*("?[A-Za-z_][A-Za-z0-9_$]*"?|\$\d+)\s*\)\s*\)$`)
	clusterRE  = regexp.MustCompile(`(?is)^cluster\s+'((?:[^']|'')*)'$`)
	targetRE   = regexp.MustCompile(`(?is)^target\s+((?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)(?:\.(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*))?)$`)
	splitRE    = regexp.MustCompile(`(?is)^split\s+(.+)$`)
)

// parseBody reads CLUSTER, RUN ON, SPLIT and TARGET from a plproxy body.
// RUN ON is judged last: whether its argument is split decides the type
// hashed, and SPLIT may come after it.
func parseBody(f *Function, src string) {
	runOn := ""
	for _, st := range statements(src) {
		words := strings.Fields(st)
		kw := strings.ToLower(words[0])
		switch {
		case kw == "cluster":
			if m := clusterRE.FindStringSubmatch(st); m != nil {
				f.Cluster = strings.ReplaceAll(m[1], "''", "'")
			} else {
				f.Problems = append(f.Problems, fmt.Sprintf("%q: a cluster chosen by a function at run time", st))
			}
		case kw == "connect":
			f.Problems = append(f.Problems, fmt.Sprintf("%q: CONNECT to one database, not a cluster", st))
		case kw == "run":
			runOn = st
		case kw == "split":
			m := splitRE.FindStringSubmatch(st)
			if strings.EqualFold(strings.TrimSpace(m[1]), "all") {
				for i, a := range f.Args {
					if strings.HasSuffix(a.Type, "[]") {
						f.Split = append(f.Split, f.argName("$"+strconv.Itoa(i+1)))
					}
				}
				continue
			}
			for _, a := range strings.Split(m[1], ",") {
				name := f.argName(strings.TrimSpace(a))
				if typ, ok := f.argType(name); !ok || !strings.HasSuffix(typ, "[]") {
					f.Problems = append(f.Problems, fmt.Sprintf("%q: %s is not an array argument", st, name))
				}
				f.Split = append(f.Split, name)
			}
		case kw == "target":
			if m := targetRE.FindStringSubmatch(st); m != nil {
				f.Target = m[1]
			} else {
				f.Problems = append(f.Problems, fmt.Sprintf("%q: not a function name", st))
			}
		case kw == "select":
			f.Problems = append(f.Problems, fmt.Sprintf("%q: a SELECT body runs that statement on the shards, not the function", st))
		default:
			f.Problems = append(f.Problems, fmt.Sprintf("%q: not a PL/Proxy statement pgrouter knows", st))
		}
	}
	f.runOn(runOn)
}

// runOn translates a RUN ON statement ("" when there is none: ANY, as
// PL/Proxy's default).
func (f *Function) runOn(st string) {
	lower := strings.ToLower(strings.Join(strings.Fields(st), " "))
	switch {
	case st == "", lower == "run on any":
		f.RunOn = "any"
	case lower == "run on all":
		f.RunOn = "all"
	case runOnNum.MatchString(st):
		n, _ := strconv.Atoi(runOnNum.FindStringSubmatch(st)[1])
		f.RunOn, f.Partition = "partition", n
	case runOnArg.MatchString(st):
		// RUN ON x: the integer argument is the hash itself.
		f.RunOn, f.Key, f.KeyTransform = "hash", f.argName(runOnArg.FindStringSubmatch(st)[1]), "value"
		switch typ := f.keyType(); typ {
		case "integer", "smallint", "bigint":
		case "":
			f.Problems = append(f.Problems, fmt.Sprintf("%q: %s is not an argument of the function", st, f.Key))
		default:
			f.Problems = append(f.Problems, fmt.Sprintf("%q: a %s hash (RUN ON needs an integer)", st, typ))
		}
	case runOnLower.MatchString(st):
		m := runOnLower.FindStringSubmatch(st)
		f.RunOn, f.Key, f.KeyTransform = "hash", f.argName(m[1]), "lower"
		if typ := f.keyType(); typ != "text" && typ != "character varying" && typ != "character" {
			f.Problems = append(f.Problems, fmt.Sprintf("%q: lower() of a %s key", st, typ))
		}
	case runOnHash.MatchString(st):
		m := runOnHash.FindStringSubmatch(st)
		fn := strings.ToLower(m[1])
		f.RunOn, f.Key = "hash", f.argName(m[2])
		typ := f.keyType()
		cast := strings.ToLower(strings.Join(strings.Fields(strings.TrimPrefix(m[3], "::")), " "))
		textual := typ == "text" || typ == "character varying" || typ == "character"
		integer := typ == "integer" || typ == "smallint" || typ == "bigint"
		switch {
		case typ == "":
			f.Problems = append(f.Problems, fmt.Sprintf("%q: %s is not an argument of the function", st, f.Key))
		case cast != "" && (fn != "hashtext" || cast != "text" && cast != "varchar" && cast != "character varying"):
			f.Problems = append(f.Problems, fmt.Sprintf("%q: the cast ::%s", st, cast))
		case cast != "" && integer:
			// hashtext(id::text): the integer's text form, hashed as text.
			f.KeyTransform = "text"
		case cast != "" && textual:
			// hashtext(name::text) of a text argument hashes name itself.
		case fn == "hashtext" && textual, fn == "hashint4" && (typ == "integer" || typ == "smallint"), fn == "hashint8" && typ == "bigint":
		default:
			f.Problems = append(f.Problems, fmt.Sprintf("%q: %s(%s) of a %s: pgrouter hashes a %s key with %s", st, fn, f.Key, typ, typ,
				map[bool]string{true: "hashint4/hashint8 (or hashtext of its ::text form)", false: "hashtext"}[integer]))
		}
	default:
		f.Problems = append(f.Problems, fmt.Sprintf("%q: RUN ON an expression pgrouter does not compute", st))
	}
}

// keyType is the type hashed for the key: the argument's, or its
// element type when the argument is split.
func (f *Function) keyType() string {
	typ, _ := f.argType(f.Key)
	for _, s := range f.Split {
		if s == f.Key {
			return strings.TrimSuffix(typ, "[]")
		}
	}
	return typ
}

// argType returns the type of an argument given by name or 1-based position.
func (f *Function) argType(ref string) (string, bool) {
	for i, a := range f.Args {
		if a.Name == ref || strconv.Itoa(i+1) == ref {
			return a.Type, true
		}
	}
	return "", false
}

// argName resolves $n or a name to the argument's name.
func (f *Function) argName(ref string) string {
	ref = strings.Trim(ref, `"`)
	if strings.HasPrefix(ref, "$") {
		if n, err := strconv.Atoi(ref[1:]); err == nil && n >= 1 && n <= len(f.Args) {
			if f.Args[n-1].Name != "" {
				return f.Args[n-1].Name
			}
			return strconv.Itoa(n) // router.yaml's key may be a 1-based position
		}
	}
	return ref
}

// Translate writes router.yaml for the database and lists what it could
// not translate (also written in the file, as comments).
func Translate(db *Database, source string) (string, []string) {
	var b strings.Builder
	var problems []string
	fmt.Fprintf(&b, "# router.yaml written by pgrouter import-plproxy from %s.\n", source)
	b.WriteString("# Before serving clients beyond this host: set auth (scram-sha-256 with a users_file), listen, admin_users.\n")
	b.WriteString("listen: 127.0.0.1:6432\nauth: {type: trust}\nclusters:\n")
	names := make([]string, 0, len(db.Clusters))
	for name := range db.Clusters {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, p := range db.Problems {
		problems = append(problems, p)
		fmt.Fprintf(&b, "# NOT TRANSLATED: %s\n", p)
	}
	for _, name := range names {
		cl := db.Clusters[name]
		if len(cl.Partitions) == 0 {
			continue
		}
		fmt.Fprintf(&b, "  %s:\n    hash: hashtext\n    partitions: %d\n    shards:\n", name, len(cl.Partitions))
		// One shard per distinct connect string, in partition order.
		var order []string
		parts := map[string][]int{}
		for i, dsn := range cl.Partitions {
			if _, ok := parts[dsn]; !ok {
				order = append(order, dsn)
			}
			parts[dsn] = append(parts[dsn], i)
		}
		for i, dsn := range order {
			fmt.Fprintf(&b, "      - {name: %s_%d, dsn: %q, partitions: %q}\n", name, i, dsn, formatParts(parts[dsn]))
		}
	}
	b.WriteString("functions:\n")
	// router.yaml declares a function once, by name, for all its overloads:
	// overloads routed alike are one entry; routed differently, none can be
	// (a call of one would route by the other's declaration).
	lines := map[string][]string{}
	for _, f := range db.Functions {
		full, line := declaration(db, f)
		if !slices.Contains(lines[full], line) {
			lines[full] = append(lines[full], line)
		}
	}
	written := map[string]bool{}
	for _, f := range db.Functions {
		full, line := declaration(db, f)
		if len(lines[full]) > 1 {
			f.Problems = append(f.Problems, fmt.Sprintf("its %d overloads are routed differently (or by differently named keys), and router.yaml declares a function once for all its overloads: rename one, or route them alike", len(lines[full])))
		}
		if written[line] && len(f.Problems) == 0 {
			continue // an overload routed as one already written
		}
		ok := len(f.Problems) == 0 && db.Clusters[f.Cluster] != nil && len(db.Clusters[f.Cluster].Partitions) > 0
		for _, p := range f.Problems {
			problems = append(problems, fmt.Sprintf("%s: %s", full, p))
		}
		if ok {
			written[line] = true
			b.WriteString(line + "\n")
			continue
		}
		fmt.Fprintf(&b, "  # NOT TRANSLATED: %s (%s)\n  #%s\n", full, strings.Join(f.Problems, "; "), strings.TrimPrefix(line, " "))
	}
	return b.String(), problems
}

// declaration writes a function's router.yaml entry, and the name it
// declares.
func declaration(db *Database, f *Function) (full, line string) {
	full = f.Schema + "." + f.Name
	if f.Schema == "public" {
		full = f.Name
	}
	line = fmt.Sprintf("  - {name: %s, cluster: %s", full, f.Cluster)
	switch f.RunOn {
	case "hash":
		line += fmt.Sprintf(", key: %s", f.Key)
	case "all", "any":
		line += fmt.Sprintf(", run_on: %s", f.RunOn)
	case "partition":
		line += fmt.Sprintf(", run_on: partition, partition: %d", f.Partition)
	}
	switch f.KeyTransform {
	case "lower":
		if db.Ctype == "C" || db.Ctype == "POSIX" {
			line += ", key_transform: lower_ascii"
		} else {
			line += ", key_transform: lower"
		}
	case "text", "value":
		line += ", key_transform: " + f.KeyTransform
	}
	if len(f.Split) > 0 && f.RunOn == "hash" && slices.Contains(f.Split, f.Key) {
		// A split that does not split the key sends every element to
		// the key's one shard: the call as it is.
		line += ", split: [" + strings.Join(f.Split, ", ") + "]"
	}
	if f.Target != "" {
		line += fmt.Sprintf(", target: %q", f.Target)
	}
	return full, line + "}"
}

func formatParts(ps []int) string {
	var out []string
	for i := 0; i < len(ps); {
		j := i
		for j+1 < len(ps) && ps[j+1] == ps[j]+1 {
			j++
		}
		if j > i {
			out = append(out, fmt.Sprintf("%d-%d", ps[i], ps[j]))
		} else {
			out = append(out, strconv.Itoa(ps[i]))
		}
		i = j + 1
	}
	return strings.Join(out, ",")
}
