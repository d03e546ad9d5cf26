package console

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"

	"github.com/pgrouter/pgrouter/peers"
	"github.com/pgrouter/pgrouter/proxy"
	"github.com/pgrouter/pgrouter/sqlstate"
)

// The fleet commands run a console command on every instance listed under
// peers, reaching the others through their consoles as peer_user. They
// check first that every peer can be reached, so that PAUSE PEERS (the
// cut-over of a partition move relies on it) and RELOAD PEERS do nothing
// rather than leave the fleet split; PAUSE PEERS also resumes every
// instance again when any of them fails to pause.

// credentials are what this instance logs into its peers' consoles with.
func (con *Console) credentials() (peers.Credentials, []peers.Peer, error) {
	cfg := con.srv.Config()
	if len(cfg.Peers) == 0 {
		return peers.Credentials{}, nil, errorf(sqlstate.ObjectNotInPrerequisiteState, "pgrouter: no peers are configured").
			WithHint("List every instance under peers: in router.yaml (id: address, this one included) and give this one its peer_id.")
	}
	if cfg.PeerUser == "" {
		return peers.Credentials{}, nil, errorf(sqlstate.ObjectNotInPrerequisiteState, "pgrouter: no user to log into the peers' consoles with").
			WithHint("Set peer_user (and peer_password) in router.yaml, or admin_users, whose first entry is the default.")
	}
	cred := peers.Credentials{User: cfg.PeerUser, Password: cfg.PeerPassword, Timeout: cfg.Pool.ServerConnectTimeout.D()}
	return cred, peers.Others(cfg.Peers, cfg.PeerID), nil
}

// fleet runs PAUSE, RESUME or RELOAD on every instance.
func (a *session) fleet(verb string) error {
	ctx := a.c.Context()
	cred, others, err := a.credentials()
	if err != nil {
		return err
	}
	a.log.Info(verb+" PEERS", zap.Int("peers", len(others)))
	if verb == "RESUME" {
		return a.resumeFleet(ctx, others, cred)
	}
	conns, err := peers.DialAll(ctx, others, cred)
	if err != nil {
		return errorf(sqlstate.ConnectionFailure, "pgrouter: %s PEERS did nothing: %v", verb, err).
			WithHint("Start the peers that are down, or remove them from peers: in router.yaml (and RELOAD), then run it again.")
	}
	defer peers.CloseAll(context.WithoutCancel(ctx), conns)
	if verb == "RELOAD" {
		return a.reloadFleet(ctx, conns)
	}
	return a.pauseFleet(ctx, conns)
}

// pauseFleet pauses this instance and every peer at once, each waiting for
// its running transactions. If any fails, all are resumed.
func (a *session) pauseFleet(ctx context.Context, conns []*peers.Conn) error {
	shards, err := a.shardNames("")
	if err != nil {
		return err
	}
	for _, sh := range shards {
		a.srv.Pools().Pause(sh)
	}
	done := make(chan []error, 1)
	go func() {
		_, errs := peers.ExecAll(ctx, conns, "PAUSE")
		done <- errs
	}()
	localErr := a.waitIdle(shards)
	errs := <-done
	if localErr == nil && errors.Join(errs...) == nil {
		return a.c.Send(&pgproto3.CommandComplete{CommandTag: []byte("PAUSE")})
	}
	for _, sh := range shards {
		a.srv.Pools().Resume(sh)
	}
	_, _ = peers.ExecAll(context.WithoutCancel(ctx), conns, "RESUME")
	var failed []string
	if localErr != nil {
		failed = append(failed, fmt.Sprintf("this instance: %v", localErr))
	}
	for _, err := range errs {
		if err != nil {
			failed = append(failed, err.Error())
		}
	}
	return errorf(sqlstate.ObjectInUse, "pgrouter: PAUSE PEERS failed, and every instance was resumed: %s", strings.Join(failed, "; ")).
		WithHint("Run PAUSE PEERS again once the running transactions end, or raise pool.query_wait_timeout.")
}

// resumeFleet resumes this instance and every peer it can reach, then
// names those it could not.
func (a *session) resumeFleet(ctx context.Context, others []peers.Peer, cred peers.Credentials) error {
	shards, err := a.shardNames("")
	if err != nil {
		return err
	}
	for _, sh := range shards {
		a.srv.Pools().Resume(sh)
	}
	var failed []string
	for _, p := range others {
		c, err := peers.Dial(ctx, p, cred)
		if err == nil {
			_, err = c.Exec(ctx, "RESUME")
			c.Close(context.WithoutCancel(ctx))
		}
		if err != nil {
			failed = append(failed, err.Error())
		}
	}
	if len(failed) > 0 {
		return errorf(sqlstate.ConnectionFailure, "pgrouter: RESUME PEERS resumed this instance and the peers it reached, not: %s", strings.Join(failed, "; ")).
			WithHint("Run RESUME on those instances' consoles, or RESUME PEERS again once they can be reached.")
	}
	return a.c.Send(&pgproto3.CommandComplete{CommandTag: []byte("RESUME")})
}

