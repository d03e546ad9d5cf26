package proxy

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"

	"github.com/pgrouter/pgrouter/sqlstate"
	"github.com/pgrouter/pgrouter/wire"
)

// The admin console is the database "pgrouter" on the client port, for the
// users in admin_users. It speaks the simple query protocol (psql, or any
// driver in simple-protocol mode), answers from pgrouter's own state and
// never reaches a shard with a client's text.

// adminCommands lists the console's commands, for SHOW HELP and for the
// error an unknown command gets.
var adminCommands = [][2]string{
	{"SHOW SHARDS", "every shard: health, pool use, waiting clients, counters, latency"},
	{"SHOW POOLS", "every pool (shard, server user): clients and server connections"},
	{"SHOW CLIENTS", "every client connection"},
	{"SHOW SERVERS", "every server connection"},
	{"SHOW STATS", "per shard totals, and averages over the last 15 s"},
	{"SHOW FUNCTIONS", "the routed functions and their signatures"},
	{"SHOW SEQUENCES", "every sequence on every shard"},
	{"SHOW CONFIG", "the config in force"},
	{"SHOW VERSION", "pgrouter's version"},
	{"SHOW HELP", "this list"},
	{"RELOAD", "read router.yaml again and swap it in (also SIGHUP)"},
	{"PAUSE [shard]", "hold new transactions (on one shard, or all) and wait for running ones to finish"},
	{"RESUME [shard]", "release what PAUSE held"},
	{"SHUTDOWN", "stop accepting, let transactions finish, exit (also SIGTERM)"},
}

// adminCommand is one parsed console command.
type adminCommand struct {
	verb string // SHOW, RELOAD, PAUSE, RESUME, SHUTDOWN
	what string // SHOW's object, upper case; PAUSE/RESUME's shard ("" = all)
}

// parseAdmin splits a query string into console commands. It accepts what
// pgbouncer's console accepts in form: keywords in any case, statements
// separated by semicolons, an optional double-quoted shard name.
func parseAdmin(sql string) ([]adminCommand, error) {
	var out []adminCommand
	for _, stmt := range strings.Split(sql, ";") {
		words := strings.Fields(stmt)
		if len(words) == 0 {
			continue
		}
		verb := strings.ToUpper(words[0])
		args := words[1:]
		cmd := adminCommand{verb: verb}
		switch verb {
		case "SHOW":
			if len(args) != 1 {
				return nil, unknownAdmin(stmt)
			}
			cmd.what = strings.ToUpper(args[0])
			switch cmd.what {
			case "SHARDS", "POOLS", "CLIENTS", "SERVERS", "STATS", "FUNCTIONS", "SEQUENCES", "CONFIG", "VERSION", "HELP":
			default:
				return nil, unknownAdmin(stmt)
			}
		case "RELOAD", "SHUTDOWN":
			if len(args) != 0 {
				return nil, unknownAdmin(stmt)
			}
		case "PAUSE", "RESUME":
			if len(args) > 1 {
				return nil, unknownAdmin(stmt)
			}
			if len(args) == 1 {
				name := args[0]
				if len(name) >= 2 && name[0] == '"' && name[len(name)-1] == '"' {
					name = strings.ReplaceAll(name[1:len(name)-1], `""`, `"`)
				}
				cmd.what = name
			}
		default:
			return nil, unknownAdmin(stmt)
		}
		out = append(out, cmd)
	}
	return out, nil
}

func unknownAdmin(stmt string) *Error {
	names := make([]string, len(adminCommands))
	for i, c := range adminCommands {
		names[i] = c[0]
	}
	stmt = strings.TrimSpace(stmt)
	if len(stmt) > 60 {
		stmt = stmt[:60] + "..."
	}
	return errorf(sqlstate.SyntaxError, "pgrouter: unknown admin console command %q", stmt).
		withHint("The commands are: %s.", strings.Join(names, ", "))
}

// adminSession is one admin console connection.
type adminSession struct {
	srv      *Server
	conn     net.Conn
	r        *wire.Reader
	w        *wire.Writer
	user     string
	log      *zap.Logger
	skipping bool // an extended-protocol message was refused: discard up to Sync
}

// adminLogin finishes the login of an admin console client.
func (s *Server) adminLogin(conn net.Conn, r *wire.Reader, w *wire.Writer, gen *generation, user string, log *zap.Logger) (*adminSession, error) {
	if !gen.cfg.IsAdmin(user) {
		return nil, fatalf(sqlstate.InsufficientPrivilege, "permission denied: user %q may not use the admin console", user).
			withHint("List the user under admin_users in router.yaml.")
	}
	_ = w.Send(&pgproto3.AuthenticationOk{})
	for _, p := range [][2]string{
		{"server_version", "15.0 (pgrouter " + Version + ")"}, {"server_encoding", "UTF8"}, {"client_encoding", "UTF8"},
		{"DateStyle", "ISO, MDY"}, {"integer_datetimes", "on"}, {"standard_conforming_strings", "on"}, {"TimeZone", "UTC"},
	} {
		_ = w.Send(&pgproto3.ParameterStatus{Name: p[0], Value: p[1]})
	}
	var key [8]byte
	_, _ = rand.Read(key[:]) // cancels are not served on the console; the key only has to look like one
	_ = w.Send(&pgproto3.BackendKeyData{ProcessID: binary.BigEndian.Uint32(key[:4]) &^ (1 << 31), SecretKey: key[4:]})
	_ = w.SendReady(wire.TxIdle)
	if err := w.Flush(); err != nil {
		return nil, err
	}
	log.Info("admin console login")
	return &adminSession{srv: s, conn: conn, r: r, w: w, user: user, log: log}, nil
}

