package main

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"

	"github.com/spf13/cobra"
)

func versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version, the commit it was built from and the Go version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			v, details := buildVersion()
			fmt.Fprintf(cmd.OutOrStdout(), "pgrouter %s (%s)\n", v, details)
		},
	}
}

// buildVersion is the version this binary reports (SHOW VERSION, the console
// greeting, `pgrouter version`) and the details of its build.
func buildVersion() (v, details string) {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		bi = nil
	}
	return describeBuild(version, commit, bi)
}

// describeBuild names a build: the stamped version, else the module version
// (go install ...@v1.2.3), else "dev"; the details are the commit (the
// stamped one, else Go's record, marked +dirty when the tree had changes)
// and the Go version.
func describeBuild(stamped, stampedCommit string, bi *debug.BuildInfo) (v, details string) {
	v = stamped
	goVersion := runtime.Version()
	var commit string
	if bi != nil {
		if v == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			v = bi.Main.Version
		}
		dirty := false
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				commit = s.Value[:min(len(s.Value), 12)]
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
		if commit != "" && dirty {
			commit += "+dirty"
		}
		if bi.GoVersion != "" {
			goVersion = bi.GoVersion
		}
	}
	if stampedCommit != "" {
		commit = stampedCommit
	}
	if v == "" {
		v = "dev"
	}
	parts := []string{}
	if commit != "" {
		parts = append(parts, "commit "+commit)
	}
	parts = append(parts, goVersion)
	return v, strings.Join(parts, ", ")
}
