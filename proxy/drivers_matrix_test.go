package proxy_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/lib/pq"

	"github.com/pgrouter/pgrouter/proxy"
)

// The driver matrix: each driver most applications use runs the same
// scenario through pgrouter on the four-shard routing cluster, in autocommit
// and in transactions, with named prepared statements where the driver uses
// them: one-key transactions that must all commit, a rollback, SET LOCAL and
// a catalog read before the first routed call, a run_on all call outside and
// inside a transaction, and a two-shard transaction that must be refused
// with 0A000. Then the shards themselves are checked: every committed row
// is on the shard PostgreSQL's hashtext puts it, and nothing rolled back or
// refused is anywhere.
//
// Each driver writes keys PREFIX a0..a(N-1) in autocommit, PREFIX t0..tN in
// transactions and maybe PREFIX b0; PREFIX r0 is rolled back and KEY_A,
// KEY_B (on two different shards) are refused. The external drivers are
// programs in testdata/drivers; Debian packages them all (.ci/run installs
// them), and node-postgres comes from npm (.ci/run runs npm ci).

// matrixKeys is how many keys each driver writes in each mode (the issue's
// 40 of 40).
const matrixKeys = 40

// matrixDriver runs one driver's scenario. It returns the driver's output,
// whose last line is "count_users=<n>", the run_on all count it read last.
type matrixDriver struct {
	name string
	run  func(t *testing.T, ctx context.Context, p *testProxy, prefix, keyA, keyB string) string
}

func TestDriverMatrix(t *testing.T) {
	drivers := []matrixDriver{
		{"pgx", runPgx},
		{"pgxpool", runPgxPool},
		{"libpq", runLibPQ},
		{"psycopg3", externalDriver("python3", "psycopg", "python3-psycopg", "psycopg3.py")},
		{"psycopg2", externalDriver("python3", "psycopg2", "python3-psycopg2", "psycopg2_matrix.py")},
		{"asyncpg", externalDriver("python3", "asyncpg", "python3-asyncpg", "asyncpg_matrix.py")},
		{"jdbc", runJDBC},
		{"node-postgres", runNode},
	}
	for m, mode := range bothModes {
		// Session mode holds a server per shard per client: pgxpool's 4
		// connections need that many on each shard.
		p := startRouting(t, proxyOpts{mode: mode, size: 2 + 4*m})
		for i, d := range drivers {
			t.Run(mode+"/"+d.name, func(t *testing.T) {
				ctx := testContext(t, 3*time.Minute)
				prefix := fmt.Sprintf("m%d%d-", m, i)
				keyA, keyB := twoShardKeys(t, prefix)
				out := d.run(t, ctx, p, prefix, keyA, keyB)
				checkMatrixRows(t, prefix, keyA, keyB, out)
			})
		}
	}
}

// twoShardKeys returns two keys with the prefix that hashtext puts on
// different shards.
func twoShardKeys(t *testing.T, prefix string) (string, string) {
	t.Helper()
	a := prefix + "x0"
	sa := expectShard(t, a)
	for i := 1; i < 100; i++ {
		b := prefix + "x" + strconv.Itoa(i)
		if expectShard(t, b) != sa {
			return a, b
		}
	}
	t.Fatal("no key on another shard")
	return "", ""
}

var countUsersRE = regexp.MustCompile(`(?m)^count_users=(\d+)\s*$`)

