// Package auth holds client credentials and checks the proofs clients send.
//
// Credentials come from a users file in pgbouncer's auth_file format, so an
// existing file carries over: one `"user" "secret"` pair a line, where the
// secret is a plain password, an md5 hash ("md5" + md5(password+user)) or a
// SCRAM verifier ("SCRAM-SHA-256$iter:salt$StoredKey:ServerKey"). The wire
// exchange itself lives in the proxy; this package only knows the secrets.
package auth

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/xdg-go/scram"
)

// Kind says what form a stored secret has.
type Kind int

// Secret kinds.
const (
	Plain Kind = iota
	MD5
	SCRAM
	// Empty is a secret that stands for the empty password: a plain "", the
	// md5 hash of "", or a SCRAM verifier of "". Files generated from
	// pg_shadow hold such entries for roles without a password; like
	// pgbouncer and PostgreSQL, pgrouter lets no one log in with them.
	Empty
)

// scramIterations matches PostgreSQL's default scram_iterations.
const scramIterations = 4096

// Secret is one user's stored credential.
type Secret struct {
	Kind  Kind
	Plain string // Kind == Plain
	MD5   string // Kind == MD5: the 32 hex digits after "md5"
	user  string

	once  sync.Once
	scram scram.StoredCredentials // Kind == SCRAM, or derived from Plain on first use
}

// Users maps user names to secrets. It is immutable once loaded.
type Users struct {
	secrets map[string]*Secret
	// mockKey derives a stable fake salt for unknown users, so a SCRAM
	// exchange does not reveal whether a user exists.
	mockKey []byte
	// empty lists the users whose secret is the empty password, in file
	// order, for the warning at load.
	empty []string
}

// EmptyPasswords returns the users whose entry is the empty password: they
// cannot log in.
func (u *Users) EmptyPasswords() []string {
	if u == nil {
		return nil
	}
	return u.empty
}

// LoadUsers reads a users file.
func LoadUsers(path string) (*Users, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read users file: %w", err)
	}
	u, err := ParseUsers(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return u, nil
}

// ParseUsers parses users-file text. Blank lines and lines starting with
// ';' or '#' are ignored.
func ParseUsers(data []byte) (*Users, error) {
	u := &Users{secrets: map[string]*Secret{}, mockKey: make([]byte, 32)}
	if _, err := rand.Read(u.mockKey); err != nil {
		return nil, fmt.Errorf("random key: %w", err)
	}
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == ';' || line[0] == '#' {
			continue
		}
		fields, err := splitQuoted(line)
		if err != nil || len(fields) < 2 {
			return nil, fmt.Errorf("line %d: expected \"user\" \"secret\"", i+1)
		}
		name, secret := fields[0], fields[1]
		if name == "" {
			return nil, fmt.Errorf("line %d: empty user name", i+1)
		}
		s, err := parseSecret(name, secret)
		if err != nil {
			return nil, fmt.Errorf("line %d: user %q: %w", i+1, name, err)
		}
		if s.Kind == Empty {
			u.empty = append(u.empty, name)
		}
		u.secrets[name] = s
	}
	return u, nil
}

// Lookup returns a user's secret.
func (u *Users) Lookup(name string) (*Secret, bool) {
	if u == nil {
		return nil, false
	}
	s, ok := u.secrets[name]
	return s, ok
}

// Len reports how many users are known.
func (u *Users) Len() int {
	if u == nil {
		return 0
	}
	return len(u.secrets)
}

func parseSecret(user, secret string) (*Secret, error) {
	switch {
	case secret == "":
		return &Secret{Kind: Empty, user: user}, nil
	case strings.HasPrefix(secret, "SCRAM-SHA-256$"):
		creds, err := parseSCRAM(secret)
		if err != nil {
			return nil, err
		}
		if scramOfEmpty(creds) {
			return &Secret{Kind: Empty, user: user}, nil
		}
		return &Secret{Kind: SCRAM, scram: creds, user: user}, nil
	case len(secret) == 35 && strings.HasPrefix(secret, "md5") && isHex(secret[3:]):
		if strings.EqualFold(secret[3:], md5Hex(user)) { // md5("" + user)
			return &Secret{Kind: Empty, user: user}, nil
		}
		return &Secret{Kind: MD5, MD5: secret[3:], user: user}, nil
	default:
		return &Secret{Kind: Plain, Plain: secret, user: user}, nil
	}
}

