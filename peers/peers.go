// Package peers reaches the other pgrouter instances of a fleet (the
// peers of router.yaml) through their admin consoles, for the fleet
// commands: PAUSE PEERS, RESUME PEERS, RELOAD PEERS and SHOW PEERS.
package peers

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// ConsoleDatabase is the admin console's database name.
const ConsoleDatabase = "pgrouter"

// Peer is another instance: its id and client (and console) address.
type Peer struct {
	ID   int
	Addr string
}

func (p Peer) String() string { return fmt.Sprintf("peer %d (%s)", p.ID, p.Addr) }

// Others lists the peers of a peers map but self, by id.
func Others(all map[int]string, self int) []Peer {
	var out []Peer
	for id, addr := range all {
		if id != self {
			out = append(out, Peer{ID: id, Addr: addr})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Credentials log into the peers' consoles.
type Credentials struct {
	User, Password string
	// Timeout bounds connecting to one peer (server_connect_timeout).
	Timeout time.Duration
}

// Conn is a console session on one peer.
type Conn struct {
	Peer Peer
	pg   *pgconn.PgConn
}

// Dial opens a console session on p. TLS is used when the peer offers it
// (sslmode=prefer): the peer's certificate is not verified, as between
// the instances of one deployment behind one firewall.
func Dial(ctx context.Context, p Peer, cred Credentials) (*Conn, error) {
	host, port, err := net.SplitHostPort(p.Addr)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	cfg, err := pgconn.ParseConfig(fmt.Sprintf("host='%s' port='%s' sslmode=prefer", host, port))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	cfg.User, cfg.Password, cfg.Database = cred.User, cred.Password, ConsoleDatabase
	cfg.RuntimeParams = map[string]string{"application_name": "pgrouter peer"}
	if cred.Timeout > 0 {
		cfg.ConnectTimeout = cred.Timeout
	}
	pg, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("%s cannot be reached: %w", p, err)
	}
	return &Conn{Peer: p, pg: pg}, nil
}

// Exec runs one console command and returns its rows (text), keyed by
// column name.
func (c *Conn) Exec(ctx context.Context, command string) ([]map[string]string, error) {
	results, err := c.pg.Exec(ctx, command).ReadAll()
	if err != nil {
		return nil, fmt.Errorf("%s: %s: %w", c.Peer, command, err)
	}
	var rows []map[string]string
	for _, r := range results {
		for _, vals := range r.Rows {
			row := map[string]string{}
			for i, f := range r.FieldDescriptions {
				row[f.Name] = string(vals[i])
			}
			rows = append(rows, row)
		}
	}
	return rows, nil
}

// Close ends the session.
func (c *Conn) Close(ctx context.Context) { _ = c.pg.Close(ctx) }

// DialAll opens a session on every peer at once. When any cannot be reached
// it closes the others and returns an error naming every unreachable peer.
func DialAll(ctx context.Context, ps []Peer, cred Credentials) ([]*Conn, error) {
	conns := make([]*Conn, len(ps))
	errs := make([]error, len(ps))
	var wg sync.WaitGroup
	for i, p := range ps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conns[i], errs[i] = Dial(ctx, p, cred)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		CloseAll(ctx, conns)
		return nil, err
	}
	return conns, nil
}

// CloseAll closes the sessions that are open.
func CloseAll(ctx context.Context, conns []*Conn) {
	for _, c := range conns {
		if c != nil {
			c.Close(ctx)
		}
	}
}

// ExecAll runs command on every session at once and returns each peer's
// rows, and the errors of those where it failed (nil where it worked).
func ExecAll(ctx context.Context, conns []*Conn, command string) ([][]map[string]string, []error) {
	rows := make([][]map[string]string, len(conns))
	errs := make([]error, len(conns))
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rows[i], errs[i] = c.Exec(ctx, command)
		}()
	}
	wg.Wait()
	return rows, errs
}

// Names lists the peers of the sessions whose error is set, for messages.
func Names(conns []*Conn, errs []error) string {
	var names []string
	for i, err := range errs {
		if err != nil {
			names = append(names, conns[i].Peer.String())
		}
	}
	return strings.Join(names, ", ")
}
