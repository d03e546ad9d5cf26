package proxy

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"

	"github.com/pgrouter/pgrouter/config"
	"github.com/pgrouter/pgrouter/pool"
	"github.com/pgrouter/pgrouter/shardmap"
	"github.com/pgrouter/pgrouter/sqlstate"
	"github.com/pgrouter/pgrouter/wire"
)

// Startup-phase request codes (the int32 after the length).
const (
	codeCancelRequest = 80877102
	codeSSLRequest    = 80877103
	codeGSSENCRequest = 80877104
)

// startup is a decoded StartupMessage.
type startup struct {
	minor    uint32 // requested minor protocol version (3.x)
	params   map[string]string
	protoOpt []string // _pq_.* options, which pgrouter does not support
}

// handle runs one client connection from the first byte to the last.
// preAuthMaxMessage caps the messages of a client that has not logged in
// yet: PostgreSQL's own limit for authentication messages is 64 KB less a
// little (PG_MAX_AUTH_TOKEN_LENGTH is 65535).
const preAuthMaxMessage = 64 << 10

// overLimitWait is how long a connection past max_client_conn may take to
// send its startup packet: long enough for a cancel request, short enough
// that refused connections do not pile up.
const overLimitWait = 2 * time.Second

func (s *Server) handle(conn net.Conn, adm admission) {
	gen := s.gen.Load()
	cfg := gen.cfg
	id := s.clientIDs.Add(1)
	tracked := conn
	watched := &watchedConn{Conn: conn}
	conn = watched
	log := s.log.With(zap.Uint64("client_id", id), zap.String("remote", conn.RemoteAddr().String()))
	wait := cfg.Pool.ClientLoginTimeout.D()
	if adm == overLimit {
		wait = min(wait, overLimitWait)
	}
	_ = conn.SetDeadline(time.Now().Add(wait))
	// Until login completes a client may send only small messages (a
	// password, a SASL response): max_message_size applies after it.
	cc := &clientConn{conn: conn, maxMessage: min(int(cfg.Pool.MaxMessageSize), preAuthMaxMessage)}
	cc.r, cc.w = wire.NewReader(conn, cc.maxMessage), wire.NewWriter(conn)

	st, cancel, err := cc.readStartup(gen.tls)
	conn, r, w := cc.conn, cc.r, cc.w // the TLS connection, if the client asked for one
	if err != nil {
		switch {
		case isProtocolViolation(err):
			log.Debug("bad startup packet", zap.Error(err))
			sendFatal(w, toError(err))
		case errors.Is(err, os.ErrDeadlineExceeded):
			log.Info("client_login_timeout: no startup packet in time")
		}
		return
	}
	if cancel != nil {
		s.forwardCancel(cancel, log)
		return
	}
	if cfg.TLS.Mode == config.TLSRequire && !cc.encrypted {
		log.Info("refusing a client without TLS (tls.mode: require)")
		sendFatal(w, fatalf(sqlstate.InvalidAuthorization, "pgrouter: TLS is required (tls.mode: require)").
			WithHint("Connect with sslmode=require (or verify-full)."))
		return
	}
	if adm != admitted {
		log.Warn("max_client_conn reached; refusing client", zap.Int("max_client_conn", cfg.Pool.MaxClientConn))
		sendFatal(w, fatalf(sqlstate.TooManyConnections, "pgrouter: no more connections allowed (max_client_conn %d)", cfg.Pool.MaxClientConn).
			WithHint("Raise pool.max_client_conn in router.yaml, or use fewer client connections."))
		return
	}

	sess, err := s.login(conn, r, w, st, gen, id, log)
	if err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			log.Info("client_login_timeout: login not finished in time")
			return
		}
		if isProtocolViolation(err) { // otherwise the client's socket failed: nobody to tell
			e := toError(err)
			log.Info("login refused", zap.String("sqlstate", e.Code), zap.String("reason", e.Message))
			e.Fatal = true
			sendFatal(w, e)
		}
		return
	}
	_ = conn.SetDeadline(time.Time{})
	s.loggedIn(tracked)
	if cs, ok := sess.(*session); ok {
		cs.watched = watched
	}
	sess.run()
}

// clientConn is a client connection during startup: TLS may replace the
// socket, and with it the reader and writer.
type clientConn struct {
	conn       net.Conn
	r          *wire.Reader
	w          *wire.Writer
	maxMessage int
	encrypted  bool
}

