package router

import (
	"strings"
	"testing"
)

type tok struct {
	kind TokenKind
	text string
}

func lexAll(src string, standard bool) []tok {
	l := NewLexer(src)
	l.StandardStrings = standard
	var out []tok
	for i := 0; i < 1000; i++ {
		t := l.Next()
		if t.Kind == EOF {
			return out
		}
		out = append(out, tok{t.Kind, l.Text(t)})
		if t.Kind == Invalid {
			return out
		}
	}
	panic("no progress")
}

func TestLexer(t *testing.T) {
	cases := []struct {
		src  string
		want []tok
	}{
		{"SELECT get_user($1)", []tok{{Ident, "SELECT"}, {Ident, "get_user"}, {Punct, "("}, {Param, "$1"}, {Punct, ")"}}},
		{"select 'it''s; not -- a comment'", []tok{{Ident, "select"}, {String, "'it''s; not -- a comment'"}}},
		{"E'a\\'b' ", []tok{{String, "E'a\\'b'"}}},
		{`"Quoted ""Id""".x`, []tok{{QuotedIdent, `"Quoted ""Id"""`}, {Op, "."}, {Ident, "x"}}},
		{"$$ ; $$ $tag$ $$ ; $tag$", []tok{{String, "$$ ; $$"}, {String, "$tag$ $$ ; $tag$"}}},
		{"a /* x /* nested */ still */ b -- tail\n c", []tok{{Ident, "a"}, {Ident, "b"}, {Ident, "c"}}},
		{"x::int8 => := ..", []tok{{Ident, "x"}, {Op, "::"}, {Ident, "int8"}, {Op, "=>"}, {Op, ":="}, {Op, ".."}}},
		{"1 3.14 .5 1e10 2.5E-3 0x1F 1_000", []tok{{Number, "1"}, {Number, "3.14"}, {Number, ".5"}, {Number, "1e10"}, {Number, "2.5E-3"}, {Number, "0x1F"}, {Number, "1_000"}}},
		{"U&'d\\0061t' U&\"d!0061t\" B'101' X'FF' N'n'", []tok{{String, "U&'d\\0061t'"}, {QuotedIdent, `U&"d!0061t"`}, {BitString, "B'101'"}, {BitString, "X'FF'"}, {String, "N'n'"}}},
		{"a+-b a<=b a-->c", []tok{{Ident, "a"}, {Op, "+"}, {Op, "-"}, {Ident, "b"}, {Ident, "a"}, {Op, "<="}, {Ident, "b"}, {Ident, "a"}}},
		{"'a'\n  'b' 'c'", []tok{{String, "'a'\n  'b'"}, {String, "'c'"}}},
		{"a$b $1x", []tok{{Ident, "a$b"}, {Param, "$1"}, {Ident, "x"}}},
		{"'unterminated", []tok{{Invalid, "'unterminated"}}},
		{"/* open", []tok{{Invalid, ""}}},
		{"$q$ open", []tok{{Invalid, "$q$ open"}}},
		{"f(a, b);", []tok{{Ident, "f"}, {Punct, "("}, {Ident, "a"}, {Punct, ","}, {Ident, "b"}, {Punct, ")"}, {Punct, ";"}}},
	}
	for _, tc := range cases {
		got := lexAll(tc.src, true)
		if len(got) != len(tc.want) {
			t.Errorf("%q: got %v want %v", tc.src, got, tc.want)
			continue
		}
		for i := range got {
			if got[i] != tc.want[i] {
				t.Errorf("%q: token %d got %v want %v", tc.src, i, got[i], tc.want[i])
			}
		}
	}
}

func TestNonStandardStrings(t *testing.T) {
	got := lexAll(`'a\'b' c`, false)
	if len(got) != 2 || got[0].text != `'a\'b'` {
		t.Fatalf("%v", got)
	}
	got = lexAll(`'a\'b' c`, true) // the backslash is literal; b' then opens a bit string
	if len(got) != 2 || got[0].text != `'a\'` || got[1].kind != Invalid {
		t.Fatalf("%v", got)
	}
}

