package wire

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// Views of the extended-protocol messages a client sends. Each Read
// function checks the whole body once and returns slices of it, copying
// nothing, so they are valid only as long as the body is; a body that does
// not hold what its type says is a *MalformedError, the one error every
// caller turns into 08P01.

// MalformedError reports a message whose body does not parse.
type MalformedError struct {
	Type byte // the message type
}

func (e *MalformedError) Error() string {
	name := map[byte]string{Parse: "Parse", Bind: "Bind", Describe: "Describe", Execute: "Execute", Close: "Close"}[e.Type]
	if name == "" {
		name = fmt.Sprintf("%q", e.Type)
	}
	return "malformed " + name + " message"
}

// CString splits a NUL-terminated string off the front of b.
func CString(b []byte) (s, rest []byte, ok bool) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return nil, nil, false
	}
	return b[:i], b[i+1:], true
}

// ParseMsg is a Parse: a statement name and its definition.
type ParseMsg struct {
	Name []byte
	// Definition is the rest of the body: the query with its NUL, then the
	// parameter types. Two Parses with equal definitions prepare the same
	// statement.
	Definition []byte
	Query      []byte
}

// ReadParse reads a Parse body.
func ReadParse(body []byte) (ParseMsg, error) {
	name, def, ok := CString(body)
	if !ok {
		return ParseMsg{}, &MalformedError{Parse}
	}
	query, types, ok := CString(def)
	if !ok || len(types) < 2 || len(types) != 2+4*int(binary.BigEndian.Uint16(types)) {
		return ParseMsg{}, &MalformedError{Parse}
	}
	return ParseMsg{Name: name, Definition: def, Query: query}, nil
}

// BindMsg is a Bind: portal, statement, parameters and result formats.
type BindMsg struct {
	Portal, Statement []byte
	// Params is the parameter part as sent: format codes, then the values
	// (each with its length), ready to be copied into another Bind.
	Params []byte
	// Results is the result format part as sent: a count, then the codes.
	Results []byte
}

// ReadBind reads a Bind body, checking every length in it.
func ReadBind(body []byte) (BindMsg, error) {
	bad := &MalformedError{Bind}
	portal, rest, ok := CString(body)
	if !ok {
		return BindMsg{}, bad
	}
	stmt, b, ok := CString(rest)
	if !ok {
		return BindMsg{}, bad
	}
	params := b
	if len(b) < 2 {
		return BindMsg{}, bad
	}
	nf := int(binary.BigEndian.Uint16(b))
	if len(b) < 2+2*nf+2 {
		return BindMsg{}, bad
	}
	b = b[2+2*nf:]
	np := int(binary.BigEndian.Uint16(b))
	b = b[2:]
	for range np {
		if len(b) < 4 {
			return BindMsg{}, bad
		}
		n := int32(binary.BigEndian.Uint32(b))
		b = b[4:]
		if n > 0 {
			if int(n) > len(b) {
				return BindMsg{}, bad
			}
			b = b[n:]
		}
	}
	if len(b) < 2 || len(b) != 2+2*int(binary.BigEndian.Uint16(b)) {
		return BindMsg{}, bad
	}
	return BindMsg{Portal: portal, Statement: stmt, Params: params[:len(params)-len(b)], Results: b}, nil
}

// Param returns parameter i's value and whether it is in binary format;
// null reports SQL NULL, ok false a parameter the Bind does not have.
func (m BindMsg) Param(i int) (value []byte, binaryFormat, null, ok bool) {
	b := m.Params
	if len(b) < 2 {
		return nil, false, false, false
	}
	nf := int(binary.BigEndian.Uint16(b))
	format := uint16(0)
	switch {
	case nf == 1:
		format = binary.BigEndian.Uint16(b[2:])
	case i < nf:
		format = binary.BigEndian.Uint16(b[2+2*i:])
	}
	b = b[2+2*nf:]
	if i >= int(binary.BigEndian.Uint16(b)) {
		return nil, false, false, false
	}
	b = b[2:]
	for k := 0; ; k++ { // ReadBind checked every length
		n := int32(binary.BigEndian.Uint32(b))
		b = b[4:]
		if n < 0 {
			if k == i {
				return nil, format == 1, true, true
			}
			continue
		}
		if k == i {
			return b[:n], format == 1, false, true
		}
		b = b[n:]
	}
}

// ResultFormats returns the result format codes.
func (m BindMsg) ResultFormats() []uint16 {
	if len(m.Results) < 2 {
		return nil
	}
	codes := make([]uint16, binary.BigEndian.Uint16(m.Results))
	for i := range codes {
		codes[i] = binary.BigEndian.Uint16(m.Results[2+2*i:])
	}
	return codes
}

// TargetMsg is a Describe or a Close: of a statement ('S') or portal ('P').
type TargetMsg struct {
	Kind byte
	Name []byte
}

// ReadTarget reads the body of a Describe or Close (typ says which).
func ReadTarget(typ byte, body []byte) (TargetMsg, error) {
	if len(body) < 2 || (body[0] != 'S' && body[0] != 'P') {
		return TargetMsg{}, &MalformedError{typ}
	}
	name, rest, ok := CString(body[1:])
	if !ok || len(rest) != 0 {
		return TargetMsg{}, &MalformedError{typ}
	}
	return TargetMsg{Kind: body[0], Name: name}, nil
}

// ExecuteMsg is an Execute: a portal and a row limit (0: all rows).
type ExecuteMsg struct {
	Portal  []byte
	MaxRows int64
}

// ReadExecute reads an Execute body.
func ReadExecute(body []byte) (ExecuteMsg, error) {
	portal, rest, ok := CString(body)
	if !ok || len(rest) != 4 {
		return ExecuteMsg{}, &MalformedError{Execute}
	}
	return ExecuteMsg{Portal: portal, MaxRows: int64(binary.BigEndian.Uint32(rest))}, nil
}
