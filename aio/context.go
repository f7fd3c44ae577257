package aio

import (
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ringblk/ringblk/internal/invariants"
	"github.com/ringblk/ringblk/uring"
)

// NoCPU in Options.CPU says "no CPU": the owner thread is not pinned
// (the zero value of Options, without Pin, does not pin either).
const NoCPU = -1

// Defaults for Options fields left zero.
const (
	DefaultEntries     = 256
	DefaultArenaSize   = 4 << 20
	DefaultStopTimeout = 5 * time.Second
	// DefaultPollTime is zero: a Context does not spin before sleeping
	// unless asked to. See Options.PollTime for why.
	DefaultPollTime = 0
)

// Options configure a Context. The zero value is usable: an unpinned
// Context with the default sizes.
type Options struct {
	// Name labels the Context in errors, reports and panics.
	Name string
	// Entries is the SQ size of the Context's ring (default 256). The CQ is
	// twice as large (the kernel's default).
	Entries int
	// Slots is the number of op slots preallocated (default 4×Entries, at
	// most MaxSlots). Ops beyond it grow the table by a chunk of 256 slots:
	// one allocation per new high-water mark, never in steady state.
	Slots int
	// MaxSlots caps the op-slot table (default 8×Entries; raised to Slots
	// if smaller; rounded up to the chunk size). Callers that take work
	// from outside — block's front ends — admit it only while SlotsFree
	// reports room and park it otherwise, so the table stays within the
	// cap; an op started at the cap is never refused, it grows the table
	// and is counted in Stats.SlotsOverCap.
	MaxSlots int
	// Pin pins the owner thread to the logical CPU named by CPU. Without
	// it (the zero value) the thread is not pinned and the scheduler may
	// run it on any CPU of the process's affinity mask.
	Pin bool
	// CPU is the logical CPU Pin pins to (0 or more). Without Pin it must
	// be 0 or NoCPU: New refuses a CPU it would not pin to.
	CPU int
	// WorkerCPUs, when not empty, are the CPUs on which the kernel's io-wq
	// workers for this Context's ring run (IORING_REGISTER_IOWQ_AFF). The
	// kernel runs a request in a worker when it cannot issue it without
	// blocking: reads and writes on zram and other devices without
	// REQ_NOWAIT, buffered reads on tmpfs, writes that allocate on some
	// file systems. By default a worker inherits its owner's affinity, so a
	// pinned owner and its workers share one CPU and take turns: the
	// fastest at queue depth 1 (a switch on one CPU, no cross-CPU wake-up),
	// one CPU's throughput at depth 32 (issue 20: 0.57x fio on zram). CPUs
	// other than the owner's let both run at once. A worker keeps the CPUs
	// its creator asked for (sched_setaffinity) and intersects this set
	// with them when they overlap (Linux 6.2+): to move workers off a
	// pinned owner's CPU, list only other CPUs. The set applies to workers
	// the kernel creates after Start; a Go thread that already has workers
	// (it ran another ring and went back to Go's pool) keeps those where
	// they are. Start fails on a CPU the process may not run on, and when
	// the kernel refuses the set (before Linux 5.14).
	WorkerCPUs []int
	// PollTime bounds the adaptive busy-poll before a blocking wait: the loop
	// spins on the CQ and the cross-goroutine queue for up to the current
	// poll window (which adapts between 0 and PollTime, as QEMU's
	// poll-max-ns does) before it sleeps in the kernel. Zero (the default)
	// never spins: on a machine whose cores are shared with other Contexts
	// and goroutines, a spinning Context steals the CPU that would complete
	// its own I/O. Set it (e.g. 20–50µs) when a core is dedicated.
	PollTime time.Duration
	// Batch runs the owner thread under SCHED_BATCH while the Context
	// runs (its nice value kept; SCHED_OTHER again before the thread is
	// given back to Go). The kernel then does not let a wake-up of the
	// loop preempt the task running on that CPU: a client that wakes the
	// loop with every request it sends (an NBD client on the same
	// machine) keeps running and sends more, and the loop takes them in
	// one batch when it runs, instead of a switch per request. For server
	// loops fed by local clients; it delays a wake-up behind a CPU-bound
	// task by up to that task's time slice (docs/design/nbd.md).
	Batch bool
	// Queue injects the ring, e.g. a uringtest.Ring; the Context owns it and
	// closes it at Stop. Nil creates a kernel ring on the owner thread at
	// Start.
	Queue uring.Queue
	// ArenaSize is the size of the mmap'd, registered buffer arena (default
	// 4 MiB, rounded up to a power of two pages); negative: no arena.
	ArenaSize int
	// Main marks the main Context: the one that may wait for conditions
	// driven by other Contexts (WaitWhile woken by Kick).
	Main bool
	// StopTimeout bounds how long Stop waits for cancelled ops to return
	// from the kernel (default 5s); ops still there are abandoned and
	// reported.
	StopTimeout time.Duration
}