// run serves console commands until the client leaves or pgrouter shuts down.
func (a *adminSession) run() {
	for {
		if a.srv.draining.Load() {
			sendFatal(a.w, errShuttingDown())
			return
		}
		if err := a.w.Flush(); err != nil {
			return
		}
		m, err := a.r.Next()
		if err != nil {
			switch {
			case errors.Is(err, os.ErrDeadlineExceeded) && a.srv.draining.Load():
				sendFatal(a.w, errShuttingDown())
			case isProtocolViolation(err):
				sendFatal(a.w, toError(err))
			}
			return
		}
		switch m.Type {
		case wire.Query:
			body := m.Body()
			if n := len(body); n > 0 && body[n-1] == 0 {
				body = body[:n-1]
			}
			if !a.query(string(body)) {
				return
			}
			_ = a.w.SendReady(wire.TxIdle)
		case wire.Terminate:
			return
		case wire.Sync:
			a.skipping = false
			_ = a.w.SendReady(wire.TxIdle)
		case wire.Parse, wire.Bind, wire.Describe, wire.Execute, wire.Close, wire.Flush:
			if !a.skipping {
				a.skipping = true
				_ = a.w.Send(errorf(sqlstate.FeatureNotSupported, "pgrouter: the admin console speaks the simple query protocol only").
					withHint("Use psql, or your driver's simple protocol mode (pgx: default_query_exec_mode=simple_protocol).").response())
			}
		default:
			sendFatal(a.w, fatalf(sqlstate.ProtocolViolation, "pgrouter: invalid frontend message type %q", m.Type))
			return
		}
	}
}

// query runs the commands of one Query message; the first error ends it,
// as it would end a multi-statement query on PostgreSQL. It reports false
// when the error was FATAL and the connection must close.
func (a *adminSession) query(sql string) bool {
	cmds, err := parseAdmin(sql)
	if err != nil {
		_ = a.w.Send(toError(err).response())
		return true
	}
	if len(cmds) == 0 {
		_ = a.w.Send(&pgproto3.EmptyQueryResponse{})
		return true
	}
	for _, cmd := range cmds {
		if err := a.exec(cmd); err != nil {
			e := toError(err)
			a.log.Info("admin command failed", zap.String("command", cmd.verb+" "+cmd.what), zap.String("sqlstate", e.Code), zap.String("reason", e.Message))
			if e.Fatal {
				sendFatal(a.w, e)
				return false
			}
			_ = a.w.Send(e.response())
			return true
		}
	}
	return true
}

func (a *adminSession) exec(cmd adminCommand) error {
	s := a.srv
	switch cmd.verb {
	case "SHOW":
		var rs *resultSet
		var err error
		switch cmd.what {
		case "SHARDS":
			rs = s.showShards()
		case "POOLS":
			rs = s.showPools()
		case "CLIENTS":
			rs = s.showClients()
		case "SERVERS":
			rs = s.showServers()
		case "STATS":
			rs = s.showStats()
		case "FUNCTIONS":
			rs = s.showFunctions()
		case "SEQUENCES":
			rs, err = s.showSequences(a.notice)
		case "CONFIG":
			rs = s.showConfig()
		case "VERSION":
			rs = &resultSet{cols: []column{{"version", oidText}}, rows: [][]any{{"pgrouter " + Version}}}
		case "HELP":
			rs = &resultSet{cols: []column{{"command", oidText}, {"description", oidText}}}
			for _, c := range adminCommands {
				rs.rows = append(rs.rows, []any{c[0], c[1]})
			}
		}
		if err != nil {
			return err
		}
		rs.send(a.w, "SHOW")
		return nil
	case "RELOAD":
		a.log.Info("RELOAD requested")
		notes, err := s.Reload()
		if err != nil {
			return errorf(sqlstate.ConfigFileError, "pgrouter: reload failed, the running config is unchanged: %v", err).
				withHint("Fix the file and run RELOAD again.")
		}
		for _, n := range notes {
			a.notice(n)
		}
		return a.w.Send(&pgproto3.CommandComplete{CommandTag: []byte("RELOAD")})
	case "PAUSE":
		return a.pause(cmd.what)
	case "RESUME":
		shards, err := s.shardNames(cmd.what)
		if err != nil {
			return err
		}
		for _, name := range shards {
			s.pools.Resume(name)
		}
		a.log.Info("RESUME", zap.Strings("shards", shards))
		return a.w.Send(&pgproto3.CommandComplete{CommandTag: []byte("RESUME")})
	case "SHUTDOWN":
		a.log.Info("SHUTDOWN requested")
		_ = a.w.Send(&pgproto3.CommandComplete{CommandTag: []byte("SHUTDOWN")})
		go func() { // the console's own connection is told 57P01 with everyone else
			ctx, cancel := context.WithTimeout(context.Background(), s.ShutdownTimeout())
			defer cancel()
			_ = s.Shutdown(ctx)
		}()
		return nil
	}
	return unknownAdmin(cmd.verb)
}

