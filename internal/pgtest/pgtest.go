// Package pgtest starts throwaway PostgreSQL servers: initdb into a folder,
// a free port on 127.0.0.1, fsync off and wal_level=logical. Tests start them
// once per package in TestMain; `pgrouter demo` starts its shards with it.
//
// PostgreSQL refuses to run as root, so when the caller is root the server
// runs as an unprivileged user ("postgres" when it exists, else "nobody").
// initdb runs once per machine and PostgreSQL version into a cached template
// that every server copies, which keeps a test package's start-up short.
package pgtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// SuperUser is the superuser name of every server pgtest creates.
const SuperUser = "postgres"

// Options configure a server.
type Options struct {
	// Dir holds the data folder, socket and log. Empty: a new temporary folder,
	// removed by Stop. An existing initialized Dir is reused as it is.
	Dir string
	// Port to listen on; 0 picks a free one.
	Port int
	// Settings are extra postgresql.conf settings (-c name=value).
	Settings map[string]string
	// TLS turns on ssl with a certificate for localhost signed by a
	// throwaway CA (Server.Certs).
	TLS bool
}

// Server is one running PostgreSQL server.
type Server struct {
	Host    string
	Port    int
	Dir     string
	DataDir string

	// Certs are the TLS files when Options.TLS is set.
	Certs Certs

	bin     string
	owner   *credential
	temp    bool
	opts    Options
	mu      sync.Mutex
	cmd     *exec.Cmd
	exited  chan struct{}
	logPath string
}

type credential struct {
	uid, gid uint32
	name     string
}

// Start initializes (or reuses) a data folder and starts a server on it.
func Start(ctx context.Context, opts Options) (*Server, error) {
	bin, err := BinDir()
	if err != nil {
		return nil, err
	}
	owner, err := runAs()
	if err != nil {
		return nil, err
	}
	s := &Server{Host: "127.0.0.1", bin: bin, owner: owner, opts: opts}
	if opts.Dir == "" {
		dir, err := os.MkdirTemp("", "pgtest-")
		if err != nil {
			return nil, err
		}
		s.Dir, s.temp = dir, true
	} else {
		s.Dir = opts.Dir
		if err := os.MkdirAll(s.Dir, 0o755); err != nil {
			return nil, err
		}
	}
	if err := s.prepareDir(); err != nil {
		s.cleanup()
		return nil, err
	}
	if opts.TLS {
		certs, err := WriteCerts(s.Dir)
		if err == nil {
			err = chown(s.Dir, s.owner)
		}
		if err != nil {
			s.cleanup()
			return nil, err
		}
		s.Certs = certs
	}
	for attempt := 0; ; attempt++ {
		s.Port = opts.Port
		if s.Port == 0 {
			if s.Port, err = freePort(); err != nil {
				s.cleanup()
				return nil, err
			}
		}
		err = s.start(ctx)
		if err == nil {
			return s, nil
		}
		if opts.Port != 0 || attempt >= 3 || !strings.Contains(err.Error(), "could not bind") {
			s.cleanup()
			return nil, err
		}
	}
}

// StartN starts n servers in parallel with the same options (Dir and Port
// must be empty).
func StartN(ctx context.Context, n int, opts Options) ([]*Server, error) {
	servers := make([]*Server, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			servers[i], errs[i] = Start(ctx, opts)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		for _, s := range servers {
			if s != nil {
				_ = s.Stop()
			}
		}
		return nil, err
	}
	return servers, nil
}

// DSN returns a connection URL for the superuser and a database.
func (s *Server) DSN(database string) string {
	return fmt.Sprintf("postgres://%s@%s:%d/%s?sslmode=disable", SuperUser, s.Host, s.Port, database)
}

// Addr returns host:port.
func (s *Server) Addr() string { return net.JoinHostPort(s.Host, strconv.Itoa(s.Port)) }

// Exec runs SQL as the superuser on a database.
func (s *Server) Exec(ctx context.Context, database, sql string) error {
	conn, err := pgconn.Connect(ctx, s.DSN(database))
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, sql).ReadAll()
	return err
}

