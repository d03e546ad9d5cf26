package proxy

import "github.com/pgrouter/pgrouter/wire"

// txState is the client's transaction (see transaction.go): one value, so
// that no combination of a server status and an "unpinned" flag can
// disagree. The ReadyForQuery status the client sees follows from it.
//
//	txIdle ──BEGIN (answered by pgrouter)──▶ txUnpinned ──error──▶ txUnpinnedFailed
//	  ▲  ▲                                     │   ▲  └─ROLLBACK TO──┘      │
//	  │  └──────── COMMIT / ROLLBACK ──────────┤   └────────────────────────┘
//	  │                                        │ first statement that needs a shard
//	  └── server 'I' ── txPinned ◀─────────────┘
//	                    ▲   │ server 'E'
//	         server 'T' │   ▼
//	                    txFailed
//
// A server's ReadyForQuery sets the state of a transaction that is not
// unpinned (serverTx); a lost server or a refused statement-mode
// transaction sets txIdle.
type txState uint8

const (
	txIdle           txState = iota // no transaction
	txUnpinned                      // BEGIN answered by pgrouter, no shard chosen yet
	txUnpinnedFailed                // an error aborted the unpinned transaction
	txPinned                        // open on the linked server
	txFailed                        // aborted on the linked server
)

// serverTx is the state a server's ReadyForQuery status gives.
func serverTx(status byte) txState {
	switch status {
	case wire.TxActive:
		return txPinned
	case wire.TxFailed:
		return txFailed
	}
	return txIdle
}

// status is the ReadyForQuery status the client sees.
func (t txState) status() byte {
	switch t {
	case txUnpinned, txPinned:
		return wire.TxActive
	case txUnpinnedFailed, txFailed:
		return wire.TxFailed
	}
	return wire.TxIdle
}

// unpinned reports a transaction pgrouter holds, whose shard is not chosen.
func (t txState) unpinned() bool { return t == txUnpinned || t == txUnpinnedFailed }

// onServer reports a transaction open on the linked server (pinned or
// failed there): the server belongs to the client until it ends.
func (t txState) onServer() bool { return t == txPinned || t == txFailed }

// batchPhase is what the linked server has of the client's current
// extended-protocol batch (the messages since its last Sync): the implicit
// transaction PostgreSQL runs them in lasts until the Sync.
//
//	batchNone ──Parse/Bind/Describe/Execute/Close sent──▶ batchSent
//	    ▲                                                    │ Execute of a statement
//	    │                                                    ▼ that needs a shard
//	    └────────── Sync answered, or the server lost ── batchExecuted
//
// Only batchSent may move to another shard (movable): nothing in it has
// run anywhere that matters.
type batchPhase uint8

const (
	batchNone     batchPhase = iota // nothing since the last Sync
	batchSent                       // messages sent, none executed a statement that needs a shard
	batchExecuted                   // an Execute of a statement that needs a shard was sent
)

// send records an extended message sent to the server.
func (b *batchPhase) send() {
	if *b == batchNone {
		*b = batchSent
	}
}
