package router

import (
	"context"
	"strings"
	"testing"
	"time"
	"unicode"

	"github.com/jackc/pgx/v5"

	"github.com/pgrouter/pgrouter/internal/pgtest"
	"github.com/pgrouter/pgrouter/internal/pgtest/testenv"
	"github.com/pgrouter/pgrouter/shardmap"
)

// TestKeyTransformLowerMatchesPostgreSQL: key_transform lower and
// lower_ascii fold exactly as PostgreSQL's lower() does under a C.UTF-8 and
// a C LC_CTYPE, for every Unicode code point, and hash the same:
// PL/Proxy's RUN ON hashtext(lower(x)) runs there.
func TestKeyTransformLowerMatchesPostgreSQL(t *testing.T) {
	srv := testenv.Servers(t, 1, pgtest.Options{})[0]
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, tc := range []struct{ ctype, transform string }{{"C.UTF-8", lowerUnicode}, {"C", lowerASCII}} {
		db := "lower_" + strings.ToLower(strings.NewReplacer(".", "", "-", "").Replace(tc.ctype))
		if err := srv.Exec(ctx, "postgres", "CREATE DATABASE "+db+" TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE '"+tc.ctype+"'"); err != nil {
			t.Fatal(err)
		}
		conn, err := pgx.Connect(ctx, srv.DSN(db))
		if err != nil {
			t.Fatal(err)
		}
		// Every code point but NUL and the surrogates, in one string per
		// block of 4096, lower-cased by the server and by pgrouter.
		var blocks []string
		for start := 1; start <= unicode.MaxRune; start += 4096 {
			var b strings.Builder
			for r := rune(start); r < rune(start+4096) && r <= unicode.MaxRune; r++ {
				if r < 0xD800 || r > 0xDFFF {
					b.WriteRune(r)
				}
			}
			blocks = append(blocks, b.String())
		}
		var lowered []string
		if err := conn.QueryRow(ctx, "SELECT array_agg(lower(b) ORDER BY i) FROM unnest($1::text[]) WITH ORDINALITY u(b, i)", blocks).Scan(&lowered); err != nil {
			t.Fatal(err)
		}
		mismatches := 0
		for i, block := range blocks {
			want := []rune(lowered[i])
			got := []rune(block)
			if len(want) != len(got) {
				t.Fatalf("%s: block %d: the server's lower() changed the length", tc.ctype, i)
			}
			for j, r := range got {
				mine := r
				switch tc.transform {
				case lowerUnicode:
					mine = unicode.ToLower(r)
				case lowerASCII:
					if r >= 'A' && r <= 'Z' {
						mine = r + 'a' - 'A'
					}
				}
				if mine != want[j] {
					if mismatches++; mismatches <= 10 {
						t.Errorf("%s: lower(U+%04X) is U+%04X on the server, U+%04X in pgrouter", tc.ctype, r, want[j], mine)
					}
				}
			}
		}
		if mismatches > 0 {
			t.Errorf("%s: %d code points fold differently", tc.ctype, mismatches)
		}
		// And the hash of a mixed key is hashtext(lower(key)) on the server.
		for _, key := range []string{"Alice", "ÉLODIE", "Zoë-ΣΑΣ", "İstanbul", "ǅemal"} {
			var want int32
			if err := conn.QueryRow(ctx, "SELECT hashtext(lower($1))", key).Scan(&want); err != nil {
				t.Fatal(err)
			}
			got, err := transformedHash(shardmap.HashText, tc.transform, OIDText, OIDText, []byte(key), false)
			if err != nil || int32(got) != want {
				t.Errorf("%s: hashtext(lower(%q)) = %d on the server, %d in pgrouter (%v)", tc.ctype, key, want, int32(got), err)
			}
		}
		conn.Close(ctx)
	}
}