func (s *Server) prepareDir() error {
	if err := os.Chmod(s.Dir, 0o755); err != nil {
		return err
	}
	if err := s.checkReachable(); err != nil {
		return err
	}
	s.DataDir = filepath.Join(s.Dir, "data")
	s.logPath = filepath.Join(s.Dir, "postgres.log")
	if _, err := os.Stat(filepath.Join(s.DataDir, "PG_VERSION")); err == nil {
		return chown(s.Dir, s.owner)
	}
	tmpl, err := template(s.bin, s.owner)
	if err != nil {
		return err
	}
	if out, err := exec.Command("cp", "-a", tmpl, s.DataDir).CombinedOutput(); err != nil {
		return fmt.Errorf("copy template data folder: %v: %s", err, out)
	}
	return chown(s.Dir, s.owner)
}

// checkReachable makes sure the unprivileged server user can traverse every
// folder above Dir, which a folder under /root, for one, does not allow.
func (s *Server) checkReachable() error {
	if s.owner == nil {
		return nil
	}
	abs, err := filepath.Abs(s.Dir)
	if err != nil {
		return err
	}
	for dir := filepath.Dir(abs); ; dir = filepath.Dir(dir) {
		fi, err := os.Stat(dir)
		if err != nil {
			return err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		mode := fi.Mode().Perm()
		reachable := mode&0o001 != 0 ||
			(ok && st.Gid == s.owner.gid && mode&0o010 != 0) ||
			(ok && st.Uid == s.owner.uid && mode&0o100 != 0)
		if !reachable {
			return fmt.Errorf("PostgreSQL runs as user %s here (it refuses root), and that user cannot enter %s: use a folder it can reach (for example under /tmp), or chmod o+x %s", s.owner.name, dir, dir)
		}
		if dir == "/" || dir == "." {
			return nil
		}
	}
}

// chown gives a folder, and all in it, to owner (nothing when nil: not root).
func chown(dir string, owner *credential) error {
	if owner == nil {
		return nil
	}
	return filepath.Walk(dir, func(path string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(path, int(owner.uid), int(owner.gid))
	})
}

func (s *Server) start(ctx context.Context) error {
	settings := map[string]string{
		"listen_addresses":        s.Host,
		"port":                    strconv.Itoa(s.Port),
		"unix_socket_directories": s.Dir,
		"fsync":                   "off",
		"full_page_writes":        "off",
		"wal_level":               "logical",
		"max_wal_senders":         "10",
		"max_replication_slots":   "10",
		"max_connections":         "300",
		"shared_buffers":          "32MB",
		"log_min_messages":        "warning",
		"logging_collector":       "off",
	}
	if s.opts.TLS {
		settings["ssl"] = "on"
		settings["ssl_cert_file"] = s.Certs.Cert
		settings["ssl_key_file"] = s.Certs.Key
	}
	for k, v := range s.opts.Settings {
		settings[k] = v
	}
	keys := make([]string, 0, len(settings))
	for k := range settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	args := []string{"-D", s.DataDir}
	for _, k := range keys {
		args = append(args, "-c", k+"="+settings[k])
	}
	logf, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd, exited, err := spawn(filepath.Join(s.bin, "postgres"), args, s.owner, logf)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.cmd, s.exited = cmd, exited
	s.mu.Unlock()
	return s.waitReady(ctx, exited)
}

// waitReady waits until this server answers on its own socket folder, then
// makes sure that its TCP port reaches it too. Probing the TCP port alone is
// not enough: two servers started at once (tests of several packages run in
// parallel) can be handed the same free port, and the one that fails to bind
// would find the other answering there and report itself ready.
func (s *Server) waitReady(ctx context.Context, exited chan struct{}) error {
	deadline := time.Now().Add(60 * time.Second)
	local := fmt.Sprintf("host=%s port=%d user=%s dbname=postgres sslmode=disable", s.Dir, s.Port, SuperUser)
	for {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		conn, err := pgconn.Connect(cctx, local)
		cancel()
		if err == nil {
			_ = conn.Close(context.Background())
			if err := s.checkTCP(ctx); err != nil {
				s.kill(syscall.SIGKILL)
				return err
			}
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("postgres exited during start-up: %s", s.logTail())
		case <-ctx.Done():
			_ = s.Stop()
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.kill(syscall.SIGKILL)
			return fmt.Errorf("postgres not ready after 60s: %s", s.logTail())
		}
	}
}

// checkTCP connects over TCP and compares the data directory of the server
// that answers with this one's.
func (s *Server) checkTCP(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(cctx, s.DSN("postgres"))
	if err != nil {
		return fmt.Errorf("postgres answers on its socket but not on %s: %w", s.Addr(), err)
	}
	defer conn.Close(context.Background())
	res := conn.ExecParams(cctx, "SHOW data_directory", nil, nil, nil, nil).Read()
	if res.Err != nil {
		return res.Err
	}
	want, _ := filepath.Abs(s.DataDir)
	if len(res.Rows) != 1 || filepath.Clean(string(res.Rows[0][0])) != want {
		return fmt.Errorf("another server answers on %s (could not bind: port taken)", s.Addr())
	}
	return nil
}

func (s *Server) logTail() string {
	data, _ := os.ReadFile(s.logPath)
	if len(data) > 2000 {
		data = data[len(data)-2000:]
	}
	return string(bytes.TrimSpace(data))
}

// Signal sends a signal to every process of the server, backends included
// (SIGSTOP and SIGCONT freeze and thaw it as a whole). Backends are found
// by parent pid: PostgreSQL puts each child in its own session, so the
// postmaster's process group does not reach them.
func (s *Server) Signal(sig syscall.Signal) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil || s.cmd.Process == nil {
		return errors.New("server not running")
	}
	pid := s.cmd.Process.Pid
	// To kill or freeze, stop the postmaster first: it then forks no new
	// backend between the scan for its children and their signal, and they
	// are still its children (not reparented) when they are looked for.
	if sig == syscall.SIGKILL || sig == syscall.SIGSTOP {
		if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
			return err
		}
	}
	children := childrenOf(pid)
	for _, c := range children {
		_ = syscall.Kill(c, sig)
	}
	if err := syscall.Kill(pid, sig); err != nil {
		return err
	}
	if sig == syscall.SIGKILL {
		// Gone before Signal returns: a statement sent now meets no
		// survivor, and a restart finds the shared memory free.
		waitGone(append(children, pid), 10*time.Second)
	}
	return nil
}

