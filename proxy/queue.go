package proxy

// requestKind is a message sent to a server that expects an answer, or a
// reply pgrouter produces itself and must emit in pipeline order.
type requestKind uint8

const (
	reqParse requestKind = iota + 1
	reqBind
	reqDescribeStatement
	reqDescribePortal
	reqExecute
	reqClose
	reqSync
	reqQuery
	reqFunctionCall
	reqLocal // a reply pgrouter produces itself (ParseComplete, CloseComplete)
)

// request is one outstanding entry. Responses arrive in the order requests
// were sent (pgbouncer's outstanding-request list), so a FIFO tells the relay
// which request each response belongs to, what to swallow and when a server
// has answered everything and may be released. Whatever pgrouter recorded
// when it queued a request is undone (see undo) if the server fails it or
// skips it after an earlier error.
type request struct {
	kind requestKind
	// internal marks a request pgrouter sent for itself (a re-Parse, a Close
	// of an evicted statement, a read-back query): its replies are not
	// forwarded, except an error of a re-Parse, which is the client's.
	internal bool
	// reply is the message type a reqLocal entry emits.
	reply byte

	// serverStmt is the server-side statement a Parse creates, a Close of an
	// evicted statement removes, or a Bind or Describe uses.
	serverStmt string
	// clientStmt is the client's name for a statement a Parse (or a local
	// ParseComplete) defines or a local Close removes.
	clientStmt string
	// restore is the statement a local Close removed.
	restore *statement
	// unnamed marks a Parse or Close of the unnamed statement; prevUnnamed is
	// what the server had before, restored if the request is skipped.
	unnamed     bool
	prevUnnamed uint64
	// rename rewrites a server-side statement name in an error message back
	// to the name the client used.
	renameFrom, renameTo string

	// replace is reported instead of the server's error for a statement
	// pgrouter sent to fail in-band (see failInBand).
	replace  *Error
	replaced bool

	// onRow receives the rows of an internal query; onEnd is called when it
	// is done, with ok false if it failed.
	onRow  func(values [][]byte)
	onEnd  func(ok bool)
	failed bool
}

// queue is a FIFO of outstanding requests that reuses its backing array.
type queue struct {
	items []request
	head  int
}

func (q *queue) push(r request) { q.items = append(q.items, r) }

func (q *queue) len() int { return len(q.items) - q.head }

func (q *queue) empty() bool { return q.head == len(q.items) }

// peek returns the oldest request; the queue must not be empty.
func (q *queue) peek() *request { return &q.items[q.head] }

func (q *queue) pop() request {
	r := q.items[q.head]
	q.items[q.head] = request{}
	q.head++
	if q.head == len(q.items) {
		q.items = q.items[:0]
		q.head = 0
	}
	return r
}

// at returns the i-th outstanding request (0 is the oldest).
func (q *queue) at(i int) *request { return &q.items[q.head+i] }

// removeAt drops the i-th outstanding request.
func (q *queue) removeAt(i int) {
	idx := q.head + i
	copy(q.items[idx:], q.items[idx+1:])
	q.items[len(q.items)-1] = request{}
	q.items = q.items[:len(q.items)-1]
	if q.head == len(q.items) {
		q.items = q.items[:0]
		q.head = 0
	}
}

// awaitingServer reports whether any request still expects a server reply
// (as opposed to replies pgrouter produces itself).
func (q *queue) awaitingServer() bool {
	for i := q.head; i < len(q.items); i++ {
		if q.items[i].kind != reqLocal {
			return true
		}
	}
	return false
}

func (q *queue) clear() {
	clear(q.items)
	q.items = q.items[:0]
	q.head = 0
}
