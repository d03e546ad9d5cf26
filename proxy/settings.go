package proxy

import (
	"context"
	"sort"
	"strings"

	"github.com/pgrouter/pgrouter/pool"
)

// applySettings makes the linked server's session settings equal the
// client's before the client uses it: values that differ are set, values a
// previous client left behind are reset. When the fingerprints match, which
// is the common case, nothing is sent.
func (s *session) applySettings() error {
	c := s.server
	if c.Applied.Fingerprint() == s.desired.Fingerprint() && c.Applied.Len() == s.desired.Len() {
		return nil
	}
	sql := settingsSQL(&c.Applied, &s.desired)
	if sql != "" {
		ctx, cancel := context.WithTimeout(s.srv.ctx, s.waitTimeout)
		defer cancel()
		if _, err := c.Exec(ctx, sql); err != nil {
			if c.Broken() {
				return s.serverLostBeforeUse(err)
			}
			// A value the server refuses came from the client's own startup
			// packet or SET: PostgreSQL would have refused the login.
			e := toError(err)
			e.Fatal = true
			e.Message = "pgrouter: cannot apply the session's settings on shard " + c.Shard() + ": " + e.Message
			return e
		}
	}
	c.Applied = s.desired.Clone()
	return nil
}

// serverLostBeforeUse reports a server that failed before the client's
// request reached it; the client's state is intact, so it gets an ERROR.
func (s *session) serverLostBeforeUse(err error) error {
	shard := s.server.Shard()
	s.unlink()
	return errorf(codeConnectionFailure, "pgrouter: lost the connection to shard %s", shard).because(err)
}

// settingsSQL returns the statements that turn the applied settings into the
// wanted ones. set_config takes values in postgresql.conf syntax, exactly as
// the startup packet does, so list values such as search_path keep their meaning.
func settingsSQL(applied, want *pool.ParamState) string {
	var resets, sets []string
	applied.Each(func(key string, p pool.Param) {
		if _, ok := want.Get(key); !ok {
			resets = append(resets, "RESET "+quoteIdent(key))
		}
	})
	want.Each(func(key string, p pool.Param) {
		if v, ok := applied.Get(key); !ok || v != p.Value {
			sets = append(sets, "pg_catalog.set_config("+quoteLiteral(key)+", "+quoteLiteral(p.Value)+", false)")
		}
	})
	sort.Strings(resets)
	sort.Strings(sets)
	var b strings.Builder
	for _, r := range resets {
		b.WriteString(r)
		b.WriteString("; ")
	}
	if len(sets) > 0 {
		b.WriteString("SELECT ")
		b.WriteString(strings.Join(sets, ", "))
	}
	return b.String()
}

// quoteLiteral quotes a string as an E” literal, which reads the same
// whatever standard_conforming_strings is.
func quoteLiteral(s string) string {
	s = strings.ReplaceAll(s, `\`, `\\`)
	s = strings.ReplaceAll(s, `'`, `''`)
	return "E'" + s + "'"
}

func quoteIdent(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}
