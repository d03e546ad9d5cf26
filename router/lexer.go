package router

import "strings"

// TokenKind classifies a lexeme.
type TokenKind uint8

// Token kinds. Whitespace and comments are skipped, never returned.
const (
	EOF         TokenKind = iota
	Ident                 // unquoted identifier or keyword; compare with EqualFold
	QuotedIdent           // "..." (or U&"...")
	String                // '...', E'...', U&'...', N'...', $tag$...$tag$
	BitString             // B'...' or X'...'
	Number                // 42, 3.14, 1e5, 0x1F, 1_000
	Param                 // $1
	Op                    // any other operator, including :: => := and .
	Punct                 // ( ) [ ] , ;
	Invalid               // an unterminated string, quoted identifier or comment
)

// Token is a span of the source; it holds no copy of the text.
type Token struct {
	Kind       TokenKind
	Start, End int
	// Escapes reports whether the literal's text needs decoding (doubled
	// quotes, backslash escapes, Unicode escapes, adjacent-literal
	// continuation) before use as a value; plain ones are a plain slice.
	Escapes bool
	// Form is the literal's prefix: 0, 'E', 'U', 'N', 'B', 'X' or '$'.
	Form byte
	// UEscape is the escape character a UESCAPE clause gave a U&-string or
	// U&-identifier (0: the default backslash). The clause is part of the
	// token, consumed with it, so that U&"d!0061ta" UESCAPE '!' is read as
	// the name "data" the server sees, never as something else.
	UEscape byte
}

// Lexer splits a PostgreSQL statement string into tokens the way the
// server's scanner does (scan.l): every string and identifier form, nested
// comments, dollar quoting, and operators. It never allocates and never
// panics, whatever the input.
type Lexer struct {
	src string
	pos int
	// StandardStrings is standard_conforming_strings: when false, backslash
	// escapes apply in plain '...' literals too.
	StandardStrings bool
}

// NewLexer returns a lexer over src with standard_conforming_strings on,
// PostgreSQL's default.
func NewLexer(src string) Lexer { return Lexer{src: src, StandardStrings: true} }

// Text returns the source text of a token.
func (l *Lexer) Text(t Token) string { return l.src[t.Start:t.End] }

// Src returns the whole source.
func (l *Lexer) Src() string { return l.src }

// Pos returns the offset of the next unread byte.
func (l *Lexer) Pos() int { return l.pos }

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'
}

func isIdentStart(c byte) bool {
	return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c >= 0x80
}