// childrenOf lists the processes whose parent is pid.
func childrenOf(pid int) []int {
	var out []int
	for _, p := range procs() {
		if p.ppid == pid {
			out = append(out, p.pid)
		}
	}
	return out
}

// waitGone waits until none of pids runs (zombies, which hold nothing and
// which a container's init may never reap, do not count).
func waitGone(pids []int, timeout time.Duration) {
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		running := false
		for _, p := range procs() {
			if p.state != "Z" && slices.Contains(pids, p.pid) {
				running = true
				break
			}
		}
		if !running {
			return
		}
	}
}

type proc struct {
	pid, ppid int
	state     string
}

// procs reads every process's pid, parent and state from /proc.
func procs() []proc {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []proc
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue // exited meanwhile
		}
		// pid (comm) state ppid ...: comm may hold spaces, so read after ')'.
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 {
			continue
		}
		fields := strings.Fields(string(stat[i+1:]))
		if len(fields) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(fields[1])
		out = append(out, proc{pid: pid, ppid: ppid, state: fields[0]})
	}
	return out
}

// kill signals the whole process group and waits for the postmaster to exit.
func (s *Server) kill(sig syscall.Signal) {
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	stopGroup(cmd, exited, sig, 15*time.Second)
	s.mu.Lock()
	s.cmd = nil
	s.mu.Unlock()
}

// spawn starts a server program (postgres, pgbouncer) in its own process
// group, as owner when we are root, killed if this process dies; exited is
// closed when it exits.
func spawn(bin string, args []string, owner *credential, out io.Writer) (cmd *exec.Cmd, exited chan struct{}, err error) {
	cmd = exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if owner != nil {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: owner.uid, Gid: owner.gid}
	}
	if err := cmd.Start(); err != nil {
		return nil, nil, fmt.Errorf("start %s: %w", filepath.Base(bin), err)
	}
	exited = make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	return cmd, exited, nil
}

// stopGroup signals a spawned program's process group and waits for it,
// killing the group if it has not exited after timeout.
func stopGroup(cmd *exec.Cmd, exited chan struct{}, sig syscall.Signal, timeout time.Duration) {
	_ = syscall.Kill(-cmd.Process.Pid, sig)
	select {
	case <-exited:
	case <-time.After(timeout):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
	}
}

// Halt stops the server (fast shutdown) but keeps its data, for Restart.
func (s *Server) Halt() { s.kill(syscall.SIGINT) }

// Crash kills the server with SIGKILL, keeping its data, for Restart.
func (s *Server) Crash() { s.kill(syscall.SIGKILL) }

