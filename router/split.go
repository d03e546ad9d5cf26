package router

import (
	"encoding/binary"
	"fmt"
	"strings"

	"github.com/pgrouter/pgrouter/shardmap"
	"github.com/pgrouter/pgrouter/sqlstate"
	"github.com/pgrouter/pgrouter/wire"
)

// SPLIT, as PL/Proxy: a function's split arguments are arrays whose
// elements go each to the shard of the key element at the same index.
// Every shard that gets elements is called once, with its elements in
// their original order and the other arguments unchanged, and the
// results are concatenated. A NULL split array counts as empty; split
// arrays of different lengths are an error; with no elements at all the
// call runs once on any shard with the (empty) arrays, so the client still
// gets the result's columns (PL/Proxy makes no call). When every element
// belongs to one shard the statement goes there unchanged.

// SplitArg is where a split array argument comes from in the statement.
type SplitArg struct {
	// Kind: KeyParam ($n), KeyConst (a '{...}' literal), KeyNull, or
	// keyArray (an ARRAY[...] constructor of constants).
	Kind  KeyKind
	Param int    // KeyParam: 0-based parameter index
	Const string // KeyConst: the literal's value
	// Elems are an ARRAY[...] constructor's elements: their values (for
	// the key) and their text in the statement (to rebuild it per shard).
	Elems []Key
	Texts []string
	// From and To delimit what a shard's statement text replaces: the
	// literal, or the inside of ARRAY[...].
	From, To int
	// Key: this argument is the key, hashed element by element.
	Key bool
}

// keyArray is SplitArg.Kind for an ARRAY[...] constructor.
const keyArray KeyKind = 100

// Split is a split call's work: the shards its elements belong to and,
// for each, what differs from the client's statement.
type Split struct {
	Shards []*shardmap.Shard
	// SQL[i] is the statement text for Shards[i], when a split argument is
	// written in the text (nil: the client's text).
	SQL []string
	// Params[i] is the Bind's parameter part for Shards[i], when a split
	// argument is a parameter (nil: the client's).
	Params [][]byte
}

// readSplitArg reads a split argument: a parameter, NULL, a '{...}'
// literal or an ARRAY[...] of constants, each maybe cast.
func readSplitArg(l *Lexer, toks []Token) (SplitArg, error) {
	for len(toks) >= 2 && l.IsOp(toks[0], "(") && l.IsOp(toks[len(toks)-1], ")") && matching(l, toks) {
		toks = toks[1 : len(toks)-1]
	}
	if i := lastTopLevel(l, toks, "::"); i > 0 {
		return readSplitArg(l, toks[:i])
	}
	if len(toks) >= 5 && l.EqualFold(toks[0], "cast") && l.IsOp(toks[1], "(") && l.IsOp(toks[len(toks)-1], ")") {
		body := toks[2 : len(toks)-1]
		for i := len(body) - 1; i > 0; i-- {
			if l.EqualFold(body[i], "as") {
				return readSplitArg(l, body[:i])
			}
		}
	}
	if len(toks) >= 3 && l.EqualFold(toks[0], "array") && l.IsOp(toks[1], "[") && l.IsOp(toks[len(toks)-1], "]") {
		a := SplitArg{Kind: keyArray, From: toks[1].End, To: toks[len(toks)-1].Start}
		var elem []Token
		inner := toks[2 : len(toks)-1]
		depth := 0
		for i, t := range inner {
			switch {
			case l.IsOp(t, "(") || l.IsOp(t, "["):
				depth++
			case l.IsOp(t, ")") || l.IsOp(t, "]"):
				depth--
			}
			if depth == 0 && l.IsOp(t, ",") {
				if err := a.addElem(l, elem); err != nil {
					return SplitArg{}, err
				}
				elem = nil
				continue
			}
			elem = append(elem, t)
			if i == len(inner)-1 {
				if err := a.addElem(l, elem); err != nil {
					return SplitArg{}, err
				}
			}
		}
		return a, nil
	}
	k, err := readKey(l, toks)
	if err != nil {
		return SplitArg{}, err
	}
	a := SplitArg{Kind: k.Kind, Param: k.Param, Const: k.Const}
	if k.Kind == KeyConst {
		last := toks[len(toks)-1]
		if last.Kind != String {
			return SplitArg{}, errExpression
		}
		a.From, a.To = last.Start, last.End
	}
	return a, nil
}

// addElem adds an ARRAY[...] element, which must be a constant.
func (a *SplitArg) addElem(l *Lexer, toks []Token) error {
	if len(toks) == 0 {
		return errExpression
	}
	k, err := readKey(l, toks)
	if err != nil || k.Kind == KeyParam {
		return errExpression
	}
	a.Elems = append(a.Elems, k)
	a.Texts = append(a.Texts, l.src[toks[0].Start:toks[len(toks)-1].End])
	return nil
}

// values reads a split argument's elements from the statement or the Bind.
func (a *SplitArg) values(params wire.BindMsg) (arrayValue, error) {
	switch a.Kind {
	case KeyNull:
		return arrayValue{}, nil
	case keyArray:
		v := arrayValue{elems: make([][]byte, len(a.Elems)), nulls: make([]bool, len(a.Elems))}
		for i, k := range a.Elems {
			if k.Kind == KeyNull {
				v.nulls[i] = true
				continue
			}
			v.elems[i] = []byte(k.Const)
		}
		return v, nil
	case KeyConst:
		return parseArrayText([]byte(a.Const))
	}
	value, bin, null, ok := params.Param(a.Param)
	switch {
	case !ok:
		return arrayValue{}, fmt.Errorf("the Bind has no parameter $%d", a.Param+1)
	case null:
		return arrayValue{}, nil
	case bin:
		return parseArrayBinary(value)
	}
	return parseArrayText(value)
}

