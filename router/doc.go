// Package router decides where a statement goes. Its lexer reads PostgreSQL
// statement text exactly as the server's scanner does, so that pgrouter can
// recognise what it must act on (transaction control, SET and RESET, calls
// of routed functions) without being fooled by strings, comments or quoted
// identifiers, and without allocating on the hot path.
package router