// Context lifecycle states (Context.state).
const (
	stateNew int32 = iota
	stateStarting
	stateRunning
	stateStopping
	stateStopped
)

// A Context is one event loop: an owner goroutine locked to its OS thread,
// with one io_uring ring as its completion source. See the package
// documentation for the threading rule and the loop iteration.
//
// Fields are grouped by who may touch them. Shared fields are atomics, each
// on its own cache line (padded), because other goroutines write them.
// Everything else belongs to the owner — or to a coroutine while it holds
// the run token — and is never locked.
type Context struct {
	name string
	main bool
	opts Options

	// ---- shared with other goroutines ----

	// bhHead is the MPSC stack of scheduled BHs: producers push with CAS,
	// the owner takes the whole stack with Swap and reverses it.
	bhHead *atomic.Pointer[BH]
	// notifyMe is non-zero while the owner is in, or about to enter, a
	// blocking wait (QEMU's notify_me). Producers write the eventfd only then.
	// INVARIANT: the owner sets it before its last check for work and clears
	// it after the wait; producers publish work before reading it. Go atomics
	// are sequentially consistent, so one side always sees the other.
	notifyMe *atomic.Int32
	// notified is true from a producer's eventfd write until the owner reaps
	// the eventfd read: further producers need not write again.
	notified *atomic.Bool
	// waiters counts WaitWhile callers polling this Context; Kick schedules
	// a wake-up BH only when it is non-zero.
	waiters *atomic.Int32
	// extDisabled is the DisableExternal nesting count.
	extDisabled *atomic.Int32
	// noBatch is the DisableBatching nesting count: while it is non-zero
	// the loop submits prepared SQEs every iteration, plugged or not.
	noBatch *atomic.Int32
	// holder is the coroutine holding the run token, nil while the owner
	// goroutine holds it.
	holder *atomic.Pointer[Co]
	// tid is the owner thread's id while the loop runs, 0 otherwise.
	tid   atomic.Int32
	state atomic.Int32
	// wakeups counts eventfd writes (for tests and the wake benchmark).
	wakeups atomic.Int64
	// efdRef guards the eventfd against a producer writing to it while the
	// owner closes it (the number could be reused by another file): the low
	// bits count writers in progress, efdClosed is set once, at close.
	efdRef atomic.Int64

	exited chan struct{} // closed when the owner goroutine has finished

	// ---- owner only ----

	q       uring.Queue
	efd     int // eventfd for cross-goroutine wake-ups
	efdBuf  *[8]byte
	efdSlot uint32 // slot of the eventfd read; noSlot when not armed

	ops      opTable
	cqes     []uring.CQE
	plug     int // Plug nesting depth
	prepared int // SQEs prepared and not yet consumed by the kernel
	// deferred is the work Defer queued for the end of the plugged
	// section, in order; runDeferred empties it.
	deferred  [maxDeferred]Deferred
	ndeferred int
	stats     Stats

	// BH run queue: a FIFO of BHs taken from bhHead, each stamped with a
	// sequence number so that nested Polls run older BHs first.
	runqHead, runqTail *BH
	bhSeq              uint64

	timers  timerHeap
	expired []*Timer // due timers collected by runTimers, run from expiredPos
	// expiredPos is the next entry of expired to run; timerDepth counts
	// runTimers calls in progress (nested through a waiting callback).
	expiredPos, timerDepth int

	fdh     []*FDHandler // registered fd handlers
	fdReady []*FDHandler // fired, waiting for dispatch
	// fdRun is the batch runFDHandlers dispatches, from fdRunPos; fdDepth
	// counts runFDHandlers calls in progress (nested through a handler
	// that waits).
	fdRun             []*FDHandler
	fdRunPos, fdDepth int

	// adaptive polling
	pollMax, pollWindow time.Duration

	// Options.Batch: the owner thread's policy before setBatch, and
	// whether restoreSched has to put it back.
	oldPolicy uint32
	batchSet  bool

	stopping  bool // set by the stop BH; the top-level loop exits
	cancelAll bool // shutdown: new ops complete with ECANCELED at once
	stopBH    *BH  // scheduled by Stop
	attached  bool // started by Attach on a borrowed goroutine
	kickBH    *BH  // scheduled by Kick
	coMu      sync.Mutex
	coSet     map[*Co]struct{} // coroutines not yet returned (guarded by coMu)
	report    StopReport
	stopErr   error
	arena     *Arena
	fixed     fixedFiles // registered-file table (fixedfile.go)
}

