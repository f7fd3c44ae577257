package contract

import (
	"errors"
	"io"
	"time"
)

// HostOptions configure a Host.
type HostOptions struct {
	// Contexts is the number of I/O Contexts (IOThreads: one event loop
	// and one io_uring ring each); 0 means 1. At most 8 per CPU (and at
	// least 64 are allowed); a negative or larger count is refused. A
	// main Context for control work (graph changes, drains) is created
	// beside them.
	Contexts int
	// CPUSets[i] lists the CPUs I/O Context i may run on (its thread's
	// affinity). A missing or empty entry leaves that Context unpinned;
	// the zero value pins nothing.
	CPUSets [][]int
	// WorkerCPUs lists the CPUs on which the kernel's io-wq workers of
	// every I/O Context run: the threads that carry out a request the
	// kernel cannot issue without blocking (zram and other devices
	// without REQ_NOWAIT, buffered reads on tmpfs, some allocating
	// writes). Empty (the default) leaves them on their Context's CPUs,
	// as the kernel does: best at queue depth 1, but a pinned Context and
	// its workers then share one CPU and take turns at depth. A worker
	// keeps the CPUs of its Context's set when the two lists overlap
	// (Linux 6.2+), so list CPUs outside the sets (housekeeping CPUs).
	// Needs Linux 5.14; New fails on a CPU the process may not run on or
	// when the kernel refuses the list.
	WorkerCPUs []int
	// RingEntries is each I/O Context's submission queue size (default
	// 256); at most 32768 (io_uring's limit), checked before anything in
	// proportion to it is allocated.
	RingEntries int
	// PollTime bounds busy-polling before a sleep: each I/O Context
	// spins on its ring for up to this long (adaptively, as QEMU's
	// poll-max-ns) and Queue.Wait spins on its completions as long before
	// it blocks. Zero, the default, never spins: right when cores are
	// shared; set it (e.g. 20–50µs) when they are dedicated.
	PollTime time.Duration
}

// Host is one ringblk instance: Contexts, a block graph and the devices
// opened on it. Its methods may be called from any goroutine (not from a
// completion callback).
type Host interface {
	// Open opens an image as a device.
	Open(path string, o OpenOptions) (Device, error)
	// Create creates an image file (raw or qcow2).
	Create(path string, o CreateOptions) error
	// Contexts returns the number of I/O Contexts.
	Contexts() int
	// CPUSet returns the CPUs I/O Context i may run on, read back from
	// its thread.
	CPUSet(i int) ([]int, error)
	// DrainAllBegin starts a drained section over every device and node:
	// it returns when no request is in flight anywhere; requests
	// submitted meanwhile wait until DrainAllEnd.
	DrainAllBegin()
	DrainAllEnd()
	// RunLoop runs fn on the calling goroutine, locked to its OS
	// thread, as the owner of a new I/O Context (a Loop): the polled
	// completion mode. Requests of the Loop's queues are submitted and
	// completed on that thread inside the queues' Wait, with no wake-up
	// between threads. Work other goroutines have for the Loop (a drain,
	// a Close) waits until fn polls again (Wait or Loop.Poll) or returns.
	// When fn returns, the Loop's open queues are closed and the Context
	// stops; Close waits for running RunLoop calls.
	RunLoop(fn func(Loop) error) error
	// Close closes every device still open, then stops the Contexts. It
	// returns every error met, including metadata write-back on close.
	Close() error
}

// Loop is an I/O Context run by a host goroutine (Host.RunLoop). Use it
// and its queues from that goroutine only.
type Loop interface {
	// NewQueue creates a queue of d on the Loop. Its Wait runs the Loop
	// (Next never does); its Context is -1.
	NewQueue(d Device, o QueueOptions) (Queue, error)
	// Poll runs one iteration of the Loop (blocking until something
	// happened if block is set), for a host waiting on several queues.
	Poll(block bool) bool
}

