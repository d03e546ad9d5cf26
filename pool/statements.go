package pool

import "container/list"

// StatementCache is the set of prepared statements a server connection holds,
// by server-side name, in least-recently-used order. The session that holds
// the connection consults it to skip a Parse the server already has and to
// pick statements to Close when the cache is full.
type StatementCache struct {
	limit int
	index map[string]*list.Element
	order list.List // front = most recently used
}

// NewStatementCache returns a cache holding up to limit statements
// (limit 0 disables caching: every use re-parses).
func NewStatementCache(limit int) *StatementCache {
	return &StatementCache{limit: limit, index: map[string]*list.Element{}}
}

// Has reports whether the server has the statement, and marks it used.
func (s *StatementCache) Has(name string) bool {
	e, ok := s.index[name]
	if ok {
		s.order.MoveToFront(e)
	}
	return ok
}

// Add records that the server has (or is about to have) the statement. It
// returns the names pushed out to stay within the limit; the caller must
// Close them on the server.
func (s *StatementCache) Add(name string) (evicted []string) {
	if e, ok := s.index[name]; ok {
		s.order.MoveToFront(e)
		return nil
	}
	s.index[name] = s.order.PushFront(name)
	for s.order.Len() > max(s.limit, 1) {
		last := s.order.Back()
		victim := last.Value.(string)
		if victim == name {
			break
		}
		s.order.Remove(last)
		delete(s.index, victim)
		evicted = append(evicted, victim)
	}
	return evicted
}

// Remove forgets a statement (its Parse failed, or it was closed).
func (s *StatementCache) Remove(name string) {
	if e, ok := s.index[name]; ok {
		s.order.Remove(e)
		delete(s.index, name)
	}
}

// Restore puts back a statement whose Close the server skipped, as the least
// recently used and without evicting anything.
func (s *StatementCache) Restore(name string) {
	if _, ok := s.index[name]; !ok {
		s.index[name] = s.order.PushBack(name)
	}
}

// Reset replaces the contents with what the server reports it has.
func (s *StatementCache) Reset(names []string) {
	s.Clear()
	for _, n := range names {
		s.Restore(n)
	}
}

// Clear forgets everything (after DISCARD ALL or DEALLOCATE ALL on the server).
func (s *StatementCache) Clear() {
	s.index = map[string]*list.Element{}
	s.order.Init()
}

// Len reports how many statements are cached.
func (s *StatementCache) Len() int { return s.order.Len() }
