package refsync

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgrouter/pgrouter/config"
	"github.com/pgrouter/pgrouter/internal/pgtest"
	"github.com/pgrouter/pgrouter/internal/pgtest/testenv"
)

// source is a real PostgreSQL (wal_level = logical, as pgtest starts it).
var source *pgtest.Server

func TestMain(m *testing.M) {
	testenv.Main(m, 1, pgtest.Options{}, func(s []*pgtest.Server) { source = s[0] })
}

func reference(t *testing.T, tables ...string) *config.Reference {
	t.Helper()
	cfg, err := config.Parse("router.yaml", []byte(fmt.Sprintf(`auth: {type: trust}
clusters:
  main:
    shards: [{name: s0, dsn: "host=127.0.0.1", partitions: all}]
reference:
  source: "host=127.0.0.1"
  tables: [%s]
`, strings.Join(tables, ", "))))
	if err != nil {
		t.Fatal(err)
	}
	return cfg.Reference
}

func connTo(t *testing.T, dsn string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// TestPreflight: a ready source passes; one that lacks things gets every
// problem at once, each with the statement that fixes it.
func TestPreflight(t *testing.T) {
	ctx := context.Background()
	if err := source.Exec(ctx, "postgres", `CREATE TABLE countries (code text PRIMARY KEY, name text NOT NULL);
		CREATE TABLE plans (id int PRIMARY KEY, price numeric);
		CREATE TABLE nokey (a int, b text);
		CREATE TABLE nothing (id int PRIMARY KEY); ALTER TABLE nothing REPLICA IDENTITY NOTHING;
		CREATE TABLE byindex (a int NOT NULL, b int); CREATE UNIQUE INDEX byindex_a ON byindex (a); ALTER TABLE byindex REPLICA IDENTITY USING INDEX byindex_a;
		CREATE VIEW aview AS SELECT 1 AS x;
		CREATE ROLE reader LOGIN; GRANT SELECT ON countries TO reader;`); err != nil {
		t.Fatal(err)
	}
	super := connTo(t, source.DSN("postgres"))
	if err := Preflight(ctx, super, reference(t, "countries", "public.plans", "byindex")); err != nil {
		t.Fatalf("a ready source: %v", err)
	}

	err := Preflight(ctx, super, reference(t, "countries", "nokey", "nothing", "aview", "missing"))
	want := []string{
		"public.nokey has no primary key",
		"public.nothing has REPLICA IDENTITY NOTHING",
		"public.aview is not a table",
		"table public.missing does not exist on the source",
	}
	checkProblems(t, err, want, "countries")

	reader := connTo(t, strings.Replace(source.DSN("postgres"), pgtest.SuperUser+"@", "reader@", 1))
	err = Preflight(ctx, reader, reference(t, "countries", "plans"))
	checkProblems(t, err, []string{
		`user reader may not stream changes: ALTER ROLE "reader" REPLICATION`,
		`user reader cannot read public.plans: GRANT SELECT ON "public"."plans" TO "reader"`,
		"user reader does not own public.countries",
		"user reader does not own public.plans",
	}, "")

	physical := testenv.Servers(t, 1, pgtest.Options{Settings: map[string]string{"wal_level": "replica"}})[0]
	if err := physical.Exec(ctx, "postgres", "CREATE TABLE countries (code text PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	err = Preflight(ctx, connTo(t, physical.DSN("postgres")), reference(t, "countries"))
	checkProblems(t, err, []string{"wal_level is replica: logical decoding needs wal_level = logical"}, "countries")
}

// checkProblems wants an ErrNotReady naming every want, and no problem
// mentioning the table that is fine (when given).
func checkProblems(t *testing.T, err error, want []string, fine string) {
	t.Helper()
	if !errors.Is(err, ErrNotReady) {
		t.Fatalf("err = %v, want ErrNotReady", err)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("problems lack %q:\n%v", w, err)
		}
	}
	if got := strings.Count(err.Error(), "\n  "); got != len(want) {
		t.Errorf("%d problems, want %d:\n%v", got, len(want), err)
	}
	if fine != "" && strings.Contains(err.Error(), "public."+fine+" ") {
		t.Errorf("a problem names %s, which is fine:\n%v", fine, err)
	}
}
