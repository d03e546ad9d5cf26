package bench

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// IdleResult is what holding idle clients cost a process.
type IdleResult struct {
	Clients             int           `json:"clients"`
	LoginTime           time.Duration `json:"login_time"`
	RSSBefore, RSSAfter int64         `json:"-"` // bytes
}

// Idle logs n clients in to dsn, one after another, has each run one
// query (an idle client of a real pool has done some work: its buffers
// have been used), holds them for hold, and reads the resident memory of
// process pid before and after (0: not read). It fails at the first client
// refused, with how many got in.
func Idle(ctx context.Context, dsn string, n int, pid int, hold time.Duration) (*IdleResult, error) {
	r := &IdleResult{}
	var err error
	if r.RSSBefore, err = ProcessRSS(pid); err != nil {
		return nil, err
	}
	conns := make([]*pgconn.PgConn, 0, n)
	defer func() {
		for _, c := range conns {
			_ = c.Close(context.WithoutCancel(ctx))
		}
	}()
	start := time.Now()
	for i := range n {
		c, err := pgconn.Connect(ctx, dsn)
		if err != nil {
			return nil, fmt.Errorf("client %d of %d: %w", i+1, n, err)
		}
		conns = append(conns, c)
		if _, err := c.Exec(ctx, "SELECT 1").ReadAll(); err != nil {
			return nil, fmt.Errorf("client %d of %d: %w", i+1, n, err)
		}
	}
	r.Clients, r.LoginTime = len(conns), time.Since(start)
	select {
	case <-time.After(hold):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if r.RSSAfter, err = ProcessRSS(pid); err != nil {
		return nil, err
	}
	return r, nil
}

// ProcessRSS is a process's resident memory in bytes (VmRSS), 0 for pid 0.
func ProcessRSS(pid int) (int64, error) {
	if pid == 0 {
		return 0, nil
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("read the memory of process %d: %w", pid, err)
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := sc.Bytes()
		if v, ok := bytes.CutPrefix(line, []byte("VmRSS:")); ok {
			fields := bytes.Fields(v)
			if len(fields) == 2 && string(fields[1]) == "kB" {
				kb, err := strconv.ParseInt(string(fields[0]), 10, 64)
				if err != nil {
					return 0, fmt.Errorf("/proc/%d/status: %w", pid, err)
				}
				return kb << 10, nil
			}
		}
	}
	return 0, fmt.Errorf("/proc/%d/status has no VmRSS line", pid)
}