// New creates a Context. It does not start the owner goroutine; call Start.
func New(opts Options) (*Context, error) {
	if opts.Pin && opts.CPU < 0 {
		return nil, &OpError{Op: "new context " + opts.Name + ": Pin without a CPU", Off: -1, Err: syscall.EINVAL}
	}
	for _, cpu := range opts.WorkerCPUs {
		if cpu < 0 || cpu >= cpuSetBits {
			return nil, &OpError{Op: "new context " + opts.Name + ": worker CPU " + itoa(cpu) + " out of range", Off: -1, Err: syscall.EINVAL}
		}
	}
	if !opts.Pin && opts.CPU > 0 {
		return nil, &OpError{Op: "new context " + opts.Name + ": CPU " + itoa(opts.CPU) + " without Pin (set Pin to pin the thread)", Off: -1, Err: syscall.EINVAL}
	}
	if opts.Entries <= 0 {
		opts.Entries = DefaultEntries
	}
	if opts.MaxSlots <= 0 {
		opts.MaxSlots = 8 * opts.Entries
	}
	if opts.Slots <= 0 {
		opts.Slots = min(4*opts.Entries, opts.MaxSlots)
	}
	if opts.MaxSlots < opts.Slots {
		opts.MaxSlots = opts.Slots
	}
	if opts.StopTimeout <= 0 {
		opts.StopTimeout = DefaultStopTimeout
	}
	if opts.ArenaSize == 0 {
		opts.ArenaSize = DefaultArenaSize
	}
	if opts.Name == "" {
		if opts.Main {
			opts.Name = "main"
		} else {
			opts.Name = "iothread"
		}
	}
	c := &Context{
		name:        opts.Name,
		main:        opts.Main,
		opts:        opts,
		bhHead:      padded[atomic.Pointer[BH]](),
		notifyMe:    padded[atomic.Int32](),
		notified:    padded[atomic.Bool](),
		waiters:     padded[atomic.Int32](),
		extDisabled: padded[atomic.Int32](),
		noBatch:     padded[atomic.Int32](),
		holder:      padded[atomic.Pointer[Co]](),
		exited:      make(chan struct{}),
		q:           opts.Queue,
		efd:         -1,
		efdBuf:      new([8]byte),
		efdSlot:     noSlot,
		cqes:        make([]uring.CQE, 128),
		pollMax:     opts.PollTime,
	}
	c.ops.init(opts.Slots, opts.MaxSlots)
	c.stopBH = c.NewBH(func() { c.stopping = true })
	c.kickBH = c.NewBH(func() {})
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		return nil, &OpError{Op: "eventfd", Off: -1, Err: err}
	}
	c.efd = fd
	if opts.ArenaSize > 0 {
		a, err := newArena(c, opts.ArenaSize)
		if err != nil {
			unix.Close(c.efd)
			return nil, err
		}
		c.arena = a
	}
	return c, nil
}

// Name returns Options.Name.
func (c *Context) Name() string { return c.name }

// IsMain reports whether c is a main Context.
func (c *Context) IsMain() bool { return c.main }