// checkMatrixRows checks on the shards what a driver's run left: every
// committed key once, on its own shard; nothing rolled back or refused; and
// the driver's last run_on all count equal to the rows on all shards.
func checkMatrixRows(t *testing.T, prefix, keyA, keyB, out string) {
	t.Helper()
	var total, mine int64
	like := proxy.QuoteLiteral(strings.ReplaceAll(prefix, "-", `\-`) + "%")
	for i := range allShards {
		total += shardQueryInt(t, i, "SELECT count(*) FROM rt_users")
		mine += shardQueryInt(t, i, "SELECT count(*) FROM rt_users WHERE username LIKE "+like)
		if bad := shardQueryInt(t, i, fmt.Sprintf("SELECT count(*) FROM rt_users WHERE username LIKE %s AND (hashtext(username) & 15) / 4 <> %d", like, i)); bad != 0 {
			t.Errorf("shard s%d holds %d of the driver's rows that belong to another shard", i, bad)
		}
		for _, k := range []string{prefix + "r0", keyA, keyB} {
			if n := shardQueryInt(t, i, "SELECT count(*) FROM rt_users WHERE username = "+proxy.QuoteLiteral(k)); n != 0 {
				t.Errorf("shard s%d holds %q, which was rolled back or refused", i, k)
			}
		}
	}
	for _, k := range []string{prefix + "a0", prefix + fmt.Sprintf("a%d", matrixKeys-1), prefix + "t0", prefix + fmt.Sprintf("t%d", matrixKeys)} {
		if n := shardQueryInt(t, shardIndex(t, k), "SELECT count(*) FROM rt_users WHERE username = "+proxy.QuoteLiteral(k)); n != 1 {
			t.Errorf("key %q: %d rows on its shard, want 1", k, n)
		}
	}
	// a0..a(N-1), t0..tN, and b0 for drivers that open a block in autocommit.
	if want := int64(2*matrixKeys + 1); mine != want && mine != want+1 {
		t.Errorf("the driver left %d rows, want %d (or %d with b0)", mine, want, want+1)
	}
	m := countUsersRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no count_users line in the driver's output:\n%s", out)
	}
	if got, _ := strconv.ParseInt(m[1], 10, 64); got != total {
		t.Errorf("the driver's run_on all count_users said %d, the shards hold %d rows", got, total)
	}
}

// shardIndex returns the index of the shard hashtext puts a key on.
func shardIndex(t *testing.T, key string) int {
	n, _ := strconv.Atoi(strings.TrimPrefix(expectShard(t, key), "s"))
	return n
}

// needProgram finds a program a driver needs. Outside CI a machine without
// it skips the driver with the package to install; in CI (CI set, as
// .ci/run runs) a missing driver fails: .ci/run installs every one.
func needProgram(t *testing.T, name, pkg string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		missingDriver(t, fmt.Sprintf("%s is not installed (apt-get install %s)", name, pkg))
	}
	return path
}

func missingDriver(t *testing.T, why string) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf("%s; .ci/run installs it", why)
	}
	t.Skipf("%s; .ci/run installs it", why)
}

// runProgram runs a driver program with the PG* variables pointing at the
// proxy and returns its output; a failing program fails the test.
func runProgram(t *testing.T, ctx context.Context, p *testProxy, dir, path string, args ...string) string {
	t.Helper()
	host, port := p.hostPort()
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "PGHOST="+host, "PGPORT="+port, "PGUSER=postgres", "PGDATABASE=main", "PGSSLMODE=disable", "PGCONNECT_TIMEOUT=10")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(path), strings.Join(args, " "), err, out)
	}
	return string(out)
}

// externalDriver runs a Python driver's script from testdata/drivers with
// Debian's python3, where Debian's driver packages are installed.
func externalDriver(python, module, pkg, script string) func(*testing.T, context.Context, *testProxy, string, string, string) string {
	return func(t *testing.T, ctx context.Context, p *testProxy, prefix, keyA, keyB string) string {
		py := "/usr/bin/" + python // Debian's, not a python3 earlier in PATH without Debian's modules
		if _, err := os.Stat(py); err != nil {
			py = needProgram(t, python, pkg)
		}
		if err := exec.CommandContext(ctx, py, "-c", "import "+module).Run(); err != nil {
			missingDriver(t, fmt.Sprintf("python module %s is not installed (apt-get install %s)", module, pkg))
		}
		dir, _ := filepath.Abs("testdata/drivers")
		return runProgram(t, ctx, p, dir, py, script, prefix, strconv.Itoa(matrixKeys), keyA, keyB)
	}
}