// scramOfEmpty reports whether a SCRAM verifier is that of the empty
// password (one PBKDF2 run per SCRAM entry, at load).
func scramOfEmpty(creds scram.StoredCredentials) bool {
	client, err := scram.SHA256.NewClientUnprepped("", "", "")
	if err != nil {
		return false
	}
	empty, err := client.GetStoredCredentialsWithError(creds.KeyFactors)
	return err == nil && hmac.Equal(empty.StoredKey, creds.StoredKey)
}

// parseSCRAM parses PostgreSQL's verifier format
// SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>.
func parseSCRAM(secret string) (scram.StoredCredentials, error) {
	bad := fmt.Errorf("malformed SCRAM-SHA-256 secret (expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>)")
	parts := strings.Split(secret, "$")
	if len(parts) != 3 {
		return scram.StoredCredentials{}, bad
	}
	iterStr, saltStr, ok1 := strings.Cut(parts[1], ":")
	storedStr, serverStr, ok2 := strings.Cut(parts[2], ":")
	if !ok1 || !ok2 {
		return scram.StoredCredentials{}, bad
	}
	iters, err := strconv.Atoi(iterStr)
	if err != nil || iters < 1 {
		return scram.StoredCredentials{}, bad
	}
	salt, err1 := base64.StdEncoding.DecodeString(saltStr)
	stored, err2 := base64.StdEncoding.DecodeString(storedStr)
	server, err3 := base64.StdEncoding.DecodeString(serverStr)
	if err1 != nil || err2 != nil || err3 != nil || len(stored) != sha256.Size || len(server) != sha256.Size {
		return scram.StoredCredentials{}, bad
	}
	return scram.StoredCredentials{
		KeyFactors: scram.KeyFactors{Salt: string(salt), Iters: iters},
		StoredKey:  stored,
		ServerKey:  server,
	}, nil
}

// SCRAMCredentials returns the verifier for a SCRAM exchange. A plain secret
// is turned into one on first use (PBKDF2 is slow, so it is done once per
// user, not per login); an md5 secret cannot be, and reports false.
func (s *Secret) SCRAMCredentials() (scram.StoredCredentials, bool) {
	switch s.Kind {
	case SCRAM:
		return s.scram, true
	case Plain:
		s.once.Do(func() {
			salt := make([]byte, 16)
			_, _ = rand.Read(salt)
			client, err := scram.SHA256.NewClient("", s.Plain, "")
			if err != nil { // the password fails SASLprep: use it unprepared, as PostgreSQL does
				client, _ = scram.SHA256.NewClientUnprepped("", s.Plain, "")
			}
			creds, err := client.GetStoredCredentialsWithError(scram.KeyFactors{Salt: string(salt), Iters: scramIterations})
			if err == nil {
				s.scram = creds
			}
		})
		return s.scram, true
	}
	return scram.StoredCredentials{}, false
}

// MockSCRAMCredentials returns a verifier that no password matches, with a
// salt that is stable per user name, for running a SCRAM exchange with an
// unknown user to its failing end exactly like a wrong password.
func (u *Users) MockSCRAMCredentials(user string) scram.StoredCredentials {
	key := u.mockKey
	if key == nil {
		key = []byte("pgrouter")
	}
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(user))
	sum := mac.Sum(nil)
	unmatched := make([]byte, sha256.Size)
	_, _ = rand.Read(unmatched)
	return scram.StoredCredentials{
		KeyFactors: scram.KeyFactors{Salt: string(sum[:16]), Iters: scramIterations},
		StoredKey:  unmatched,
		ServerKey:  unmatched,
	}
}

// splitQuoted splits `"a" "b""c"` into ["a", `b"c`] (pgbouncer's quoting).
func splitQuoted(line string) ([]string, error) {
	var out []string
	for i := 0; i < len(line); {
		switch line[i] {
		case ' ', '\t':
			i++
			continue
		case '"':
		default:
			return out, nil // trailing text after the pairs is ignored, as pgbouncer does
		}
		var b strings.Builder
		i++
		for {
			if i >= len(line) {
				return nil, fmt.Errorf("unterminated quote")
			}
			if line[i] == '"' {
				if i+1 < len(line) && line[i+1] == '"' {
					b.WriteByte('"')
					i += 2
					continue
				}
				i++
				break
			}
			b.WriteByte(line[i])
			i++
		}
		out = append(out, b.String())
	}
	return out, nil
}

func isHex(s string) bool {
	for _, c := range s {
		if !strings.ContainsRune("0123456789abcdefABCDEF", c) {
			return false
		}
	}
	return true
}