func TestValue(t *testing.T) {
	cases := []struct {
		src, want string
		standard  bool
	}{
		{"'plain'", "plain", true},
		{"'it''s'", "it's", true},
		{`E'tab\there\'q\\ \x41\101\u00e9'`, "tab\there'q\\ AAé", true},
		{`'back\slash'`, `back\slash`, true},
		{`'no\'std'`, "no'std", false},
		{"$$dollar 'q'$$", "dollar 'q'", true},
		{"$t$x$$y$t$", "x$$y", true},
		{`U&'d\0061t\+000061'`, "data", true},
		{"'con'\n'tinued'", "continued", true},
		{"MixedCase", "mixedcase", true},
		{`"Keep""Case"`, `Keep"Case`, true},
		{`U&"d\0061t"`, "dat", true},
		{"N'nat'", "nat", true},
		{`U&"p!0067r_x" UESCAPE '!'`, "pgr_x", true},
		{`U&'d#0061t#+000061'  uescape  '#'`, "data", true},
		{`U&"a\0062" /* c */ UESCAPE
'*'`, `a\0062`, true},
	}
	for _, tc := range cases {
		l := NewLexer(tc.src)
		l.StandardStrings = tc.standard
		tk := l.Next()
		got, err := l.Value(tk)
		if err != nil || got != tc.want {
			t.Errorf("%q: got %q, %v; want %q", tc.src, got, err, tc.want)
		}
		if next := l.Next(); next.Kind != EOF {
			t.Errorf("%q: after the literal %v %q; want the UESCAPE clause consumed", tc.src, next.Kind, l.Text(next))
		}
	}
	for _, bad := range []string{`U&"x" UESCAPE 'a'`, `U&"x" UESCAPE '+'`, `U&"x" UESCAPE '!!'`, `U&"x" UESCAPE`} {
		l := NewLexer(bad)
		if tk := l.Next(); tk.Kind != Invalid {
			t.Errorf("%q: %v; want Invalid, as the server rejects it", bad, tk.Kind)
		}
	}
	l0 := NewLexer(`U&"x" uescaped`)
	if l0.Next(); l0.Text(l0.Next()) != "uescaped" {
		t.Error("an identifier starting with uescape was taken for the clause")
	}
	l := NewLexer(`U&'\zzzz'`)
	if _, err := l.Value(l.Next()); err == nil {
		t.Error("bad unicode escape accepted")
	}
}

func TestLexerDoesNotAllocate(t *testing.T) {
	src := "SELECT u.email FROM public.get_user($1::text) u WHERE x = 'a''b' /* c */ AND y = $$d$$"
	n := testing.AllocsPerRun(100, func() {
		l := NewLexer(src)
		for l.Next().Kind != EOF {
		}
	})
	if n != 0 {
		t.Fatalf("%v allocations", n)
	}
}

// FuzzLexer: no panic, progress on every token, spans inside the source and
// in order, and a plain literal's value round-trips through quoting.
func FuzzLexer(f *testing.F) {
	for _, s := range []string{"SELECT get_user('bob')", "E'\\x41'", "$a$ $$ $a$", "U&'\\0061' UESCAPE '!'", "/* /* */", "'a'\n'b'", `"x""y"`, "1.5e+3::int"} {
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, src string, standard bool) {
		l := NewLexer(src)
		l.StandardStrings = standard
		prev := 0
		for i := 0; i <= len(src)+1; i++ {
			tk := l.Next()
			if tk.Start < prev || tk.End < tk.Start || tk.End > len(src) {
				t.Fatalf("bad span %+v after %d in %q", tk, prev, src)
			}
			if tk.Kind == EOF || tk.Kind == Invalid {
				return
			}
			if tk.End == tk.Start {
				t.Fatalf("empty token %+v in %q", tk, src)
			}
			prev = tk.End
			v, err := l.Value(tk)
			if err == nil && tk.Kind == String && tk.Form == 0 && standard {
				quoted := "'" + strings.ReplaceAll(v, "'", "''") + "'"
				l2 := NewLexer(quoted)
				if v2, err := l2.Value(l2.Next()); err != nil || v2 != v {
					t.Fatalf("round trip of %q: %q, %v", v, v2, err)
				}
			}
		}
		t.Fatalf("no EOF after %d tokens for %q", len(src)+2, src)
	})
}
