package proxy

import (
	"encoding/binary"

	"github.com/pgrouter/pgrouter/wire"
)

// retarget rewrites a Query or Parse whose statement calls a function
// declared with a target (PL/Proxy's TARGET) to call the target instead,
// before anything else sees it: the rewritten text is what is prepared,
// named and replayed on the shards, and it routes as the call it was (the
// router knows target names). Other messages come back unchanged.
func (s *session) retarget(m wire.Message) (wire.Message, error) {
	body := m.Body()
	var name []byte
	if m.Type == wire.Parse {
		msg, err := wire.ReadParse(body)
		if err != nil {
			return m, malformed(err)
		}
		name = msg.Name
		body = msg.Query
	} else {
		body = trimNUL(body)
	}
	plan := s.router.PlanBytes(body, s.standardStrings())
	if plan.Rewritten == "" {
		return m, nil
	}
	raw := make([]byte, 0, len(m.Raw)+len(plan.Rewritten)-len(body))
	raw = append(raw, m.Type, 0, 0, 0, 0)
	if m.Type == wire.Parse {
		raw = append(raw, name...)
		raw = append(raw, 0)
	}
	raw = append(raw, plan.Rewritten...)
	raw = append(raw, 0)
	if m.Type == wire.Parse {
		// The parameter types follow the query.
		rest := m.Body()[len(name)+1+len(body)+1:]
		raw = append(raw, rest...)
	}
	binary.BigEndian.PutUint32(raw[1:], uint32(len(raw)-1))
	return wire.Message{Type: m.Type, Raw: raw}, nil
}
