package console

import (
	"fmt"
	"net/url"
	"reflect"
	"regexp"
	"sort"
	"strings"

	"github.com/pgrouter/pgrouter/config"
)

// showConfig lists every router.yaml key in force, its default, and whether
// RELOAD can change it.
func (c *Console) showConfig() *resultSet {
	rs := &resultSet{cols: []column{{"key", oidText}, {"value", oidText}, {"default", oidText}, {"changeable", oidBool}}}
	cur, def := c.srv.Config(), config.KeyDefaults()
	values, defaults := map[string]string{}, map[string]string{}
	flatten("", reflect.ValueOf(cur).Elem(), values)
	flatten("", reflect.ValueOf(&def).Elem(), defaults)
	for name := range cur.Clusters { // each cluster's keys default as "*"'s; default_route is the top-level one
		for _, key := range []string{"hash", "partitions"} {
			defaults["clusters."+name+"."+key] = defaults["clusters.*."+key]
		}
		defaults["clusters."+name+".default_route"] = cur.DefaultRoute
	}
	keys := make([]string, 0, len(values))
	for k := range values {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		var d any
		if v, ok := defaults[k]; ok {
			d = v
		}
		changeable := !restartOnly[k]
		rs.add(k, values[k], d, changeable)
	}
	return rs
}

// restartOnly are the keys RELOAD does not change: the listening sockets,
// and the id already written into the clients' cancel keys.
var restartOnly = map[string]bool{"listen": true, "metrics_listen": true, "listen_reuseport": true, "peer_id": true}

// flatten writes a config value as dotted keys (the router.yaml paths),
// with passwords in DSNs masked.
func flatten(prefix string, v reflect.Value, out map[string]string) {
	switch v.Kind() {
	case reflect.Pointer:
		if !v.IsNil() {
			flatten(prefix, v.Elem(), out)
		}
	case reflect.Struct:
		t := v.Type()
		for i := range t.NumField() {
			f := t.Field(i)
			tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if tag == "" || tag == "-" {
				continue
			}
			flatten(join(prefix, tag), v.Field(i), out)
		}
	case reflect.Map:
		keys := v.MapKeys()
		for _, k := range keys {
			flatten(join(prefix, fmt.Sprint(k.Interface())), v.MapIndex(k), out) // peers' keys are ints
		}
	case reflect.Slice:
		if v.Len() == 0 {
			return
		}
		if v.Type().Elem().Kind() == reflect.String {
			items := make([]string, v.Len())
			for i := range items {
				items[i] = v.Index(i).String()
			}
			out[prefix] = strings.Join(items, ",")
			return
		}
		for i := range v.Len() {
			flatten(fmt.Sprintf("%s[%d]", prefix, i), v.Index(i), out)
		}
	default:
		if s, ok := v.Interface().(fmt.Stringer); ok {
			out[prefix] = s.String()
			return
		}
		val := fmt.Sprint(v.Interface())
		switch {
		case prefix == "peer_password" && val != "":
			val = "xxxxx"
		case v.Kind() == reflect.String: // every DSN (shards, reference.source, ...) whatever its key
			val = maskPassword(val)
		}
		out[prefix] = val
	}
}

func join(prefix, key string) string {
	if prefix == "" {
		return key
	}
	return prefix + "." + key
}

// keywordSecret finds password and sslpassword in a keyword/value DSN,
// with libpq's value syntax: quoted with \' and \\ escapes, or unquoted up
// to unescaped whitespace (a backslash escapes there too).
var keywordSecret = regexp.MustCompile(`((?:^|\s)(?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'|(?:[^\s'\\]|\\.)(?:[^\s\\]|\\.)*)`)

// maskPassword hides the secrets of a URL or keyword/value DSN. URLs are
// taken apart by hand, not with net/url, which refuses libpq's multi-host
// form (h1:5432,h2:5433) and would leave it unmasked.
func maskPassword(dsn string) string {
	scheme, rest, ok := strings.Cut(dsn, "://")
	if !ok || (scheme != "postgres" && scheme != "postgresql") {
		return keywordSecret.ReplaceAllString(dsn, "${1}xxxxx")
	}
	end := strings.IndexAny(rest, "/?#")
	if end < 0 {
		end = len(rest)
	}
	authority, tail := rest[:end], rest[end:]
	if at := strings.LastIndex(authority, "@"); at >= 0 {
		if user, _, hasPassword := strings.Cut(authority[:at], ":"); hasPassword {
			authority = user + ":xxxxx" + authority[at:]
		}
	}
	if path, query, ok := strings.Cut(tail, "?"); ok {
		params := strings.Split(query, "&")
		for i, kv := range params {
			k, _, _ := strings.Cut(kv, "=")
			if name, err := url.QueryUnescape(k); err == nil && (strings.EqualFold(name, "password") || strings.EqualFold(name, "sslpassword")) {
				params[i] = k + "=xxxxx"
			}
		}
		tail = path + "?" + strings.Join(params, "&")
	}
	return scheme + "://" + authority + tail
}
