package proxy

import (
	"context"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgrouter/pgrouter/pool"
	"github.com/pgrouter/pgrouter/sqlstate"
)

// applySettings makes the linked server's session settings equal the
// client's before the client uses it: values that differ are set, values a
// previous client left behind are reset. When the fingerprints match, which
// is the common case, nothing is sent.
func (s *session) applySettings() error {
	c := s.server
	if err := s.syncSettings(c); err != nil {
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
	return nil
}

// syncSettings sets and resets what differs between a server's applied
// settings and the client's.
func (s *session) syncSettings(c *pool.Conn) error {
	if c.Applied.Fingerprint() == s.desired.Fingerprint() && c.Applied.Len() == s.desired.Len() {
		return nil
	}
	if sql := settingsSQL(&c.Applied, &s.desired); sql != "" {
		ctx, cancel := context.WithTimeout(s.srv.ctx, s.waitTimeout)
		defer cancel()
		if _, err := c.Exec(ctx, sql); err != nil {
			return err
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
	return errorf(sqlstate.ConnectionFailure, "pgrouter: lost the connection to shard %s", shard).because(err)
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
	sort.Slice(sets, func(i, j int) bool { // SET SESSION AUTHORIZATION resets role: it goes first
		ai := strings.Contains(sets[i], "'session_authorization'")
		aj := strings.Contains(sets[j], "'session_authorization'")
		if ai != aj {
			return ai
		}
		return sets[i] < sets[j]
	})
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

// quoteLiteral quotes a string as an E-string literal, which reads the same
// whatever standard_conforming_strings is.
func quoteLiteral(s string) string {
	s = strings.ReplaceAll(s, `\`, `\\`)
	s = strings.ReplaceAll(s, `'`, `''`)
	return "E'" + s + "'"
}

func quoteIdent(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}

// noteSettings records the settings a request's statements change.
func (s *session) noteSettings(info *queryInfo) {
	s.dirty = appendNew(s.dirty, info.settings)
	s.dirtyResets = appendNew(s.dirtyResets, info.resets)
}

func appendNew(list, names []string) []string {
	for _, n := range names {
		found := false
		for _, have := range list {
			if have == n {
				found = true
				break
			}
		}
		if !found {
			list = append(list, n)
		}
	}
	return list
}

// queueSettingsReadBack asks the server, right after the client's request
// and in the same round trip, for the current value of every setting the
// client changed with SET, RESET or set_config. The server's answer is the
// truth whatever the syntax (SET x TO DEFAULT, SET TIME ZONE LOCAL, lists,
// a statement that failed): it becomes the client's setting and what the
// server has applied. Inside a transaction the answer is not final (a
// ROLLBACK undoes SET), so it is asked again when the transaction ends.
func (s *session) queueSettingsReadBack(c *pool.Conn) {
	if len(s.dirty) == 0 {
		return
	}
	names := append([]string(nil), s.dirty...)
	var b strings.Builder
	b.WriteString("SELECT ")
	for i, n := range names {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString("pg_catalog.current_setting(" + quoteLiteral(n) + ", true)")
	}
	_ = c.W.Send(&pgproto3.Query{String: b.String()})
	c.Unnamed = 0
	var values [][]byte
	s.queue.push(request{kind: reqQuery, internal: true,
		onRow: func(v [][]byte) {
			values = make([][]byte, len(v))
			for i := range v {
				if v[i] != nil {
					values[i] = append([]byte{}, v[i]...)
				}
			}
		},
		onEnd: func(ok bool) {
			if !ok || s.tx != txIdle || len(values) != len(names) {
				return // not final yet: asked again after the transaction
			}
			for i, n := range names {
				if values[i] == nil {
					s.desired.Delete(n)
					c.Applied.Delete(n)
				} else {
					s.desired.Set(n, string(values[i]))
					c.Applied.Set(n, string(values[i]))
				}
			}
			for _, n := range s.dirtyResets { // RESET goes back to the startup value in PostgreSQL
				if v, ok := s.startup.Get(n); ok {
					s.desired.Set(n, v)
					s.needApply = true
				}
			}
			s.dirty, s.dirtyResets = s.dirty[:0], s.dirtyResets[:0]
		},
	})
}

// settle runs after a client request: it re-applies settings a RESET took
// back to the server default, once the client is outside a transaction.
func (s *session) settle() error {
	if !s.needApply || s.server == nil || s.tx != txIdle {
		return nil
	}
	s.needApply = false
	return s.applySettings()
}
