package fanin

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"

	"github.com/pgrouter/pgrouter/config"
	"github.com/pgrouter/pgrouter/logical"
	"github.com/pgrouter/pgrouter/ownership"
	"github.com/pgrouter/pgrouter/shardmap"
)

// Moves. For the cluster's sharded tables (clusters.<c>.tables, whose rows
// pgrouter move moves by partition), a shard's stream also carries its
// ownership records (pgrouter.partitions, published with the tables), and
// the worker follows, in the stream's own order, which partitions the
// shard holds:
//
//   - A change of a row in a partition the shard does not hold is skipped:
//     the mover's copy and catch-up writes on the new shard before it owns
//     the partition, and the cleanup deletes on the old shard after it let
//     the partition go. The old shard's stream brought those rows already.
//   - When the shard gains a partition (the move's point of no return), the
//     worker waits until no other shard's stream, as applied, still writes
//     in it (the old shard's worker has applied the freeze, after which the
//     old shard writes nothing there), then tags the partition's central
//     rows with its shard: every write of the partition before the cut-over
//     is in the target before any after it, whatever the streams' pace.
//   - Updates and deletes of these tables find rows by key alone (the rows
//     came from the old shard), and tag what they write.
//
// The partitions a shard holds and writes in are recorded in
// pgrouter.fanin_state with its position, in the same transaction.

// partitionView is what a worker knows of its shard's partitions.
type partitionView struct {
	cluster    string
	partitions int
	hash       shardmap.HashFunc
	tables     map[config.TableName]*ownership.Table // the sharded ones among fanin's tables
	holds      map[int]bool                          // owned, moving or frozen: its rows are the shard's
	writes     map[int]bool                          // owned or moving: the shard may still write in it
	// held is holds as an int[] literal, made once per change of holds
	// (every delete of a sharded table's row needs it).
	held string
}

// partitionsTable is where shards record ownership.
var partitionsTable = config.TableName{Schema: "pgrouter", Name: "partitions"}

// newPartitionView describes the cluster's sharded tables among the fanin
// tables on the shard; nil when there are none (nothing moves).
func newPartitionView(ctx context.Context, cfg *config.Config, shard *pgx.Conn) (*partitionView, error) {
	f := cfg.Fanin
	cl := cfg.Clusters[f.Cluster]
	v := &partitionView{cluster: f.Cluster, partitions: cl.Partitions, tables: map[config.TableName]*ownership.Table{}, holds: map[int]bool{}, writes: map[int]bool{}}
	v.hash, _ = shardmap.ParseHashFunc(cl.Hash)
	for _, t := range cl.Tables {
		if !slices.Contains(f.TableNames, t.Table) {
			continue
		}
		ot, err := ownership.Describe(ctx, shard, t)
		if err != nil {
			return nil, err
		}
		v.tables[t.Table] = ot
	}
	if len(v.tables) == 0 {
		return nil, nil
	}
	if err := ownership.EnsureSchema(ctx, shard); err != nil {
		return nil, err
	}
	return v, nil
}

// read sets what the shard holds from its records (in the copy's
// snapshot), or from router.yaml when it records nothing yet.
func (v *partitionView) read(ctx context.Context, q logical.Querier, configured []int) error {
	v.held = ""
	clear(v.holds)
	clear(v.writes)
	rows, err := q.Query(ctx, "SELECT partition, state FROM pgrouter.partitions WHERE cluster = $1", v.cluster)
	if err != nil {
		return fmt.Errorf("read the shard's partitions: %w", err)
	}
	defer rows.Close()
	recorded := false
	for rows.Next() {
		var p int
		var state string
		if err := rows.Scan(&p, &state); err != nil {
			return err
		}
		recorded = true
		v.holds[p] = true
		v.writes[p] = state != ownership.Frozen
	}
	if err := rows.Err(); err != nil {
		return err
	}
	if !recorded {
		for _, p := range configured {
			v.holds[p], v.writes[p] = true, true
		}
	}
	return nil
}

// restore sets what the shard held at the target's position.
func (v *partitionView) restore(holds, writes []int) {
	v.held = ""
	clear(v.holds)
	clear(v.writes)
	for _, p := range holds {
		v.holds[p] = true
	}
	for _, p := range writes {
		v.writes[p] = true
	}
}

// lists returns holds and writes as sorted lists, for fanin_state.
func (v *partitionView) lists() (holds, writes []int) {
	holds, writes = []int{}, []int{}
	for p := range v.holds {
		holds = append(holds, p)
	}
	for p := range v.writes {
		writes = append(writes, p)
	}
	slices.Sort(holds)
	slices.Sort(writes)
	return holds, writes
}