// pause holds new transactions on the shards and waits, up to
// query_wait_timeout, for the running ones to finish. The shards stay paused
// either way; the error says what is still running.
func (a *adminSession) pause(name string) error {
	s := a.srv
	shards, err := s.shardNames(name)
	if err != nil {
		return err
	}
	for _, sh := range shards {
		s.pools.Pause(sh)
	}
	a.log.Info("PAUSE", zap.Strings("shards", shards))
	limit := s.gen.Load().cfg.Pool.QueryWaitTimeout.D()
	deadline := time.Now().Add(limit)
	for {
		busy := 0
		for _, sh := range shards {
			busy += s.pools.Busy(sh)
		}
		if busy == 0 {
			return a.w.Send(&pgproto3.CommandComplete{CommandTag: []byte("PAUSE")})
		}
		if time.Now().After(deadline) {
			return errorf(sqlstate.ObjectInUse, "pgrouter: paused, but %d server connections are still in use after %s", busy, limit).
				withHint("New transactions wait; the running ones have not finished. Run PAUSE again to keep waiting, or RESUME.")
		}
		if s.draining.Load() {
			return errShuttingDown()
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// shardNames resolves PAUSE/RESUME's argument: one shard, or every shard.
func (s *Server) shardNames(name string) ([]string, error) {
	gen := s.gen.Load()
	if name == "" {
		var out []string
		for _, sh := range gen.allShards() {
			out = append(out, sh.Name)
		}
		return out, nil
	}
	if _, ok := gen.shards.Shard(name); !ok {
		return nil, errorf(sqlstate.UndefinedObject, "pgrouter: shard %q does not exist", name).
			withHint("SHOW SHARDS lists the shards.")
	}
	return []string{name}, nil
}

// notice sends a WARNING to the console client.
func (a *adminSession) notice(msg string) {
	_ = a.w.Send(&pgproto3.NoticeResponse{Severity: "WARNING", SeverityUnlocalized: "WARNING", Code: sqlstate.Warning, Message: msg})
}

// Type OIDs of console columns.
const (
	oidBool        = 16
	oidInt8        = 20
	oidText        = 25
	oidFloat8      = 701
	oidTimestamptz = 1184
)

type column struct {
	name string
	oid  uint32
}

// resultSet is a console answer: columns and rows of Go values (string,
// int, int64, float64, bool, time.Time, nil for NULL), sent in text format.
type resultSet struct {
	cols []column
	rows [][]any
}

func (rs *resultSet) add(row ...any) { rs.rows = append(rs.rows, row) }

func (rs *resultSet) send(w *wire.Writer, tag string) {
	desc := &pgproto3.RowDescription{Fields: make([]pgproto3.FieldDescription, len(rs.cols))}
	for i, c := range rs.cols {
		size := int16(-1)
		switch c.oid {
		case oidBool:
			size = 1
		case oidInt8, oidFloat8, oidTimestamptz:
			size = 8
		}
		desc.Fields[i] = pgproto3.FieldDescription{Name: []byte(c.name), DataTypeOID: c.oid, DataTypeSize: size, TypeModifier: -1}
	}
	_ = w.Send(desc)
	for _, row := range rs.rows {
		values := make([][]byte, len(row))
		for i, v := range row {
			values[i] = textValue(v)
		}
		_ = w.Send(&pgproto3.DataRow{Values: values})
	}
	_ = w.Send(&pgproto3.CommandComplete{CommandTag: []byte(tag + " " + strconv.Itoa(len(rs.rows)))})
}

// textValue renders a value in PostgreSQL's text format (nil is NULL).
func textValue(v any) []byte {
	switch v := v.(type) {
	case nil:
		return nil
	case string:
		return []byte(v)
	case int:
		return strconv.AppendInt(nil, int64(v), 10)
	case int64:
		return strconv.AppendInt(nil, v, 10)
	case uint32:
		return strconv.AppendUint(nil, uint64(v), 10)
	case uint64:
		return strconv.AppendUint(nil, v, 10)
	case float64:
		return strconv.AppendFloat(nil, v, 'f', -1, 64)
	case bool:
		if v {
			return []byte("t")
		}
		return []byte("f")
	case time.Time:
		if v.IsZero() {
			return nil
		}
		return []byte(v.UTC().Format("2006-01-02 15:04:05.999999Z07"))
	}
	return []byte(fmt.Sprint(v))
}
