package router

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"math/big"
	"strconv"
	"strings"

	"github.com/pgrouter/pgrouter/shardmap"
)

// Reduce combines one value per shard (text format; nil is SQL NULL) the way
// the function's merge says, as the SQL aggregate of the same name would:
// NULLs are ignored and a result of only NULLs is NULL. Integers and decimals
// are summed exactly; other numbers (with an exponent, NaN, Infinity) as
// floats. min and max compare numbers numerically and anything else
// byte-wise (C collation).
func Reduce(m shardmap.Merge, values [][]byte) ([]byte, error) {
	var present [][]byte
	for _, v := range values {
		if v != nil {
			present = append(present, v)
		}
	}
	if len(present) == 0 {
		return nil, nil
	}
	switch m {
	case shardmap.MergeSum:
		return sum(present)
	case shardmap.MergeMin, shardmap.MergeMax:
		best := present[0]
		for _, v := range present[1:] {
			c, err := compare(v, best)
			if err != nil {
				return nil, err
			}
			if (m == shardmap.MergeMin && c < 0) || (m == shardmap.MergeMax && c > 0) {
				best = v
			}
		}
		return best, nil
	case shardmap.MergeBoolAnd, shardmap.MergeBoolOr:
		result := m == shardmap.MergeBoolAnd
		for _, v := range present {
			b, ok := parseBool(v)
			if !ok {
				return nil, fmt.Errorf("merge %s: %q is not a boolean", mergeName(m), v)
			}
			if m == shardmap.MergeBoolAnd {
				result = result && b
			} else {
				result = result || b
			}
		}
		if result {
			return []byte("t"), nil
		}
		return []byte("f"), nil
	}
	return nil, fmt.Errorf("merge %d: not a reducing merge", m)
}

func mergeName(m shardmap.Merge) string {
	return [...]string{"concat", "sum", "min", "max", "bool_and", "bool_or"}[m]
}

func parseBool(v []byte) (bool, bool) {
	switch string(v) {
	case "t", "true":
		return true, true
	case "f", "false":
		return false, true
	}
	return false, false
}

// decimal is an exact decimal number: unscaled * 10^-scale.
type decimal struct {
	unscaled *big.Int
	scale    int
}

// parseDecimal reads [-+]digits[.digits]; anything else is not a decimal.
func parseDecimal(v []byte) (decimal, bool) {
	s := string(v)
	intPart, frac, hasDot := strings.Cut(s, ".")
	digits := intPart + frac
	if len(digits) == 0 || (hasDot && len(frac) == 0 && len(intPart) == 0) {
		return decimal{}, false
	}
	for i, c := range digits {
		if c >= '0' && c <= '9' {
			continue
		}
		if i == 0 && (c == '-' || c == '+') && len(digits) > 1 {
			continue
		}
		return decimal{}, false
	}
	n, ok := new(big.Int).SetString(digits, 10)
	if !ok {
		return decimal{}, false
	}
	return decimal{unscaled: n, scale: len(frac)}, true
}

func (d decimal) rescale(scale int) *big.Int {
	if scale == d.scale {
		return d.unscaled
	}
	f := new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(scale-d.scale)), nil)
	return new(big.Int).Mul(d.unscaled, f)
}

func (d decimal) String() string {
	s := d.unscaled.String()
	if d.scale == 0 {
		return s
	}
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	for len(s) <= d.scale {
		s = "0" + s
	}
	s = s[:len(s)-d.scale] + "." + s[len(s)-d.scale:]
	if neg {
		s = "-" + s
	}
	return s
}

func sum(values [][]byte) ([]byte, error) {
	decs := make([]decimal, 0, len(values))
	scale := 0
	for _, v := range values {
		d, ok := parseDecimal(v)
		if !ok {
			return floatSum(values)
		}
		decs = append(decs, d)
		scale = max(scale, d.scale)
	}
	total := new(big.Int)
	for _, d := range decs {
		total.Add(total, d.rescale(scale))
	}
	return []byte(decimal{unscaled: total, scale: scale}.String()), nil
}

func floatSum(values [][]byte) ([]byte, error) {
	var total float64
	for _, v := range values {
		f, ok := parseFloat(v)
		if !ok {
			return nil, fmt.Errorf("merge sum: %q is not a number", v)
		}
		total += f
	}
	return []byte(formatFloat(total)), nil
}

func parseFloat(v []byte) (float64, bool) {
	f, _, err := big.ParseFloat(string(v), 10, 64, big.ToNearestEven)
	if err == nil {
		x, _ := f.Float64()
		return x, true
	}
	switch strings.ToLower(string(v)) {
	case "nan":
		return nan(), true
	case "infinity", "inf":
		return inf(1), true
	case "-infinity", "-inf":
		return inf(-1), true
	}
	return 0, false
}