// OpenOptions say how to open an image.
type OpenOptions struct {
	// Format is "raw", "qcow2" or "null"; "" probes the named file
	// (never a backing file: overlays must record their backing format).
	Format   string
	ReadOnly bool
	// Cache is QEMU's cache mode of the image's file: "writeback" (the
	// default), "writethrough" (O_DSYNC), "none" (O_DIRECT) or "unsafe"
	// (writeback, and flushes complete at once without reaching the
	// image: for scratch disks).
	Cache string
	// Locking is "auto" (default), "on" or "off": QEMU's image locks.
	Locking string
	// ShareRW lets other processes write the image (QEMU's share-rw=on).
	ShareRW bool
	// ForceShare opens read-only without claiming the image (qemu-img
	// -U); implies ReadOnly.
	ForceShare bool
	// NoBacking opens a qcow2 image without its backing chain.
	NoBacking bool
	// FileNodeName names the top qcow2 image's file node in the graph
	// ("": the device's name + "-file").
	FileNodeName string
	// Discard is "ignore" (default) or "unmap".
	Discard string
	// Size is the size of a "null" image.
	Size int64
	// Name names the device ("" picks one from the path).
	Name string
	// ReadError and WriteError are the error policies (QEMU's rerror and
	// werror); the zero value reports errors.
	ReadError, WriteError ErrorPolicy
	// WriteThrough disables the device's write cache from the start:
	// every write is FUA (SetWriteCache toggles it at run time).
	WriteThrough bool
	// Callbacks are the device's callbacks (all optional).
	Callbacks DeviceCallbacks
}

// CreateOptions say how to create an image.
type CreateOptions struct {
	Format string // "raw" or "qcow2"
	Size   int64  // bytes; for an overlay 0 takes the backing file's size
	// BackingFile and BackingFormat ("raw" or "qcow2") give a qcow2
	// image a backing file; a relative name resolves against the image's
	// directory.
	BackingFile   string
	BackingFormat string
	ClusterSize   int64 // qcow2; 0: 64 KiB
	// Preallocation: "off" (default), "metadata" (qcow2), "falloc", "full".
	Preallocation string
}

// DeviceCallbacks are what a device model registers (QEMU's BlockDevOps).
// They run on the host's main Context and must not block or call back
// into the host API; nil fields are skipped.
type DeviceCallbacks struct {
	// DrainedBegin: a drained section began; stop taking guest requests.
	DrainedBegin func()
	// DrainedPoll reports device-side work still running. While it
	// reports some, the drain asks again at least every millisecond, so
	// work ending on the host's own goroutines ends the drain too.
	DrainedPoll func() bool
	// DrainedEnd: the section ended; resume.
	DrainedEnd func()
	// Resized reports the device's new size after Resize.
	Resized func(size int64)
	// Stopped reports that a request failed under a stop policy: the
	// device is paused until Resume (the failed request is held, new
	// ones are parked unissued).
	Stopped func(op Op, err error)
}

// Op names a request's operation.
type Op uint8

const (
	OpRead Op = iota + 1
	OpWrite
	OpFlush
	OpDiscard
	OpWriteZeroes
)

var opNames = [...]string{OpRead: "read", OpWrite: "write", OpFlush: "flush", OpDiscard: "discard", OpWriteZeroes: "write-zeroes"}

func (o Op) String() string {
	if int(o) < len(opNames) && opNames[o] != "" {
		return opNames[o]
	}
	return "op?"
}

// Flags modify a request.
type Flags uint16

const (
	// FUA: the write is durable when it completes.
	FUA Flags = 1 << iota
	// MayUnmap: write-zeroes may deallocate the range.
	MayUnmap
)

// ErrorPolicy is what a device does when a request fails (QEMU's
// rerror/werror).
type ErrorPolicy uint8

const (
	// ErrorReport completes the request with its error (the default).
	ErrorReport ErrorPolicy = iota
	// ErrorIgnore completes the request as if it had succeeded.
	ErrorIgnore
	// ErrorStop pauses the device as QEMU stops the VM on an I/O error:
	// the failed request is held, requests submitted afterwards are
	// parked before the driver, the I/O status is set and
	// Callbacks.Stopped called; Resume retries the held requests, then
	// issues the parked ones, each in order. Requests already in flight
	// at the stop complete normally.
	ErrorStop
	// ErrorStopOnNoSpace stops on ENOSPC and reports any other error.
	ErrorStopOnNoSpace
)

// IOStatus is a device's I/O status (QEMU's iostatus).
type IOStatus uint8

const (
	IOStatusOK      IOStatus = iota
	IOStatusFailed           // stopped on an error other than ENOSPC
	IOStatusNoSpace          // stopped on ENOSPC
)

func (s IOStatus) String() string {
	switch s {
	case IOStatusOK:
		return "ok"
	case IOStatusFailed:
		return "failed"
	case IOStatusNoSpace:
		return "nospace"
	}
	return "unknown"
}

