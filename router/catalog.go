package router

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/pgrouter/pgrouter/shardmap"
)

// Type OIDs pgrouter canonicalizes routing keys for.
const (
	OIDBool    = 16
	OIDName    = 19
	OIDInt8    = 20
	OIDInt2    = 21
	OIDInt4    = 23
	OIDText    = 25
	OIDFloat4  = 700
	OIDFloat8  = 701
	OIDUnknown = 705
	OIDBpchar  = 1042
	OIDVarchar = 1043
	OIDNumeric = 1700
	OIDUUID    = 2950
)

// Signature is one overload of a routed function as pg_proc describes it.
type Signature struct {
	ArgNames    []string // input arguments; "" where unnamed
	ArgTypes    []uint32 // input argument type OIDs
	NumDefaults int      // trailing input arguments with defaults
	ReturnsSet  bool
	ReturnType  uint32
	// ArgElems are the input arguments' array element types (0: not an array).
	ArgElems []uint32
	// KeyIndex is the key's 0-based input position (-1: no key).
	KeyIndex int
	// SplitIndexes are the split arguments' 0-based input positions.
	SplitIndexes []int
	// KeySplit: the key is a split argument, hashed element by element.
	KeySplit bool
}

// KeyType is the type a key value is hashed as: the key argument's
// declared type, or its element type when the key is split.
func (s *Signature) KeyType() uint32 {
	if s.KeyIndex < 0 {
		return 0
	}
	if s.KeySplit {
		return s.ArgElems[s.KeyIndex]
	}
	return s.ArgTypes[s.KeyIndex]
}

// String writes the signature as name(type, ...) for messages.
func (s *Signature) String(f *shardmap.Function) string {
	var b strings.Builder
	b.WriteString(f.FullName())
	b.WriteByte('(')
	for i, t := range s.ArgTypes {
		if i > 0 {
			b.WriteString(", ")
		}
		if s.ArgNames[i] != "" {
			b.WriteString(s.ArgNames[i] + " ")
		}
		b.WriteString(typeName(t))
	}
	b.WriteByte(')')
	return b.String()
}

// Catalog holds the signatures of a cluster's routed functions.
type Catalog struct {
	sigs map[*shardmap.Function][]*Signature
}

// Signatures returns a function's overloads.
func (c *Catalog) Signatures(f *shardmap.Function) []*Signature {
	if c == nil {
		return nil
	}
	return c.sigs[f]
}

const catalogQuery = `
SELECT coalesce(p.proargnames, '{}'::text[]), p.proargtypes::oid[], coalesce(p.proargmodes::text[], '{}'::text[]),
       p.pronargdefaults, p.proretset, p.prorettype,
       ARRAY(SELECT coalesce(t.typelem, 0) FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY a(o, i)
             LEFT JOIN pg_catalog.pg_type t ON t.oid = a.o AND t.typcategory = 'A' ORDER BY a.i)::oid[]
FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = $1 AND p.proname = $2 AND p.prokind IN ('f', 'p')
ORDER BY p.oid`

// LoadCatalog reads the signatures of fns (all of one cluster) from a shard.
// A function that is missing, or whose key argument cannot be found, is a
// *MissingError naming it; the other functions still load.
func LoadCatalog(ctx context.Context, conn *pgx.Conn, fns []*shardmap.Function) (*Catalog, error) {
	c := &Catalog{sigs: map[*shardmap.Function][]*Signature{}}
	var problems []string
	for _, f := range fns {
		sigs, err := loadSignatures(ctx, conn, f)
		if err != nil {
			return nil, fmt.Errorf("load signature of %s: %w", f.FullName(), err)
		}
		if len(sigs) == 0 {
			problems = append(problems, fmt.Sprintf("function %s does not exist", f.FullName()))
			continue
		}
		var bad []string
		for _, s := range sigs {
			if err := resolveKey(f, s); err != nil {
				bad = append(bad, err.Error())
			}
		}
		if len(bad) > 0 {
			problems = append(problems, bad...)
			continue
		}
		c.sigs[f] = sigs
	}
	if len(problems) > 0 {
		return c, &MissingError{Problems: problems}
	}
	return c, nil
}

// MissingError is LoadCatalog's report of declared functions the shard
// lacks, or whose key argument it cannot find: the shard answered, and the
// declaration (or the shard's schema) is what needs fixing.
type MissingError struct {
	Problems []string
}

func (e *MissingError) Error() string { return strings.Join(e.Problems, "; ") }

func loadSignatures(ctx context.Context, conn *pgx.Conn, f *shardmap.Function) ([]*Signature, error) {
	schema, name := f.Remote()
	rows, err := conn.Query(ctx, catalogQuery, schema, name)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []*Signature
	for rows.Next() {
		var names, modes []string
		var types []uint32
		s := &Signature{}
		if err := rows.Scan(&names, &types, &modes, &s.NumDefaults, &s.ReturnsSet, &s.ReturnType, &s.ArgElems); err != nil {
			return nil, err
		}
		// proargnames covers every argument (OUT ones too) when proargmodes is
		// set; proargtypes lists input arguments only.
		s.ArgTypes = types
		s.ArgNames = make([]string, len(types))
		in := 0
		for i, n := range names {
			mode := "i"
			if i < len(modes) {
				mode = modes[i]
			}
			if mode == "o" || mode == "t" {
				continue
			}
			if in < len(s.ArgNames) {
				s.ArgNames[in] = n
			}
			in++
		}
		out = append(out, s)
	}
	return out, rows.Err()
}

