package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// PgBouncer is a running pgbouncer (Debian's package), for tests and
// benchmarks that compare pgrouter with it.
type PgBouncer struct {
	Host string
	Port int
	Dir  string

	cmd    *exec.Cmd
	exited chan struct{}
}

// StartPgBouncer starts pgbouncer on a free port in transaction mode with
// trust authentication, serving each of databases (name: dsn in libpq
// key=value form) with a pool of poolSize; SuperUser may use its admin
// console (database pgbouncer). Like PostgreSQL, pgbouncer will
// not run as root, so it runs as the same unprivileged user.
func StartPgBouncer(ctx context.Context, databases map[string]string, poolSize int) (*PgBouncer, error) {
	bin, err := exec.LookPath("pgbouncer")
	if err != nil {
		return nil, fmt.Errorf("pgbouncer not found (Debian: apt-get install pgbouncer): %w", err)
	}
	owner, err := runAs()
	if err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "pgtest-pgbouncer-")
	if err != nil {
		return nil, err
	}
	b := &PgBouncer{Host: "127.0.0.1", Port: port, Dir: dir}
	var ini strings.Builder
	ini.WriteString("[databases]\n")
	for name, dsn := range databases {
		fmt.Fprintf(&ini, "%s = %s\n", name, dsn)
	}
	fmt.Fprintf(&ini, `[pgbouncer]
listen_addr = %s
listen_port = %d
unix_socket_dir =
auth_type = trust
auth_file = %s
pool_mode = transaction
default_pool_size = %d
max_client_conn = 1000
logfile = %s
admin_users = %s
`, b.Host, port, filepath.Join(dir, "users.txt"), poolSize, filepath.Join(dir, "pgbouncer.log"), SuperUser)
	files := map[string]string{
		"pgbouncer.ini": ini.String(),
		"users.txt":     fmt.Sprintf("%q \"\"\n", SuperUser),
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			return nil, errors.Join(err, os.RemoveAll(dir))
		}
	}
	if owner != nil {
		if err := chown(dir, owner); err != nil {
			return nil, errors.Join(err, os.RemoveAll(dir))
		}
	}
	if b.cmd, b.exited, err = spawn(bin, []string{filepath.Join(dir, "pgbouncer.ini")}, owner, nil); err != nil {
		return nil, errors.Join(err, os.RemoveAll(dir))
	}
	addr := net.JoinHostPort(b.Host, strconv.Itoa(port))
	logPath := filepath.Join(dir, "pgbouncer.log")
	for deadline := time.Now().Add(15 * time.Second); ; {
		conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		if err == nil {
			conn.Close()
			// Ours, not another process that took the port meanwhile.
			if log, _ := os.ReadFile(logPath); strings.Contains(string(log), "listening on "+addr) {
				return b, nil
			}
			err = errors.New("the port answers but pgbouncer has not logged listening on it")
		}
		select {
		case <-b.exited:
		case <-time.After(50 * time.Millisecond):
			if time.Now().Before(deadline) && ctx.Err() == nil {
				continue
			}
		}
		log, _ := os.ReadFile(logPath)
		b.Stop()
		return nil, fmt.Errorf("pgbouncer did not listen on %s: %w\n%s", addr, err, log)
	}
}

// PID is pgbouncer's process id.
func (b *PgBouncer) PID() int { return b.cmd.Process.Pid }

// DSN returns a URL for a database of this pgbouncer.
func (b *PgBouncer) DSN(database string) string {
	return fmt.Sprintf("postgres://%s@%s/%s?sslmode=disable", SuperUser, net.JoinHostPort(b.Host, strconv.Itoa(b.Port)), database)
}

// Stop stops pgbouncer and removes its folder. SIGINT is a safe shutdown in
// every pgbouncer version (since 1.23 SIGTERM waits for clients to leave).
func (b *PgBouncer) Stop() {
	stopGroup(b.cmd, b.exited, syscall.SIGINT, 10*time.Second)
	_ = os.RemoveAll(b.Dir)
}