// heldArray is the partitions the shard holds as an int[] literal.
func (v *partitionView) heldArray() string {
	if v.held == "" {
		holds, _ := v.lists()
		v.held = string(intArray(holds))
	}
	return v.held
}

// follow takes a change of pgrouter.partitions and returns the partitions
// the shard starts writing in.
func (v *partitionView) follow(c *logical.Change) (gained []int) {
	row := c.Row
	if c.Kind == 'D' {
		row = c.Old
	}
	var cluster, state string
	p := -1
	for i, col := range c.Rel.Columns {
		if i >= len(row) || row[i].Kind != 't' {
			continue
		}
		switch col {
		case "cluster":
			cluster = string(row[i].Text)
		case "partition":
			p, _ = strconv.Atoi(string(row[i].Text))
		case "state":
			state = string(row[i].Text)
		}
	}
	if cluster != v.cluster || p < 0 {
		return nil
	}
	v.held = ""
	if c.Kind == 'D' {
		delete(v.holds, p)
		delete(v.writes, p)
		return nil
	}
	v.holds[p] = true
	writes := state != ownership.Frozen
	if writes && !v.writes[p] {
		gained = append(gained, p)
	}
	if writes {
		v.writes[p] = true
	} else {
		delete(v.writes, p)
	}
	return gained
}

// partitionOf is the partition of a row of a sharded table (ok false for
// other tables, or a key it cannot read).
func (v *partitionView) partitionOf(rel *logical.Relation, row []logical.Value) (int, bool) {
	t := v.tables[rel.Table]
	if t == nil {
		return 0, false
	}
	i := slices.Index(rel.Columns, t.Key)
	if i < 0 || i >= len(row) || row[i].Kind != 't' {
		return 0, false
	}
	var h uint64
	switch t.KeyType {
	case "smallint", "integer", "bigint":
		n, err := strconv.ParseInt(string(row[i].Text), 10, 64)
		if err != nil {
			return 0, false
		}
		size := 4
		if t.KeyType == "bigint" {
			size = 8
		}
		h = v.hash.Int(n, size)
	default:
		text := row[i].Text
		if t.KeyType == "character" {
			for len(text) > 0 && text[len(text)-1] == ' ' {
				text = text[:len(text)-1]
			}
		}
		h = v.hash.Text(text)
	}
	return shardmap.Partition(h, v.partitions), true
}

// skip reports whether a data change is in a partition the shard does not
// hold at this point of its stream.
func (v *partitionView) skip(c *logical.Change) bool {
	if v == nil || c.Kind == 'T' {
		return false
	}
	row := c.Row
	if row == nil {
		row = c.Old
	}
	p, ok := v.partitionOf(c.Rel, row)
	return ok && !v.holds[p]
}

// tracked reports whether a table's rows move between shards.
func (v *partitionView) tracked(t config.TableName) bool {
	return v != nil && v.tables[t] != nil
}

// retag tags the central rows of partitions with the shard that gained
// them.
func (v *partitionView) retag(shard string, parts []int) []stmt {
	var out []stmt
	for _, t := range v.tables {
		list := make([]string, len(parts))
		for i, p := range parts {
			list[i] = strconv.Itoa(p)
		}
		out = append(out, stmt{
			sql: fmt.Sprintf("UPDATE %s SET %s = $1 WHERE %s = ANY ('{%s}'::int[]) AND %s IS DISTINCT FROM $1",
				t.Ident(), shardColumn, t.PartitionExpr(pgx.Identifier{t.Key}.Sanitize(), v.partitions), strings.Join(list, ","), shardColumn),
			params: [][]byte{[]byte(shard)},
		})
	}
	return out
}

// waitReleased waits until no other shard of the cluster, as its stream
// stands applied in the target, still writes in any of parts.
func (w *worker) waitReleased(ctx context.Context, target *pgx.Conn, parts []int) error {
	start, logged := time.Now(), time.Now()
	for {
		var others []string
		err := target.QueryRow(ctx, `SELECT coalesce(array_agg(shard ORDER BY shard), '{}') FROM pgrouter.fanin_state
			WHERE shard <> $1 AND shard = ANY ($2) AND writes && $3::int[]`, w.shard, w.peers, parts).Scan(&others)
		if err != nil {
			return fmt.Errorf("read the other shards' positions in the target: %w", err)
		}
		if len(others) == 0 {
			if d := time.Since(start); d > time.Second {
				w.log.Info("the old shards' streams passed the cut-over", zap.Ints("partitions", parts), zap.Duration("waited", d))
			}
			return nil
		}
		if time.Since(logged) >= 10*time.Second {
			logged = time.Now()
			w.log.Warn("the shard gained partitions; waiting for the old shard's stream to reach the cut-over before applying more",
				zap.Ints("partitions", parts), zap.Strings("still_writing", others))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}