// Start starts the owner goroutine, locks it to its OS thread, pins it if
// Options.Pin asks for it, creates the ring (unless one was injected) and
// registers the arena. It returns once the loop runs, or the setup error.
func (c *Context) Start() error {
	if !c.state.CompareAndSwap(stateNew, stateStarting) {
		return ErrStarted
	}
	errc := make(chan error, 1)
	go c.ownerMain(errc)
	if err := <-errc; err != nil {
		<-c.exited
		return err
	}
	return nil
}

// ownerMain is the owner goroutine.
func (c *Context) ownerMain(errc chan<- error) {
	runtime.LockOSThread()
	pinned := false
	if err := c.setup(&pinned); err != nil {
		c.closeResources()
		if c.arena != nil {
			c.arena.unmap()
		}
		c.state.Store(stateStopped)
		close(c.exited)
		if !pinned {
			c.restoreSched()
			runtime.UnlockOSThread()
		}
		errc <- err
		return
	}
	register(c)
	c.state.Store(stateRunning)
	errc <- nil

	last := nanotime()
	for !c.stopping {
		c.poll(true, true)
		last = c.yieldOften(last)
	}
	c.finish()
	// A pinned thread ends with this goroutine (a locked goroutine that
	// exits takes its thread with it), so its affinity never leaks into
	// Go's thread pool; so does one whose io-wq workers were placed (they
	// live as long as the thread and keep their CPUs).
	if !pinned && len(c.opts.WorkerCPUs) == 0 {
		c.restoreSched()
		runtime.UnlockOSThread()
	}
}

// yieldEvery bounds how long the owner goroutine runs without passing
// through the Go scheduler (see yieldOften). It must stay under sysmon's
// 10ms: a busy loop's iterations are short, so the tick moves at least
// once between two of sysmon's looks, which are 10ms apart at the most.
const yieldEvery = 8 * time.Millisecond

// yieldOften calls runtime.Gosched when yieldEvery has passed since last
// (a nanotime reading) and returns the new reference time.
//
// The owner goroutine never blocks in Go: it waits in io_uring_enter, so
// the scheduler never switches it out and its P's schedule tick never
// moves. The runtime's sysmon treats a tick unchanged for 10ms as a
// goroutine that hogs its P: it preempts it (a signal), and when the
// owner is inside io_uring_enter at that moment it also takes the P away
// and hands it off, which counts as "work done" and makes sysmon go back
// to waking every 20us for the next millisecond and more. Under a steady
// stream of short waits (an NBD server at queue depth 32) that was a
// forced preemption every 10ms and thousands of sysmon wake-ups a second:
// about half of the server process's context switches. A voluntary
// Gosched moves the tick first; on a locked thread it costs a hand-off
// through another M (a few microseconds, a few context switches),
// 125 times a second at most (about 1% of an NBD server's CPU in perf).
func (c *Context) yieldOften(last int64) int64 {
	now := nanotime()
	if now-last < int64(yieldEvery) {
		return last
	}
	runtime.Gosched()
	return now
}

// finish is the owner's part of a stop, after its last loop iteration.
func (c *Context) finish() {
	c.flushDeferred()
	c.shutdown()

	unregister(c)
	c.tid.Store(0)
	c.state.Store(stateStopped)
	close(c.exited)
	kickMains() // a main Context may be waiting in Run for c
}

// Attach starts the Context on the calling goroutine instead of a
// goroutine of its own (Start): the caller is locked to its OS thread and
// becomes the owner, and runs the loop itself with Poll or WaitWhile —
// work scheduled from other goroutines (BHs, Run) waits until it does.
// It is for a host thread that wants its requests submitted and completed
// on its own thread, with no cross-thread wake-up per batch. The
// Context's Pin option must be off (a borrowed thread is not pinned).
// End it with Detach, on the same goroutine; Stop may not be used.
func (c *Context) Attach() error {
	if c.opts.Pin {
		return &OpError{Op: "attach: a borrowed thread is not pinned (Pin must be off)", Off: -1, Err: syscall.EINVAL}
	}
	if !c.state.CompareAndSwap(stateNew, stateStarting) {
		return ErrStarted
	}
	runtime.LockOSThread()
	pinned := false
	if err := c.setup(&pinned); err != nil {
		c.closeResources()
		if c.arena != nil {
			c.arena.unmap()
		}
		c.state.Store(stateStopped)
		close(c.exited)
		c.restoreSched()
		runtime.UnlockOSThread()
		return err
	}
	c.attached = true
	register(c)
	c.state.Store(stateRunning)
	return nil
}

