package config

import (
	"fmt"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"

	yaml "go.yaml.in/yaml/v3"
)

// scalarDecoder is implemented by types that parse themselves from one YAML scalar.
type scalarDecoder interface {
	decodeScalar(value string) error
}

// defaulter is implemented by optional sections (pointers in Config) whose
// keys have defaults once the section is present.
type defaulter interface {
	setDefaults()
}

// decode walks the YAML tree against the Go types so that every error names
// the key path and line ("router.yaml:12: pool.sise: unknown key"), which
// yaml's own decoder cannot do for unknown keys.
func decode(file string, data []byte, dst *Config) error {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return syntaxError(file, data, err)
	}
	if root.Kind == 0 { // empty file
		return nil
	}
	d := decoder{file: file, lines: map[string]int{}}
	d.value(root.Content[0], reflect.ValueOf(dst).Elem(), "")
	dst.lines = d.lines
	return d.errs.err()
}

// yamlLine is the line number yaml's messages start with.
var yamlLine = regexp.MustCompile(`^line (\d+): `)

// syntaxError reports a file that is not YAML at the line where it stops
// being YAML. yaml names the line where the enclosing block began (a
// comment, or "shards:" 40 lines up, for a key indented wrongly at the end
// of a list), so the line is found again by parsing ever longer prefixes of
// the file from that line on: the first that fails alike ends at the culprit.
func syntaxError(file string, data []byte, err error) error {
	msg := yamlLine.ReplaceAllString(strings.TrimPrefix(err.Error(), "yaml: "), "")
	line := 0
	if m := yamlLine.FindStringSubmatch(strings.TrimPrefix(err.Error(), "yaml: ")); m != nil {
		line, _ = strconv.Atoi(m[1])
	}
	lines := strings.SplitAfter(string(data), "\n")
	// The culprit is at or after the line yaml names (its block's start):
	// the first prefix from there that fails with the same complaint ends
	// at it. Earlier prefixes may fail alike by being cut inside a
	// multi-line string or {...}, so they are not tried.
	from := max(line, 1)
	var prefix strings.Builder
	for i, l := range lines {
		prefix.WriteString(l)
		if i+1 < from {
			continue
		}
		var n yaml.Node
		if perr := yaml.Unmarshal([]byte(prefix.String()), &n); perr != nil &&
			yamlLine.ReplaceAllString(strings.TrimPrefix(perr.Error(), "yaml: "), "") == msg {
			line = i + 1
			break
		}
	}
	if line > len(lines) {
		line = 0
	}
	e := &Error{File: file, Line: line, Msg: msg + " (not valid YAML)"}
	if line > 0 {
		text := strings.TrimRight(lines[line-1], "\r\n")
		e.Msg = fmt.Sprintf("%s (not valid YAML): %q", msg, text)
		if indent := text[:len(text)-len(strings.TrimLeft(text, " \t"))]; strings.Contains(indent, "\t") {
			e.Msg += ": YAML is indented with spaces only, never tabs"
		} else if strings.Contains(msg, "expected key") || strings.Contains(msg, "'-' indicator") {
			e.Msg += ": check its indentation against the lines above"
		}
	}
	return e
}

type decoder struct {
	file  string
	errs  errorList
	lines map[string]int // key path -> line, for the errors validation finds later
}

func (d *decoder) fail(n *yaml.Node, path, format string, args ...any) {
	d.errs.errs = append(d.errs.errs, &Error{File: d.file, Line: n.Line, Path: path, Msg: fmt.Sprintf(format, args...)})
}