// compare orders two values: numerically when both are numbers, else
// byte-wise.
func compare(a, b []byte) (int, error) {
	if da, ok := parseDecimal(a); ok {
		if db, ok := parseDecimal(b); ok {
			scale := max(da.scale, db.scale)
			return da.rescale(scale).Cmp(db.rescale(scale)), nil
		}
	}
	if fa, ok := parseFloat(a); ok {
		if fb, ok := parseFloat(b); ok {
			switch {
			case fa < fb:
				return -1, nil
			case fa > fb:
				return 1, nil
			}
			return 0, nil
		}
	}
	return bytes.Compare(a, b), nil
}

func nan() float64      { return math.NaN() }
func inf(s int) float64 { return math.Inf(s) }

// formatFloat prints a float as PostgreSQL does (Infinity, NaN).
func formatFloat(f float64) string {
	switch {
	case math.IsNaN(f):
		return "NaN"
	case math.IsInf(f, 1):
		return "Infinity"
	case math.IsInf(f, -1):
		return "-Infinity"
	}
	return strconv.FormatFloat(f, 'g', -1, 64)
}

// EncodeBinary turns a text-format value of a merge result into the binary
// format of its type, for clients that asked for binary results.
func EncodeBinary(oid uint32, text []byte) ([]byte, error) {
	s := string(text)
	switch oid {
	case OIDInt2, OIDInt4, OIDInt8:
		bits := map[uint32]int{OIDInt2: 16, OIDInt4: 32, OIDInt8: 64}[oid]
		n, err := strconv.ParseInt(s, 10, bits)
		if err != nil {
			return nil, fmt.Errorf("merged value %s does not fit the result type: %w", s, err)
		}
		out := make([]byte, bits/8)
		for i := range out {
			out[len(out)-1-i] = byte(n >> (8 * i))
		}
		return out, nil
	case OIDFloat4, OIDFloat8:
		f, ok := parseFloat(text)
		if !ok {
			return nil, fmt.Errorf("merged value %s is not a number", s)
		}
		if oid == OIDFloat4 {
			return binary.BigEndian.AppendUint32(nil, math.Float32bits(float32(f))), nil
		}
		return binary.BigEndian.AppendUint64(nil, math.Float64bits(f)), nil
	case OIDBool:
		b, ok := parseBool(text)
		if !ok {
			return nil, fmt.Errorf("merged value %s is not a boolean", s)
		}
		if b {
			return []byte{1}, nil
		}
		return []byte{0}, nil
	case OIDNumeric:
		return encodeNumeric(s)
	}
	if isTextType(oid) {
		return text, nil
	}
	return nil, fmt.Errorf("cannot send a merged value of type %s in binary format", typeName(oid))
}

// encodeNumeric writes a decimal in numeric's binary form: base-10000
// digits with a weight, a sign and a display scale.
func encodeNumeric(s string) ([]byte, error) {
	var sign uint16
	switch strings.ToLower(s) {
	case "nan":
		return []byte{0, 0, 0, 0, 0xC0, 0, 0, 0}, nil
	}
	if strings.HasPrefix(s, "-") {
		sign = 0x4000
		s = s[1:]
	}
	s = strings.TrimPrefix(s, "+")
	intPart, frac, _ := strings.Cut(s, ".")
	if _, ok := parseDecimal([]byte(intPart + "." + frac)); !ok && intPart+frac != "" {
		return nil, fmt.Errorf("merged value %s is not a decimal number", s)
	}
	dscale := len(frac)
	for len(intPart)%4 != 0 {
		intPart = "0" + intPart
	}
	for len(frac)%4 != 0 {
		frac += "0"
	}
	all := intPart + frac
	var digits []int16
	for i := 0; i < len(all); i += 4 {
		d, _ := strconv.Atoi(all[i : i+4])
		digits = append(digits, int16(d))
	}
	weight := len(intPart)/4 - 1
	for len(digits) > 0 && digits[0] == 0 {
		digits = digits[1:]
		weight--
	}
	for len(digits) > 0 && digits[len(digits)-1] == 0 {
		digits = digits[:len(digits)-1]
	}
	if len(digits) == 0 {
		weight, sign = 0, 0
	}
	out := binary.BigEndian.AppendUint16(nil, uint16(len(digits)))
	out = binary.BigEndian.AppendUint16(out, uint16(int16(weight)))
	out = binary.BigEndian.AppendUint16(out, sign)
	out = binary.BigEndian.AppendUint16(out, uint16(dscale))
	for _, d := range digits {
		out = binary.BigEndian.AppendUint16(out, uint16(d))
	}
	return out, nil
}
