package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

func body(t *testing.T, m pgproto3.FrontendMessage) []byte {
	t.Helper()
	raw, err := m.Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	return raw[HeaderLen:]
}

func TestFrontendViews(t *testing.T) {
	p, err := ReadParse(body(t, &pgproto3.Parse{Name: "s1", Query: "SELECT $1", ParameterOIDs: []uint32{25}}))
	if err != nil || string(p.Name) != "s1" || string(p.Query) != "SELECT $1" || !bytes.HasPrefix(p.Definition, []byte("SELECT $1\x00")) {
		t.Fatalf("Parse: %+v, %v", p, err)
	}
	b, err := ReadBind(body(t, &pgproto3.Bind{DestinationPortal: "p", PreparedStatement: "s1",
		ParameterFormatCodes: []int16{1, 0}, Parameters: [][]byte{{0, 0, 0, 7}, nil, []byte("x")}, ResultFormatCodes: []int16{1}}))
	if err != nil || string(b.Portal) != "p" || string(b.Statement) != "s1" {
		t.Fatalf("Bind: %+v, %v", b, err)
	}
	for i, want := range []struct {
		v             []byte
		bin, null, ok bool
	}{{[]byte{0, 0, 0, 7}, true, false, true}, {nil, false, true, true}, {[]byte("x"), false, false, true}, {nil, false, false, false}} {
		v, bin, null, ok := b.Param(i)
		if !bytes.Equal(v, want.v) || bin != want.bin || null != want.null || ok != want.ok {
			t.Errorf("Param(%d) = %q %v %v %v, want %+v", i, v, bin, null, ok, want)
		}
	}
	if f := b.ResultFormats(); len(f) != 1 || f[0] != 1 {
		t.Errorf("ResultFormats = %v", f)
	}
	// The parts copy into another Bind unchanged.
	again := append([]byte("p\x00s1\x00"), append(append([]byte{}, b.Params...), b.Results...)...)
	if b2, err := ReadBind(again); err != nil || !bytes.Equal(b2.Params, b.Params) {
		t.Fatalf("re-read Bind: %v", err)
	}
	d, err := ReadTarget(Describe, body(t, &pgproto3.Describe{ObjectType: 'P', Name: "p"}))
	if err != nil || d.Kind != 'P' || string(d.Name) != "p" {
		t.Fatalf("Describe: %+v, %v", d, err)
	}
	e, err := ReadExecute(body(t, &pgproto3.Execute{Portal: "p", MaxRows: 5}))
	if err != nil || string(e.Portal) != "p" || e.MaxRows != 5 {
		t.Fatalf("Execute: %+v, %v", e, err)
	}
}

func TestMalformedFrontendMessages(t *testing.T) {
	tooMany := binary.BigEndian.AppendUint16([]byte("\x00\x00\x00\x00"), 3) // three parameters, none sent
	cases := []struct {
		typ  byte
		body []byte
	}{
		{Parse, []byte("s1")},
		{Parse, []byte("s1\x00SELECT 1\x00\x00\x01")},
		{Bind, []byte("p\x00")},
		{Bind, tooMany},
		{Bind, []byte("\x00\x00\x00\x00\x00\x01\x00\x00\x00\x09ab\x00\x00")},
		{Bind, []byte("\x00\x00\x00\x00\x00\x00\x00\x01")}, // one result format announced, none sent
		{Describe, []byte("X\x00")},
		{Describe, []byte("Sname")},
		{Close, []byte("P\x00extra")},
		{Execute, []byte("p\x00\x00\x00")},
	}
	for _, c := range cases {
		var err error
		switch c.typ {
		case Parse:
			_, err = ReadParse(c.body)
		case Bind:
			_, err = ReadBind(c.body)
		case Describe, Close:
			_, err = ReadTarget(c.typ, c.body)
		case Execute:
			_, err = ReadExecute(c.body)
		}
		var m *MalformedError
		if !errors.As(err, &m) || m.Type != c.typ {
			t.Errorf("%c %q: %v; want a MalformedError", c.typ, c.body, err)
		}
	}
}

// FuzzReadBind: no input makes ReadBind or Param panic, and a Bind it
// accepts has every parameter it announces.
func FuzzReadBind(f *testing.F) {
	f.Add([]byte("p\x00s\x00\x00\x01\x00\x01\x00\x01\x00\x00\x00\x01x\x00\x00"))
	f.Add([]byte("\x00\x00\x00\x00\x00\x02\xff\xff\xff\xff\x00\x00\x00\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ReadBind(b)
		if err != nil {
			return
		}
		n := int(binary.BigEndian.Uint16(m.Params[2+2*int(binary.BigEndian.Uint16(m.Params)):]))
		for i := range n + 1 {
			if _, _, _, ok := m.Param(i); ok != (i < n) {
				t.Fatalf("Param(%d) ok %v with %d parameters", i, ok, n)
			}
		}
		m.ResultFormats()
	})
}