// readStartup reads the startup packet, answering SSLRequest with 'S' and a
// TLS handshake when TLS is configured ('N' otherwise) and GSSENCRequest with
// 'N'. It returns either a startup message or a cancel request.
func (cc *clientConn) readStartup(tlsConfig *tls.Config) (*startup, *pgproto3.CancelRequest, error) {
	for range 3 {
		body, err := cc.r.NextStartup()
		if err != nil {
			return nil, nil, err
		}
		code := binary.BigEndian.Uint32(body)
		switch code {
		case codeSSLRequest, codeGSSENCRequest:
			if cc.r.Buffered() > 0 { // the client must wait for our answer: bytes now would be injected (CVE-2021-23222)
				return nil, nil, fatalf(sqlstate.ProtocolViolation, "pgrouter: unexpected data after encryption request")
			}
			if code == codeGSSENCRequest || tlsConfig == nil || cc.encrypted {
				if _, err := cc.conn.Write([]byte{'N'}); err != nil {
					return nil, nil, err
				}
				continue
			}
			if _, err := cc.conn.Write([]byte{'S'}); err != nil {
				return nil, nil, err
			}
			tc := tls.Server(cc.conn, tlsConfig)
			if err := tc.Handshake(); err != nil {
				return nil, nil, fmt.Errorf("tls handshake: %w", err)
			}
			cc.conn, cc.encrypted = tc, true
			cc.r, cc.w = wire.NewReader(tc, cc.maxMessage), wire.NewWriter(tc)
			continue
		case codeCancelRequest:
			var req pgproto3.CancelRequest
			if err := req.Decode(body); err != nil {
				return nil, nil, fatalf(sqlstate.ProtocolViolation, "pgrouter: malformed cancel request").because(err)
			}
			return nil, &req, nil
		}
		if major := code >> 16; major != 3 {
			return nil, nil, fatalf(sqlstate.FeatureNotSupported, "pgrouter: unsupported frontend protocol %d.%d: pgrouter supports 3.0", major, code&0xffff)
		}
		st := &startup{minor: code & 0xffff, params: map[string]string{}}
		rest := body[4:]
		for len(rest) > 0 && rest[0] != 0 {
			key, after, ok := wire.CString(rest)
			if !ok {
				return nil, nil, fatalf(sqlstate.ProtocolViolation, "pgrouter: invalid startup packet layout: expected terminator as last byte")
			}
			value, after2, ok := wire.CString(after)
			if !ok {
				return nil, nil, fatalf(sqlstate.ProtocolViolation, "pgrouter: invalid startup packet layout: expected terminator as last byte")
			}
			k := string(key)
			if strings.HasPrefix(k, "_pq_.") {
				st.protoOpt = append(st.protoOpt, k)
			} else {
				st.params[k] = string(value)
			}
			rest = after2
		}
		return st, nil, nil
	}
	return nil, nil, fatalf(sqlstate.ProtocolViolation, "pgrouter: too many encryption requests")
}

// login authenticates the client, picks its cluster and sends the
// ParameterStatus / BackendKeyData / ReadyForQuery greeting.
func (s *Server) login(conn net.Conn, r *wire.Reader, w *wire.Writer, st *startup, gen *generation, id uint64, log *zap.Logger) (interface{ run() }, error) {
	cfg := gen.cfg
	user := st.params["user"]
	if user == "" {
		return nil, fatalf(sqlstate.InvalidAuthorization, "no PostgreSQL user name specified in startup packet")
	}
	database := st.params["database"]
	if database == "" {
		database = user
	}
	log = log.With(zap.String("user", user), zap.String("database", database))
	if v, ok := st.params["replication"]; ok && isTrue(v) {
		return nil, fatalf(sqlstate.FeatureNotSupported, "pgrouter: replication connections are not proxied").
			WithHint("Connect replication clients to the shard directly.")
	}
	if st.minor > 0 || len(st.protoOpt) > 0 { // negotiate down to 3.0
		if err := w.Send(&pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: 0, UnrecognizedOptions: st.protoOpt}); err != nil {
			return nil, err
		}
	}
	var binding []byte // SCRAM-SHA-256-PLUS is offered over TLS only
	if _, ok := conn.(*tls.Conn); ok {
		binding = gen.binding
	}
	if err := s.authenticate(r, w, gen, user, binding); err != nil {
		return nil, err
	}
	r.SetMaxBody(int(gen.cfg.Pool.MaxMessageSize))
	if config.IsAdminDatabase(database) {
		c, err := s.consoleLogin(r, w, gen, user, log)
		if err != nil {
			return nil, err
		}
		return c, nil
	}
	cluster, ok := gen.shards.Cluster(database)
	if !ok {
		return nil, fatalf(sqlstate.InvalidCatalogName, "database %q does not exist", database).
			WithHint("pgrouter serves the clusters named in router.yaml: %s.", strings.Join(cfg.ClusterNames(), ", "))
	}
	if name, off := s.disabledFor(cluster); off {
		log.Info("login refused: DISABLE", zap.String("disabled", name))
		return nil, disabledError(database, name)
	}
	desired, err := startupSettings(st.params)
	if err != nil {
		return nil, err
	}

	sess := newSession(s, gen, conn, r, w, id, user, cluster)
	sess.startup = desired
	sess.appName = st.params["application_name"]
	sess.desired = desired.Clone()
	params, err := s.greetingParams(cluster, user)
	if err != nil {
		return nil, err
	}
	if err := w.Send(&pgproto3.AuthenticationOk{}); err != nil {
		return nil, err
	}
	sendGreetingParams(w, params, &desired)
	s.cancels.register(sess)
	if err := w.Send(&pgproto3.BackendKeyData{ProcessID: sess.pid, SecretKey: sess.secret[:]}); err != nil {
		s.cancels.unregister(sess)
		return nil, err
	}
	_ = w.SendReady(wire.TxIdle)
	if err := w.Flush(); err != nil {
		s.cancels.unregister(sess)
		return nil, err
	}
	w.Release() // the greeting was the largest thing most clients will be sent before they go idle
	log.Debug("client logged in", zap.String("cluster", cluster.Name))
	return sess, nil
}

