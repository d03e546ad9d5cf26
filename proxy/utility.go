package proxy

import "strings"

// utilityKind names the few utility statements whose effect pgrouter must
// mirror in its own bookkeeping (prepared statements, applied settings).
type utilityKind int

const (
	utilNone utilityKind = iota
	utilDeallocate
	utilDeallocateAll
	utilDiscardAll
	utilResetAll
)

type utility struct {
	kind utilityKind
	name string // utilDeallocate: the statement name, case-folded as PostgreSQL does
}

// classifyUtility recognizes a simple Query that is exactly one of
// DEALLOCATE [PREPARE] name|ALL, DISCARD ALL or RESET ALL. Anything else,
// including a string of several statements, is utilNone. It does not
// allocate for ordinary queries: they are rejected on their first letter.
func classifyUtility(sql []byte) utility {
	sc := wordScanner{src: sql}
	sc.skipSpace()
	if sc.pos >= len(sql) {
		return utility{}
	}
	switch sql[sc.pos] | 0x20 {
	case 'd', 'r':
	default:
		return utility{}
	}
	first, ok := sc.word()
	if !ok {
		return utility{}
	}
	switch {
	case strings.EqualFold(first, "deallocate"):
		w, ok := sc.word()
		if ok && strings.EqualFold(w, "prepare") {
			w, ok = sc.word()
		}
		if !ok || w == "" || !sc.end() {
			return utility{}
		}
		if strings.EqualFold(w, "all") && !sc.lastQuoted {
			return utility{kind: utilDeallocateAll}
		}
		return utility{kind: utilDeallocate, name: w}
	case strings.EqualFold(first, "discard"):
		if w, ok := sc.word(); ok && strings.EqualFold(w, "all") && sc.end() {
			return utility{kind: utilDiscardAll}
		}
	case strings.EqualFold(first, "reset"):
		if w, ok := sc.word(); ok && strings.EqualFold(w, "all") && sc.end() {
			return utility{kind: utilResetAll}
		}
	}
	return utility{}
}

// wordScanner reads identifiers and keywords, skipping whitespace and
// comments (nested /* */ and --).
type wordScanner struct {
	src        []byte
	pos        int
	lastQuoted bool
}

func (sc *wordScanner) skipSpace() {
	for sc.pos < len(sc.src) {
		c := sc.src[sc.pos]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v':
			sc.pos++
		case c == '-' && sc.pos+1 < len(sc.src) && sc.src[sc.pos+1] == '-':
			for sc.pos < len(sc.src) && sc.src[sc.pos] != '\n' {
				sc.pos++
			}
		case c == '/' && sc.pos+1 < len(sc.src) && sc.src[sc.pos+1] == '*':
			depth := 0
			for sc.pos < len(sc.src) {
				if sc.src[sc.pos] == '/' && sc.pos+1 < len(sc.src) && sc.src[sc.pos+1] == '*' {
					depth++
					sc.pos += 2
				} else if sc.src[sc.pos] == '*' && sc.pos+1 < len(sc.src) && sc.src[sc.pos+1] == '/' {
					depth--
					sc.pos += 2
					if depth == 0 {
						break
					}
				} else {
					sc.pos++
				}
			}
		default:
			return
		}
	}
}

// word returns the next identifier: unquoted ones are lower-cased (only
// when they are not already), quoted ones keep their case with "" undone.
func (sc *wordScanner) word() (string, bool) {
	sc.skipSpace()
	sc.lastQuoted = false
	if sc.pos >= len(sc.src) {
		return "", false
	}
	if sc.src[sc.pos] == '"' {
		var b strings.Builder
		sc.pos++
		for sc.pos < len(sc.src) {
			c := sc.src[sc.pos]
			sc.pos++
			if c == '"' {
				if sc.pos < len(sc.src) && sc.src[sc.pos] == '"' {
					b.WriteByte('"')
					sc.pos++
					continue
				}
				sc.lastQuoted = true
				return b.String(), true
			}
			b.WriteByte(c)
		}
		return "", false
	}
	start := sc.pos
	for sc.pos < len(sc.src) {
		c := sc.src[sc.pos]
		if c == '_' || c == '$' || c >= 0x80 || (c >= '0' && c <= '9') || (c|0x20 >= 'a' && c|0x20 <= 'z') {
			sc.pos++
			continue
		}
		break
	}
	if sc.pos == start {
		return "", false
	}
	return strings.ToLower(string(sc.src[start:sc.pos])), true
}

// end reports whether only an optional semicolon, spaces and comments remain.
func (sc *wordScanner) end() bool {
	sc.skipSpace()
	if sc.pos < len(sc.src) && sc.src[sc.pos] == ';' {
		sc.pos++
		sc.skipSpace()
	}
	return sc.pos >= len(sc.src)
}
