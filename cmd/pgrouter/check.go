package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/pgrouter/pgrouter/config"
	"github.com/pgrouter/pgrouter/router"
	"github.com/pgrouter/pgrouter/shardmap"
)

// `pgrouter check` answers "will this router.yaml work?" before it is
// deployed. `serve` starts even when shards are down or lack a function (it
// retries in the background), so a typo in a DSN or a migration that missed
// one shard would otherwise show up only as failing client calls.

func checkCmd() *cobra.Command {
	var path string
	var offline bool
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Validate router.yaml, connect to every shard and compare the routed functions",
		Long: `check validates router.yaml, connects to every shard of every cluster and
verifies that every declared function exists on each shard with the same
signature. It prints one line per shard and exits with status 1 if anything
is wrong. With --offline it validates the file only and contacts no shard
(packaging, a service's pre-start check, CI without the shards).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if offline {
				return runCheckOffline(cmd.OutOrStdout(), path)
			}
			return runCheck(cmd.Context(), cmd.OutOrStdout(), path)
		},
	}
	cmd.Flags().StringVarP(&path, "config", "c", "router.yaml", "config file")
	cmd.Flags().BoolVar(&offline, "offline", false, "validate the file only; contact no shard")
	return cmd
}

// runCheckOffline validates the file as serve would load it.
func runCheckOffline(out io.Writer, path string) error {
	cfg, err := config.Load(path)
	if err != nil {
		return err
	}
	shardMap, err := shardmap.New(cfg)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	shards, functions := 0, 0
	for _, cl := range shardMap.Clusters() {
		shards += len(cl.Shards)
		functions += len(cl.Functions)
	}
	fmt.Fprintf(out, "%s is valid: %s in %s, %s (no shard contacted)\n", path, count(shards, "shard"),
		count(len(shardMap.Clusters()), "cluster"), count(functions, "routed function"))
	return nil
}

// reference is the first shard of a cluster where a function's signatures
// loaded; the cluster's other shards must match it.
type reference struct {
	shard string
	sigs  []*router.Signature
}

// runCheck checks the shards one at a time and prints each result at once, so
// a shard that takes its whole connect timeout shows as the one being waited on.
func runCheck(ctx context.Context, out io.Writer, path string) error {
	cfg, err := config.Load(path)
	if err != nil {
		return err // already names the file and the key
	}
	shardMap, err := shardmap.New(cfg)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	timeout := cfg.Pool.ServerConnectTimeout.D()
	clusters := shardMap.Clusters()
	total, failed := 0, 0
	for _, cl := range clusters {
		refs := map[*shardmap.Function]reference{}
		for _, sh := range cl.Shards {
			total++
			addr, version, err := checkShard(ctx, cl, sh, refs, timeout)
			if err != nil {
				failed++
				fmt.Fprintf(out, "FAIL %s/%s  %s: %v\n", cl.Name, sh.Name, addr, err)
				continue
			}
			fmt.Fprintf(out, "ok   %s/%s  %s  PostgreSQL %s  %s\n", cl.Name, sh.Name, addr, version, count(len(cl.Functions), "function"))
		}
	}
	checked := fmt.Sprintf("%s in %s", count(total, "shard"), count(len(clusters), "cluster"))
	if failed > 0 {
		fmt.Fprintf(out, "%s: %d failed\n", checked, failed)
		return fmt.Errorf("check failed on %d of %s", failed, count(total, "shard"))
	}
	fmt.Fprintf(out, "%s: all ok\n", checked)
	return nil
}

// checkShard connects to a shard, reads the signatures of its cluster's
// functions and compares them with refs, adding those seen here first. addr
// (host:port/database) is known even when the shard is unreachable.
func checkShard(ctx context.Context, cl *shardmap.Cluster, sh *shardmap.Shard, refs map[*shardmap.Function]reference, timeout time.Duration) (addr, version string, err error) {
	connCfg, err := pgx.ParseConfig(sh.DSN)
	if err != nil { // config.Load has parsed it already
		return "", "", fmt.Errorf("dsn: %w", err)
	}
	addr = net.JoinHostPort(connCfg.Host, strconv.Itoa(int(connCfg.Port))) + "/" + connCfg.Database
	connCfg.ConnectTimeout = timeout
	conn, err := pgx.ConnectConfig(ctx, connCfg)
	if err != nil {
		return addr, "", fmt.Errorf("unreachable: %w", err)
	}
	defer conn.Close(context.Background())
	version, _, _ = strings.Cut(conn.PgConn().ParameterStatus("server_version"), " ")

	// The same limit covers reading the catalog, so a shard that accepts
	// connections but does not answer fails too.
	loadCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cat, err := router.LoadCatalog(loadCtx, conn, cl.Functions)
	if cat == nil {
		return addr, version, fmt.Errorf("read function signatures: %w", err)
	}
	// A non-nil catalog with an error lacks some functions (the error names
	// them); the functions it has are still compared.
	var problems []string
	if err != nil {
		problems = append(problems, err.Error())
	}
	for _, f := range cl.Functions {
		sigs := cat.Signatures(f)
		if sigs == nil {
			continue
		}
		ref, ok := refs[f]
		if !ok {
			refs[f] = reference{shard: sh.Name, sigs: sigs}
			continue
		}
		if diff := compareSignatures(f, ref, sh.Name, sigs); diff != "" {
			problems = append(problems, diff)
		}
	}
	if len(problems) > 0 {
		return addr, version, errors.New(strings.Join(problems, "; "))
	}
	return addr, version, nil
}

// compareSignatures says how a shard's overloads of f differ from the
// reference's, or returns "". pg_proc lists overloads in OID order, which
// depends on the order a shard created them in, so both are sorted first.
func compareSignatures(f *shardmap.Function, ref reference, shard string, sigs []*router.Signature) string {
	a, b := sortedSignatures(f, ref.sigs), sortedSignatures(f, sigs)
	if router.SameSignatures(a, b) {
		return ""
	}
	ta, tb := signatureTexts(f, a), signatureTexts(f, b)
	if !slices.Equal(ta, tb) {
		return fmt.Sprintf("%s differs from %s: %s here, %s on %s",
			f.FullName(), ref.shard, strings.Join(tb, " | "), strings.Join(ta, " | "), ref.shard)
	}
	// Same names and argument types: the difference is in what
	// Signature.String leaves out.
	for i, x := range a {
		y := b[i]
		switch {
		case x.ReturnType != y.ReturnType:
			return fmt.Sprintf("%s: return type OID %d here, %d on %s", tb[i], y.ReturnType, x.ReturnType, ref.shard)
		case x.ReturnsSet != y.ReturnsSet:
			set, unset := "here", "on "+ref.shard
			if x.ReturnsSet {
				set, unset = unset, set
			}
			return fmt.Sprintf("%s: returns a set %s but not %s", tb[i], set, unset)
		case x.NumDefaults != y.NumDefaults:
			return fmt.Sprintf("%s: %d arguments with defaults here, %d on %s", tb[i], y.NumDefaults, x.NumDefaults, ref.shard)
		}
	}
	return fmt.Sprintf("%s differs from %s", f.FullName(), ref.shard)
}

func sortedSignatures(f *shardmap.Function, sigs []*router.Signature) []*router.Signature {
	out := slices.Clone(sigs)
	slices.SortFunc(out, func(a, b *router.Signature) int { return strings.Compare(a.String(f), b.String(f)) })
	return out
}

func signatureTexts(f *shardmap.Function, sigs []*router.Signature) []string {
	out := make([]string, len(sigs))
	for i, s := range sigs {
		out[i] = s.String(f)
	}
	return out
}

// count writes "1 shard", "2 shards".
func count(n int, noun string) string {
	if n == 1 {
		return fmt.Sprintf("1 %s", noun)
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
