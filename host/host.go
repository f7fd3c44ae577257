package host

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
	"github.com/ringblk/ringblk/drivers/raw"
	"github.com/ringblk/ringblk/plugin/contract"
)

// The API's types are the contract's, so that an embedder and a plugin
// host program against the same names.
type (
	Options         = contract.HostOptions
	OpenOptions     = contract.OpenOptions
	CreateOptions   = contract.CreateOptions
	QueueOptions    = contract.QueueOptions
	Completion      = contract.Completion
	Geometry        = contract.Geometry
	Stats           = contract.Stats
	OpStats         = contract.OpStats
	Op              = contract.Op
	Flags           = contract.Flags
	ErrorPolicy     = contract.ErrorPolicy
	IOStatus        = contract.IOStatus
	ThrottleLimits  = contract.ThrottleLimits
	Snapshot        = contract.Snapshot
	BlockStatus     = contract.BlockStatus
	DeviceCallbacks = contract.DeviceCallbacks
)

// Flags, policies and errors, as in the contract.
const (
	FUA      = contract.FUA
	MayUnmap = contract.MayUnmap

	ErrorReport        = contract.ErrorReport
	ErrorIgnore        = contract.ErrorIgnore
	ErrorStop          = contract.ErrorStop
	ErrorStopOnNoSpace = contract.ErrorStopOnNoSpace
)

var (
	ErrQueueFull   = contract.ErrQueueFull
	ErrClosed      = contract.ErrClosed
	ErrUnsupported = contract.ErrUnsupported
)

// Host is one ringblk instance: a main Context for control work, the I/O
// Contexts, a block graph and the devices open on it. It implements
// contract.Host.
type Host struct {
	main   *aio.Context
	g      *block.Graph
	ctxs   []*aio.Context
	pinned []bool
	// affinity is the calling thread's CPU set at New: pinned Contexts get
	// it back before they stop, so their threads leave no mask behind.
	affinity    unix.CPUSet
	rr          atomic.Uint32
	drainAll    atomic.Int32 // DrainAllBegin sections in force
	beginning   atomic.Int32 // DrainAllBegin calls still draining
	pollTime    time.Duration
	ringEntries int
	drives      sync.WaitGroup // Drive calls running

	closing chan struct{} // closed when Close has finished
	mu      sync.Mutex
	devices []*Device
	groups  map[string]*block.ThrottleGroup
	names   map[string]int
	loops   []*aio.Context // the running Loops' Contexts (Drive)
	closed  bool
	calls   int // calls admitted by enter and not yet left
}

var _ contract.Host = (*Host)(nil)

// MaxRingEntries is the largest Options.RingEntries: io_uring's
// IORING_MAX_ENTRIES.
const MaxRingEntries = 32768

// MaxContexts returns the largest Options.Contexts: 8 per CPU the process
// may run on, and at least 64. Each Context is a locked OS thread with
// its own ring and op slots (about 230 KiB at the default ring size,
// 27 MiB at MaxRingEntries), so more Contexts than that only compete for
// the CPUs, and a huge count took the machine's memory (and Go's thread
// limit) before anything refused it.
func MaxContexts() int { return max(64, 8*runtime.NumCPU()) }

