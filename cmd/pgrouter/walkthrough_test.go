package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgrouter/pgrouter/internal/pgtest"
	"github.com/pgrouter/pgrouter/internal/pgtest/testenv"
)

// walkthroughBlock returns the fenced block after "<!-- walkthrough: name -->"
// in docs/walkthrough.md.
func walkthroughBlock(t *testing.T, doc, name string) string {
	t.Helper()
	return fencedBlock(t, doc, "walkthrough: "+name)
}

// TestWalkthrough follows docs/walkthrough.md on two real shards: its schema,
// its router.yaml (shard addresses and the listen address replaced), its
// commands and its calls, with the results the page states.
func TestWalkthrough(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	data, err := os.ReadFile("../../docs/walkthrough.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(data)
	servers := testenv.Servers(t, 2, pgtest.Options{})
	yaml := walkthroughBlock(t, doc, "router.yaml")
	for i, s := range servers {
		if err := s.Exec(ctx, "postgres", "CREATE DATABASE app"); err != nil {
			t.Fatal(err)
		}
		if err := s.Exec(ctx, "app", walkthroughBlock(t, doc, "schema")); err != nil {
			t.Fatalf("the walkthrough's schema on shard %d: %v", i, err)
		}
		placeholder := fmt.Sprintf("postgres://app@db%d:5432/app", i+1)
		if !strings.Contains(yaml, placeholder) {
			t.Fatalf("router.yaml block lacks %s", placeholder)
		}
		yaml = strings.Replace(yaml, placeholder, s.DSN("app"), 1)
	}
	addr := freeAddr(t)
	yaml = strings.Replace(yaml, "listen: 0.0.0.0:6432", "listen: "+addr, 1)
	dir := t.TempDir()
	path := filepath.Join(dir, "router.yaml")
	writeFile(t, path, yaml)
	writeFile(t, filepath.Join(dir, "users.txt"), "\"app\" \"secret\"\n\"admin\" \"secret\"\n")

	served := false
	for _, line := range strings.Split(walkthroughBlock(t, doc, "commands"), "\n") {
		cmd, _, _ := strings.Cut(line, "#")
		args := strings.Fields(cmd)
		if len(args) == 0 {
			continue
		}
		if args[0] != "pgrouter" {
			t.Fatalf("the walkthrough's commands: %q is not a pgrouter command", line)
		}
		for i := range args {
			if args[i] == "router.yaml" {
				args[i] = path
			}
		}
		if args[1] == "serve" {
			runRouter(ctx, t, path, addr)
			served = true
			continue
		}
		out, code := pgrouter(ctx, t, args[1:]...)
		if code != 0 {
			t.Fatalf("%s: exit %d\n%s", cmd, code, out)
		}
		if args[1] == "check" && !strings.Contains(out, "2 shards in 1 cluster: all ok") {
			t.Fatalf("%s:\n%s", cmd, out)
		}
	}
	if !served {
		t.Fatal("the walkthrough's commands never serve")
	}

	host, port, _ := strings.Cut(addr, ":")
	conn, err := pgx.Connect(ctx, fmt.Sprintf("postgres://app:secret@%s:%s/app?sslmode=disable", host, port))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	ids := map[string]int64{}
	for _, line := range strings.Split(walkthroughBlock(t, doc, "calls"), "\n") {
		sql, _, _ := strings.Cut(line, "--")
		if sql = strings.TrimSpace(sql); sql == "" {
			continue
		}
		switch {
		case strings.Contains(sql, "add_user("):
			var id int64
			if err := conn.QueryRow(ctx, sql).Scan(&id); err != nil {
				t.Fatalf("%s: %v", sql, err)
			}
			ids[sql] = id
		case strings.Contains(sql, "get_user("):
			var id int64
			var email string
			if err := conn.QueryRow(ctx, sql).Scan(&id, &email); err != nil || email != "alice@example.com" {
				t.Fatalf("%s: %d %q %v", sql, id, email, err)
			}
		case strings.Contains(sql, "count_users()"):
			var n int64
			if err := conn.QueryRow(ctx, sql).Scan(&n); err != nil || n != 2 {
				t.Fatalf("%s = %d, %v; the walkthrough says 2", sql, n, err)
			}
		default:
			t.Fatalf("the walkthrough's calls: %q is not checked here", sql)
		}
	}
	if len(ids) != 2 {
		t.Fatalf("add_user calls: %v", ids)
	}
	// The statement the page says default_route: error refuses.
	var pgErr *pgconn.PgError
	if _, err := conn.Exec(ctx, "SELECT * FROM users"); !errors.As(err, &pgErr) || pgErr.Code != "0A000" {
		t.Fatalf("SELECT * FROM users under default_route: error: %v; want 0A000", err)
	}
}
