package proxy

// Internals the integration tests (package proxy_test) look at.

var (
	QuoteLiteral   = quoteLiteral
	MaybeLocalText = maybeLocalText
	EncodeAll      = encodeAll
)

const (
	ServerStmtPrefix  = serverStmtPrefix
	CodeSSLRequest    = codeSSLRequest
	CodeGSSENCRequest = codeGSSENCRequest
)

// StatementName is the server-side name pgrouter gives a statement's text.
func StatementName(sql []byte) string { return newStatement(sql, queryInfo{}, nil).serverName }

// LoggersBuilt reports, per logged-in client, whether its logger was built.
func LoggersBuilt(s *Server) []bool {
	var out []bool
	for _, sess := range s.sessionList() {
		out = append(out, sess.log.Load() != nil)
	}
	return out
}
