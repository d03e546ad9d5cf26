package proxy

import (
	"crypto/rand"
	"fmt"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/xdg-go/scram"

	"github.com/pgrouter/pgrouter/auth"
	"github.com/pgrouter/pgrouter/config"
	"github.com/pgrouter/pgrouter/wire"
)

const scramMechanism = "SCRAM-SHA-256"

// authenticate runs the configured exchange. Every failure, including an
// unknown user, ends in the same 28P01 after the same exchange, so a client
// cannot tell a wrong password from a user that does not exist.
func (s *Server) authenticate(r *wire.Reader, w *wire.Writer, gen *generation, user string) error {
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
		return authSCRAM(r, w, gen.users, user, secret, known)
	}
	return fmt.Errorf("unknown auth type %q", gen.cfg.Auth.Type)
}

func passwordFailed(user string) *Error {
	return fatalf(codeInvalidPassword, "password authentication failed for user %q", user)
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
		return fatalf(codeProtocolViolation, "pgrouter: malformed password message").because(err)
	}
	if !known || !secret.CheckMD5(user, salt, msg.Password) {
		return passwordFailed(user)
	}
	return nil
}

func authSCRAM(r *wire.Reader, w *wire.Writer, users *auth.Users, user string, secret *auth.Secret, known bool) error {
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

	body, err := challenge(r, w, &pgproto3.AuthenticationSASL{AuthMechanisms: []string{scramMechanism}})
	if err != nil {
		return err
	}
	var initial pgproto3.SASLInitialResponse
	if err := initial.Decode(body); err != nil {
		return fatalf(codeProtocolViolation, "pgrouter: malformed SASL initial response").because(err)
	}
	if initial.AuthMechanism != scramMechanism {
		return fatalf(codeProtocolViolation, "pgrouter: client selected an invalid SASL authentication mechanism %q", initial.AuthMechanism)
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
		return fatalf(codeProtocolViolation, "pgrouter: malformed SASL response").because(err)
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
		return nil, fatalf(codeProtocolViolation, "pgrouter: expected a password response, got message type %q", m.Type)
	}
	// The body aliases the reader's buffer; the decoders copy what they keep.
	return m.Body(), nil
}
