package auth

import (
	"crypto/md5"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"

	"github.com/xdg-go/scram"
)

func TestParseUsers(t *testing.T) {
	u, err := ParseUsers([]byte(`
; comment
# another
"alice" "plain pw"
"bob" "md5` + strings.Repeat("a", 32) + `"
"quo""te" "x""y"  "ignored trailing field"
`))
	if err != nil {
		t.Fatal(err)
	}
	if s, ok := u.Lookup("alice"); !ok || s.Kind != Plain || s.Plain != "plain pw" {
		t.Fatalf("alice: %+v", s)
	}
	if s, ok := u.Lookup("bob"); !ok || s.Kind != MD5 {
		t.Fatalf("bob: %+v", s)
	}
	if s, ok := u.Lookup(`quo"te`); !ok || s.Plain != `x"y` {
		t.Fatalf("quoted: %+v", s)
	}
	if u.Len() != 3 {
		t.Fatalf("len %d", u.Len())
	}
	for _, bad := range []string{`alice secret`, `"alice"`, `"alice" "unterminated`, `"" "x"`, `"a" "SCRAM-SHA-256$x"`} {
		if _, err := ParseUsers([]byte(bad)); err == nil {
			t.Errorf("%q accepted", bad)
		} else if !strings.Contains(err.Error(), "line 1") {
			t.Errorf("%q: error does not name the line: %v", bad, err)
		}
	}
}

func TestMD5(t *testing.T) {
	salt := [4]byte{1, 2, 3, 4}
	inner := md5.Sum([]byte("pw" + "bob"))
	outer := md5.Sum([]byte(hex.EncodeToString(inner[:]) + string(salt[:])))
	response := "md5" + hex.EncodeToString(outer[:])
	u, err := ParseUsers([]byte(fmt.Sprintf("\"bob\" \"pw\"\n\"bob2\" \"md5%s\"\n", hex.EncodeToString(inner[:]))))
	if err != nil {
		t.Fatal(err)
	}
	plain, _ := u.Lookup("bob")
	if !plain.CheckMD5("bob", salt, response) || plain.CheckMD5("bob", salt, response[:34]+"0") {
		t.Fatal("plain secret")
	}
	// An md5 secret is tied to its user name: bob's hash under bob2's name must not match bob2's salt math.
	hashed, _ := u.Lookup("bob2")
	if !hashed.CheckMD5("bob", salt, response) {
		t.Fatal("md5 secret does not check its own hash")
	}
}

// TestSCRAM runs a full SCRAM-SHA-256 exchange between xdg-go's client and
// the credentials derived from each secret form.
func TestSCRAM(t *testing.T) {
	client, _ := scram.SHA256.NewClient("", "s3cret", "")
	creds, _ := client.GetStoredCredentialsWithError(scram.KeyFactors{Salt: "saltsaltsaltsalt", Iters: 4096})
	verifier := fmt.Sprintf("SCRAM-SHA-256$4096:%s$%s:%s",
		base64.StdEncoding.EncodeToString([]byte(creds.Salt)),
		base64.StdEncoding.EncodeToString(creds.StoredKey),
		base64.StdEncoding.EncodeToString(creds.ServerKey))
	u, err := ParseUsers([]byte(`"plain" "s3cret"` + "\n" + `"stored" "` + verifier + `"` + "\n" + `"hashed" "md5` + strings.Repeat("b", 32) + `"`))
	if err != nil {
		t.Fatal(err)
	}
	exchange := func(creds scram.StoredCredentials, password string) bool {
		server, _ := scram.SHA256.NewServer(func(string) (scram.StoredCredentials, error) { return creds, nil })
		sc := server.NewConversation()
		cl, _ := scram.SHA256.NewClient("", password, "")
		cc := cl.NewConversation()
		msg, _ := cc.Step("")
		for !cc.Done() {
			reply, err := sc.Step(msg)
			if err != nil {
				return false
			}
			if msg, err = cc.Step(reply); err != nil {
				return false
			}
		}
		return sc.Valid()
	}
	for _, name := range []string{"plain", "stored"} {
		s, _ := u.Lookup(name)
		c, ok := s.SCRAMCredentials()
		if !ok || !exchange(c, "s3cret") || exchange(c, "wrong") {
			t.Fatalf("%s: SCRAM exchange", name)
		}
	}
	if s, _ := u.Lookup("hashed"); func() bool { _, ok := s.SCRAMCredentials(); return ok }() {
		t.Fatal("an md5 secret cannot serve SCRAM")
	}
	mock := u.MockSCRAMCredentials("ghost")
	if exchange(mock, "") || exchange(mock, "s3cret") {
		t.Fatal("mock credentials accepted a password")
	}
	if u.MockSCRAMCredentials("ghost").Salt != mock.Salt || u.MockSCRAMCredentials("other").Salt == mock.Salt {
		t.Fatal("mock salt must be stable per user and differ between users")
	}
}

// TestEmptyPasswordsNeverMatch: an entry for the empty password, in any of
// its forms, is loaded as Empty, listed by EmptyPasswords, and no md5 or
// SCRAM proof of any password (the empty one included) matches it.
func TestEmptyPasswordsNeverMatch(t *testing.T) {
	client, _ := scram.SHA256.NewClient("", "", "")
	creds, _ := client.GetStoredCredentialsWithError(scram.KeyFactors{Salt: "saltsaltsaltsalt", Iters: 4096})
	verifier := fmt.Sprintf("SCRAM-SHA-256$4096:%s$%s:%s",
		base64.StdEncoding.EncodeToString([]byte(creds.Salt)),
		base64.StdEncoding.EncodeToString(creds.StoredKey),
		base64.StdEncoding.EncodeToString(creds.ServerKey))
	file := `"plain" ""` + "\n" + `"hashed" "md5` + md5Hex("hashed") + `"` + "\n" + `"stored" "` + verifier + `"` + "\n" + `"real" "s3cret"`
	u, err := ParseUsers([]byte(file))
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(u.EmptyPasswords()); got != "[plain hashed stored]" {
		t.Fatalf("EmptyPasswords = %s", got)
	}
	salt := [4]byte{1, 2, 3, 4}
	for _, name := range []string{"plain", "hashed", "stored"} {
		s, ok := u.Lookup(name)
		if !ok || s.Kind != Empty {
			t.Fatalf("%s: kind %v", name, s.Kind)
		}
		if s.CheckMD5(name, salt, "md5"+md5Hex(md5Hex(name)+string(salt[:]))) {
			t.Fatalf("%s: the md5 proof of the empty password matched", name)
		}
		if _, ok := s.SCRAMCredentials(); ok {
			t.Fatalf("%s: has SCRAM credentials", name)
		}
	}
	if s, _ := u.Lookup("real"); s.Kind != Plain {
		t.Fatal("a real password was taken for an empty one")
	}
}
