package main

import (
	"fmt"
	"os"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/pgrouter/pgrouter/config"
	"github.com/pgrouter/pgrouter/plimport"
)

// errUntranslated makes import-plproxy exit 2: the file is written, but
// some functions or clusters are only comments in it.
type errUntranslated struct{ n int }

func (e errUntranslated) Error() string {
	if e.n == 1 {
		return "1 function or cluster could not be translated: it is a comment in the file (NOT TRANSLATED)"
	}
	return fmt.Sprintf("%d functions or clusters could not be translated: they are comments in the file (NOT TRANSLATED)", e.n)
}

func importPLProxyCmd() *cobra.Command {
	var from, out string
	cmd := &cobra.Command{
		Use:   "import-plproxy",
		Short: "Write the router.yaml that serves a PL/Proxy database's functions",
		Long: `import-plproxy reads the plproxy functions of a PL/Proxy database (CLUSTER,
RUN ON hashtext/hashint4/hashint8 of an argument, ALL, ANY), and their clusters'
partitions (the plproxy foreign servers, or plproxy.get_cluster_partitions),
and writes a router.yaml with a cluster per PL/Proxy cluster (hash: hashtext,
so every row stays where it is), a shard per distinct partition connect
string, and the functions. What it cannot translate (RUN ON an expression,
CONNECT, SELECT bodies, SPLIT and TARGET for now) is a NOT TRANSLATED comment
in the file, listed on standard error, and the exit status is 2; 0 when
everything was translated.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if from == "" {
				return fmt.Errorf("--from is required: the DSN of the PL/Proxy database")
			}
			conn, err := pgx.Connect(cmd.Context(), from)
			if err != nil {
				return fmt.Errorf("connect to the PL/Proxy database: %w", err)
			}
			defer conn.Close(cmd.Context())
			db, err := plimport.Read(cmd.Context(), conn)
			if err != nil {
				return err
			}
			text, problems := plimport.Translate(db, redactedDSN(from))
			if _, err := config.Parse("router.yaml", []byte(text)); err != nil {
				return fmt.Errorf("the router.yaml written from the PL/Proxy database does not validate (a bug: please report it): %w\n%s", err, text)
			}
			if out == "" {
				fmt.Fprint(cmd.OutOrStdout(), text)
			} else if err := os.WriteFile(out, []byte(text), 0o644); err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "plproxy functions: %d, clusters: %d\n", len(db.Functions), len(db.Clusters))
			for _, p := range problems {
				fmt.Fprintf(cmd.ErrOrStderr(), "not translated: %s\n", p)
			}
			if len(problems) > 0 {
				return errUntranslated{len(problems)}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&from, "from", "", "DSN of the PL/Proxy database")
	cmd.Flags().StringVarP(&out, "output", "o", "", "write router.yaml here (default: standard output)")
	return cmd
}

// redactedDSN is a DSN without its password, for the file's header.
func redactedDSN(dsn string) string {
	cc, err := pgx.ParseConfig(dsn)
	if err != nil {
		return "a PL/Proxy database"
	}
	return fmt.Sprintf("%s@%s:%d/%s", cc.User, cc.Host, cc.Port, cc.Database)
}
