package proxy

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"hash"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/xdg-go/scram"

	"github.com/pgrouter/pgrouter/auth"
	"github.com/pgrouter/pgrouter/config"
	"github.com/pgrouter/pgrouter/sqlstate"
	"github.com/pgrouter/pgrouter/wire"
)

const (
	scramMechanism     = "SCRAM-SHA-256"
	scramPlusMechanism = "SCRAM-SHA-256-PLUS"
)

// endPointBinding computes tls-server-end-point channel binding data for
// a certificate (RFC 5929 section 4.1): its hash with the hash function of
// its signature, SHA-256 when that is MD5 or SHA-1. A client using
// SCRAM-SHA-256-PLUS proves it sees this certificate, so a man in the
// middle that terminates TLS with another one cannot relay its login.
func endPointBinding(cert tls.Certificate) ([]byte, error) {
	leaf := cert.Leaf
	if leaf == nil {
		var err error
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, err
		}
	}
	var h hash.Hash
	switch leaf.SignatureAlgorithm {
	case x509.SHA384WithRSA, x509.SHA384WithRSAPSS, x509.ECDSAWithSHA384:
		h = sha512.New384()
	case x509.SHA512WithRSA, x509.SHA512WithRSAPSS, x509.ECDSAWithSHA512:
		h = sha512.New()
	default: // SHA-256 signatures, MD5/SHA-1 ones, and Ed25519 (as PostgreSQL)
		h = sha256.New()
	}
	h.Write(leaf.Raw)
	return h.Sum(nil), nil
}

// authenticate runs the configured exchange. Every failure, including an
// unknown user, ends in the same 28P01 after the same exchange, so a client
// cannot tell a wrong password from a user that does not exist.
func (s *Server) authenticate(r *wire.Reader, w *wire.Writer, gen *generation, user string, binding []byte) error {
	secret, known := gen.users.Lookup(user)
	switch gen.cfg.Auth.Type {
	case config.AuthTrust:
		if gen.users != nil && !known {
			return passwordFailed(user)
		}
		return nil
	case config.AuthMD5:
		return authMD5(r, w, user, secret, known)
	case config.AuthSCRAM:
		return authSCRAM(r, w, gen.users, user, secret, known, binding)
	}
	return fmt.Errorf("unknown auth type %q", gen.cfg.Auth.Type)
}

func passwordFailed(user string) *Error {
	return fatalf(sqlstate.InvalidPassword, "password authentication failed for user %q", user)
}

func authMD5(r *wire.Reader, w *wire.Writer, user string, secret *auth.Secret, known bool) error {
	var salt [4]byte
	if _, err := rand.Read(salt[:]); err != nil {
		return err
	}
	body, err := challenge(r, w, &pgproto3.AuthenticationMD5Password{Salt: salt})
	if err != nil {
		return err
	}
	var msg pgproto3.PasswordMessage
	if err := msg.Decode(body); err != nil {
		return fatalf(sqlstate.ProtocolViolation, "pgrouter: malformed password message").because(err)
	}
	if !known || !secret.CheckMD5(user, salt, msg.Password) {
		return passwordFailed(user)
	}
	return nil
}

// authSCRAM runs SCRAM-SHA-256, and over TLS offers SCRAM-SHA-256-PLUS
// with tls-server-end-point channel binding (binding not nil), as
// PostgreSQL does; a client that supports binding but was told the server
// does not (a downgrade) is refused.
func authSCRAM(r *wire.Reader, w *wire.Writer, users *auth.Users, user string, secret *auth.Secret, known bool, binding []byte) error {
	var creds scram.StoredCredentials
	ok := false
	if known {
		creds, ok = secret.SCRAMCredentials()
	}
	if !ok { // unknown user, or an md5 secret that cannot do SCRAM: fail at the end like a wrong password
		creds = users.MockSCRAMCredentials(user)
	}
	server, err := scram.SHA256.NewServer(func(string) (scram.StoredCredentials, error) {
		return creds, nil // PostgreSQL clients send an empty SCRAM user name; the startup user counts
	})
	if err != nil {
		return err
	}
	conv := server.NewConversation()
	mechanisms := []string{scramMechanism}
	if binding != nil {
		conv = server.NewConversationWithChannelBinding(scram.ChannelBinding{Type: scram.ChannelBindingTLSServerEndpoint, Data: binding})
		mechanisms = []string{scramPlusMechanism, scramMechanism}
	}

	body, err := challenge(r, w, &pgproto3.AuthenticationSASL{AuthMechanisms: mechanisms})
	if err != nil {
		return err
	}
	var initial pgproto3.SASLInitialResponse
	if err := initial.Decode(body); err != nil {
		return fatalf(sqlstate.ProtocolViolation, "pgrouter: malformed SASL initial response").because(err)
	}
	if initial.AuthMechanism != scramMechanism && (binding == nil || initial.AuthMechanism != scramPlusMechanism) {
		return fatalf(sqlstate.ProtocolViolation, "pgrouter: client selected an invalid SASL authentication mechanism %q", initial.AuthMechanism)
	}
	first, err := conv.Step(string(initial.Data))
	if err != nil {
		return passwordFailed(user).because(err)
	}
	body, err = challenge(r, w, &pgproto3.AuthenticationSASLContinue{Data: []byte(first)})
	if err != nil {
		return err
	}
	var resp pgproto3.SASLResponse
	if err := resp.Decode(body); err != nil {
		return fatalf(sqlstate.ProtocolViolation, "pgrouter: malformed SASL response").because(err)
	}
	final, err := conv.Step(string(resp.Data))
	if err != nil || !conv.Valid() || !ok {
		return passwordFailed(user).because(err)
	}
	return w.Send(&pgproto3.AuthenticationSASLFinal{Data: []byte(final)})
}

// challenge sends an authentication request and returns the body of the
// client's answer.
func challenge(r *wire.Reader, w *wire.Writer, msg pgproto3.BackendMessage) ([]byte, error) {
	if err := w.Send(msg); err != nil {
		return nil, err
	}
	if err := w.Flush(); err != nil {
		return nil, err
	}
	return readPassword(r)
}

// readPassword reads the client's next authentication message.
func readPassword(r *wire.Reader) ([]byte, error) {
	m, err := r.Next()
	if err != nil {
		return nil, err
	}
	if m.Type != wire.Password {
		if m.Type == wire.Terminate {
			return nil, errClientGone
		}
		return nil, fatalf(sqlstate.ProtocolViolation, "pgrouter: expected a password response, got message type %q", m.Type)
	}
	// The body aliases the reader's buffer; the decoders copy what they keep.
	return m.Body(), nil
}