// jdbcJar is where Debian's libpostgresql-jdbc-java puts the driver.
const jdbcJar = "/usr/share/java/postgresql.jar"

func runJDBC(t *testing.T, ctx context.Context, p *testProxy, prefix, keyA, keyB string) string {
	java := needProgram(t, "java", "default-jdk-headless")
	if _, err := os.Stat(jdbcJar); err != nil {
		missingDriver(t, "the PostgreSQL JDBC driver is not installed (apt-get install libpostgresql-jdbc-java)")
	}
	host, port := p.hostPort()
	url := fmt.Sprintf("jdbc:postgresql://%s:%s/main?user=postgres&sslmode=disable&prepareThreshold=1", host, port)
	dir, _ := filepath.Abs("testdata/drivers")
	return runProgram(t, ctx, p, dir, java, "-cp", jdbcJar, "DriverMatrix.java", url, prefix, strconv.Itoa(matrixKeys), keyA, keyB)
}

func runNode(t *testing.T, ctx context.Context, p *testProxy, prefix, keyA, keyB string) string {
	node := needProgram(t, "node", "nodejs")
	dir, _ := filepath.Abs("testdata/drivers/node")
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "pg")); err != nil {
		missingDriver(t, "node-postgres is not installed (npm ci in proxy/testdata/drivers/node)")
	}
	return runProgram(t, ctx, p, dir, node, "matrix.js", prefix, strconv.Itoa(matrixKeys), keyA, keyB)
}

func email(k string) string { return k + "@example.com" }

// pgxScenario is the matrix scenario for pgx, on anything that runs
// statements (a connection, a pool, a transaction).
type pgxQuerier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

func pgxAddAndCheck(ctx context.Context, q pgxQuerier, k string) error {
	var shard, got string
	if err := q.QueryRow(ctx, "select rt_add_user($1, $2)", k, email(k)).Scan(&shard); err != nil {
		return fmt.Errorf("add %s: %w", k, err)
	}
	if err := q.QueryRow(ctx, "select email from rt_get_user($1)", k).Scan(&got); err != nil || got != email(k) {
		return fmt.Errorf("get %s = %q, %v", k, got, err)
	}
	return nil
}

func runPgx(t *testing.T, ctx context.Context, p *testProxy, prefix, keyA, keyB string) string {
	conn := p.connect(t, ctx)
	return pgxScenario(t, ctx, prefix, keyA, keyB, conn, func(ctx context.Context) (pgx.Tx, error) { return conn.Begin(ctx) })
}

func runPgxPool(t *testing.T, ctx context.Context, p *testProxy, prefix, keyA, keyB string) string {
	pl, err := pgxpool.New(ctx, p.url("postgres", "main")+"&pool_max_conns=4")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pl.Close) // after the transactions' own clean-ups
	return pgxScenario(t, ctx, prefix, keyA, keyB, pl, pl.Begin)
}

