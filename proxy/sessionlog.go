package proxy

import "go.uber.org/zap"

// logger returns the client's logger, built on first use: zap's With
// encodes its fields into a buffer of its own, about 1 KB that each of
// thousands of idle clients would otherwise keep for nothing. It may be
// called from another goroutine (a cancel request).
func (s *session) logger() *zap.Logger {
	if l := s.log.Load(); l != nil {
		return l
	}
	l := s.srv.log.With(zap.Uint64("client_id", s.id), zap.String("remote", s.conn.RemoteAddr().String()),
		zap.String("user", s.user), zap.String("database", s.dbName))
	if !s.log.CompareAndSwap(nil, l) {
		return s.log.Load()
	}
	return l
}

// debug logs at debug level without building the client's logger when
// debug is off (see logger).
func (s *session) debug(msg string, fields ...zap.Field) {
	if s.srv.log.Core().Enabled(zap.DebugLevel) {
		s.logger().Debug(msg, fields...)
	}
}
