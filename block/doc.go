// Package block owns the node graph and the request lifecycle: admission,
// in-flight accounting, alignment and splitting, batching, throttling and
// drain. Drivers plug into it through one Driver interface; block never
// imports a driver.
//
// # Graph
//
// A Graph holds every Node and FrontEnd that share one main aio.Context.
// A Node wraps a Driver and has a home Context, an in-flight count, a
// quiesce count and a name. A Child is an edge from an owner — another node,
// a front end or a job — to a child node, with a role (file, backing,
// primary, filtered) and a ChildClass that says how to quiesce the owner.
// Attach takes a reference on the child; detaching drops it; the last Unref
// deletes the node, and deletion always closes the driver inside a drained
// section that the close path opens itself (D14). Every graph change, drain
// and Context move runs on the main Context (the exported calls marshal
// themselves there).
//
// # Request lifecycle
//
//	FrontEnd Queue (per Context)          Node.Submit                Driver
//	 fe.inFlight++ ── quiesced? park ──▶  node.inFlight++            Read/Write/…
//	      │           (drop count;        validate (EIO/EINVAL/…)      │ aio ops,
//	      │            resume FIFO,       align: RMW, serialise        │ child.Submit,
//	      │            re-count, D15)     split at MaxTransfer          │ arithmetic
//	 throttled? wait for the group        ───────────────────────────▶ │
//	      ▼                                                            ▼
//	 user Done ◀─ fe.inFlight-- ◀─ Queue.RequestDone ◀─ node.inFlight-- ◀─ Complete
//	 (never inside its own Submit)              (Kick)        (Kick)     or CompleteLater (BH)
//
// Requests are preallocated structs from a per-Context Pool and go back to
// it when their Done returns; the Done interface carries the continuation
// and Tag the caller's data, so the path allocates nothing and takes no lock
// (the front end's lock is taken only while it is quiesced). A request runs
// entirely on the Context that submitted it. The node's in-flight count is
// an atomic on its own cache line, raised before anything else happens and
// dropped only when the request has really completed — after the bottom
// half, if the driver needed one (CompleteLater). Every drop kicks the main
// Context, which is how a drain waiting there learns that an IOThread made
// progress (D10).
//
// # Drain
//
// A drained section on a node guarantees that nothing is in flight on the
// node or anything above it and that nothing new arrives from front ends or
// jobs until it ends. Three kinds exist — one node (DrainedBegin), a subtree
// (SubtreeDrainedBegin) and everything (DrainAllBegin) — and all three run
// the same two phases:
//
//  1. Quiesce. Each covered node's quiesce count goes up; on 0→1 the node
//     quiesces every parent edge (a node parent recursively, a front end
//     parks new requests and turns throttling off and tells its device, a
//     job is asked to pause), then the driver's DrainBegin runs. Nothing in
//     this phase polls, waits or changes the graph (D6), so the edge lists
//     can be walked plainly.
//  2. Wait. One WaitWhile on the main Context evaluates "is anything still
//     pending" from the live graph each time: for a node, its own count or
//     any parent edge's DrainedPoll (recursively up); for drain-all, every
//     node's count and every non-node owner, O(nodes+edges). Completions,
//     bottom halves and jobs run only here, and they may change the graph:
//     nothing computed in one evaluation is reused in the next (D8). Before
//     the first evaluation the idle case returns without polling at all.
//
// DrainedEnd never polls (D7): it lowers the count, and on 1→0 calls the
// driver's DrainEnd first, then the parents (child to parent). Front ends
// resume their parked requests, each counted again before it is scheduled
// (D15); anything re-enabled runs in a later poll of its Context.
//
// Subtree drains are built from single-node quiesces (drain.md §1.6): every
// node below the root is quiesced once and the wait covers all of them.
// A node attached under a subtree-drained parent is quiesced before its edge
// becomes visible and detaching undoes it exactly (see subtree.go), so
// attach and detach never poll. Drain-all quiesces every registered node;
// nodes opened during a drain-all are born quiesced, nodes deleted during it
// release their quiesces (D12).
//
// A drain requested from a coroutine (a request goroutine that holds a
// Context's run token) hands over to the main Context (D11): it raises the
// node's in-flight count, schedules the drain there, and parks until the
// main Context wakes it.
//
// # Context moves
//
// SetContext moves a node's whole connected component: every owner class
// is asked first (a front end in use vetoes), then the component is drained
// under the old Contexts, each old Context runs until it makes no more
// progress (so bottom halves scheduled for the nodes have run, seed 004),
// drivers detach, the nodes switch, drivers attach, and the drains end
// under the new Context (D17).
//
// # Invariants
//
// D1–D18 of drain.md §1.14 are asserted where they can be: cheap ones
// always (a negative count, an end without a begin), costly ones under the
// invariants build tag (D3 after each drained begin, the main-Context rule,
// every node idle after drain-all).
package block
