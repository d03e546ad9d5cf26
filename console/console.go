// Package console is pgrouter's admin console: the database "pgrouter" on
// the client port. It parses the commands (SHOW, RELOAD, PAUSE, RESUME,
// SHUTDOWN) and answers from the proxy's snapshot API and the monitor's
// polls; proxy logs its clients in and sends what it answers.
package console

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"

	"github.com/pgrouter/pgrouter/monitor"
	"github.com/pgrouter/pgrouter/proxy"
	"github.com/pgrouter/pgrouter/sqlstate"
	"github.com/pgrouter/pgrouter/wire"
)

// The admin console is the database "pgrouter" on the client port, for the
// users in admin_users. It speaks the simple query protocol (psql, or any
// driver in simple-protocol mode), answers from pgrouter's own state and
// never reaches a shard with a client's text.

// Commands lists the console's commands, for SHOW HELP and for the
// error an unknown command gets.
var Commands = [][2]string{
	{"SHOW SHARDS", "every shard: health, pool use, waiting clients, counters, latency"},
	{"SHOW POOLS", "every pool (shard, server user): clients and server connections"},
	{"SHOW CLIENTS", "every client connection"},
	{"SHOW SERVERS", "every server connection"},
	{"SHOW STATS", "per shard totals, and averages over the last 15 s"},
	{"SHOW FUNCTIONS", "the routed functions and their signatures"},
	{"SHOW SEQUENCES", "every sequence on every shard"},
	{"SHOW CONFIG", "the config in force"},
	{"SHOW VERSION", "pgrouter's version"},
	{"SHOW INSTANCE", "this instance: peer_id, version, config generation and hash, paused shards, clients"},
	{"SHOW PEERS", "every instance of peers: reachable, version, config generation and hash"},
	{"SHOW HELP", "this list"},
	{"RELOAD", "read router.yaml again and swap it in (also SIGHUP)"},
	{"PAUSE [shard]", "hold new transactions (on one shard, or all) and wait for running ones to finish"},
	{"RESUME [shard]", "release what PAUSE held"},
	{"PAUSE PARTITIONS cluster 6-7", "hold the routed calls of those partitions (a partition move's cut-over)"},
	{"RESUME PARTITIONS cluster", "release what PAUSE PARTITIONS held; held calls are routed by the map in force"},
	{"SHUTDOWN", "stop accepting, let transactions finish, exit (also SIGTERM)"},
	{"SHOW DATABASES", "pgbouncer's: a row per cluster and per shard, with pool settings, connections, paused, disabled"},
	{"SHOW LISTS", "pgbouncer's: counts of databases, users, pools, clients, servers"},
	{"SHOW USERS", "pgbouncer's: the users of admin_users, of the pools and of the clients"},
	{"SHOW STATS_TOTALS", "SHOW STATS's totals"},
	{"SHOW STATS_AVERAGES", "SHOW STATS's averages"},
	{"SHOW TOTALS", "SHOW STATS summed over every shard"},
	{"SHOW STATE", "active, paused, suspended"},
	{"SHOW MEM", "Go's heap and stacks, and the sessions"},
	{"KILL db", "disconnect the clients and close the server connections of a cluster or shard now; it stays paused until RESUME"},
	{"KILL_CLIENT id", "disconnect one client (an id of SHOW CLIENTS)"},
	{"RECONNECT [db]", "replace the server connections of a cluster or shard (or all) as they are released"},
	{"DISABLE db", "refuse new logins to a cluster (or the clusters of a shard)"},
	{"ENABLE db", "accept logins again after DISABLE"},
	{"SUSPEND", "PAUSE everything, until RESUME"},
	{"WAIT_CLOSE [db]", "wait until the server connections RECONNECT or KILL marked are closed"},
	{"PAUSE PEERS", "PAUSE on every instance of peers, this one included; none is paused unless all can be"},
	{"RESUME PEERS", "RESUME on every instance of peers"},
	{"RELOAD PEERS", "RELOAD on every instance of peers, once all can be reached"},
}