// routeSplit routes a call whose key is a split argument: it reads every
// split array, finds each key element's shard and builds each shard's
// statement or parameters.
func (r *Router) routeSplit(p *Plan, c *Call, params wire.BindMsg) (Route, *Error) {
	fail := func(code, format string, args ...any) (Route, *Error) {
		return Route{}, planError(code, "split call of %s: "+format, append([]any{c.Fn.FullName()}, args...)...)
	}
	values := make([]arrayValue, len(c.Split))
	n := -1
	key := -1
	for i := range c.Split {
		v, err := c.Split[i].values(params)
		if err != nil {
			code := sqlstate.InvalidTextRepresentation
			if err == errMultiDim {
				code = sqlstate.FeatureNotSupported
			}
			return fail(code, "%v", err)
		}
		if n >= 0 && len(v.elems) != n {
			return fail(sqlstate.InvalidParameterValue, "split arrays must be of identical lengths (%d and %d elements)", n, len(v.elems))
		}
		n = len(v.elems)
		values[i] = v
		if c.Split[i].Key {
			key = i
		}
	}
	if n <= 0 {
		return Route{Target: TargetAny, Partition: -1}, nil
	}
	cl := r.Cluster
	kv := &values[key]
	keyType := c.Key.Type
	byShard := map[*shardmap.Shard][]int{}
	part := -2
	for i, e := range kv.elems {
		if kv.nulls[i] {
			return Route{}, &Error{Code: sqlstate.NullValueNotAllowed, Message: fmt.Sprintf("pgrouter: element %d of split key %s of %s is NULL", i+1, c.Key.Arg, c.Fn.FullName())}
		}
		paramType := keyType
		if kv.bin {
			paramType = kv.oid
		}
		var pt int
		var err error
		if c.Fn.RunOn == shardmap.RunPartition {
			var v int64
			if v, err = intKey(e, kv.bin, paramType); err == nil && (v < 0 || v >= int64(cl.Partitions)) {
				return fail(sqlstate.NumericValueOutOfRange, "partition %d is out of range 0-%d", v, cl.Partitions-1)
			}
			pt = int(v)
		} else {
			pt, err = partitionOf(cl, c.Fn, keyType, paramType, e, kv.bin)
		}
		if err != nil {
			return fail(sqlstate.InvalidTextRepresentation, "element %d of key %s: %v", i+1, c.Key.Arg, err)
		}
		if part == -2 {
			part = pt
		} else if part != pt {
			part = -1 // several partitions: no one partition to wait for in a move
		}
		sh := cl.ShardOf(pt)
		byShard[sh] = append(byShard[sh], i)
	}
	if len(byShard) == 1 {
		for sh := range byShard {
			return Route{Target: TargetShard, Shard: sh, Partition: part, ReadOnly: p.ReadOnly}, nil
		}
	}
	if len(p.Calls) > 1 {
		return fail(sqlstate.FeatureNotSupported, "its elements belong to several shards, so it must be the only routed call of its statement")
	}
	if len(p.Statements) > 0 {
		return fail(sqlstate.FeatureNotSupported, "its elements belong to several shards, so its statement cannot change session settings or state")
	}
	sp := &Split{}
	for _, sh := range cl.Shards {
		if idx := byShard[sh]; idx != nil {
			sp.Shards = append(sp.Shards, sh)
			sp.SQL = appendShardSQL(sp.SQL, p.SQL, c.Split, values, idx)
			sp.Params = appendShardParams(sp.Params, params, c.Split, values, idx)
		}
	}
	return Route{Target: TargetSplit, Call: c, Split: sp, Partition: -1}, nil
}

// appendShardSQL appends the statement text for a shard's elements idx,
// or leaves sqls nil when no split argument is written in the text.
func appendShardSQL(sqls []string, sql string, args []SplitArg, values []arrayValue, idx []int) []string {
	var b strings.Builder
	last := 0
	for i, a := range args {
		switch a.Kind {
		case KeyConst:
			b.WriteString(sql[last:a.From])
			b.WriteString(escapeLiteral(values[i].encode(idx)))
		case keyArray:
			b.WriteString(sql[last:a.From])
			for k, j := range idx {
				if k > 0 {
					b.WriteString(", ")
				}
				b.WriteString(a.Texts[j])
			}
		default:
			continue
		}
		last = a.To
	}
	if last == 0 {
		return sqls
	}
	b.WriteString(sql[last:])
	return append(sqls, b.String())
}

// appendShardParams appends the Bind parameter part for a shard's
// elements idx, or leaves params nil when no split argument is a parameter.
func appendShardParams(out [][]byte, bind wire.BindMsg, args []SplitArg, values []arrayValue, idx []int) [][]byte {
	replace := map[int][]byte{}
	for i, a := range args {
		if a.Kind == KeyParam {
			replace[a.Param] = values[i].encode(idx)
		}
	}
	if len(replace) == 0 {
		return out
	}
	b := bind.Params
	nf := int(binary.BigEndian.Uint16(b))
	head := 2 + 2*nf + 2
	np := int(binary.BigEndian.Uint16(b[2+2*nf:]))
	buf := append([]byte(nil), b[:head]...)
	rest := b[head:]
	for k := range np { // ReadBind checked every length
		size := int32(binary.BigEndian.Uint32(rest))
		value := rest[4:]
		if size > 0 {
			value = value[:size]
		} else {
			value = value[:0]
		}
		if v, ok := replace[k]; ok {
			buf = binary.BigEndian.AppendUint32(buf, uint32(len(v)))
			buf = append(buf, v...)
		} else {
			buf = append(buf, rest[:4+len(value)]...)
		}
		rest = rest[4+len(value):]
	}
	return append(out, buf)
}
