package config

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Duration is a time.Duration written as "30s", "10m", "1h" or, as in
// pgbouncer's ini files, a bare number of seconds.
type Duration time.Duration

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

func (d Duration) String() string { return time.Duration(d).String() }

func (d *Duration) decodeScalar(value string) error {
	if secs, err := strconv.ParseFloat(value, 64); err == nil {
		if secs < 0 {
			return fmt.Errorf("%q is negative", value)
		}
		*d = Duration(secs * float64(time.Second))
		return nil
	}
	v, err := time.ParseDuration(value)
	if err != nil {
		return fmt.Errorf("%q is not a duration (write it as 500ms, 30s, 10m or 1h)", value)
	}
	if v < 0 {
		return fmt.Errorf("%q is negative", value)
	}
	*d = Duration(v)
	return nil
}

// ByteSize is a size in bytes written as 65536, "64kB", "16MB" or "1GB"
// (PostgreSQL's units: powers of 1024).
type ByteSize int

func (b ByteSize) String() string {
	switch {
	case b > 0 && b%(1<<30) == 0:
		return strconv.Itoa(int(b>>30)) + "GB"
	case b > 0 && b%(1<<20) == 0:
		return strconv.Itoa(int(b>>20)) + "MB"
	case b > 0 && b%(1<<10) == 0:
		return strconv.Itoa(int(b>>10)) + "kB"
	}
	return strconv.Itoa(int(b))
}

func (b *ByteSize) decodeScalar(value string) error {
	s := strings.TrimSpace(value)
	mult := 1
	for _, u := range []struct {
		suffix string
		mult   int
	}{{"GB", 1 << 30}, {"MB", 1 << 20}, {"kB", 1 << 10}, {"KB", 1 << 10}, {"B", 1}} {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSpace(strings.TrimSuffix(s, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return fmt.Errorf("%q is not a size (write it as 65536, 64kB, 16MB or 1GB)", value)
	}
	*b = ByteSize(n * mult)
	return nil
}