// reloadFleet reloads this instance, then the peers.
func (a *session) reloadFleet(ctx context.Context, conns []*peers.Conn) error {
	notes, err := a.srv.Reload()
	if err != nil {
		return errorf(sqlstate.ConfigFileError, "pgrouter: RELOAD PEERS: this instance's reload failed, the peers were not reloaded: %v", err).
			WithHint("Fix the file and run RELOAD PEERS again.")
	}
	for _, n := range notes {
		a.notice(n)
	}
	_, errs := peers.ExecAll(ctx, conns, "RELOAD")
	if err := errors.Join(errs...); err != nil {
		var failed []string
		for _, err := range errs {
			if err != nil {
				failed = append(failed, err.Error())
			}
		}
		return errorf(sqlstate.ConfigFileError, "pgrouter: RELOAD PEERS reloaded this instance and not: %s", strings.Join(failed, "; ")).
			WithHint("Fix those instances' router.yaml and run RELOAD there (or RELOAD PEERS again).")
	}
	return a.c.Send(&pgproto3.CommandComplete{CommandTag: []byte("RELOAD")})
}

// instanceCols are SHOW INSTANCE's columns, which SHOW PEERS repeats for
// every instance.
var instanceCols = []column{{"peer_id", oidInt8}, {"version", oidText}, {"config_generation", oidInt8}, {"config_hash", oidText},
	{"shards", oidInt8}, {"paused_shards", oidInt8}, {"draining", oidBool}, {"clients", oidInt8}}

// instance is this instance's SHOW INSTANCE row.
func (con *Console) instance() []any {
	cfg := con.srv.Config()
	ok, _ := con.srv.ReloadCounts()
	shards, _ := con.shardNames("")
	paused := 0
	for _, sh := range shards {
		if con.srv.Pools().Paused(sh) {
			paused++
		}
	}
	return []any{int64(cfg.PeerID), "pgrouter " + proxy.Version, ok + 1, cfg.Hash, int64(len(shards)), int64(paused), con.srv.Draining(), int64(con.srv.ClientCount())}
}

func (a *session) showInstance() *resultSet {
	return &resultSet{cols: instanceCols, rows: [][]any{a.instance()}}
}

// showPeers asks every peer for its SHOW INSTANCE, at once.
func (a *session) showPeers(ctx context.Context) *resultSet {
	cols := append([]column{{"address", oidText}, {"self", oidBool}, {"reachable", oidBool}}, instanceCols...)
	cols = append(cols, column{"error", oidText})
	rs := &resultSet{cols: cols}
	cfg := a.srv.Config()
	cred, others, err := a.credentials()
	if err != nil && len(cfg.Peers) == 0 {
		return rs
	}
	self := append([]any{cfg.Peers[cfg.PeerID], true, true}, a.instance()...)
	rows := map[int][]any{cfg.PeerID: append(self, nil)}
	type answer struct {
		p   peers.Peer
		row map[string]string
		err error
	}
	answers := make(chan answer, len(others))
	for _, p := range others {
		go func() {
			if err != nil { // no user to log in as
				answers <- answer{p: p, err: err}
				return
			}
			c, err := peers.Dial(ctx, p, cred)
			if err != nil {
				answers <- answer{p: p, err: err}
				return
			}
			defer c.Close(context.WithoutCancel(ctx))
			got, err := c.Exec(ctx, "SHOW INSTANCE")
			if err == nil && len(got) != 1 {
				err = fmt.Errorf("%s: SHOW INSTANCE returned %d rows", p, len(got))
			}
			var row map[string]string
			if err == nil {
				row = got[0]
			}
			answers <- answer{p: p, row: row, err: err}
		}()
	}
	for range others {
		ans := <-answers
		row := []any{ans.p.Addr, false, ans.err == nil}
		if ans.err != nil {
			row = append(row, int64(ans.p.ID), nil, nil, nil, nil, nil, nil, nil, ans.err.Error())
		} else {
			r := ans.row
			row = append(row, parseInt(r["peer_id"]), r["version"], parseInt(r["config_generation"]), r["config_hash"],
				parseInt(r["shards"]), parseInt(r["paused_shards"]), r["draining"] == "t", parseInt(r["clients"]), nil)
		}
		rows[ans.p.ID] = row
	}
	ids := make([]int, 0, len(rows))
	for id := range rows {
		ids = append(ids, id)
	}
	sort.Ints(ids)
	for _, id := range ids {
		rs.rows = append(rs.rows, rows[id])
	}
	return rs
}

func parseInt(s string) any {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return nil
	}
	return n
}