// New starts a host: the main Context and opts.Contexts I/O Contexts,
// each pinned to its CPU set if one is given.
func New(opts Options) (h *Host, err error) {
	n := opts.Contexts
	if n < 0 || n > MaxContexts() {
		return nil, fmt.Errorf("ringblk: Contexts %d outside 0…%d (8 per CPU, at least 64)", n, MaxContexts())
	}
	if n == 0 {
		n = 1
	}
	if len(opts.CPUSets) > n {
		return nil, fmt.Errorf("ringblk: %d CPU sets for %d Contexts", len(opts.CPUSets), n)
	}
	sets := make([]unix.CPUSet, n)
	for i, cpus := range opts.CPUSets {
		for _, c := range cpus {
			if c < 0 || c >= len(sets[i])*64 {
				return nil, fmt.Errorf("ringblk: Context %d: CPU %d out of range", i, c)
			}
			sets[i].Set(c)
		}
	}
	if opts.PollTime < 0 {
		return nil, fmt.Errorf("ringblk: negative PollTime %v", opts.PollTime)
	}
	// Each Context preallocates op slots in proportion to its ring before
	// the kernel sees the size (style B5: limits are errors).
	if opts.RingEntries < 0 || opts.RingEntries > MaxRingEntries {
		return nil, fmt.Errorf("ringblk: RingEntries %d outside 0…%d (io_uring's limit)", opts.RingEntries, MaxRingEntries)
	}
	h = &Host{groups: map[string]*block.ThrottleGroup{}, names: map[string]int{}, pollTime: opts.PollTime,
		ringEntries: opts.RingEntries, closing: make(chan struct{})}
	if err := unix.SchedGetaffinity(0, &h.affinity); err != nil {
		return nil, fmt.Errorf("ringblk: sched_getaffinity: %w", err)
	}
	h.main, err = aio.New(aio.Options{Name: "ringblk-main", Main: true, CPU: aio.NoCPU, Entries: 64, ArenaSize: -1})
	if err != nil {
		return nil, fmt.Errorf("ringblk: main Context: %w", err)
	}
	if err := h.main.Start(); err != nil {
		return nil, fmt.Errorf("ringblk: main Context: %w", err)
	}
	h.g = block.NewGraph(h.main)
	// The error returns below set the named result h to nil before this
	// runs: stop what was started through a copy.
	started := h
	defer func() {
		if err != nil {
			started.stopContexts()
		}
	}()
	for i := 0; i < n; i++ {
		ctx, err := aio.New(aio.Options{Name: fmt.Sprintf("ringblk-io%d", i), CPU: aio.NoCPU, Entries: opts.RingEntries, ArenaSize: -1, PollTime: opts.PollTime, WorkerCPUs: opts.WorkerCPUs})
		if err != nil {
			return nil, fmt.Errorf("ringblk: Context %d: %w", i, err)
		}
		if err := ctx.Start(); err != nil {
			return nil, fmt.Errorf("ringblk: Context %d: %w", i, err)
		}
		h.ctxs = append(h.ctxs, ctx)
		h.pinned = append(h.pinned, false)
		if i < len(opts.CPUSets) && len(opts.CPUSets[i]) > 0 {
			var perr error
			set := sets[i]
			ctx.Run(func() { perr = unix.SchedSetaffinity(0, &set) })
			if perr != nil {
				return nil, fmt.Errorf("ringblk: Context %d: pin to CPUs %v: %w", i, opts.CPUSets[i], perr)
			}
			h.pinned[i] = true
		}
	}
	return h, nil
}

// Contexts returns the number of I/O Contexts.
func (h *Host) Contexts() int { return len(h.ctxs) }

// Context returns I/O Context i (for embedders that drive aio directly).
func (h *Host) Context(i int) *aio.Context { return h.ctxs[i] }

// Graph returns the host's block graph (for embedders that build their
// own nodes).
func (h *Host) Graph() *block.Graph { return h.g }

// CPUSet returns the CPUs I/O Context i may run on, read from its thread.
func (h *Host) CPUSet(i int) ([]int, error) {
	if !h.enter() {
		return nil, ErrClosed
	}
	defer h.leave()
	if _, err := h.ctxIndex(i); err != nil {
		return nil, err
	}
	var set unix.CPUSet
	var err error
	h.ctxs[i].Run(func() { err = unix.SchedGetaffinity(0, &set) })
	if err != nil {
		return nil, err
	}
	var cpus []int
	for c := 0; c < len(set)*64; c++ {
		if set.IsSet(c) {
			cpus = append(cpus, c)
		}
	}
	return cpus, nil
}

func (h *Host) ctxIndex(i int) (int, error) {
	if i < 0 || i >= len(h.ctxs) {
		return 0, fmt.Errorf("ringblk: no I/O Context %d (the host has %d)", i, len(h.ctxs))
	}
	return i, nil
}