// Detach stops a Context that Attach started, on its owner: it does what
// Stop does (runs pending work, cancels what is left, closes the ring)
// and unlocks the goroutine from its thread.
func (c *Context) Detach() (StopReport, error) {
	if !c.attached {
		invariants.Failf("aio: Detach of Context %s that Attach did not start", c.name)
	}
	if !c.InContext() {
		invariants.Failf("aio: Detach of Context %s from another goroutine than its owner", c.name)
	}
	if c.state.Load() == stateStopped {
		return c.report, c.stopErr
	}
	c.stopping = true
	c.finish()
	c.restoreSched()
	runtime.UnlockOSThread()
	return c.report, c.stopErr
}

func (c *Context) setup(pinned *bool) error {
	if c.opts.Batch {
		if err := c.setBatch(); err != nil {
			return err
		}
	}
	if len(c.opts.WorkerCPUs) > 0 {
		// The kernel reads only as many mask bits as it has CPUs and takes
		// an empty mask without complaint: refuse a CPU this thread may
		// not run on (before the pin narrows its mask) by name.
		var may unix.CPUSet
		if err := unix.SchedGetaffinity(0, &may); err != nil {
			return &OpError{Op: "sched_getaffinity", Off: -1, Err: err}
		}
		for _, cpu := range c.opts.WorkerCPUs {
			if !may.IsSet(cpu) {
				return &OpError{Op: "io-wq workers on CPUs " + cpuList(c.opts.WorkerCPUs) + ": CPU " + itoa(cpu) + " is not one this process may run on", Off: -1, Err: syscall.EINVAL}
			}
		}
	}
	if c.opts.Pin {
		var set unix.CPUSet
		set.Set(c.opts.CPU)
		if err := unix.SchedSetaffinity(0, &set); err != nil {
			return &OpError{Op: "pin to cpu " + itoa(c.opts.CPU), Off: -1, Err: err}
		}
		*pinned = true
	}
	c.tid.Store(int32(unix.Gettid()))
	if c.q == nil {
		// Created here, on the locked owner thread: a SINGLE_ISSUER ring
		// binds to the thread of its first enter (the eventfd arm below),
		// and registrations must come from that thread too.
		q, err := newKernelRing(c.opts.Entries)
		if err != nil {
			return &OpError{Op: "ring setup", Off: -1, Err: err}
		}
		c.q = q
	}
	if len(c.opts.WorkerCPUs) > 0 {
		if err := c.placeWorkers(); err != nil {
			return err
		}
	}
	if c.arena != nil {
		c.arena.register(c.q)
	}
	c.armEventfd()
	c.submitPending()
	return nil
}

// cpuSetBits is how many CPUs a unix.CPUSet holds.
const cpuSetBits = len(unix.CPUSet{}) * 64

// cpuList formats CPUs as "[0 2 3]".
func cpuList(cpus []int) string {
	b := []byte{'['}
	for i, cpu := range cpus {
		if i > 0 {
			b = append(b, ' ')
		}
		b = append(b, itoa(cpu)...)
	}
	return string(append(b, ']'))
}

// workerAffinity is implemented by the kernel ring (uring.Ring).
type workerAffinity interface {
	SetWorkerAffinity(set *unix.CPUSet) error
}

// placeWorkers puts the io-wq workers of the owner thread's ring on
// Options.WorkerCPUs; see that option and docs/design/fast-devices.md §"Where io-wq workers run".
func (c *Context) placeWorkers() error {
	var set unix.CPUSet
	for _, cpu := range c.opts.WorkerCPUs {
		set.Set(cpu)
	}
	r, ok := c.q.(workerAffinity)
	if !ok {
		return nil // a test queue: no kernel workers
	}
	if err := r.SetWorkerAffinity(&set); err != nil {
		return &OpError{Op: "io-wq workers on CPUs " + cpuList(c.opts.WorkerCPUs), Off: -1, Err: err}
	}
	c.stats.WorkersPlaced = true
	return nil
}

