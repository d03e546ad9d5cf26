package pool

import "time"

// The admin console's pgbouncer commands on a pool: RECONNECT replaces its
// connections as they come back, KILL closes them now, WAIT_CLOSE waits for
// the ones marked to go.

// closeNeededLocked reports whether c was open when RECONNECT or KILL ran.
// The caller holds p.mu.
func (p *Pool) closeNeededLocked(c *Conn) bool {
	return !p.replaceBefore.IsZero() && !c.created.After(p.replaceBefore)
}

// Reconnect has every connection open now replaced: idle ones are closed
// at once, busy ones when their holder releases them (in transaction mode at
// the end of the transaction, in session mode when the client leaves). New
// connections open as clients need them, at once.
func (p *Pool) Reconnect() {
	p.closeIdle(time.Now())
}

// closeIdle marks every connection created up to now as needing close,
// closes the idle ones and returns the busy ones.
func (p *Pool) closeIdle(now time.Time) []*Conn {
	p.mu.Lock()
	p.replaceBefore = now
	idle := p.idle
	p.idle = nil
	for _, c := range idle {
		p.dropLocked(c)
	}
	p.wakeLockedFor(len(idle)) // their slots are free for waiters to dial
	var busy []*Conn
	for c := range p.conns {
		if c.state == StateActive {
			busy = append(busy, c)
		}
	}
	p.mu.Unlock()
	for _, c := range idle {
		c.close()
	}
	return busy
}

// Kill closes every connection now (KILL): idle ones as Reconnect does, busy
// ones under their holders, whose next read or write fails (the shard
// rolls back what they were running); Release then drops them.
func (p *Pool) Kill() {
	for _, c := range p.closeIdle(time.Now()) {
		c.MarkInterrupted()
		_ = c.netConn.Close()
	}
}

// CloseNeeded counts the connections RECONNECT or KILL marked that are
// still open (WAIT_CLOSE waits for none).
func (p *Pool) CloseNeeded() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for c := range p.conns {
		if p.closeNeededLocked(c) {
			n++
		}
	}
	return n
}

// shardPools returns the pools of a shard (one per server user).
func (s *Set) shardPools(shard string) []*Pool {
	var out []*Pool
	for _, p := range s.Pools() {
		if p.cfg.Shard == shard {
			out = append(out, p)
		}
	}
	return out
}

// Reconnect replaces the connections of a shard's pools (Pool.Reconnect).
func (s *Set) Reconnect(shard string) {
	for _, p := range s.shardPools(shard) {
		p.Reconnect()
	}
}

// Kill closes the connections of a shard's pools now (Pool.Kill).
func (s *Set) Kill(shard string) {
	for _, p := range s.shardPools(shard) {
		p.Kill()
	}
}

// CloseNeeded counts a shard's connections RECONNECT or KILL marked that
// are still open.
func (s *Set) CloseNeeded(shard string) int {
	n := 0
	for _, p := range s.shardPools(shard) {
		n += p.CloseNeeded()
	}
	return n
}