// DrainAllBegin starts a drained section over everything in the graph:
// it returns when no request is in flight on any node; requests submitted
// meanwhile wait in their queues until DrainAllEnd. Sections nest.
func (h *Host) DrainAllBegin() {
	// Counted once in force, as Device.DrainedBegin: Close waits for a
	// begin under way, then ends its section with the others.
	h.beginning.Add(1)
	defer h.beginning.Add(-1)
	if h.isClosed() {
		return
	}
	h.g.DrainAllBegin()
	h.drainAll.Add(1)
}

// DrainAllEnd ends a section DrainAllBegin started (an unmatched call does
// nothing).
func (h *Host) DrainAllEnd() {
	for {
		v := h.drainAll.Load()
		if v <= 0 {
			return
		}
		if h.drainAll.CompareAndSwap(v, v-1) {
			h.g.DrainAllEnd()
			return
		}
	}
}

// Close closes every open device (draining each first), then stops the
// I/O Contexts and the main Context. Every error is returned, joined.
// Closing twice returns nil (once the first Close is done).
func (h *Host) Close() error {
	if h.inContext() {
		return ErrInContext
	}
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		<-h.closing // a concurrent Close: return once it is done
		return nil
	}
	h.closed = true
	devs := append([]*Device(nil), h.devices...)
	h.mu.Unlock()
	defer close(h.closing)
	// Requests parked by an open section would never complete.
	for h.beginning.Load() > 0 {
		time.Sleep(50 * time.Microsecond)
	}
	for h.drainAll.Load() > 0 {
		h.DrainAllEnd()
	}
	var errs []error
	for _, d := range devs {
		if err := d.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	// Loops end when their fn returns; their queues are closed now.
	h.drives.Wait()
	// Calls under way end on their own now that the devices are closed
	// (an open finds the host closed and closes what it opened).
	for {
		h.mu.Lock()
		n := h.calls
		h.mu.Unlock()
		if n == 0 {
			break
		}
		time.Sleep(50 * time.Microsecond)
	}
	errs = append(errs, h.stopContexts())
	return errors.Join(errs...)
}