// Device is an open image: the handle a device model or export does I/O
// through (QEMU's BlockBackend). Its methods may be called from any
// goroutine, except where a method says otherwise; none may be called from
// a completion callback.
type Device interface {
	// Name is the device's name (unique in its host).
	Name() string
	// io.ReaderAt and io.WriterAt: synchronous I/O, safe from any
	// goroutine (they allocate; use a Queue for the fast path).
	io.ReaderAt
	io.WriterAt
	Flush() error
	Discard(off, length int64) error
	WriteZeroes(off, length int64, flags Flags) error

	// NewQueue creates an asynchronous submission queue.
	NewQueue(QueueOptions) (Queue, error)

	// Geometry reports the device's size and limits.
	Geometry() (Geometry, error)
	// Resize sets the image's size (then Callbacks.Resized runs).
	Resize(size int64) error
	// BlockStatus describes the range at off: what it holds, and how
	// many bytes from off share that.
	BlockStatus(off, length int64) (BlockStatus, int64, error)

	// DrainedBegin starts a drained section of the device's node:
	// requests in flight complete, new ones wait. Sections nest.
	DrainedBegin()
	DrainedEnd()
	// SubtreeDrainedBegin drains the node and everything below it (the
	// backing chain and files).
	SubtreeDrainedBegin()
	SubtreeDrainedEnd()
	// SetContext makes I/O Context i the device's home Context (its
	// node's control and metadata work; -1: the main Context; other
	// negative values are refused). Requests
	// run on the submitting queue's Context whatever the home is.
	SetContext(i int) error

	// Stats returns the device's I/O accounting, from any goroutine,
	// without stopping I/O.
	Stats() Stats
	// SetErrorPolicy changes the read and write error policies.
	SetErrorPolicy(read, write ErrorPolicy) error
	// IOStatus returns the I/O status and the error that set it.
	IOStatus() (IOStatus, error)
	// ResetIOStatus sets the status back to OK (held requests stay held,
	// the device stays paused).
	ResetIOStatus()
	// Paused reports whether a stop policy paused the device.
	Paused() bool
	// Resume resets the status, retries the requests a stop policy held
	// and then issues the requests parked meanwhile.
	Resume()

	// SetThrottle sets the device's I/O limits. A non-empty group makes
	// the device share the limits with every device of that group (the
	// group's limits become these); zero limits with group "" remove
	// throttling.
	SetThrottle(group string, l ThrottleLimits) error
	// SetWriteCache enables or disables the write cache: disabled, every
	// write is FUA (QEMU's blk_set_enable_write_cache).
	SetWriteCache(enabled bool)
	WriteCache() bool

	// Internal snapshots (qcow2).
	Snapshots() ([]Snapshot, error)
	CreateSnapshot(name string) error
	ApplySnapshot(name string) error
	DeleteSnapshot(name string) error
	// LiveSnapshot creates a qcow2 overlay at path over the device's
	// image and, in a drained section, makes the image read-only and
	// swaps the overlay in as the device's image (an external snapshot).
	LiveSnapshot(path string) error

	// Inactivate hands the image over (migration source): writes fail
	// until Activate; caches are written back.
	Inactivate() error
	Activate() error

	// Close drains the device, closes its queues, flushes the image
	// (except under cache=unsafe) and closes it, and returns every error
	// (a failed flush or metadata write-back included).
	Close() error
}

// QueueOptions configure a Queue.
type QueueOptions struct {
	// Depth is the most requests in the queue at once (submitted and not
	// yet taken back); default 128.
	Depth int
	// Context is the I/O Context whose ring runs the queue's requests;
	// -1 picks the Contexts round robin (other negative values are
	// refused).
	Context int
	// OnComplete, if set, is called with each completion on the queue's
	// Context (it must not block or submit synchronously); otherwise
	// completions go to Next and the queue's eventfd.
	OnComplete func(Completion)
}

