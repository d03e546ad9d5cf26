package proxy

import (
	"cmp"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgrouter/pgrouter/router"
	"github.com/pgrouter/pgrouter/shardmap"
	"github.com/pgrouter/pgrouter/sqlstate"
)

// The session commands pgrouter answers itself: SET, RESET and SHOW of
// its own settings (pgrouter.shard, pgrouter.key, pgrouter.target), and
// the transaction control of an unpinned transaction.

// extendedOverride refuses SET, RESET and SHOW of pgrouter.shard or
// pgrouter.key through the extended protocol: a shard would take them for a
// custom setting and nothing would be routed by them.
func extendedOverride(p *router.Plan) error {
	switch p.Command.Kind {
	case router.CmdSetOver, router.CmdResetOver, router.CmdShowOver:
		return errorf(sqlstate.FeatureNotSupported, "pgrouter: %s is a pgrouter session command and needs the simple query protocol", p.Command.Name).
			WithHint("Send it as a plain query without parameters (psql, or your driver's simple-protocol mode).")
	}
	return nil
}

// sessionCommand answers the commands the session handles itself. It
// reports whether it handled the query.
func (s *session) sessionCommand(p *router.Plan) (bool, error) {
	cmd := &p.Command
	switch cmd.Kind {
	case router.CmdSetOver, router.CmdResetOver, router.CmdShowOver:
		return true, s.overrideCommand(cmd)
	case router.CmdBegin, router.CmdCommit, router.CmdRollback, router.CmdSets, router.CmdSavepoint:
		if !s.localCommand(p) {
			break
		}
		tags, err := s.runLocal(p)
		if err != nil {
			return true, err
		}
		return true, s.localComplete(s.tx.status(), tags...)
	}
	if s.failedUnpinned() {
		return true, errorf(sqlstate.InFailedTransaction, "current transaction is aborted, commands ignored until end of transaction block")
	}
	return false, nil
}

// localComplete answers a simple Query with CommandCompletes and
// ReadyForQuery.
func (s *session) localComplete(status byte, tags ...string) error {
	for _, tag := range tags {
		_ = s.cw.Send(&pgproto3.CommandComplete{CommandTag: []byte(tag)})
	}
	s.reqStart = time.Time{}
	return clientIO(s.cw.SendReady(status))
}

// overrideCommand runs SET, RESET or SHOW of pgrouter.shard or pgrouter.key.
func (s *session) overrideCommand(cmd *router.Command) error {
	switch cmd.Kind {
	case router.CmdSetOver:
		if cmd.Name == router.OverTarget {
			switch v := strings.ToLower(cmd.Value); v {
			case "auto", "primary", "replica":
				s.target = v
				if v == "auto" {
					s.target = ""
				}
			default:
				return errorf(sqlstate.InvalidParameterValue, "pgrouter: invalid value for pgrouter.target: %q", cmd.Value).
					WithHint("Use primary (read_only calls go to the primary), replica (they go to a replica, or fail when none qualifies) or auto (a replica when one qualifies, else the primary).")
			}
			return s.localComplete(s.tx.status(), "SET")
		}
		if cmd.Name == router.OverShard {
			if _, err := s.overrideShard(cmd.Value, ""); err != nil {
				return err
			}
			s.overShard, s.overKey = cmd.Value, ""
		} else {
			s.overShard, s.overKey = "", cmd.Value
		}
		return s.localComplete(s.tx.status(), "SET")
	case router.CmdResetOver:
		switch cmd.Name {
		case router.OverTarget:
			s.target = ""
		case router.OverShard:
			s.overShard = ""
		default:
			s.overKey = ""
		}
		if cmd.Value != "" { // SET ... = DEFAULT
			return s.localComplete(s.tx.status(), "SET")
		}
		return s.localComplete(s.tx.status(), "RESET")
	}
	value := s.overShard
	switch cmd.Name {
	case router.OverKey:
		value = s.overKey
	case router.OverTarget:
		value = cmp.Or(s.target, "auto")
	}
	_ = s.cw.Send(&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{
		Name: []byte(cmd.Name), DataTypeOID: router.OIDText, DataTypeSize: -1, TypeModifier: -1,
	}}})
	_ = s.cw.Send(&pgproto3.DataRow{Values: [][]byte{[]byte(value)}})
	return s.localComplete(s.tx.status(), "SHOW")
}

// overrideShard resolves an explicit shard name or key.
func (s *session) overrideShard(name, key string) (*shardmap.Shard, error) {
	if name == "" {
		return s.router.KeyShard(key), nil
	}
	sh, ok := s.cluster.ShardNamed(name)
	if !ok {
		names := make([]string, len(s.cluster.Shards))
		for i, sh := range s.cluster.Shards {
			names[i] = sh.Name
		}
		return nil, errorf(sqlstate.UndefinedObject, "pgrouter: cluster %s has no shard %q", s.cluster.Name, name).
			WithHint("Its shards are %s.", strings.Join(names, ", "))
	}
	return sh, nil
}
