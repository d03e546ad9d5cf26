package logical

import (
	"bytes"
	"sync/atomic"
	"time"

	"github.com/pgrouter/pgrouter/config"
)

// Progress reports a table's initial copy while it runs (about once a
// second) and when it ends: refsync's to a shard, fanin's from one.
type Progress struct {
	Shard string
	Table config.TableName
	Rows  int64 // copied so far
	Total int64 // the source's estimate; 0 when it has none
	Done  bool
}

// RowCounter counts the rows of a text COPY stream written through it (a
// row ends with a newline; newlines inside values are escaped) and reports
// the count every interval until Stop.
type RowCounter struct {
	n       atomic.Int64
	stop    chan struct{}
	stopped chan struct{}
}

// CountRows starts a counter that calls report every interval.
func CountRows(interval time.Duration, report func(rows int64)) *RowCounter {
	c := &RowCounter{stop: make(chan struct{}), stopped: make(chan struct{})}
	go func() {
		defer close(c.stopped)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-c.stop:
				return
			case <-tick.C:
				report(c.n.Load())
			}
		}
	}()
	return c
}

func (c *RowCounter) Write(b []byte) (int, error) {
	c.n.Add(int64(bytes.Count(b, []byte{'\n'})))
	return len(b), nil
}

// Rows is the count so far.
func (c *RowCounter) Rows() int64 { return c.n.Load() }

// Stop ends the reports; it returns once the last one has returned.
func (c *RowCounter) Stop() {
	close(c.stop)
	<-c.stopped
}
