package bench

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
)

// serverColumns are the SHOW POOLS columns that count server connections,
// in pgrouter's console and in pgbouncer's (which adds sv_used and
// sv_tested); a column one of them lacks counts nothing.
var serverColumns = map[string]bool{"sv_active": true, "sv_idle": true, "sv_used": true, "sv_tested": true, "sv_login": true}

// serverConns counts the server connections a pooler holds, from SHOW POOLS
// on its admin console (pgrouter's database pgrouter, pgbouncer's database
// pgbouncer): the sum of the server columns over every pool. Both consoles
// speak only the simple protocol.
func serverConns(ctx context.Context, dsn string) (int, error) {
	cc, err := pgx.ParseConfig(dsn)
	if err != nil {
		return 0, err
	}
	cc.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		return 0, fmt.Errorf("admin console: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	rows, err := conn.Query(ctx, "SHOW POOLS")
	if err != nil {
		return 0, fmt.Errorf("admin console: SHOW POOLS: %w", err)
	}
	defer rows.Close()
	var cols []int
	for i, f := range rows.FieldDescriptions() {
		if serverColumns[f.Name] {
			cols = append(cols, i)
		}
	}
	if len(cols) == 0 {
		return 0, fmt.Errorf("admin console: SHOW POOLS has no sv_active or sv_idle column: is %s an admin console?", cc.Database)
	}
	total := 0
	for rows.Next() {
		raw := rows.RawValues()
		for _, i := range cols {
			n, err := strconv.Atoi(strings.TrimSpace(string(raw[i])))
			if err != nil {
				return 0, fmt.Errorf("admin console: SHOW POOLS column %s: %q is not a number", rows.FieldDescriptions()[i].Name, raw[i])
			}
			total += n
		}
	}
	return total, rows.Err()
}

// EqualConnections checks that, at each client count, every target held as
// many server connections: a pooler with more connections than another is
// not measured against it like with like. Every target needs an Admin DSN.
func EqualConnections(rs []*Result) error {
	byClients := map[int][]*Result{}
	var order []int
	for _, r := range rs {
		if _, ok := byClients[r.Clients]; !ok {
			order = append(order, r.Clients)
		}
		byClients[r.Clients] = append(byClients[r.Clients], r)
	}
	var bad []string
	for _, c := range order {
		group := byClients[c]
		for _, r := range group[1:] {
			if r.ServerConns != group[0].ServerConns {
				var counts []string
				for _, r := range group {
					counts = append(counts, fmt.Sprintf("%s %d", r.Target, r.ServerConns))
				}
				bad = append(bad, fmt.Sprintf("at %s: %s", clientsLabel(c), strings.Join(counts, ", ")))
				break
			}
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("the targets held different numbers of server connections (%s): size the pools alike (pgrouter: pool.size per shard; pgbouncer: default_pool_size) or drop --equal-connections", strings.Join(bad, "; "))
	}
	return nil
}
