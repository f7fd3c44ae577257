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
//	 no room in the pool? wait, FIFO                                     │
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
// The Pool also bounds a Context's work (Pool.SetMaxRequests, default half
// the Context's slot cap): a front-end request goes to its node only while
// the pool has room, otherwise it waits in arrival order and goes when an
// admitted request finishes; a drained section parks the waiting ones.
//
// Reads, writes and compressed writes of a front end in a throttle group
// pass the group's token buckets first. Members take turns: once one has
// to wait, every member that wants to send joins the group's ring, only
// the member holding the turn takes tokens, and the turn moves on after
// each admitted request, so a busy front end cannot starve another one
// (QEMU's throttle-groups round robin). The holder waits on a timer of its
// own Context; the turn reaches a member on another Context through that
// member's bottom half. While a front end is quiesced its throttling is
// off: its waiting requests go at once and it leaves the ring (seed 003).
//
// # Optional operations
//
// Compressed writes (CompressedWriter), VM state (VMStateDriver), the
// consistency check (Checker, with qemu-img check's CheckResult) and
// activation for migration (Activator) are requests like the others: a
// driver offers them by implementing the interface, and one that does not
// fails them with an Unsupported *Error wrapping ENOTSUP after validation
// (so a negative offset is still EIO) — except activation, which without a
// hook only flips the node's flag. They count in the node's in-flight, and
// their synchronous wrappers (WriteCompressed on a node or a front end;
// LoadVMState, SaveVMState, Check, Activate and Inactivate on a node) run
// them on the node's Context and wake a waiting main Context with Kick —
// on the early-return paths as well, which complete from the pool's bottom
// half (drain.md §2.4, I7–I16). An inactive node refuses writes,
// compressed writes, write-zeroes, discards, truncation and VM-state saves
// with EPERM; Activate on an active node returns at once. Activate walks
// children before parents; Inactivate drains the node, then walks parents
// before children (a child another active parent still uses stays active).
// Both walk the graph on the main Context and send one request per node.
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
// Operations that may poll while they rewrite edges run inside a drained
// section that covers everything they touch (drain.md §1.10.6).
// DropIntermediate (QEMU's bdrv_drop_intermediate) drains the new base,
// which quiesces the dropped top node, every parent of it and every job
// above them; it re-points top's backing edges to base without polling,
// then calls each edge class's optional FilenameUpdater, which may poll or
// do synchronous I/O: no job can complete and delete one of those edges in
// the middle (T29). It holds its own references to top and base, so top
// is deleted only after the drained section ended.
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
