// Package wire frames PostgreSQL protocol 3.0 messages.
//
// A Reader pulls whole messages off a connection into one reusable buffer and
// hands them out as raw bytes (type byte, length, body); a Writer batches raw
// or encoded messages and flushes them in one write. Neither decodes anything:
// the proxy peeks at the type byte, decodes only what a decision needs (with
// github.com/jackc/pgx/v5/pgproto3) and forwards everything else untouched.
// Keeping framing apart from policy is what lets the hot path move a message
// from one socket to another without allocating.
package wire
