package router

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/pgrouter/pgrouter/shardmap"
	"github.com/pgrouter/pgrouter/sqlstate"
)

// Merged is the one value a merged fan-out returns: the shards' values
// reduced (text format; nil is SQL NULL), then encoded in binary when the
// client asked for it. fn names the function in errors; typeOID is the
// result column's type. Errors carry their SQLSTATE: 42804 for values the
// merge cannot combine, 0A000 for a type pgrouter cannot send in binary.
func Merged(fn string, m shardmap.Merge, values [][]byte, typeOID uint32, binaryFormat bool) ([]byte, *Error) {
	v, err := Reduce(m, values)
	if err != nil {
		return nil, planError(sqlstate.DatatypeMismatch, "%s: %v", fn, err)
	}
	if binaryFormat && v != nil {
		if v, err = EncodeBinary(typeOID, v); err != nil {
			e := planError(sqlstate.FeatureNotSupported, "%s: %v", fn, err)
			e.Hint = "Ask for the result in text format, or cast it to bigint, numeric or text."
			return nil, e
		}
	}
	return v, nil
}

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

// numeric's limits: PostgreSQL's numeric holds at most this many digits
// before and after the decimal point, so a shard cannot send more.
const (
	numericMaxInt  = 131072
	numericMaxFrac = 16383
)

// decimal is an exact decimal number kept as its digits, so that summing
// and comparing take time linear in its length (big.Int's conversions are
// quadratic: a 2M-digit value once took 12 s of CPU).
type decimal struct {
	neg   bool
	whole string // digits before the point, no leading zeros
	frac  string // digits after the point, as sent (they set the scale)
}

// parseDecimal reads [-+]digits[.digits]; anything else is not a decimal.
// A value beyond numeric's limits is an error.
func parseDecimal(v []byte) (decimal, bool, error) {
	s := string(v)
	var d decimal
	if len(s) > 0 && (s[0] == '-' || s[0] == '+') {
		d.neg = s[0] == '-'
		s = s[1:]
	}
	whole, frac, _ := strings.Cut(s, ".")
	if whole == "" && frac == "" || !allDigits(whole) || !allDigits(frac) {
		return decimal{}, false, nil
	}
	d.whole = strings.TrimLeft(whole, "0")
	d.frac = frac
	if len(d.whole) > numericMaxInt || len(d.frac) > numericMaxFrac {
		return decimal{}, false, fmt.Errorf("a value of %d digits is beyond numeric's range (%d before the point, %d after)", len(whole)+len(frac), numericMaxInt, numericMaxFrac)
	}
	return d, true, nil
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// isZero reports whether every digit is 0.
func (d decimal) isZero() bool { return d.whole == "" && strings.Trim(d.frac, "0") == "" }

// digit returns the digit at power 10^p (p < 0: after the point).
func (d decimal) digit(p int) int64 {
	if p >= 0 {
		if i := len(d.whole) - 1 - p; i >= 0 {
			return int64(d.whole[i] - '0')
		}
		return 0
	}
	if i := -p - 1; i < len(d.frac) {
		return int64(d.frac[i] - '0')
	}
	return 0
}

// compareDecimal orders two decimals by value.
func compareDecimal(a, b decimal) int {
	if a.isZero() && b.isZero() {
		return 0
	}
	switch {
	case a.neg && !a.isZero() && (!b.neg || b.isZero()):
		return -1
	case b.neg && !b.isZero() && (!a.neg || a.isZero()):
		return 1
	}
	c := compareMagnitude(a, b)
	if a.neg {
		return -c
	}
	return c
}

func compareMagnitude(a, b decimal) int {
	if len(a.whole) != len(b.whole) {
		return cmpInt(len(a.whole), len(b.whole))
	}
	if c := strings.Compare(a.whole, b.whole); c != 0 {
		return c
	}
	for p := -1; p >= -max(len(a.frac), len(b.frac)); p-- {
		if c := cmpInt(int(a.digit(p)), int(b.digit(p))); c != 0 {
			return c
		}
	}
	return 0
}

func cmpInt(a, b int) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// sumDecimals adds decimals column by column: each column holds the signed
// sum of its digits (a handful of shards cannot overflow it), and carries
// are settled once at the end. The result has the largest scale, as
// PostgreSQL's sum(numeric).
func sumDecimals(decs []decimal) string {
	width, scale := 0, 0
	for _, d := range decs {
		width, scale = max(width, len(d.whole)), max(scale, len(d.frac))
	}
	columns := func(flip bool) ([]int64, int64) {
		cols := make([]int64, width+scale) // cols[i] is the digit at 10^(width-1-i)
		for _, d := range decs {
			sign := int64(1)
			if d.neg != flip {
				sign = -1
			}
			for i := range cols {
				cols[i] += sign * d.digit(width-1-i)
			}
		}
		carry := int64(0)
		for i := len(cols) - 1; i >= 0; i-- {
			v := cols[i] + carry
			carry = v / 10
			if v%10 < 0 {
				carry--
			}
			cols[i] = v - 10*carry
		}
		return cols, carry
	}
	neg := false
	cols, carry := columns(false)
	if carry < 0 {
		neg = true
		cols, carry = columns(true)
	}
	var b strings.Builder
	if carry > 0 {
		b.WriteString(strconv.FormatInt(carry, 10))
	}
	for _, c := range cols[:width] {
		if b.Len() > 0 || c != 0 {
			b.WriteByte(byte('0' + c))
		}
	}
	if b.Len() == 0 {
		b.WriteByte('0')
	}
	if scale > 0 {
		b.WriteByte('.')
		for _, c := range cols[width:] {
			b.WriteByte(byte('0' + c))
		}
	}
	out := b.String()
	if neg && strings.Trim(out, "0.") != "" {
		out = "-" + out
	}
	return out
}

func sum(values [][]byte) ([]byte, error) {
	decs := make([]decimal, 0, len(values))
	for _, v := range values {
		d, ok, err := parseDecimal(v)
		if err != nil {
			return nil, fmt.Errorf("merge sum: %w", err)
		}
		if !ok {
			return floatSum(values)
		}
		decs = append(decs, d)
	}
	return []byte(sumDecimals(decs)), nil
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

// parseFloat reads a number in PostgreSQL's float output (digits with an
// exponent, NaN, Infinity); strconv reads long inputs in linear time.
func parseFloat(v []byte) (float64, bool) {
	s := string(v)
	if strings.ContainsAny(s, "_xXpP") { // Go syntax PostgreSQL never prints
		return 0, false
	}
	f, err := strconv.ParseFloat(s, 64)
	if err == nil || errors.Is(err, strconv.ErrRange) {
		return f, true
	}
	return 0, false
}

// compare orders two values: numerically when both are numbers, else
// byte-wise.
func compare(a, b []byte) (int, error) {
	da, okA, err := parseDecimal(a)
	if err != nil {
		return 0, err
	}
	db, okB, err := parseDecimal(b)
	if err != nil {
		return 0, err
	}
	if okA && okB {
		return compareDecimal(da, db), nil
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
	if _, ok, err := parseDecimal([]byte(intPart + "." + frac)); (!ok || err != nil) && intPart+frac != "" {
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
