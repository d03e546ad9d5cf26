package shardmap

import (
	"encoding/binary"
	"math/bits"

	"github.com/cespare/xxhash/v2"
)

// HashFunc names how a cluster turns keys into partitions.
type HashFunc uint8

// Hash functions.
const (
	// XXHash64 hashes a text key's UTF-8 bytes, and an integer key's 8-byte
	// little-endian value, with xxHash64; partition = hash & (partitions-1).
	XXHash64 HashFunc = iota
	// HashText is bit-exact with PostgreSQL's hashtext() for text keys and
	// hashint4/hashint8 for integer keys; partition = int32(hash) &
	// (partitions-1), PL/Proxy's rule, so a PL/Proxy cluster using
	// RUN ON hashtext(key) keeps every row where it is.
	HashText
)

// ParseHashFunc maps a config value to a HashFunc.
func ParseHashFunc(name string) (HashFunc, bool) {
	switch name {
	case "", "xxhash64":
		return XXHash64, true
	case "hashtext":
		return HashText, true
	}
	return 0, false
}

func (h HashFunc) String() string {
	if h == HashText {
		return "hashtext"
	}
	return "xxhash64"
}

// Text hashes a text key.
func (h HashFunc) Text(key []byte) uint64 {
	if h == HashText {
		return uint64(HashBytes(key))
	}
	return xxhash.Sum64(key)
}

// Int hashes an integer key; size is the key type's width in bytes (2, 4
// or 8), which decides between hashint4 and hashint8 for HashText.
func (h HashFunc) Int(v int64, size int) uint64 {
	if h == HashText {
		if size == 8 {
			return uint64(HashInt8(v))
		}
		return uint64(HashInt4(int32(v)))
	}
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], uint64(v))
	return xxhash.Sum64(b[:])
}

// Partition maps a hash to a partition; partitions is a power of two. For
// HashText the hash is the int32 result widened, as PL/Proxy does, which
// for any partition count up to 2^31 is the same as masking the low bits.
func Partition(hash uint64, partitions int) int {
	return int(hash & uint64(partitions-1))
}

// HashBytes is PostgreSQL's hash_bytes() (Bob Jenkins' lookup3 with
// PostgreSQL's initial value), the function behind hashtext() for
// deterministic collations, computed as on a little-endian server.
func HashBytes(k []byte) uint32 {
	length := uint32(len(k))
	a := 0x9e3779b9 + length + 3923095
	b, c := a, a
	for len(k) >= 12 {
		a += binary.LittleEndian.Uint32(k[0:])
		b += binary.LittleEndian.Uint32(k[4:])
		c += binary.LittleEndian.Uint32(k[8:])
		a, b, c = mix(a, b, c)
		k = k[12:]
	}
	// The last 11 bytes: 0-3 go to a, 4-7 to b, 8-10 to c shifted up by
	// one byte (c's low byte is reserved for the length).
	switch len(k) {
	case 11:
		c += uint32(k[10]) << 24
		fallthrough
	case 10:
		c += uint32(k[9]) << 16
		fallthrough
	case 9:
		c += uint32(k[8]) << 8
		fallthrough
	case 8:
		b += uint32(k[7]) << 24
		fallthrough
	case 7:
		b += uint32(k[6]) << 16
		fallthrough
	case 6:
		b += uint32(k[5]) << 8
		fallthrough
	case 5:
		b += uint32(k[4])
		fallthrough
	case 4:
		a += uint32(k[3]) << 24
		fallthrough
	case 3:
		a += uint32(k[2]) << 16
		fallthrough
	case 2:
		a += uint32(k[1]) << 8
		fallthrough
	case 1:
		a += uint32(k[0])
	}
	_, _, c = final(a, b, c)
	return c
}

// HashInt4 is PostgreSQL's hashint4() (hash_uint32 of the value).
func HashInt4(v int32) uint32 {
	a := uint32(0x9e3779b9 + 4 + 3923095)
	b, c := a, a
	a += uint32(v)
	_, _, c = final(a, b, c)
	return c
}

// HashInt8 is PostgreSQL's hashint8(): the high half is folded into the
// low one (inverted for negative values) so that it equals hashint4 for
// every value that fits in 32 bits.
func HashInt8(v int64) uint32 {
	lo := uint32(v)
	hi := uint32(v >> 32)
	if v >= 0 {
		lo ^= hi
	} else {
		lo ^= ^hi
	}
	return HashInt4(int32(lo))
}

func mix(a, b, c uint32) (uint32, uint32, uint32) {
	a -= c
	a ^= bits.RotateLeft32(c, 4)
	c += b
	b -= a
	b ^= bits.RotateLeft32(a, 6)
	a += c
	c -= b
	c ^= bits.RotateLeft32(b, 8)
	b += a
	a -= c
	a ^= bits.RotateLeft32(c, 16)
	c += b
	b -= a
	b ^= bits.RotateLeft32(a, 19)
	a += c
	c -= b
	c ^= bits.RotateLeft32(b, 4)
	b += a
	return a, b, c
}

func final(a, b, c uint32) (uint32, uint32, uint32) {
	c ^= b
	c -= bits.RotateLeft32(b, 14)
	a ^= c
	a -= bits.RotateLeft32(c, 11)
	b ^= a
	b -= bits.RotateLeft32(a, 25)
	c ^= b
	c -= bits.RotateLeft32(b, 16)
	a ^= c
	a -= bits.RotateLeft32(c, 4)
	b ^= a
	b -= bits.RotateLeft32(a, 14)
	c ^= b
	c -= bits.RotateLeft32(b, 24)
	return a, b, c
}
