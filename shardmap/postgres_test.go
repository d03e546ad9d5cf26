package shardmap

import (
	"context"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/goleak"

	"github.com/pgrouter/pgrouter/internal/pgtest"
	"github.com/pgrouter/pgrouter/internal/pgtest/testenv"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestHashMatchesPostgres compares HashBytes, HashInt4 and HashInt8 with a
// real server's hashtext(), hashint4() and hashint8() on 10,000 generated
// keys of every length class, ASCII and multi-byte.
func TestHashMatchesPostgres(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s := testenv.Servers(t, 1, pgtest.Options{})[0]
	conn, err := pgx.Connect(ctx, s.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)

	rng := rand.New(rand.NewPCG(1, 2))
	alphabets := []string{"abcdefghijklmnopqrstuvwxyz0123456789_-@.", "äöüßéèçñøåæ", "日本語の文字列", "😀🚀✓", " \t'\"\\"}
	keys := make([]string, 10000)
	for i := range keys {
		var b strings.Builder
		n := i % 50 // every length from 0 to 49 characters, so every tail case of lookup3
		for range n {
			alpha := []rune(alphabets[rng.IntN(len(alphabets))])
			b.WriteRune(alpha[rng.IntN(len(alpha))])
		}
		keys[i] = b.String()
	}
	rows, err := conn.Query(ctx, "SELECT hashtext(k) FROM unnest($1::text[]) WITH ORDINALITY AS t(k, i) ORDER BY i", keys)
	if err != nil {
		t.Fatal(err)
	}
	i := 0
	for rows.Next() {
		var want int32
		if err := rows.Scan(&want); err != nil {
			t.Fatal(err)
		}
		if got := int32(HashBytes([]byte(keys[i]))); got != want {
			t.Fatalf("hashtext(%q) = %d, PostgreSQL says %d", keys[i], got, want)
		}
		i++
	}
	if rows.Err() != nil || i != len(keys) {
		t.Fatalf("%d rows, %v", i, rows.Err())
	}

	ints := make([]int64, 10000)
	for i := range ints {
		switch i % 4 {
		case 0:
			ints[i] = int64(rng.Int32()) - 1<<30
		case 1:
			ints[i] = rng.Int64() - 1<<62
		case 2:
			ints[i] = int64(i) - 5000
		default:
			ints[i] = -rng.Int64()
		}
	}
	rows, err = conn.Query(ctx, "SELECT hashint8(v), CASE WHEN v BETWEEN -2147483648 AND 2147483647 THEN hashint4(v::int4) END FROM unnest($1::int8[]) WITH ORDINALITY AS t(v, i) ORDER BY i", ints)
	if err != nil {
		t.Fatal(err)
	}
	i = 0
	for rows.Next() {
		var want8 int32
		var want4 *int32
		if err := rows.Scan(&want8, &want4); err != nil {
			t.Fatal(err)
		}
		if got := int32(HashInt8(ints[i])); got != want8 {
			t.Fatalf("hashint8(%d) = %d, PostgreSQL says %d", ints[i], got, want8)
		}
		if want4 != nil && int32(HashInt4(int32(ints[i]))) != *want4 {
			t.Fatalf("hashint4(%d) = %d, PostgreSQL says %d", ints[i], int32(HashInt4(int32(ints[i]))), *want4)
		}
		i++
	}
	if rows.Err() != nil || i != len(ints) {
		t.Fatalf("%d rows, %v", i, rows.Err())
	}
}