// Queue submits requests from any goroutine of the host without
// allocating and hands back their completions. Buffers belong to ringblk
// from submission until the completion is delivered.
type Queue interface {
	Read(buf []byte, off int64, userData uint64) error
	Readv(iov [][]byte, off int64, userData uint64) error
	Write(buf []byte, off int64, flags Flags, userData uint64) error
	Writev(iov [][]byte, off int64, flags Flags, userData uint64) error
	Flush(userData uint64) error
	Discard(off, length int64, userData uint64) error
	WriteZeroes(off, length int64, flags Flags, userData uint64) error

	// Plug and Unplug bracket a burst: submissions between them go to the
	// kernel together at the outermost Unplug.
	Plug()
	Unplug()

	// Next returns the next completed request without blocking. Finding
	// none, it arms the eventfd.
	Next() (Completion, bool)
	// EventFD is an eventfd (non-blocking) that becomes readable when a
	// completion arrives while it is armed — after Next found none, or
	// while Wait sleeps — once however many follow (io_uring's CQ
	// eventfd, coalesced). So: poll it, read it to reset it, then call
	// Next until it returns false, and only then poll again. A Loop's
	// queue signals it only for a Wait from another goroutine.
	EventFD() int
	// Wait blocks until completions are ready for Next or timeout passes
	// (< 0: no limit), resetting the eventfd on the way; true when they
	// are ready. While the queue's Context is working it spins briefly
	// before it sleeps; on a Loop's queue, from the Loop's goroutine, it
	// runs the Loop.
	Wait(timeout time.Duration) bool

	Depth() int
	// Context returns the I/O Context index the queue runs on.
	Context() int
	// Close waits for the queue's requests and releases it.
	Close() error
}

// Completion is a finished request.
type Completion struct {
	UserData uint64
	Op       Op
	Bytes    int64 // bytes transferred (reads and writes)
	Err      error
}

// Geometry is a device's size and limits.
type Geometry struct {
	Size              int64 // bytes
	LogicalBlockSize  int   // smallest addressable unit
	PhysicalBlockSize int   // smallest unit written without read-modify-write
	RequestAlignment  int   // offsets and lengths below it are read-modify-written
	MemoryAlignment   int   // buffer address alignment needed to avoid bounce buffers
	MaxTransfer       int64 // longest request the device takes in one piece (0: no limit)
	MaxIov            int   // most iovec elements in one request
	CanDiscard        bool
	CanWriteZeroes    bool
	CanUnmapZeroes    bool
	ReadOnly          bool
	Format            string
}

// BlockStatus flags.
type BlockStatus uint8

const (
	StatusData      BlockStatus = 1 << iota // the range holds data in this chain
	StatusZero                              // the range reads as zeroes
	StatusAllocated                         // the top image decides the content
)

// LatencyBuckets is the number of buckets of a latency histogram:
// bucket i counts latencies in [2^i, 2^(i+1)) ns (bucket 0 also counts
// 0 ns, the last everything longer).
const LatencyBuckets = 40

// OpStats account one operation.
type OpStats struct {
	Ops     uint64
	Bytes   uint64
	Errors  uint64
	TotalNs uint64 // summed latency
	Latency [LatencyBuckets]uint64
}

// Stats are a device's I/O accounting.
type Stats struct {
	Read, Write, Flush, Discard, WriteZeroes OpStats
	InFlight                                 int64 // requests issued and not completed
	Held                                     int64 // requests held by a stop policy
	Parked                                   int64 // requests submitted and not yet issued: while paused, or held by a drained section
}

// ThrottleLimits are per-second rates; zero is unlimited. Bursts are the
// bucket sizes (zero: a tenth of a second of the rate). SetThrottle
// refuses a negative, NaN or infinite value, one above 1e15 (QEMU's
// limit) and a rate between 0 and 1 per second.
type ThrottleLimits struct {
	IOPSTotal, IOPSRead, IOPSWrite float64
	BPSTotal, BPSRead, BPSWrite    float64

	IOPSTotalBurst, IOPSReadBurst, IOPSWriteBurst float64
	BPSTotalBurst, BPSReadBurst, BPSWriteBurst    float64

	// IOPSSize (QEMU's iops_size, bytes): a larger request counts as
	// its size over IOPSSize operations in the IOPS limits; 0: every
	// request counts as one.
	IOPSSize float64
}

// Snapshot is an internal snapshot.
type Snapshot struct {
	ID, Name string
	Date     time.Time
	VMSize   int64
}

// Errors.
var (
	// ErrQueueFull: the queue holds Depth requests already.
	ErrQueueFull = errors.New("ringblk: queue full (take completions first)")
	// ErrClosed: the queue, device or host is closed.
	ErrClosed = errors.New("ringblk: closed")
	// ErrUnsupported: the image's format cannot do this.
	ErrUnsupported = errors.New("ringblk: not supported by this image")
)