func (d *decoder) value(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" && v.Kind() != reflect.String {
		return // "key:" with no value keeps the default
	}
	if v.CanAddr() {
		if sd, ok := v.Addr().Interface().(scalarDecoder); ok {
			if n.Kind != yaml.ScalarNode {
				d.fail(n, path, "expected a single value")
				return
			}
			if err := sd.decodeScalar(n.Value); err != nil {
				d.fail(n, path, "%v", err)
			}
			return
		}
	}
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
			if def, ok := v.Interface().(defaulter); ok {
				def.setDefaults()
			}
		}
		d.value(n, v.Elem(), path)
	case reflect.Struct:
		d.structure(n, v, path)
	case reflect.Map:
		d.mapping(n, v, path)
	case reflect.Slice:
		d.sequence(n, v, path)
	case reflect.String:
		if n.Kind != yaml.ScalarNode {
			d.fail(n, path, "expected a string")
			return
		}
		if n.Tag == "!!null" {
			v.SetString("")
			return
		}
		v.SetString(n.Value)
	case reflect.Int, reflect.Int64:
		if n.Kind != yaml.ScalarNode {
			d.fail(n, path, "expected an integer")
			return
		}
		i, err := strconv.ParseInt(strings.ReplaceAll(n.Value, "_", ""), 10, 64)
		if err != nil {
			d.fail(n, path, "%q is not an integer", n.Value)
			return
		}
		v.SetInt(i)
	case reflect.Bool:
		b, err := strconv.ParseBool(n.Value)
		if n.Kind != yaml.ScalarNode || err != nil {
			d.fail(n, path, "%q is not true or false", n.Value)
			return
		}
		v.SetBool(b)
	default:
		panic(fmt.Sprintf("config: unsupported field kind %s at %s", v.Kind(), path))
	}
}

func (d *decoder) structure(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		d.fail(n, path, "expected a mapping of keys to values")
		return
	}
	fields := map[string]int{}
	t := v.Type()
	for i := range t.NumField() {
		tag := t.Field(i).Tag.Get("yaml")
		if tag != "" && tag != "-" {
			fields[tag] = i
		}
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		key, val := n.Content[i], n.Content[i+1]
		child := join(path, key.Value)
		idx, ok := fields[key.Value]
		if !ok {
			d.fail(key, child, "unknown key%s", suggest(key.Value, fields))
			continue
		}
		if seen[key.Value] {
			d.fail(key, child, "key appears twice")
			continue
		}
		seen[key.Value] = true
		d.lines[child] = key.Line
		d.value(val, v.Field(idx), child)
	}
}

func (d *decoder) mapping(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		d.fail(n, path, "expected a mapping of names to entries")
		return
	}
	if v.IsNil() {
		v.Set(reflect.MakeMap(v.Type()))
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		key, val := n.Content[i], n.Content[i+1]
		child := join(path, key.Value)
		k := reflect.New(v.Type().Key()).Elem()
		switch k.Kind() {
		case reflect.String:
			k.SetString(key.Value)
		case reflect.Int:
			n, err := strconv.Atoi(key.Value)
			if err != nil {
				d.fail(key, child, "%q is not a number", key.Value)
				continue
			}
			k.SetInt(int64(n))
		}
		if v.MapIndex(k).IsValid() {
			d.fail(key, child, "name appears twice")
			continue
		}
		elem := reflect.New(v.Type().Elem()).Elem()
		d.lines[child] = key.Line
		d.value(val, elem, child)
		v.SetMapIndex(k, elem)
	}
}

func (d *decoder) sequence(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.SequenceNode {
		d.fail(n, path, "expected a list")
		return
	}
	s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
	for i, item := range n.Content {
		child := fmt.Sprintf("%s[%d]", path, i)
		d.lines[child] = item.Line
		d.value(item, s.Index(i), child)
	}
	v.Set(s)
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// suggest names the closest known key, for typos such as "sise" or "max_clients".
func suggest(key string, fields map[string]int) string {
	best, bestDist := "", 3
	names := make([]string, 0, len(fields))
	for name := range fields {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if dist := editDistance(key, name); dist < bestDist {
			best, bestDist = name, dist
		}
	}
	if best == "" {
		return " (known keys: " + strings.Join(names, ", ") + ")"
	}
	return " (did you mean " + best + "?)"
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