// Restart starts a halted or crashed server again on the same port.
func (s *Server) Restart(ctx context.Context) error {
	s.kill(syscall.SIGINT)
	_ = os.Remove(filepath.Join(s.DataDir, "postmaster.pid"))
	return s.start(ctx)
}

// Stop shuts the server down and removes its folder if pgtest created it.
func (s *Server) Stop() error {
	s.kill(syscall.SIGINT)
	s.cleanup()
	return nil
}

func (s *Server) cleanup() {
	if s.temp {
		_ = os.RemoveAll(s.Dir)
	}
}

// BinDir finds PostgreSQL's server binaries: on PATH, then pg_config
// --bindir, then the newest /usr/lib/postgresql/*/bin.
func BinDir() (string, error) {
	if p, err := exec.LookPath("postgres"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			p = real
		}
		dir := filepath.Dir(p)
		if _, err := os.Stat(filepath.Join(dir, "initdb")); err == nil {
			return dir, nil
		}
	}
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		dir := strings.TrimSpace(string(out))
		if _, err := os.Stat(filepath.Join(dir, "postgres")); err == nil {
			return dir, nil
		}
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/postgres")
	sort.Slice(matches, func(i, j int) bool { return versionOf(matches[i]) > versionOf(matches[j]) })
	if len(matches) > 0 {
		return filepath.Dir(matches[0]), nil
	}
	return "", errors.New("PostgreSQL server binaries not found (looked on PATH, in pg_config --bindir and /usr/lib/postgresql/*/bin): install them, e.g. apt-get install -y postgresql")
}

func versionOf(path string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(path))))
	return v
}

// runAs returns the unprivileged user to run PostgreSQL as when we are root.
func runAs() (*credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			continue
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		return &credential{uid: uint32(uid), gid: uint32(gid), name: name}, nil
	}
	return nil, errors.New("running as root and no unprivileged user (postgres or nobody) to run PostgreSQL as")
}

// template returns a data folder initialized once per machine, user and
// PostgreSQL build, creating it under a file lock so parallel test
// packages share it.
func template(bin string, owner *credential) (string, error) {
	uid := os.Geteuid()
	if owner != nil {
		uid = int(owner.uid)
	}
	key := strings.NewReplacer("/", "_").Replace(bin)
	base := filepath.Join(os.TempDir(), "pgrouter-pgtest")
	if err := os.MkdirAll(base, 0o755); err != nil {
		return "", err
	}
	_ = os.Chmod(base, 0o1777)
	dir := filepath.Join(base, fmt.Sprintf("template-%d%s", uid, key))
	lock, err := os.OpenFile(dir+".lock", os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return "", err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return "", err
	}
	defer func() { _ = syscall.Flock(int(lock.Fd()), syscall.LOCK_UN) }()
	if _, err := os.Stat(filepath.Join(dir, "PG_VERSION")); err == nil {
		return dir, nil
	}
	tmp := dir + ".tmp"
	_ = os.RemoveAll(tmp)
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		return "", err
	}
	if owner != nil {
		if err := os.Chown(tmp, int(owner.uid), int(owner.gid)); err != nil {
			return "", err
		}
	}
	cmd := exec.Command(filepath.Join(bin, "initdb"), "-D", tmp, "-U", SuperUser, "--auth=trust", "-E", "UTF8", "--locale=C", "-N")
	cmd.Dir = os.TempDir()
	if owner != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: owner.uid, Gid: owner.gid}}
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		_ = os.RemoveAll(tmp)
		return "", fmt.Errorf("initdb: %v: %s", err, out)
	}
	if err := os.Rename(tmp, dir); err != nil {
		return "", err
	}
	return dir, nil
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// Checksum is a table's whole content as one string (row count and md5 of
// the rows in text order), for tests that compare copies of a table.
func Checksum(ctx context.Context, dsn, table string) (string, error) {
	conn, err := pgconn.Connect(ctx, dsn)
	if err != nil {
		return "", err
	}
	defer conn.Close(context.Background())
	res := conn.ExecParams(ctx, fmt.Sprintf(`SELECT count(*) || ' rows ' || coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') FROM %s t`, table), nil, nil, nil, nil).Read()
	if res.Err != nil {
		return "", fmt.Errorf("checksum %s: %w", table, res.Err)
	}
	return string(res.Rows[0][0]), nil
}