func pgxScenario(t *testing.T, ctx context.Context, prefix, keyA, keyB string, q pgxQuerier, beginTx func(context.Context) (pgx.Tx, error)) string {
	t.Helper()
	// A failed check leaves no transaction open (a pool's Close waits for it).
	begin := func(ctx context.Context) (pgx.Tx, error) {
		tx, err := beginTx(ctx)
		if err == nil {
			t.Cleanup(func() { _ = tx.Rollback(context.Background()) })
		}
		return tx, err
	}
	for i := range matrixKeys {
		if err := pgxAddAndCheck(ctx, q, fmt.Sprintf("%sa%d", prefix, i)); err != nil {
			t.Fatal(err)
		}
	}
	for i := range matrixKeys + 1 {
		tx, err := begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if i == matrixKeys {
			if _, err := tx.Exec(ctx, "SET LOCAL statement_timeout = '5s'"); err != nil {
				t.Fatal(err)
			}
			var typ string
			if err := tx.QueryRow(ctx, "select typname from pg_catalog.pg_type where oid = $1", 25).Scan(&typ); err != nil {
				t.Fatal(err)
			}
		}
		if err := pgxAddAndCheck(ctx, tx, fmt.Sprintf("%st%d", prefix, i)); err != nil {
			t.Fatal(err)
		}
		if i == matrixKeys {
			var v string
			if err := tx.QueryRow(ctx, "SHOW statement_timeout").Scan(&v); err != nil || v != "5s" {
				t.Fatalf("SET LOCAL before the first call: statement_timeout %q, %v", v, err)
			}
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}
	tx, err := begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "select rt_add_user($1, $2)", prefix+"r0", "gone"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	var n int64
	if err := q.QueryRow(ctx, "select rt_count_users()").Scan(&n); err != nil || n < 2*matrixKeys+1 {
		t.Fatalf("count_users = %d, %v", n, err)
	}
	tx, err = begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "select rt_add_user($1, $2)", keyA, email(keyA)); err != nil {
		t.Fatal(err)
	}
	_, err = tx.Exec(ctx, "select rt_add_user($1, $2)", keyB, email(keyB))
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "0A000" {
		t.Fatalf("two-shard transaction: %v, want 0A000", err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	tx, err = begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.QueryRow(ctx, "select rt_count_users()").Scan(&n); err != nil {
		t.Fatalf("count_users in a transaction: %v", err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("count_users=%d\n", n)
}

func runLibPQ(t *testing.T, ctx context.Context, p *testProxy, prefix, keyA, keyB string) string {
	host, port := p.hostPort()
	db, err := sql.Open("postgres", fmt.Sprintf("host=%s port=%s user=postgres dbname=main sslmode=disable", host, port))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.SetMaxOpenConns(2)
	add, err := db.PrepareContext(ctx, "select rt_add_user($1, $2)")
	if err != nil {
		t.Fatal(err)
	}
	defer add.Close()
	get := func(q interface {
		QueryRowContext(context.Context, string, ...any) *sql.Row
	}, k string) {
		t.Helper()
		var got string
		if err := q.QueryRowContext(ctx, "select email from rt_get_user($1)", k).Scan(&got); err != nil || got != email(k) {
			t.Fatalf("get %s = %q, %v", k, got, err)
		}
	}
	for i := range matrixKeys {
		k := fmt.Sprintf("%sa%d", prefix, i)
		if _, err := add.ExecContext(ctx, k, email(k)); err != nil {
			t.Fatal(err)
		}
		get(db, k)
	}
	for i := range matrixKeys + 1 {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		k := fmt.Sprintf("%st%d", prefix, i)
		if i == matrixKeys {
			if _, err := tx.ExecContext(ctx, "SET LOCAL statement_timeout = '5s'"); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := tx.StmtContext(ctx, add).ExecContext(ctx, k, email(k)); err != nil {
			t.Fatal(err)
		}
		get(tx, k)
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, "select rt_add_user($1, $2)", prefix+"r0", "gone"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	tx, err = db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, "select rt_add_user($1, $2)", keyA, email(keyA)); err != nil {
		t.Fatal(err)
	}
	_, err = tx.ExecContext(ctx, "select rt_add_user($1, $2)", keyB, email(keyB))
	var pqErr *pq.Error
	if !errors.As(err, &pqErr) || pqErr.Code != "0A000" {
		t.Fatalf("two-shard transaction: %v, want 0A000", err)
	}
	_ = tx.Rollback()
	var n int64
	tx, err = db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.QueryRowContext(ctx, "select rt_count_users()").Scan(&n); err != nil {
		t.Fatalf("count_users in a transaction: %v", err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("count_users=%d\n", n)
}