func (h *Host) stopContexts() error {
	var errs []error
	for i, ctx := range h.ctxs {
		if h.pinned[i] {
			ctx.Run(func() { _ = unix.SchedSetaffinity(0, &h.affinity) })
		}
		if _, err := ctx.Stop(); err != nil {
			errs = append(errs, fmt.Errorf("ringblk: stop Context %d: %w", i, err))
		}
		if err := h.g.ForgetContext(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if _, err := h.main.Stop(); err != nil {
		errs = append(errs, fmt.Errorf("ringblk: stop main Context: %w", err))
	}
	return errors.Join(errs...)
}

// Create creates an image file: raw (a sparse file of Size bytes, or
// preallocated) or qcow2 (optionally over a backing file). An existing
// image another process holds is refused untouched (the file is locked
// before it is truncated).
func (h *Host) Create(path string, o CreateOptions) error {
	if !h.enter() {
		return ErrClosed
	}
	defer h.leave()
	switch o.Format {
	case "raw":
		if o.BackingFile != "" {
			return fmt.Errorf("ringblk: create %s: a raw image cannot have a backing file", path)
		}
		if o.Size <= 0 {
			return fmt.Errorf("ringblk: create %s: a raw image needs a size", path)
		}
		pre := raw.PreallocOff
		if o.Preallocation != "" {
			p, ok := raw.ParsePrealloc(o.Preallocation)
			if !ok {
				return fmt.Errorf("ringblk: create %s: preallocation %q (off, falloc, full)", path, o.Preallocation)
			}
			pre = p
		}
		return raw.Create(path, o.Size, pre)
	case "qcow2":
		co := format.CreateOptions{ClusterSize: o.ClusterSize, BackingFile: o.BackingFile, BackingFormat: o.BackingFormat}
		if o.Preallocation != "" {
			p, ok := format.ParsePrealloc(o.Preallocation)
			if !ok {
				return fmt.Errorf("ringblk: create %s: preallocation %q (off, metadata, falloc, full)", path, o.Preallocation)
			}
			co.Preallocation = p
		}
		if co.BackingFile != "" && co.BackingFormat == "" {
			return fmt.Errorf("ringblk: create %s: a backing file needs its format (raw or qcow2)", path)
		}
		size := o.Size
		if size == 0 && co.BackingFile != "" {
			d, err := h.OpenDevice(resolve(path, co.BackingFile), OpenOptions{Format: co.BackingFormat, ForceShare: true, Name: "create-backing"})
			if err != nil {
				return fmt.Errorf("ringblk: create %s: backing file: %w", path, err)
			}
			g, gerr := d.Geometry()
			if err := errors.Join(gerr, d.Close()); err != nil {
				return fmt.Errorf("ringblk: create %s: backing file: %w", path, err)
			}
			size = g.Size
		}
		if size <= 0 {
			return fmt.Errorf("ringblk: create %s: a qcow2 image needs a size", path)
		}
		// A file this call creates is removed again if the image cannot
		// be made (an option qcow2.Create refuses, say): a failed create
		// leaves nothing behind, as qemu-img's. An existing one is kept.
		created := true
		f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY|syscall.O_CLOEXEC, 0o644)
		if errors.Is(err, os.ErrExist) {
			created = false
			f, err = os.OpenFile(path, os.O_WRONLY|syscall.O_CLOEXEC, 0)
		}
		if err != nil {
			return err
		}
		f.Close()
		file, err := raw.NewNode(h.g, path, raw.Options{}, block.Options{Name: h.uniqueName("create")})
		if err == nil {
			err = errors.Join(qcow2.Create(file, size, co), file.Unref())
		}
		if err != nil && created {
			os.Remove(path)
		}
		return err
	case "":
		return fmt.Errorf("ringblk: create %s: no format (raw or qcow2)", path)
	default:
		return fmt.Errorf("ringblk: create %s: unknown format %q (raw or qcow2)", path, o.Format)
	}
}

// inContext reports whether the caller runs on one of the host's Contexts
// (a callback), where waiting for them would deadlock.
func (h *Host) inContext() bool {
	c := aio.CallerContext() // one gettid, whatever the number of Contexts
	if c == nil {
		return false
	}
	if c == h.main {
		return true
	}
	for _, x := range h.ctxs {
		if x == c {
			return true
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, x := range h.loops {
		if x == c {
			return true
		}
	}
	return false
}

func (h *Host) addLoop(c *aio.Context) {
	h.mu.Lock()
	h.loops = append(h.loops, c)
	h.mu.Unlock()
}

func (h *Host) removeLoop(c *aio.Context) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for i, x := range h.loops {
		if x == c {
			h.loops = append(h.loops[:i], h.loops[i+1:]...)
			return
		}
	}
}

// enter admits a call that uses the host's Contexts (an open, a create,
// a device's control call), or refuses it once Close has begun. Close
// waits for the admitted ones before it stops the Contexts: a call under
// way when they stopped ran its next control step on a stopped main
// Context (an open racing a close: 'Run on Context ringblk-main that is
// not running').
func (h *Host) enter() bool {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return false
	}
	h.calls++
	h.mu.Unlock()
	if f := testHookEnter.Load(); f != nil {
		(*f)()
	}
	return true
}

// leave ends a call enter admitted.
func (h *Host) leave() {
	h.mu.Lock()
	h.calls--
	h.mu.Unlock()
}

// testHookEnter, if set, runs in every call enter admits (tests hold a
// call there).
var testHookEnter atomic.Pointer[func()]

func (h *Host) isClosed() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.closed
}

// uniqueName returns base, or base-N if a node of that name was made.
func (h *Host) uniqueName(base string) string {
	h.mu.Lock()
	defer h.mu.Unlock()
	k := h.names[base]
	h.names[base] = k + 1
	// A free name is used as given, also after an earlier holder closed
	// (a QMP client reopening node-name 'x' expects 'x').
	if h.g.NodeByName(base) == nil {
		return base
	}
	for {
		k++
		name := fmt.Sprintf("%s-%d", base, k)
		if h.g.NodeByName(name) == nil {
			h.names[base] = k + 1
			return name
		}
	}
}

func (h *Host) removeDevice(d *Device) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for i, x := range h.devices {
		if x == d {
			h.devices = append(h.devices[:i], h.devices[i+1:]...)
			return
		}
	}
}
