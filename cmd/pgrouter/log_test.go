package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap"
)

// TestErrorsCarryNoStackTrace: an ERROR line (a failed RELOAD logs one) is
// the message and its fields in both formats, never a Go stack trace.
func TestErrorsCarryNoStackTrace(t *testing.T) {
	for _, format := range []string{"json", "console"} {
		cfg, err := loggerConfig("info", format)
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(t.TempDir(), "log")
		cfg.OutputPaths = []string{path}
		log, err := cfg.Build()
		if err != nil {
			t.Fatal(err)
		}
		log.Error("reload failed; the running config is unchanged", zap.Error(errors.New("router.yaml: line 3: bad")))
		_ = log.Sync()
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		out := string(data)
		if !strings.Contains(out, "line 3: bad") || strings.Contains(out, "stacktrace") || strings.Contains(out, ".go:") && strings.Count(out, "\n") > 1 {
			t.Fatalf("%s: %s", format, out)
		}
	}
}