// adminCommand is one parsed console command.
type adminCommand struct {
	verb  string // SHOW, RELOAD, PAUSE, RESUME, SHUTDOWN
	what  string // SHOW's object, upper case; PAUSE/RESUME's shard ("" = all)
	fleet bool   // PAUSE, RESUME or RELOAD PEERS: on every instance
	// parts: PAUSE PARTITIONS cluster spec, RESUME PARTITIONS cluster (what
	// is the cluster, spec the partitions).
	parts bool
	spec  string
}

// isPeers reports whether a command's argument is the keyword PEERS, in
// any case and unquoted: a shard named peers is written "peers".
func isPeers(arg string) bool { return strings.EqualFold(arg, "PEERS") }

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
			case "SHARDS", "POOLS", "CLIENTS", "SERVERS", "STATS", "FUNCTIONS", "SEQUENCES", "CONFIG", "VERSION", "HELP", "INSTANCE", "PEERS",
				"DATABASES", "LISTS", "USERS", "STATS_TOTALS", "STATS_AVERAGES", "TOTALS", "STATE", "MEM", "SOCKETS", "FDS":
			default:
				return nil, unknownAdmin(stmt)
			}
		case "RELOAD", "SHUTDOWN":
			switch {
			case len(args) == 1 && verb == "RELOAD" && isPeers(args[0]):
				cmd.fleet = true
			case len(args) != 0:
				return nil, unknownAdmin(stmt)
			}
		case "SUSPEND":
			if len(args) != 0 {
				return nil, unknownAdmin(stmt)
			}
		case "KILL", "KILL_CLIENT", "DISABLE", "ENABLE":
			if len(args) != 1 {
				return nil, unknownAdmin(stmt)
			}
			cmd.what = unquote(args[0])
		case "RECONNECT", "WAIT_CLOSE":
			if len(args) > 1 {
				return nil, unknownAdmin(stmt)
			}
			if len(args) == 1 {
				cmd.what = unquote(args[0])
			}
		case "PAUSE", "RESUME":
			if len(args) > 0 && strings.EqualFold(args[0], "PARTITIONS") {
				if (verb == "PAUSE" && len(args) != 3) || (verb == "RESUME" && len(args) != 2) {
					return nil, unknownAdmin(stmt)
				}
				cmd.parts, cmd.what = true, unquote(args[1])
				if verb == "PAUSE" {
					cmd.spec = args[2]
				}
				break
			}
			if len(args) > 1 {
				return nil, unknownAdmin(stmt)
			}
			if len(args) == 1 && isPeers(args[0]) {
				cmd.fleet = true
			} else if len(args) == 1 {
				cmd.what = unquote(args[0])
			}
		default:
			return nil, unknownAdmin(stmt)
		}
		out = append(out, cmd)
	}
	return out, nil
}

// unquote takes a name out of double quotes ("" inside is one quote).
func unquote(name string) string {
	if len(name) >= 2 && name[0] == '"' && name[len(name)-1] == '"' {
		return strings.ReplaceAll(name[1:len(name)-1], `""`, `"`)
	}
	return name
}

