// Package refsync replicates reference tables (countries, currencies,
// plans) from one source database to every shard, so functions on each
// shard can join them locally, as londiste did for Skype's PL/Proxy
// partitions.
//
// The design, built in steps (this file is the first):
//   - Preflight: the source must run wal_level = logical, the user needs
//     REPLICATION, every table needs a key (primary key or replica identity
//     index) and SELECT; every problem is reported at once with its fix.
//   - A publication for the tables and one pgoutput slot on the source. The
//     initial copy of each table to a shard runs at the slot's exported
//     snapshot, in the shard transaction that also records the slot's
//     consistent point in pgrouter.refsync_state.
//   - Streaming: every source transaction is applied on every shard in
//     commit order, in one shard transaction that also records its end LSN,
//     so a restart of refsync, a shard or the source loses and repeats
//     nothing (transactions at or below a shard's LSN are skipped). The
//     slot's confirmed position is the minimum applied across shards.
package refsync

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/pgrouter/pgrouter/config"
)

// ErrNotReady is wrapped by Preflight when the source lacks something
// refsync needs; the message lists every problem with its fix.
var ErrNotReady = errors.New("the reference source is not ready for refsync")

// tableCheck is what the source's catalogs say about one reference table.
type tableCheck struct {
	exists, isTable, selectable, owned bool
	identity                           string // relreplident: d, i, f, n
	hasKey                             bool   // primary key, or the replica identity index
}

const tableCheckSQL = `SELECT c.oid IS NOT NULL,
	coalesce(c.relkind IN ('r', 'p'), false),
	coalesce(has_table_privilege(c.oid, 'SELECT'), false),
	coalesce(pg_has_role(c.relowner, 'USAGE'), false),
	coalesce(c.relreplident::text, ''),
	coalesce(EXISTS (SELECT FROM pg_index i WHERE i.indrelid = c.oid
		AND (i.indisprimary AND c.relreplident IN ('d', 'f') OR i.indisreplident AND c.relreplident = 'i')), false)
FROM (SELECT to_regclass(format('%I.%I', $1::text, $2::text)) AS oid) r
LEFT JOIN pg_class c ON c.oid = r.oid`

// Preflight checks that the source can be replicated from: settings, the
// user's rights and every table. It returns nil, or an error wrapping
// ErrNotReady that lists each problem and what to do about it.
func Preflight(ctx context.Context, src *pgx.Conn, ref *config.Reference) error {
	var problems []string
	add := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }

	var walLevel, user string
	var slots int
	var super, replication bool
	err := src.QueryRow(ctx, `SELECT current_setting('wal_level'), current_setting('max_replication_slots')::int,
		current_user, rolsuper, rolreplication FROM pg_roles WHERE rolname = current_user`).Scan(&walLevel, &slots, &user, &super, &replication)
	if err != nil {
		return fmt.Errorf("read the source's settings: %w", err)
	}
	if walLevel != "logical" {
		add("wal_level is %s: logical decoding needs wal_level = logical (ALTER SYSTEM SET wal_level = logical, then restart the source)", walLevel)
	}
	if slots < 1 {
		add("max_replication_slots is 0: set it to at least 2 (one slot, and one for a shard being added), then restart the source")
	}
	if !super && !replication {
		add("user %s may not stream changes: ALTER ROLE %s REPLICATION", user, pgx.Identifier{user}.Sanitize())
	}
	for _, t := range ref.TableNames {
		var c tableCheck
		if err := src.QueryRow(ctx, tableCheckSQL, t.Schema, t.Name).Scan(&c.exists, &c.isTable, &c.selectable, &c.owned, &c.identity, &c.hasKey); err != nil {
			return fmt.Errorf("check table %s on the source: %w", t, err)
		}
		ident := pgx.Identifier{t.Schema, t.Name}.Sanitize()
		switch {
		case !c.exists:
			add("table %s does not exist on the source: create it there (refsync creates it on the shards)", t)
			continue
		case !c.isTable:
			add("%s is not a table (a view or a foreign table cannot be published): list a table", t)
			continue
		}
		if !c.selectable {
			add("user %s cannot read %s: GRANT SELECT ON %s TO %s", user, t, ident, pgx.Identifier{user}.Sanitize())
		}
		if !c.owned && !super {
			add("user %s does not own %s, and only its owner or a superuser can publish it: ALTER TABLE %s OWNER TO %s, or use a superuser in reference.source",
				user, t, ident, pgx.Identifier{user}.Sanitize())
		}
		switch {
		case c.identity == "n":
			add("%s has REPLICA IDENTITY NOTHING, so its updates and deletes cannot be replicated: ALTER TABLE %s REPLICA IDENTITY DEFAULT (with a primary key)", t, ident)
		case !c.hasKey:
			add("%s has no primary key (or replica identity index), so a shard cannot find the row an update or delete changed: add a primary key", t)
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("%w:\n  %s", ErrNotReady, strings.Join(problems, "\n  "))
	}
	return nil
}