// closeResources releases what New and setup acquired.
func (c *Context) closeResources() {
	c.dropFixedFiles()
	if c.q != nil {
		if err := c.q.Close(); err != nil && c.stopErr == nil {
			c.stopErr = &OpError{Op: "ring close", Off: -1, Err: err}
		}
	}
	c.closeEventfd()
}

const efdClosed = int64(1) << 62

// closeEventfd closes the eventfd once no producer is writing to it; later
// producers see efdClosed and skip the write.
func (c *Context) closeEventfd() {
	if c.efd < 0 || c.efdRef.Or(efdClosed)&efdClosed != 0 {
		return
	}
	for c.efdRef.Load() != efdClosed {
		runtime.Gosched() // a producer is inside its write(2)
	}
	unix.Close(c.efd)
}

// InContext reports whether the caller may touch c's owner-only state: it is
// c's owner goroutine while that holds the run token, or the coroutine that
// holds it. Both run on the owner's locked OS thread (a coroutine gets the
// thread donated while it runs, and the owner is parked meanwhile), and a
// locked thread runs no other goroutine, so one gettid system call decides;
// hot paths check it only under invariants.
func (c *Context) InContext() bool {
	tid := c.tid.Load()
	return tid != 0 && tid == int32(unix.Gettid())
}

// assertOwner panics under invariants when the caller is not in c.
func (c *Context) assertOwner(what string) {
	if invariants.Enabled && !c.InContext() {
		invariants.Failf("aio: %s on Context %q outside its owner", what, c.name)
	}
}

// registry maps running owner threads to their Contexts, so that Run and
// WaitWhile can tell a main Context's owner from an IOThread's. It is
// copy-on-write: lookups are one atomic load.
var registry struct {
	mu   sync.Mutex
	list atomic.Pointer[[]*Context]
}

func register(c *Context) {
	registry.mu.Lock()
	defer registry.mu.Unlock()
	var next []*Context
	if old := registry.list.Load(); old != nil {
		next = append(next, *old...)
	}
	next = append(next, c)
	registry.list.Store(&next)
}

func unregister(c *Context) {
	registry.mu.Lock()
	defer registry.mu.Unlock()
	old := registry.list.Load()
	if old == nil {
		return
	}
	var next []*Context
	for _, x := range *old {
		if x != c {
			next = append(next, x)
		}
	}
	registry.list.Store(&next)
}

// callerContext returns the running Context whose owner thread is the
// calling thread and which currently holds its own token, or nil.
// kickMains kicks every running main Context.
func kickMains() {
	if l := registry.list.Load(); l != nil {
		for _, m := range *l {
			if m.main {
				m.Kick()
			}
		}
	}
}

// CallerContext returns the running Context whose owner thread is the
// calling thread — its owner goroutine or a coroutine holding its run
// token — or nil for any other goroutine. It lets a library refuse a
// blocking wait that would stall that Context (for example a synchronous
// call from one IOThread to another, which can deadlock). One gettid system
// call and a scan of the running Contexts: control paths only.
func CallerContext() *Context {
	l := registry.list.Load()
	if l == nil {
		return nil
	}
	tid := int32(unix.Gettid())
	for _, c := range *l {
		if c.tid.Load() == tid {
			return c
		}
	}
	return nil
}

func callerContext() *Context {
	l := registry.list.Load()
	if l == nil {
		return nil
	}
	tid := int32(unix.Gettid())
	for _, c := range *l {
		if c.tid.Load() == tid && c.holder.Load() == nil {
			return c
		}
	}
	return nil
}

func itoa(i int) string {
	var b [20]byte
	n := len(b)
	neg := i < 0
	if neg {
		i = -i
	}
	for {
		n--
		b[n] = byte('0' + i%10)
		i /= 10
		if i == 0 {
			break
		}
	}
	if neg {
		n--
		b[n] = '-'
	}
	return string(b[n:])
}