// greetingParams returns the ParameterStatus values a new client is told:
// those of a server of its cluster (the default route's shard first), opening
// a connection if no pool has one yet.
func (s *Server) greetingParams(cl *shardmap.Cluster, user string) (map[string]string, error) {
	shards := cl.Shards
	if cl.Default.Kind == shardmap.RouteShard {
		shards = append([]*shardmap.Shard{cl.Default.Shard}, shards...)
	}
	ctx, cancel := context.WithTimeout(s.ctx, s.gen.Load().cfg.Pool.ServerConnectTimeout.D())
	defer cancel()
	var firstErr error
	for _, sh := range shards {
		p, err := s.pools.Get(sh, user)
		if err != nil {
			return nil, err
		}
		params, err := p.ServerParams(ctx, s.gen.Load().cfg.Pool.QueryWaitTimeout.D())
		if err == nil {
			return params, nil
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	return nil, &Error{Fatal: true, Code: sqlstate.UnableToConnect, Message: "pgrouter: no shard of cluster " + cl.Name + " is reachable: " + strings.TrimPrefix(toError(firstErr).Message, "pgrouter: "), Err: firstErr}
}

// sendGreetingParams sends the server's ParameterStatus values, with the
// client's own startup settings in place of the server's.
func sendGreetingParams(w *wire.Writer, params map[string]string, desired *pool.ParamState) {
	names := make([]string, 0, len(params))
	for name := range params {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		value := params[name]
		if v, ok := desired.Get(name); ok && settableReported(name) {
			value = v
		}
		_ = w.Send(&pgproto3.ParameterStatus{Name: name, Value: value})
	}
}

// startupSettings turns the startup packet's run-time parameters, including
// "-c name=value" items in options, into the settings the session keeps.
func startupSettings(params map[string]string) (pool.ParamState, error) {
	var ps pool.ParamState
	for k, v := range params {
		switch k {
		case "user", "database", "replication", "options":
			continue
		}
		ps.Set(k, v)
	}
	if opts := params["options"]; opts != "" {
		items, err := parseOptions(opts)
		if err != nil {
			return ps, err
		}
		for _, kv := range items {
			ps.Set(kv[0], kv[1])
		}
	}
	return ps, nil
}

// parseOptions reads the startup "options" value: "-c name=value" or
// "--name=value" items separated by spaces, with backslash escapes.
func parseOptions(opts string) ([][2]string, error) {
	var words []string
	var b strings.Builder
	escaped, inWord := false, false
	for _, c := range opts {
		switch {
		case escaped:
			b.WriteRune(c)
			escaped, inWord = false, true
		case c == '\\':
			escaped = true
		case c == ' ' || c == '\t':
			if inWord {
				words = append(words, b.String())
				b.Reset()
				inWord = false
			}
		default:
			b.WriteRune(c)
			inWord = true
		}
	}
	if inWord {
		words = append(words, b.String())
	}
	var out [][2]string
	bad := func(w string) error {
		return fatalf(sqlstate.FeatureNotSupported, "pgrouter: unsupported startup option %q: only -c name=value and --name=value are accepted", w)
	}
	for i := 0; i < len(words); i++ {
		w := words[i]
		var kv string
		switch {
		case w == "-c" && i+1 < len(words):
			i++
			kv = words[i]
		case strings.HasPrefix(w, "-c") && len(w) > 2:
			kv = w[2:]
		case strings.HasPrefix(w, "--"):
			kv = w[2:]
		default:
			return nil, bad(w)
		}
		name, value, ok := strings.Cut(kv, "=")
		if !ok || name == "" {
			return nil, bad(w)
		}
		out = append(out, [2]string{strings.ReplaceAll(name, "-", "_"), value})
	}
	return out, nil
}

func isTrue(v string) bool {
	switch strings.ToLower(v) {
	case "", "0", "false", "off", "no":
		return false
	}
	return true
}

// sendFatal writes a FATAL error and flushes; the caller closes the socket.
func sendFatal(w *wire.Writer, e *Error) {
	resp := e.response()
	resp.Severity, resp.SeverityUnlocalized = "FATAL", "FATAL"
	_ = w.Send(resp)
	_ = w.Flush()
}
