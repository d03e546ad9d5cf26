package pgtest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// StartReplica starts a hot standby of primary, streaming from it: a
// pg_basebackup -R of it in a new temporary folder, started on a free port
// (on port, when not 0: a failed primary's, say).
func StartReplica(ctx context.Context, primary *Server, port ...int) (*Server, error) {
	dir, err := os.MkdirTemp("", "pgtest-replica-")
	if err != nil {
		return nil, err
	}
	s := &Server{Host: "127.0.0.1", bin: primary.bin, owner: primary.owner, opts: Options{}, Dir: dir, temp: true}
	if err := os.Chmod(dir, 0o755); err != nil {
		s.cleanup()
		return nil, err
	}
	s.DataDir = filepath.Join(dir, "data")
	s.logPath = filepath.Join(dir, "postgres.log")
	out, err := exec.CommandContext(ctx, filepath.Join(s.bin, "pg_basebackup"), "-h", primary.Host, "-p", strconv.Itoa(primary.Port), "-U", SuperUser,
		"-D", s.DataDir, "-R", "-X", "stream", "-c", "fast").CombinedOutput()
	if err != nil {
		s.cleanup()
		return nil, fmt.Errorf("pg_basebackup of %s: %v: %s", primary.Addr(), err, out)
	}
	if err := os.Chmod(s.DataDir, 0o700); err != nil {
		s.cleanup()
		return nil, err
	}
	if err := chown(dir, s.owner); err != nil {
		s.cleanup()
		return nil, err
	}
	for attempt := 0; ; attempt++ {
		if len(port) > 0 && port[0] != 0 {
			s.Port = port[0]
		} else if s.Port, err = freePort(); err != nil {
			s.cleanup()
			return nil, err
		}
		err = s.start(ctx)
		if err == nil {
			return s, nil
		}
		if attempt >= 3 || !strings.Contains(err.Error(), "could not bind") {
			s.cleanup()
			return nil, err
		}
	}
}

// Promote makes a standby a primary (pg_ctl promote) and waits until it is.
func (s *Server) Promote(ctx context.Context) error {
	return s.Exec(ctx, "postgres", "SELECT pg_promote(true, 60)")
}
