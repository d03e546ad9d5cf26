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
// has answered everything and may be released.
type request struct {
	kind requestKind
	// internal marks a request pgrouter injected (a re-Parse, a Close of an
	// evicted statement): its success replies are not forwarded.
	internal bool
	// reply is the message type a reqLocal entry emits; err is the error it
	// emits when reply is ErrorResponse.
	reply byte
	err   *Error
	// serverStmt is the server-side statement a Parse creates.
	serverStmt string
	// clientStmt is the client's name for that statement, undone if the Parse fails.
	clientStmt string
	// unnamed marks a Parse of the unnamed statement.
	unnamed bool
	// restore is a statement a local Close removed, put back if the Close is
	// skipped because an earlier message of its batch failed.
	restore *statement
	// rename rewrites a server-side statement name in an error message back
	// to the name the client used.
	renameFrom, renameTo string
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

func (q *queue) clear() {
	clear(q.items)
	q.items = q.items[:0]
	q.head = 0
}