// errorf builds an ERROR for a console client.
func errorf(code, format string, args ...any) *proxy.Error {
	return &proxy.Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

func unknownAdmin(stmt string) *proxy.Error {
	names := make([]string, len(Commands))
	for i, c := range Commands {
		names[i] = c[0]
	}
	stmt = strings.TrimSpace(stmt)
	if len(stmt) > 60 {
		stmt = stmt[:60] + "..."
	}
	return errorf(sqlstate.SyntaxError, "pgrouter: unknown admin console command %q", stmt).
		WithHint("The commands are: %s.", strings.Join(names, ", "))
}

// Console answers admin console clients of one proxy.Server.
type Console struct {
	srv *proxy.Server
	mon *monitor.Monitor
	// suspended: SUSPEND ran and no RESUME of every shard since.
	suspended atomic.Bool
}

// New returns the console of srv; install it with srv.SetConsole.
func New(srv *proxy.Server, mon *monitor.Monitor) *Console {
	return &Console{srv: srv, mon: mon}
}

// session is one console client.
type session struct {
	*Console
	c        *proxy.ConsoleConn
	log      *zap.Logger
	skipping bool // an extended-protocol message was refused: discard up to Sync
}

// Serve answers one client until it leaves or pgrouter shuts down.
func (con *Console) Serve(c *proxy.ConsoleConn) {
	a := &session{Console: con, c: c, log: c.Log()}
	for {
		m, err := c.Next()
		if err != nil {
			c.SendError(err)
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
			_ = c.SendReady()
		case wire.Terminate:
			return
		case wire.Sync:
			a.skipping = false
			_ = c.SendReady()
		case wire.Parse, wire.Bind, wire.Describe, wire.Execute, wire.Close, wire.Flush:
			if !a.skipping {
				a.skipping = true
				c.SendError(&proxy.Error{Code: sqlstate.FeatureNotSupported, Message: "pgrouter: the admin console speaks the simple query protocol only",
					Hint: "Use psql, or your driver's simple protocol mode (pgx: default_query_exec_mode=simple_protocol)."})
			}
		default:
			c.SendError(&proxy.Error{Fatal: true, Code: sqlstate.ProtocolViolation, Message: fmt.Sprintf("pgrouter: invalid frontend message type %q", m.Type)})
			return
		}
	}
}

// query runs the commands of one Query message; the first error ends it,
// as it would end a multi-statement query on PostgreSQL. It reports false
// when the error was FATAL and the connection must close.
func (a *session) query(sql string) bool {
	cmds, err := parseAdmin(sql)
	if err != nil {
		return !a.c.SendError(err)
	}
	if len(cmds) == 0 {
		_ = a.c.Send(&pgproto3.EmptyQueryResponse{})
		return true
	}
	for _, cmd := range cmds {
		if err := a.exec(cmd); err != nil {
			a.log.Info("admin command failed", zap.String("command", cmd.verb+" "+cmd.what), zap.Error(err))
			return !a.c.SendError(err)
		}
	}
	return true
}

func (a *session) exec(cmd adminCommand) error {
	s := a.srv
	if cmd.fleet {
		return a.fleet(cmd.verb)
	}
	if cmd.parts {
		return a.pauseParts(cmd)
	}
	switch cmd.verb {
	case "SHOW":
		var rs *resultSet
		var err error
		switch cmd.what {
		case "SHARDS":
			rs = a.showShards()
		case "POOLS":
			rs = a.showPools()
		case "CLIENTS":
			rs = a.showClients()
		case "SERVERS":
			rs = a.showServers()
		case "STATS":
			rs = a.showStats()
		case "FUNCTIONS":
			rs = a.showFunctions()
		case "SEQUENCES":
			rs, err = a.showSequences(a.c.Context(), a.notice)
		case "CONFIG":
			rs = a.showConfig()
		case "VERSION":
			rs = &resultSet{cols: []column{{"version", oidText}}, rows: [][]any{{"pgrouter " + proxy.Version}}}
		case "INSTANCE":
			rs = a.showInstance()
		case "DATABASES":
			rs = a.showDatabases()
		case "LISTS":
			rs = a.showLists()
		case "USERS":
			rs = a.showUsers()
		case "STATS_TOTALS":
			rs = a.showStatsTotals()
		case "STATS_AVERAGES":
			rs = a.showStatsAverages()
		case "TOTALS":
			rs = a.showTotals()
		case "STATE":
			rs = a.showState()
		case "MEM":
			rs = a.showMem()
		case "SOCKETS", "FDS":
			err = notSupported(cmd.what)
		case "PEERS":
			rs = a.showPeers(a.c.Context())
		case "HELP":
			rs = &resultSet{cols: []column{{"command", oidText}, {"description", oidText}}}
			for _, c := range Commands {
				rs.rows = append(rs.rows, []any{c[0], c[1]})
			}
		}
		if err != nil {
			return err
		}
		rs.send(a.c, "SHOW")
		return nil
	case "RELOAD":
		a.log.Info("RELOAD requested")
		notes, err := s.Reload()
		if err != nil {
			return errorf(sqlstate.ConfigFileError, "pgrouter: reload failed, the running config is unchanged: %v", err).
				WithHint("Fix the file and run RELOAD again.")
		}
		for _, n := range notes {
			a.notice(n)
		}
		return a.c.Send(&pgproto3.CommandComplete{CommandTag: []byte("RELOAD")})
	case "PAUSE":
		return a.pause(cmd.what)
	case "RESUME":
		shards, err := a.shardNames(cmd.what)
		if err != nil {
			return err
		}
		for _, name := range shards {
			s.Pools().Resume(name)
		}
		if cmd.what == "" {
			a.suspended.Store(false)
		}
		a.log.Info("RESUME", zap.Strings("shards", shards))
		return a.c.Send(&pgproto3.CommandComplete{CommandTag: []byte("RESUME")})
	case "KILL":
		return a.kill(cmd.what)
	case "KILL_CLIENT":
		return a.killClient(cmd.what)
	case "RECONNECT":
		return a.reconnect(cmd.what)
	case "DISABLE", "ENABLE":
		return a.setDisabled(cmd.verb, cmd.what)
	case "SUSPEND":
		return a.suspend()
	case "WAIT_CLOSE":
		return a.waitClose(a.c.Context(), cmd.what)
	case "SHUTDOWN":
		a.log.Info("SHUTDOWN requested")
		_ = a.c.Send(&pgproto3.CommandComplete{CommandTag: []byte("SHUTDOWN")})
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
func (a *session) pause(name string) error {
	s := a.srv
	shards, err := a.shardNames(name)
	if err != nil {
		return err
	}
	for _, sh := range shards {
		s.Pools().Pause(sh)
	}
	a.log.Info("PAUSE", zap.Strings("shards", shards))
	if err := a.waitIdle(shards); err != nil {
		return err
	}
	return a.c.Send(&pgproto3.CommandComplete{CommandTag: []byte("PAUSE")})
}

// waitIdle waits, up to query_wait_timeout, until no server connection of
// the paused shards is in use.
func (a *session) waitIdle(shards []string) error {
	s := a.srv
	limit := s.Config().Pool.QueryWaitTimeout.D()
	deadline := time.Now().Add(limit)
	for {
		busy := 0
		for _, sh := range shards {
			busy += s.Pools().Busy(sh)
		}
		if busy == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return errorf(sqlstate.ObjectInUse, "pgrouter: paused, but %d server connections are still in use after %s", busy, limit).
				WithHint("New transactions wait; the running ones have not finished. Run PAUSE again to keep waiting, or RESUME.")
		}
		if s.Draining() {
			return proxy.ShutdownError()
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// shardNames resolves PAUSE/RESUME's argument: one shard, or every shard.
func (con *Console) shardNames(name string) ([]string, error) {
	shards := con.srv.Map()
	if name == "" {
		var out []string
		for _, cl := range shards.Clusters() {
			for _, sh := range cl.Shards {
				out = append(out, sh.Name)
			}
		}
		return out, nil
	}
	if _, ok := shards.Shard(name); !ok {
		return nil, errorf(sqlstate.UndefinedObject, "pgrouter: shard %q does not exist", name).
			WithHint("SHOW SHARDS lists the shards.")
	}
	return []string{name}, nil
}

// notice sends a WARNING to the console client.
func (a *session) notice(msg string) {
	_ = a.c.Send(&pgproto3.NoticeResponse{Severity: "WARNING", SeverityUnlocalized: "WARNING", Code: sqlstate.Warning, Message: msg})
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

func (rs *resultSet) send(w *proxy.ConsoleConn, tag string) {
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
