package router

import (
	"errors"
	"strconv"
	"strings"
	"unicode/utf8"
)

// errBadEscape reports an escape sequence PostgreSQL would reject.
var errBadEscape = errors.New("invalid escape sequence in string literal")

// Value returns the value of a string literal token. Plain literals are
// returned as a slice of the source without allocating; escaped ones are
// decoded (a U&-string with its UESCAPE character, see Token.UEscape).
func (l *Lexer) Value(t Token) (string, error) {
	raw := l.src[t.Start:t.End]
	uescape := t.UEscape
	if uescape == 0 {
		uescape = '\\'
	}
	switch t.Kind {
	case Ident:
		return foldIdent(raw), nil
	case QuotedIdent:
		if t.Escapes && len(raw) >= 2 && raw[0] != '"' { // U&"..."
			inner := strings.ReplaceAll(raw[3:len(raw)-1], `""`, `"`)
			return decodeUnicode(inner, uescape)
		}
		inner := raw[1 : len(raw)-1]
		if t.Escapes {
			inner = strings.ReplaceAll(inner, `""`, `"`)
		}
		return inner, nil
	case String, BitString:
	default:
		return "", errors.New("not a literal")
	}
	if t.Form == '$' {
		tagEnd := strings.IndexByte(raw[1:], '$') + 2
		return raw[tagEnd : len(raw)-tagEnd], nil
	}
	body := raw
	switch t.Form {
	case 'E', 'N', 'B', 'X':
		body = raw[1:]
	case 'U':
		body = raw[2:]
	}
	if !t.Escapes {
		return body[1 : len(body)-1], nil
	}
	var b strings.Builder
	backslashes := t.Form == 'E' || (!l.StandardStrings && (t.Form == 0 || t.Form == 'N'))
	for _, part := range splitContinued(body, backslashes) {
		if len(part) < 2 {
			return "", errBadEscape
		}
		inner := part[1 : len(part)-1]
		switch {
		case t.Form == 'U':
			s, err := decodeUnicode(strings.ReplaceAll(inner, "''", "'"), uescape)
			if err != nil {
				return "", err
			}
			b.WriteString(s)
		case backslashes:
			if err := decodeBackslashes(&b, inner); err != nil {
				return "", err
			}
		default:
			b.WriteString(strings.ReplaceAll(inner, "''", "'"))
		}
	}
	return b.String(), nil
}

// splitContinued splits 'a'\n'b' into its quoted parts; backslashes says
// whether \' escapes a quote (E-strings, or standard_conforming_strings off).
func splitContinued(s string, backslashes bool) []string {
	var parts []string
	for len(s) > 0 {
		if s[0] != '\'' {
			s = s[1:]
			continue
		}
		i := 1
		for i < len(s) {
			if backslashes && s[i] == '\\' && i+1 < len(s) {
				i += 2
				continue
			}
			if s[i] == '\'' {
				if i+1 < len(s) && s[i+1] == '\'' {
					i += 2
					continue
				}
				break
			}
			i++
		}
		end := min(i+1, len(s))
		parts = append(parts, s[:end])
		s = s[end:]
	}
	return parts
}

// decodeBackslashes decodes an E-string body: doubled and \' quotes, \b \f \n \r \t,
// octal \ooo, hex \xhh, \uXXXX and \UXXXXXXXX.
func decodeBackslashes(b *strings.Builder, s string) error {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '\'' && i+1 < len(s) && s[i+1] == '\'' {
			b.WriteByte('\'')
			i++
			continue
		}
		if c != '\\' || i+1 >= len(s) {
			b.WriteByte(c)
			continue
		}
		i++
		switch e := s[i]; e {
		case 'b':
			b.WriteByte('\b')
		case 'f':
			b.WriteByte('\f')
		case 'n':
			b.WriteByte('\n')
		case 'r':
			b.WriteByte('\r')
		case 't':
			b.WriteByte('\t')
		case 'x':
			j := i + 1
			for j < len(s) && j < i+3 && isHex(s[j]) {
				j++
			}
			if j == i+1 {
				b.WriteByte('x')
				continue
			}
			v, _ := strconv.ParseUint(s[i+1:j], 16, 8)
			b.WriteByte(byte(v))
			i = j - 1
		case 'u', 'U':
			n := 4
			if e == 'U' {
				n = 8
			}
			if i+1+n > len(s) {
				return errBadEscape
			}
			v, err := strconv.ParseUint(s[i+1:i+1+n], 16, 32)
			if err != nil || !utf8.ValidRune(rune(v)) {
				return errBadEscape
			}
			b.WriteRune(rune(v))
			i += n
		default:
			if e >= '0' && e <= '7' {
				j := i
				for j < len(s) && j < i+3 && s[j] >= '0' && s[j] <= '7' {
					j++
				}
				v, _ := strconv.ParseUint(s[i:j], 8, 16)
				b.WriteByte(byte(v))
				i = j - 1
				continue
			}
			b.WriteByte(e)
		}
	}
	return nil
}

// decodeUnicode decodes a U&-string body: esc + 4 hex digits, esc + '+' + 6 hex
// digits, and esc esc for the escape character itself.
func decodeUnicode(s string, esc byte) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != esc {
			b.WriteByte(s[i])
			continue
		}
		switch {
		case i+1 < len(s) && s[i+1] == esc:
			b.WriteByte(esc)
			i++
		case i+8 <= len(s) && s[i+1] == '+':
			v, err := strconv.ParseUint(s[i+2:i+8], 16, 32)
			if err != nil || !utf8.ValidRune(rune(v)) {
				return "", errBadEscape
			}
			b.WriteRune(rune(v))
			i += 7
		case i+5 <= len(s):
			v, err := strconv.ParseUint(s[i+1:i+5], 16, 32)
			if err != nil || !utf8.ValidRune(rune(v)) {
				return "", errBadEscape
			}
			b.WriteRune(rune(v))
			i += 4
		default:
			return "", errBadEscape
		}
	}
	return b.String(), nil
}

func isHex(c byte) bool {
	return isDigit(c) || (c|0x20 >= 'a' && c|0x20 <= 'f')
}

// foldIdent lower-cases an unquoted identifier as PostgreSQL does (ASCII
// only), without allocating when it is already lower case.
func foldIdent(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 'A' && c <= 'Z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if b[j] >= 'A' && b[j] <= 'Z' {
					b[j] += 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return s
}
