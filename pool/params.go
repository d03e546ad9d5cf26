package pool

import (
	"bytes"
	"hash/maphash"
	"strings"
)

// paramSeed is fixed for the process so fingerprints compare across connections.
var paramSeed = maphash.MakeSeed()

// ParamState is a set of run-time parameters (name -> value) with an
// order-independent fingerprint kept up to date on every change. Sessions
// compare fingerprints to skip replaying settings on a server that already
// has exactly theirs, which is the common case, without walking the map.
//
// Names are stored lower-cased (PostgreSQL's GUC names are case-insensitive);
// the spelling the server reports is kept for ParameterStatus messages.
type ParamState struct {
	values map[string]Param
	fp     uint64
}

// Param is one parameter's reported spelling and value.
type Param struct {
	Name  string
	Value string
}

// Get returns a parameter's value.
func (p *ParamState) Get(name string) (string, bool) {
	v, ok := p.values[strings.ToLower(name)]
	return v.Value, ok
}

// Set records a value, keeping the first spelling seen for the name.
func (p *ParamState) Set(name, value string) {
	key := strings.ToLower(name)
	if p.values == nil {
		p.values = map[string]Param{}
	}
	if old, ok := p.values[key]; ok {
		if old.Value == value {
			return
		}
		p.fp ^= paramHash(key, old.Value)
		name = old.Name
	}
	p.values[key] = Param{Name: name, Value: value}
	p.fp ^= paramHash(key, value)
}

// Delete forgets a parameter.
func (p *ParamState) Delete(name string) {
	key := strings.ToLower(name)
	if old, ok := p.values[key]; ok {
		p.fp ^= paramHash(key, old.Value)
		delete(p.values, key)
	}
}

// Fingerprint identifies the whole set; equal sets have equal fingerprints.
func (p *ParamState) Fingerprint() uint64 { return p.fp }

// Len reports the number of parameters.
func (p *ParamState) Len() int { return len(p.values) }

// Each calls fn for every parameter, keyed by lower-cased name.
func (p *ParamState) Each(fn func(key string, v Param)) {
	for k, v := range p.values {
		fn(k, v)
	}
}

// Clone returns an independent copy.
func (p *ParamState) Clone() ParamState {
	out := ParamState{fp: p.fp, values: make(map[string]Param, len(p.values))}
	for k, v := range p.values {
		out.values[k] = v
	}
	return out
}

// NoteStatus records a ParameterStatus message body ("name\0value\0").
func (p *ParamState) NoteStatus(body []byte) {
	name, value, ok := ParseParameterStatus(body)
	if ok {
		p.Set(name, value)
	}
}

// ParseParameterStatus splits a ParameterStatus body.
func ParseParameterStatus(body []byte) (name, value string, ok bool) {
	i := bytes.IndexByte(body, 0)
	if i < 0 {
		return "", "", false
	}
	j := bytes.IndexByte(body[i+1:], 0)
	if j < 0 {
		return "", "", false
	}
	return string(body[:i]), string(body[i+1 : i+1+j]), true
}

func paramHash(key, value string) uint64 {
	var h maphash.Hash
	h.SetSeed(paramSeed)
	h.WriteString(key)
	h.WriteByte(0)
	h.WriteString(value)
	return h.Sum64()
}
