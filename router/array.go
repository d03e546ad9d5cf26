package router

import (
	"encoding/binary"
	"errors"
	"strings"
)

// Arrays in PostgreSQL's text and binary forms, as far as SPLIT needs them:
// one dimension, elements kept as the bytes they were sent as (text or
// binary), written back in the same form for each shard.

// arrayValue is a split argument's elements for one call.
type arrayValue struct {
	elems [][]byte // nil entries are NULL
	nulls []bool
	bin   bool   // read from a binary-format parameter
	oid   uint32 // binary: the element type it was sent with
}

var (
	errMultiDim     = errors.New("split multi-dimensional arrays are not supported")
	errBadArrayText = errors.New("malformed array literal")
	errBadArrayBin  = errors.New("malformed binary array")
)

// parseArrayText reads a one-dimensional array in PostgreSQL's text form:
// {a,"b c",NULL}, optionally after a dimension decoration ([1:3]=).
func parseArrayText(b []byte) (arrayValue, error) {
	var v arrayValue
	s := strings.TrimSpace(string(b))
	if strings.HasPrefix(s, "[") {
		eq := strings.IndexByte(s, '=')
		if eq < 0 {
			return v, errBadArrayText
		}
		if strings.Count(s[:eq], "[") > 1 {
			return v, errMultiDim
		}
		s = strings.TrimSpace(s[eq+1:])
	}
	if len(s) < 2 || s[0] != '{' || s[len(s)-1] != '}' {
		return v, errBadArrayText
	}
	s = s[1 : len(s)-1]
	if strings.TrimSpace(s) == "" {
		return v, nil
	}
	for i := 0; ; {
		for i < len(s) && isSpace(s[i]) {
			i++
		}
		if i < len(s) && s[i] == '{' {
			return v, errMultiDim
		}
		var elem []byte
		quoted := false
		if i < len(s) && s[i] == '"' {
			quoted = true
			i++
			for ; i < len(s) && s[i] != '"'; i++ {
				if s[i] == '\\' && i+1 < len(s) {
					i++
				}
				elem = append(elem, s[i])
			}
			if i >= len(s) {
				return v, errBadArrayText
			}
			i++
			for i < len(s) && isSpace(s[i]) {
				i++
			}
		} else {
			for ; i < len(s) && s[i] != ','; i++ {
				switch s[i] {
				case '\\':
					if i+1 < len(s) {
						i++
					}
				case '"', '{', '}':
					return v, errBadArrayText
				}
				elem = append(elem, s[i])
			}
			for len(elem) > 0 && isSpace(elem[len(elem)-1]) {
				elem = elem[:len(elem)-1]
			}
		}
		null := !quoted && strings.EqualFold(string(elem), "null")
		if elem == nil {
			elem = []byte{}
		}
		if null {
			elem = nil
		}
		v.elems = append(v.elems, elem)
		v.nulls = append(v.nulls, null)
		if i >= len(s) {
			return v, nil
		}
		if s[i] != ',' {
			return v, errBadArrayText
		}
		i++
	}
}

// parseArrayBinary reads a one-dimensional array in binary form: ndim,
// has-nulls flag, element type, (size, lower bound) per dimension, then
// each element's length (-1: NULL) and bytes.
func parseArrayBinary(b []byte) (arrayValue, error) {
	var v arrayValue
	v.bin = true
	if len(b) < 12 {
		return v, errBadArrayBin
	}
	ndim := int32(binary.BigEndian.Uint32(b))
	v.oid = binary.BigEndian.Uint32(b[8:])
	b = b[12:]
	switch {
	case ndim == 0:
		return v, nil
	case ndim > 1:
		return v, errMultiDim
	case ndim < 0 || len(b) < 8:
		return v, errBadArrayBin
	}
	n := int32(binary.BigEndian.Uint32(b))
	b = b[8:]
	if n < 0 || int(n) > len(b)/4 {
		return v, errBadArrayBin
	}
	for range n {
		if len(b) < 4 {
			return v, errBadArrayBin
		}
		size := int32(binary.BigEndian.Uint32(b))
		b = b[4:]
		if size < 0 {
			v.elems = append(v.elems, nil)
			v.nulls = append(v.nulls, true)
			continue
		}
		if int(size) > len(b) {
			return v, errBadArrayBin
		}
		v.elems = append(v.elems, b[:size])
		v.nulls = append(v.nulls, false)
		b = b[size:]
	}
	if len(b) != 0 {
		return v, errBadArrayBin
	}
	return v, nil
}

// encode writes the elements at idx in the form the value came in.
func (v *arrayValue) encode(idx []int) []byte {
	if v.bin {
		hasNull := uint32(0)
		for _, i := range idx {
			if v.nulls[i] {
				hasNull = 1
			}
		}
		out := binary.BigEndian.AppendUint32(nil, 1)
		out = binary.BigEndian.AppendUint32(out, hasNull)
		out = binary.BigEndian.AppendUint32(out, v.oid)
		out = binary.BigEndian.AppendUint32(out, uint32(len(idx)))
		out = binary.BigEndian.AppendUint32(out, 1)
		for _, i := range idx {
			if v.nulls[i] {
				out = binary.BigEndian.AppendUint32(out, 0xFFFFFFFF)
				continue
			}
			out = binary.BigEndian.AppendUint32(out, uint32(len(v.elems[i])))
			out = append(out, v.elems[i]...)
		}
		return out
	}
	out := []byte{'{'}
	for k, i := range idx {
		if k > 0 {
			out = append(out, ',')
		}
		if v.nulls[i] {
			out = append(out, "NULL"...)
			continue
		}
		out = append(out, '"')
		for _, c := range v.elems[i] {
			if c == '"' || c == '\\' {
				out = append(out, '\\')
			}
			out = append(out, c)
		}
		out = append(out, '"')
	}
	return append(out, '}')
}

// escapeLiteral writes s as an E'...' string constant, which reads the same
// whatever standard_conforming_strings is.
func escapeLiteral(s []byte) string {
	var b strings.Builder
	b.WriteString("E'")
	for _, c := range s {
		switch c {
		case '\'':
			b.WriteString("''")
		case '\\':
			b.WriteString(`\\`)
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('\'')
	return b.String()
}
