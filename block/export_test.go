package block

// Internal entry points for benchmarks that measure the drain itself,
// without the main-Context check of the exported calls.
var (
	DrainedBeginOnMain = (*Node).drainedBegin
	DrainedEndOnMain   = (*Node).drainedEnd
	CheckDrained       = (*Node).checkDrained
)

// RaiseFrontEndCount adds d to fe's in-flight count, as Queue.Submit does
// for an instant before it sees a quiesce and parks the request.
func RaiseFrontEndCount(fe *FrontEnd, d int) {
	if d > 0 {
		fe.inFlight.inc()
	} else {
		fe.inFlight.dec()
	}
}

// TrackerLocks returns how often n's serialisation tracker took its mutex;
// SerialGate returns its gate word (serialising requests << 32 | aligned
// requests on the fast path).
func TrackerLocks(n *Node) int64 {
	n.tracked.mu.Lock()
	defer n.tracked.mu.Unlock()
	return n.tracked.locks
}

func SerialGate(n *Node) uint64 { return n.inFlight.gate.Load() }
