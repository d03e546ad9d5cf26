// Command pgrouter is a PostgreSQL sharding router and connection pooler.
//
//	pgrouter serve -c router.yaml   run the proxy
//	pgrouter check -c router.yaml   validate the file, reach every shard, compare function signatures
//	pgrouter seq check|apply        verify or set up stride sequences on every shard
//	pgrouter refsync [status]       replicate reference tables to every shard (or show its lag)
//	pgrouter demo                   run it on local PostgreSQL shards it starts itself
//	pgrouter version                print the version
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

// version and commit are stamped by release builds (release/build links
// with -ldflags "-X main.version=1.2.3 -X main.commit=..."); other builds
// report the module version or "dev", and the commit Go recorded when it
// did (see buildVersion).
var version, commit = "", ""

func main() {
	root := &cobra.Command{
		Use:           "pgrouter",
		Short:         "PostgreSQL sharding router and connection pooler",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(serveCmd(), checkCmd(), seqCmd(), refsyncCmd(), faninCmd(), moveCmd(), importPLProxyCmd(), benchCmd(), demoCmd(), versionCmd())
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "pgrouter:", err)
		var partial errUntranslated
		if errors.As(err, &partial) {
			os.Exit(2) // the file is written; some of it is comments
		}
		os.Exit(1)
	}
}
