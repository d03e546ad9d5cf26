package auth

import (
	"crypto/md5"
	"crypto/subtle"
	"encoding/hex"
)

// CheckMD5 verifies a client's md5 password response: "md5" followed by
// md5(md5(password+user) + salt) in hex. A SCRAM secret cannot answer an md5
// challenge (the password is not recoverable from it) and never matches.
func (s *Secret) CheckMD5(user string, salt [4]byte, response string) bool {
	var inner string
	switch s.Kind {
	case Plain:
		inner = md5Hex(s.Plain + user)
	case MD5:
		inner = s.MD5
	default:
		return false
	}
	want := "md5" + md5Hex(inner+string(salt[:]))
	return subtle.ConstantTimeCompare([]byte(want), []byte(response)) == 1
}

// CanMD5 reports whether the secret can check an md5 response.
func (s *Secret) CanMD5() bool { return s.Kind == Plain || s.Kind == MD5 }

func md5Hex(s string) string {
	sum := md5.Sum([]byte(s))
	return hex.EncodeToString(sum[:])
}