func isIdentCont(c byte) bool {
	return isIdentStart(c) || (c >= '0' && c <= '9') || c == '$'
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// isOpChar reports PostgreSQL's operator characters.
func isOpChar(c byte) bool {
	switch c {
	case '+', '-', '*', '/', '<', '>', '=', '~', '!', '@', '#', '%', '^', '&', '|', '`', '?':
		return true
	}
	return false
}

// skipSpace skips whitespace and comments. It returns false on an
// unterminated block comment.
func (l *Lexer) skipSpace() bool {
	for l.pos < len(l.src) {
		c := l.src[l.pos]
		switch {
		case isSpace(c):
			l.pos++
		case c == '-' && l.peek(1) == '-':
			for l.pos < len(l.src) && l.src[l.pos] != '\n' && l.src[l.pos] != '\r' {
				l.pos++
			}
		case c == '/' && l.peek(1) == '*':
			depth := 0
			for {
				if l.pos >= len(l.src) {
					return false
				}
				if l.src[l.pos] == '/' && l.peek(1) == '*' {
					depth++
					l.pos += 2
				} else if l.src[l.pos] == '*' && l.peek(1) == '/' {
					depth--
					l.pos += 2
					if depth == 0 {
						break
					}
				} else {
					l.pos++
				}
			}
		default:
			return true
		}
	}
	return true
}

func (l *Lexer) peek(n int) byte {
	if l.pos+n < len(l.src) {
		return l.src[l.pos+n]
	}
	return 0
}

// Next returns the next token.
func (l *Lexer) Next() Token {
	if !l.skipSpace() {
		return Token{Kind: Invalid, Start: len(l.src), End: len(l.src)}
	}
	if l.pos >= len(l.src) {
		return Token{Kind: EOF, Start: l.pos, End: l.pos}
	}
	start := l.pos
	c := l.src[l.pos]
	switch {
	case c == '\'':
		return l.quoted(start, 0, !l.StandardStrings)
	case c == '"':
		return l.quotedIdent(start)
	case (c == 'e' || c == 'E') && l.peek(1) == '\'':
		l.pos++
		return l.quoted(start, 'E', true)
	case (c == 'n' || c == 'N') && l.peek(1) == '\'':
		l.pos++
		return l.quoted(start, 'N', !l.StandardStrings)
	case (c == 'b' || c == 'B' || c == 'x' || c == 'X') && l.peek(1) == '\'':
		l.pos++
		t := l.quoted(start, c&^0x20, false)
		if t.Kind == String {
			t.Kind = BitString
		}
		return t
	case (c == 'u' || c == 'U') && l.peek(1) == '&' && l.peek(2) == '\'':
		l.pos += 2
		t := l.quoted(start, 'U', false)
		t.Escapes = true
		return l.uescape(t)
	case (c == 'u' || c == 'U') && l.peek(1) == '&' && l.peek(2) == '"':
		l.pos += 2
		t := l.quotedIdent(start)
		t.Escapes = true
		return l.uescape(t)
	case isIdentStart(c):
		for l.pos < len(l.src) && isIdentCont(l.src[l.pos]) {
			l.pos++
		}
		return Token{Kind: Ident, Start: start, End: l.pos}
	case isDigit(c) || (c == '.' && isDigit(l.peek(1))):
		return l.number(start)
	case c == '$':
		if isDigit(l.peek(1)) {
			l.pos++
			for l.pos < len(l.src) && isDigit(l.src[l.pos]) {
				l.pos++
			}
			return Token{Kind: Param, Start: start, End: l.pos}
		}
		if t, ok := l.dollarQuoted(start); ok {
			return t
		}
		l.pos++
		return Token{Kind: Op, Start: start, End: l.pos}
	case c == '(' || c == ')' || c == '[' || c == ']' || c == ',' || c == ';':
		l.pos++
		return Token{Kind: Punct, Start: start, End: l.pos}
	case c == ':':
		if l.peek(1) == ':' || l.peek(1) == '=' {
			l.pos += 2
		} else {
			l.pos++
		}
		return Token{Kind: Op, Start: start, End: l.pos}
	case c == '.':
		if l.peek(1) == '.' {
			l.pos += 2
		} else {
			l.pos++
		}
		return Token{Kind: Op, Start: start, End: l.pos}
	case isOpChar(c):
		return l.operator(start)
	}
	l.pos++
	return Token{Kind: Op, Start: start, End: l.pos}
}

// uescape reads a UESCAPE 'c' clause after a U&-literal into the token.
// A clause with anything but one valid escape character makes the token
// Invalid, as the server rejects it.
func (l *Lexer) uescape(t Token) Token {
	if t.Kind == Invalid {
		return t
	}
	save := l.pos
	if !l.skipSpace() || l.pos+7 > len(l.src) || !strings.EqualFold(l.src[l.pos:l.pos+7], "uescape") ||
		(l.pos+7 < len(l.src) && isIdentCont(l.src[l.pos+7])) {
		l.pos = save
		return t
	}
	l.pos += 7
	if !l.skipSpace() || l.pos+3 > len(l.src) || l.src[l.pos] != '\'' || l.src[l.pos+2] != '\'' || !validUEscape(l.src[l.pos+1]) {
		l.pos = len(l.src)
		return Token{Kind: Invalid, Start: t.Start, End: len(l.src)}
	}
	t.UEscape = l.src[l.pos+1]
	l.pos += 3
	return t
}

// validUEscape is PostgreSQL's rule for a UESCAPE character: not a hex
// digit, '+', a quote or whitespace.
func validUEscape(c byte) bool {
	return c < 0x80 && !isSpace(c) && c != '+' && c != '\'' && c != '"' &&
		!isDigit(c) && !(c|0x20 >= 'a' && c|0x20 <= 'f')
}

// quoted scans a '...' literal whose opening quote is at l.pos. With
// backslashes, \x escapes are honoured. Literals separated only by
// whitespace containing a newline continue one another, as in SQL.
func (l *Lexer) quoted(start int, form byte, backslashes bool) Token {
	t := Token{Kind: String, Start: start, Form: form}
	for {
		l.pos++ // opening quote
		for {
			if l.pos >= len(l.src) {
				return Token{Kind: Invalid, Start: start, End: len(l.src)}
			}
			ch := l.src[l.pos]
			if ch == '\\' && backslashes {
				t.Escapes = true
				l.pos += 2
				continue
			}
			if ch == '\'' {
				if l.peek(1) == '\'' {
					t.Escapes = true
					l.pos += 2
					continue
				}
				l.pos++
				break
			}
			l.pos++
		}
		// Continuation: whitespace with at least one newline, then another quote.
		save, newline := l.pos, false
		for l.pos < len(l.src) && isSpace(l.src[l.pos]) {
			if l.src[l.pos] == '\n' || l.src[l.pos] == '\r' {
				newline = true
			}
			l.pos++
		}
		if newline && l.pos < len(l.src) && l.src[l.pos] == '\'' {
			t.Escapes = true
			continue
		}
		l.pos = save
		t.End = l.pos
		return t
	}
}

func (l *Lexer) quotedIdent(start int) Token {
	t := Token{Kind: QuotedIdent, Start: start}
	l.pos++ // opening quote (after any U& prefix)
	for {
		if l.pos >= len(l.src) {
			return Token{Kind: Invalid, Start: start, End: len(l.src)}
		}
		if l.src[l.pos] == '"' {
			if l.peek(1) == '"' {
				t.Escapes = true
				l.pos += 2
				continue
			}
			l.pos++
			t.End = l.pos
			return t
		}
		l.pos++
	}
}

// dollarQuoted scans $tag$...$tag$ starting at a '$' that is not a parameter.
func (l *Lexer) dollarQuoted(start int) (Token, bool) {
	i := start + 1
	if i < len(l.src) && isIdentStart(l.src[i]) {
		for i < len(l.src) && isIdentCont(l.src[i]) && l.src[i] != '$' {
			i++
		}
	}
	if i >= len(l.src) || l.src[i] != '$' {
		return Token{}, false
	}
	tag := l.src[start : i+1]
	body := i + 1
	for j := body; j+len(tag) <= len(l.src); j++ {
		if l.src[j] == '$' && l.src[j:j+len(tag)] == tag {
			l.pos = j + len(tag)
			return Token{Kind: String, Start: start, End: l.pos, Form: '$'}, true
		}
	}
	l.pos = len(l.src)
	return Token{Kind: Invalid, Start: start, End: len(l.src)}, true
}

func (l *Lexer) number(start int) Token {
	if l.src[l.pos] == '0' && (l.peek(1)|0x20 == 'x' || l.peek(1)|0x20 == 'o' || l.peek(1)|0x20 == 'b') {
		l.pos += 2
		for l.pos < len(l.src) && (isIdentCont(l.src[l.pos])) {
			l.pos++
		}
		return Token{Kind: Number, Start: start, End: l.pos}
	}
	for l.pos < len(l.src) && (isDigit(l.src[l.pos]) || l.src[l.pos] == '_') {
		l.pos++
	}
	if l.pos < len(l.src) && l.src[l.pos] == '.' && l.peek(1) != '.' {
		l.pos++
		for l.pos < len(l.src) && (isDigit(l.src[l.pos]) || l.src[l.pos] == '_') {
			l.pos++
		}
	}
	if l.pos < len(l.src) && l.src[l.pos]|0x20 == 'e' {
		j := l.pos + 1
		if j < len(l.src) && (l.src[j] == '+' || l.src[j] == '-') {
			j++
		}
		if j < len(l.src) && isDigit(l.src[j]) {
			l.pos = j
			for l.pos < len(l.src) && isDigit(l.src[l.pos]) {
				l.pos++
			}
		}
	}
	return Token{Kind: Number, Start: start, End: l.pos}
}

// operator scans the longest operator, with PostgreSQL's rule that "--" and
// "/*" start comments and a multi-character operator may end in + or - only
// if it contains one of ~ ! @ # % ^ & | ` ?.
func (l *Lexer) operator(start int) Token {
	end := start
	for end < len(l.src) && isOpChar(l.src[end]) {
		if end > start && ((l.src[end] == '-' && end+1 < len(l.src) && l.src[end+1] == '-') ||
			(l.src[end] == '/' && end+1 < len(l.src) && l.src[end+1] == '*')) {
			break
		}
		end++
	}
	if end-start > 1 {
		special := false
		for i := start; i < end; i++ {
			switch l.src[i] {
			case '~', '!', '@', '#', '%', '^', '&', '|', '`', '?':
				special = true
			}
		}
		if !special {
			for end-start > 1 && (l.src[end-1] == '+' || l.src[end-1] == '-') {
				end--
			}
		}
	}
	l.pos = end
	return Token{Kind: Op, Start: start, End: end}
}

// EqualFold reports whether an identifier token is the given lower-case
// keyword, ignoring ASCII case.
func (l *Lexer) EqualFold(t Token, keyword string) bool {
	if t.Kind != Ident || t.End-t.Start != len(keyword) {
		return false
	}
	for i := 0; i < len(keyword); i++ {
		c := l.src[t.Start+i]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != keyword[i] {
			return false
		}
	}
	return true
}

// IsOp reports whether a token is exactly the given operator or punctuation.
func (l *Lexer) IsOp(t Token, op string) bool {
	return (t.Kind == Op || t.Kind == Punct) && l.src[t.Start:t.End] == op
}
