package router

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"strconv"
	"strings"
	"unicode"
	"unsafe"

	"github.com/pgrouter/pgrouter/shardmap"
)

// Keys are canonicalized by the key argument's declared type before
// hashing, so every way a client can send the same value routes alike:
// text '42', a constant 42 and binary int8 42 for an integer key; text and
// binary forms of a uuid; a bpchar without its trailing blanks.

var (
	errNotInteger   = errors.New("not an integer")
	errOutOfRange   = errors.New("out of range for its type")
	errBinaryFormat = errors.New("sent in binary format, which pgrouter can only read for integer, text and uuid keys; send it as text")
	errNotUUID      = errors.New("not a uuid")
)

// hashKey canonicalizes a key value and hashes it.
func hashKey(h shardmap.HashFunc, keyType, paramType uint32, value []byte, bin bool) (uint64, error) {
	switch {
	case isIntType(keyType):
		v, size, err := typedInt(keyType, paramType, value, bin)
		if err != nil {
			return 0, err
		}
		return h.Int(v, size), nil
	case keyType == OIDUUID:
		var buf [36]byte
		s, err := uuidKey(&buf, value, bin)
		if err != nil {
			return 0, err
		}
		return h.Text(s), nil
	case keyType == OIDBpchar:
		for len(value) > 0 && value[len(value)-1] == ' ' {
			value = value[:len(value)-1]
		}
		return h.Text(value), nil
	case isTextType(keyType) || !bin:
		return h.Text(value), nil
	}
	return 0, errBinaryFormat
}

// typedInt reads an integer key and checks it fits its declared type,
// whose size in bytes it returns.
func typedInt(keyType, paramType uint32, value []byte, bin bool) (int64, int, error) {
	v, err := intKey(value, bin, paramType)
	if err != nil {
		return 0, 0, err
	}
	switch keyType {
	case OIDInt2:
		if v < math.MinInt16 || v > math.MaxInt16 {
			return 0, 0, errOutOfRange
		}
		return v, 2, nil
	case OIDInt4:
		if v < math.MinInt32 || v > math.MaxInt32 {
			return 0, 0, errOutOfRange
		}
		return v, 4, nil
	}
	return v, 8, nil
}

// transformedHash hashes a key changed by a function's key_transform: the
// text PL/Proxy's RUN ON hashtext(x::text) and hashtext(lower(x)) hash, or
// for value the integer key itself, as RUN ON x.
// The text is the key's canonical text form (what x::text gives on the
// server), lower-cased for lower (Unicode simple case mapping, as
// PostgreSQL's lower() under a libc UTF-8 locale) and lower_ascii (the C
// locale: ASCII letters only).
func transformedHash(h shardmap.HashFunc, transform string, keyType, paramType uint32, value []byte, bin bool) (uint64, error) {
	if transform == keyValue {
		// RUN ON x: PL/Proxy masks the integer itself.
		if !isIntType(keyType) {
			return 0, errNotInteger
		}
		v, _, err := typedInt(keyType, paramType, value, bin)
		return uint64(v), err
	}
	var text []byte
	switch {
	case isIntType(keyType):
		v, _, err := typedInt(keyType, paramType, value, bin)
		if err != nil {
			return 0, err
		}
		text = strconv.AppendInt(make([]byte, 0, 20), v, 10)
	case keyType == OIDUUID:
		var buf [36]byte
		s, err := uuidKey(&buf, value, bin)
		if err != nil {
			return 0, err
		}
		text = s
	case keyType == OIDBpchar:
		text = bytes.TrimRight(value, " ")
	case isTextType(keyType) || !bin:
		text = value
	default:
		return 0, errBinaryFormat
	}
	switch transform {
	case lowerUnicode:
		text = []byte(strings.Map(unicode.ToLower, string(text)))
	case lowerASCII:
		text = bytes.Clone(text)
		for i, c := range text {
			if c >= 'A' && c <= 'Z' {
				text[i] = c + 'a' - 'A'
			}
		}
	}
	return h.Text(text), nil
}

// key_transform values (config's).
const (
	lowerUnicode = "lower"
	lowerASCII   = "lower_ascii"
	keyValue     = "value"
)

// intKey reads an integer key in text or binary form.
func intKey(value []byte, bin bool, paramType uint32) (int64, error) {
	if bin {
		switch len(value) {
		case 2:
			return int64(int16(binary.BigEndian.Uint16(value))), nil
		case 4:
			return int64(int32(binary.BigEndian.Uint32(value))), nil
		case 8:
			return int64(binary.BigEndian.Uint64(value)), nil
		}
		if isTextType(paramType) {
			return parseInt(value)
		}
		return 0, errNotInteger
	}
	return parseInt(value)
}

// parseInt parses a decimal integer with optional sign and surrounding
// blanks (as int8in does) without allocating.
func parseInt(b []byte) (int64, error) {
	for len(b) > 0 && isSpace(b[0]) {
		b = b[1:]
	}
	for len(b) > 0 && isSpace(b[len(b)-1]) {
		b = b[:len(b)-1]
	}
	neg := false
	if len(b) > 0 && (b[0] == '-' || b[0] == '+') {
		neg = b[0] == '-'
		b = b[1:]
	}
	if len(b) == 0 {
		return 0, errNotInteger
	}
	var v uint64
	for _, c := range b {
		if c == '_' {
			continue
		}
		if c < '0' || c > '9' {
			return 0, errNotInteger
		}
		if v > (math.MaxUint64-9)/10 {
			return 0, errOutOfRange
		}
		v = v*10 + uint64(c-'0')
	}
	if neg {
		if v > 1<<63 {
			return 0, errOutOfRange
		}
		return -int64(v), nil
	}
	if v > math.MaxInt64 {
		return 0, errOutOfRange
	}
	return int64(v), nil
}

// uuidKey writes a uuid's canonical text form (lower case, hyphenated) into buf.
func uuidKey(buf *[36]byte, value []byte, bin bool) ([]byte, error) {
	const hexDigits = "0123456789abcdef"
	var raw [16]byte
	if bin {
		if len(value) != 16 {
			return nil, errNotUUID
		}
		copy(raw[:], value)
	} else {
		n := 0
		for _, c := range value {
			var d byte
			switch {
			case c >= '0' && c <= '9':
				d = c - '0'
			case c|0x20 >= 'a' && c|0x20 <= 'f':
				d = c | 0x20 - 'a' + 10
			case c == '-' || c == '{' || c == '}':
				continue
			default:
				return nil, errNotUUID
			}
			if n >= 32 {
				return nil, errNotUUID
			}
			raw[n/2] |= d << (4 * (1 - n%2))
			n++
		}
		if n != 32 {
			return nil, errNotUUID
		}
	}
	j := 0
	for i, x := range raw {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			buf[j] = '-'
			j++
		}
		buf[j], buf[j+1] = hexDigits[x>>4], hexDigits[x&15]
		j += 2
	}
	return buf[:], nil
}

// unsafeBytes views a string's bytes without copying; they must not be changed.
func unsafeBytes(s string) []byte {
	return unsafe.Slice(unsafe.StringData(s), len(s))
}