// resolveKey finds the key argument of a signature.
func resolveKey(f *shardmap.Function, s *Signature) error {
	s.KeyIndex = -1
	switch {
	case f.RunOn != shardmap.RunHash && f.RunOn != shardmap.RunPartition, f.Partition >= 0:
		return nil
	case f.KeyPos > 0:
		if f.KeyPos > len(s.ArgTypes) {
			return fmt.Errorf("%s has no argument %d (key)", s.String(f), f.KeyPos)
		}
		s.KeyIndex = f.KeyPos - 1
	default:
		s.KeyIndex = slices.Index(s.ArgNames, f.KeyName)
		if s.KeyIndex < 0 {
			return fmt.Errorf("%s has no argument named %s (key)", s.String(f), f.KeyName)
		}
	}
	if err := resolveSplit(f, s); err != nil {
		return err
	}
	if f.RunOn == shardmap.RunPartition && !isIntType(s.KeyType()) {
		return fmt.Errorf("%s: the partition number %s must be an integer type", s.String(f), f.KeyName)
	}
	switch {
	case f.KeyTransform == keyValue && !isIntType(s.KeyType()):
		return fmt.Errorf("%s: key_transform: value needs an integer key (it is the hash)", s.String(f))
	case f.KeyTransform != "" && !isIntType(s.KeyType()) && !isTextType(s.KeyType()) && s.KeyType() != OIDUUID:
		return fmt.Errorf("%s: key_transform needs an integer, text or uuid key", s.String(f))
	}
	return nil
}

// resolveSplit finds a signature's split arguments, which must be
// one-dimensional arrays (PL/Proxy's SPLIT); the key is split when it is
// one of them.
func resolveSplit(f *shardmap.Function, s *Signature) error {
	s.SplitIndexes = s.SplitIndexes[:0]
	for _, a := range f.Split {
		i := slices.Index(s.ArgNames, a)
		if pos, err := strconv.Atoi(a); err == nil {
			i = pos - 1
		}
		if i < 0 || i >= len(s.ArgTypes) {
			return fmt.Errorf("%s has no argument %s (split)", s.String(f), a)
		}
		if s.ArgElems[i] == 0 {
			return fmt.Errorf("%s: split argument %s is not an array", s.String(f), a)
		}
		s.SplitIndexes = append(s.SplitIndexes, i)
		if i == s.KeyIndex {
			s.KeySplit = true
		}
	}
	return nil
}

// SameSignatures reports whether two catalogs describe the same functions
// identically, for `pgrouter check` across shards.
func SameSignatures(a, b []*Signature) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := a[i], b[i]
		if !slices.Equal(x.ArgTypes, y.ArgTypes) || !slices.Equal(x.ArgNames, y.ArgNames) ||
			x.ReturnsSet != y.ReturnsSet || x.ReturnType != y.ReturnType || x.NumDefaults != y.NumDefaults {
			return false
		}
	}
	return true
}

func isIntType(oid uint32) bool { return oid == OIDInt2 || oid == OIDInt4 || oid == OIDInt8 }

func isTextType(oid uint32) bool {
	switch oid {
	case OIDText, OIDVarchar, OIDBpchar, OIDName, OIDUnknown:
		return true
	}
	return false
}

// typeName names the types pgrouter knows, for messages.
func typeName(oid uint32) string {
	switch oid {
	case OIDBool:
		return "boolean"
	case OIDName:
		return "name"
	case OIDInt8:
		return "bigint"
	case OIDInt2:
		return "smallint"
	case OIDInt4:
		return "integer"
	case OIDText:
		return "text"
	case OIDFloat4:
		return "real"
	case OIDFloat8:
		return "double precision"
	case OIDBpchar:
		return "character"
	case OIDVarchar:
		return "character varying"
	case OIDNumeric:
		return "numeric"
	case OIDUUID:
		return "uuid"
	}
	return fmt.Sprintf("oid %d", oid)
}

// castType maps a type name written in a cast to its OID (0 when pgrouter
// does not know it: such a key is hashed in its text form).
func castType(name string) uint32 {
	switch name {
	case "int2", "smallint":
		return OIDInt2
	case "int4", "int", "integer":
		return OIDInt4
	case "int8", "bigint":
		return OIDInt8
	case "text":
		return OIDText
	case "varchar", "character varying":
		return OIDVarchar
	case "char", "character", "bpchar":
		return OIDBpchar
	case "name":
		return OIDName
	case "uuid":
		return OIDUUID
	case "bool", "boolean":
		return OIDBool
	case "numeric", "decimal":
		return OIDNumeric
	case "float4", "real":
		return OIDFloat4
	case "float8", "double precision":
		return OIDFloat8
	}
	return 0
}
