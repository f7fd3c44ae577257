package block

import (
	"sync/atomic"

	"github.com/ringblk/ringblk/internal/invariants"
)

// cacheLine is the padding unit for counters that several Contexts write.
// 64 bytes on amd64 and arm64; 128 would also cover adjacent-line prefetch,
// which we do not need for a counter read mostly by one waiter.
const cacheLine = 64

// inFlight is a node's or front end's count of requests (and request-like
// activities) in progress. It sits alone on its cache line: every Context
// that submits to the node increments and decrements it, and the main
// Context reads it while it drains.
//
// INVARIANT: value >= 0.
type inFlight struct {
	_ [cacheLine]byte
	v atomic.Int64
	// gate is a node's serialisation gate (align.go), on the same line as
	// the count because an aligned request on an Align > 1 node writes
	// both: one line transfer, not two. Front ends leave it zero.
	gate atomic.Uint64
	_    [cacheLine - 16]byte
}

func (c *inFlight) inc() { c.v.Add(1) }

// dec drops one count and reports the new value. The caller kicks the main
// Context after it (D10); dec itself does not know which Context that is.
func (c *inFlight) dec() int64 {
	v := c.v.Add(-1)
	if v < 0 {
		// A cheap trust-boundary check: a double completion is a
		// programmer error that would otherwise let a drain return early.
		invariants.Failf("block: in-flight count went negative (%d)", v)
	}
	return v
}

func (c *inFlight) load() int64 { return c.v.Load() }
