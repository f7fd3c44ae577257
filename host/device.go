package host

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/chain"
	"github.com/ringblk/ringblk/drivers/qcow2"
	"github.com/ringblk/ringblk/drivers/raw"
	"github.com/ringblk/ringblk/plugin/contract"
)

// Device is an open image behind a front end (QEMU's BlockBackend). It
// implements contract.Device.
type Device struct {
	h      *Host
	name   string
	path   string
	format string
	fe     *block.FrontEnd
	qcow   *qcow2.Driver
	file   *raw.Driver // the top image's file (nil for null)

	rerror, werror atomic.Uint32 // ErrorPolicy values; read on the Contexts
	cbs            DeviceCallbacks
	wce            atomic.Bool
	status         atomic.Uint32
	paused         atomic.Bool  // a stop policy stopped the device; until Resume
	drains         atomic.Int32 // drained sections begun through the Device, in force
	beginning      atomic.Int32 // DrainedBegin calls still draining
	// size is the device's size as last read from its node: writes and
	// write-zeroes past it re-read it, then fail rather than grow the
	// image (QEMU's BlockBackend bound). Re-read after the device's own
	// size changes, so that a shrink is seen at once.
	size   atomic.Int64
	unsafe bool // cache=unsafe: flushes complete at once
	// repollTimer wakes the drain's Context while the device model
	// reports work (repoll); that Context only.
	repollTimer *aio.Timer
	repollCtx   *aio.Context

	mu       sync.Mutex
	queues   []*Queue
	retired  Stats // accounting of closed queues
	closed   bool
	statErr  error
	syncQ    *Queue
	sem      chan struct{}
	closing  chan struct{} // closed when Close has finished
	throttle *block.ThrottleGroup
}

var _ contract.Device = (*Device)(nil)

// Open opens an image as a device (contract.Host).
func (h *Host) Open(path string, o OpenOptions) (contract.Device, error) {
	d, err := h.OpenDevice(path, o)
	if err != nil {
		return nil, err
	}
	return d, nil
}

// OpenDevice opens an image as a device: the image and its backing chain
// (each backing file with the format its overlay records, read-only),
// QEMU's image locks, the cache mode and the error policies of o.
func (h *Host) OpenDevice(path string, o OpenOptions) (*Device, error) {
	return h.openDevice(path, nil, o, nil)
}

// OpenDeviceOver opens a qcow2 image as OpenDevice does, with backing as
// its backing node instead of the file its header names (QMP's
// blockdev-add with "backing" naming a node): the image takes a
// reference of its own on backing, which must be a node of the host's
// graph. The backing file name the header gives (if any) is not
// followed; an image whose header names none takes backing all the same,
// as QEMU does, and the header is not rewritten. Another format than
// qcow2 is refused.
func (h *Host) OpenDeviceOver(path string, o OpenOptions, backing *block.Node) (*Device, error) {
	return h.openOver(path, nil, o, backing)
}

// OpenDeviceSpec opens the image a block option tree describes (QEMU's
// blockdev-add options, flattened: chain.OpenSpec) as a device; o's
// options apply as in OpenDevice, except Format (the tree names its
// drivers) and Size.
func (h *Host) OpenDeviceSpec(s chain.Spec, o OpenOptions) (*Device, error) {
	return h.openDevice("", s, o, nil)
}

// OpenDeviceSpecOver is OpenDeviceSpec with backing as the backing node of
// the tree's top qcow2 image, as OpenDeviceOver gives it to an image
// opened by path.
func (h *Host) OpenDeviceSpecOver(s chain.Spec, o OpenOptions, backing *block.Node) (*Device, error) {
	o.Format = s["driver"]
	return h.openOver("", s, o, backing)
}

// openOver is OpenDeviceOver and OpenDeviceSpecOver: the image (a file,
// or the tree spec when not nil) must be qcow2 and take backing.
func (h *Host) openOver(path string, spec chain.Spec, o OpenOptions, backing *block.Node) (*Device, error) {
	if backing == nil {
		return nil, fmt.Errorf("ringblk: open %s: no backing node", path)
	}
	if o.Format != "qcow2" {
		return nil, fmt.Errorf("ringblk: open %s: a backing node needs format qcow2, not %q", path, o.Format)
	}
	d, err := h.openDevice(path, spec, o, backing)
	if err != nil {
		return nil, err
	}
	if c := d.fe.Root().Child(block.RoleBacking); c == nil || c.Node() != backing {
		return nil, errors.Join(fmt.Errorf("ringblk: open %s: the image did not take node %s as its backing", d.Path(), backing.Name()), d.Close())
	}
	return d, nil
}

func (h *Host) openDevice(path string, spec chain.Spec, o OpenOptions, backing *block.Node) (*Device, error) {
	if !h.enter() {
		return nil, ErrClosed
	}
	defer h.leave()
	co := chain.Options{Format: o.Format, ReadOnly: o.ReadOnly, ForceShare: o.ForceShare, ShareRW: o.ShareRW,
		NoBacking: o.NoBacking && backing == nil, NullSize: o.Size, BackingNode: backing, FileName: o.FileNodeName}
	if o.Cache != "" && o.Cache != "unsafe" {
		c, ok := raw.ParseCache(o.Cache)
		if !ok {
			return nil, fmt.Errorf("ringblk: open %s: cache mode %q (writeback, writethrough, none, unsafe)", path, o.Cache)
		}
		co.Cache = c
	}
	if o.Locking != "" {
		l, ok := raw.ParseLocking(o.Locking)
		if !ok {
			return nil, fmt.Errorf("ringblk: open %s: locking %q (auto, on, off)", path, o.Locking)
		}
		co.Locking = l
	}
	if o.Discard != "" {
		dc, ok := raw.ParseDiscard(o.Discard)
		if !ok {
			return nil, fmt.Errorf("ringblk: open %s: discard %q (ignore, unmap)", path, o.Discard)
		}
		co.Discard = dc
	}
	for _, p := range []ErrorPolicy{o.ReadError, o.WriteError} {
		if p > contract.ErrorStopOnNoSpace {
			return nil, fmt.Errorf("ringblk: open %s: unknown error policy %d", path, p)
		}
	}
	name := o.Name
	if name == "" {
		name = filepath.Base(path)
		if name == "." || name == "/" || name == "" {
			name = "device"
		}
	}
	name = h.uniqueName(name)
	co.Name = name
	if spec != nil {
		co.Format = ""
		img, err := chain.OpenSpec(h.g, spec, co)
		if err != nil {
			return nil, err
		}
		return h.newDevice(img.Node, img.Path, name, img.Format, img.Qcow2, o)
	}
	img, err := chain.Open(h.g, path, co)
	if err != nil {
		return nil, err
	}
	return h.newDevice(img.Node, path, name, img.Format, img.Qcow2, o)
}

// NewDevice makes a device of a node the caller built on the host's graph
// (Host.Graph), e.g. with its own driver; it takes over the caller's
// reference on n. Of o, the error policies, WriteThrough, Callbacks,
// Name and Cache "unsafe" are used.
func (h *Host) NewDevice(n *block.Node, o OpenOptions) (*Device, error) {
	if !h.enter() {
		return nil, errors.Join(ErrClosed, n.Unref())
	}
	defer h.leave()
	name := o.Name
	if name == "" {
		name = n.Name()
	}
	qc, _ := n.Driver().(*qcow2.Driver)
	format := "node"
	switch n.Driver().(type) {
	case *qcow2.Driver:
		format = "qcow2"
	case *raw.Driver:
		format = "raw"
	}
	return h.newDevice(n, "", name, format, qc, o)
}

func (h *Host) newDevice(n *block.Node, path, name, format string, qc *qcow2.Driver, o OpenOptions) (*Device, error) {
	for _, p := range []ErrorPolicy{o.ReadError, o.WriteError} {
		if p > contract.ErrorStopOnNoSpace {
			return nil, errors.Join(fmt.Errorf("ringblk: %s: unknown error policy %d", name, p), n.Unref())
		}
	}
	d := &Device{h: h, name: name, path: path, format: format, qcow: qc,
		cbs: o.Callbacks, sem: make(chan struct{}, 64),
		closing: make(chan struct{})}
	d.rerror.Store(uint32(o.ReadError))
	d.werror.Store(uint32(o.WriteError))
	d.wce.Store(!o.WriteThrough)
	d.unsafe = o.Cache == "unsafe"
	d.file = findRaw(h.g, n)
	fe := h.g.NewFrontEnd(block.FrontEndOptions{Name: name, DevOps: devOps{d}})
	if err := fe.Insert(n); err != nil {
		return nil, errors.Join(err, n.Unref(), fe.Close())
	}
	if err := n.Unref(); err != nil { // the front end holds the node now
		return nil, errors.Join(err, fe.Close())
	}
	d.fe = fe
	d.refreshSize()
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil, errors.Join(ErrClosed, fe.Close())
	}
	h.devices = append(h.devices, d)
	h.mu.Unlock()
	return d, nil
}

// findRaw returns the raw driver of the file under n (n itself, or its
// primary/file child), or nil.
func findRaw(g *block.Graph, n *block.Node) (rd *raw.Driver) {
	g.Control(func() {
		for n != nil {
			if r, ok := n.Driver().(*raw.Driver); ok {
				rd = r
				return
			}
			// The primary child: a job's filter also has the job's
			// target as a child, which is not its file.
			var next *block.Node
			if c := n.Child(block.RolePrimary); c != nil {
				next = c.Node()
			} else {
				for _, c := range n.Children() {
					if c.Role() != block.RoleBacking {
						next = c.Node()
						break
					}
				}
			}
			n = next
		}
	})
	return rd
}

// devOps forwards the front end's drain callbacks to the host's.
type devOps struct{ d *Device }

func (o devOps) DrainedBegin() {
	if f := o.d.cbs.DrainedBegin; f != nil {
		f()
	}
}

func (o devOps) DrainedPoll() bool {
	f := o.d.cbs.DrainedPoll
	if f == nil || !f() {
		return false
	}
	o.d.repoll()
	return true
}

// repollInterval is how soon a drain looks at a busy device model again.
const repollInterval = time.Millisecond

// repoll arms a timer on the Context running the drain (the caller of
// DrainedPoll), so that it looks again soon: the model's work ends on the
// host's goroutines, which nothing lets wake that Context, and the drain
// slept until something else did (forever on an idle host). One timer per
// device, re-armed; only the drain's Context touches it.
func (d *Device) repoll() {
	c := aio.CallerContext()
	if c == nil {
		return
	}
	if d.repollTimer == nil || d.repollCtx != c {
		d.repollTimer, d.repollCtx = c.AfterFunc(repollInterval, func() {}), c
		return
	}
	d.repollTimer.Reset(repollInterval)
}

func (o devOps) DrainedEnd() {
	if f := o.d.cbs.DrainedEnd; f != nil {
		f()
	}
}

// Name returns the device's name (its node's name).
func (d *Device) Name() string { return d.name }

// FrontEnd returns the device's block front end (for embedders).
func (d *Device) FrontEnd() *block.FrontEnd { return d.fe }

func (d *Device) isClosed() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.closed
}

func (d *Device) addQueue(q *Queue) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed && q != d.syncQ {
		return false
	}
	d.queues = append(d.queues, q)
	return true
}

func (d *Device) removeQueue(q *Queue) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i, x := range d.queues {
		if x == q {
			d.queues = append(d.queues[:i], d.queues[i+1:]...)
			q.stats.addTo(&d.retired)
			return
		}
	}
}

// Close drains the device, closes its queues (requests held by a stop
// policy complete with their errors), ends drained sections begun through
// the device, and closes the image. Errors of the image's close (a failed
// metadata write-back, the file's close) are returned; the device is
// closed either way. A second Close returns nil once the first is done.
func (d *Device) Close() error {
	if d.inContext() {
		return ErrInContext
	}
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		<-d.closing // a concurrent Close: return once it is done
		return nil
	}
	d.closed = true
	qs := append([]*Queue(nil), d.queues...)
	d.mu.Unlock()
	defer close(d.closing)
	// Requests parked by our own drained sections would never complete.
	// A begin under way drains on its own (it waits for requests in
	// flight, not for us); its section is ended with the others.
	for d.beginning.Load() > 0 {
		time.Sleep(50 * time.Microsecond)
	}
	for d.drains.Load() > 0 {
		d.endDrain()
	}
	// Throttling off before the queues wait for their requests, and a
	// drain, which sends the requests already waiting for the limits at
	// once (QEMU's drain disables throttling too): a throttled device
	// closed in its limits' time, seconds per request at a low IOPS rate.
	// The device model is going away: its callbacks are not called for
	// the close's own drains.
	d.fe.SetThrottle(nil)
	d.fe.SetDevOps(nil)
	d.fe.Drain()
	var errs []error
	for _, q := range qs {
		if err := q.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	d.fe.Drain()
	// As QEMU's bdrv_close, flush before the close: a raw image's writes
	// may sit in the page cache, and a failed write-back shows only in a
	// sync (reported once). Unlike QEMU, the error is returned: the host
	// must not take the data for durable. On the node, not through the
	// front end: a section still open elsewhere must not hold it.
	if n := d.fe.Root(); n != nil && !d.unsafe {
		if err := n.Flush(); err != nil {
			errs = append(errs, fmt.Errorf("ringblk: close %s: flush: %w", d.name, err))
		}
	}
	if err := d.fe.Close(); err != nil {
		errs = append(errs, fmt.Errorf("ringblk: close %s: %w", d.name, err))
	}
	d.h.removeDevice(d)
	return errors.Join(errs...)
}

// ---- synchronous I/O ----

type waiter struct {
	ch  chan struct{}
	err error
}

var waiters = sync.Pool{New: func() any { return &waiter{ch: make(chan struct{}, 1)} }}

func (d *Device) syncQueue() (*Queue, error) {
	d.mu.Lock()
	q := d.syncQ
	d.mu.Unlock()
	if q != nil {
		return q, nil
	}
	q, err := d.Queue(QueueOptions{Depth: cap(d.sem), Context: -1})
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.syncQ != nil { // another goroutine won
		go q.Close()
		return d.syncQ, nil
	}
	d.syncQ = q
	return q, nil
}

// ErrInContext is returned by synchronous calls made on one of the
// host's Contexts (from a completion callback): waiting there would
// deadlock.
var ErrInContext = errors.New("ringblk: synchronous call from a completion callback (a Context's own goroutine) would deadlock; use a Queue")

func (d *Device) inContext() bool { return d.h.inContext() }

func (d *Device) do(op Op, flags Flags, off, n int64, buf []byte) error {
	if d.inContext() {
		return ErrInContext
	}
	q, err := d.syncQueue()
	if err != nil {
		return err
	}
	d.sem <- struct{}{}
	defer func() { <-d.sem }()
	w := waiters.Get().(*waiter)
	defer waiters.Put(w)
	if err := q.submitWait(op, flags, off, n, buf, w); err != nil {
		return err
	}
	<-w.ch
	return w.err
}

// submitWait is submit for a synchronous caller: the completion goes to w.
func (q *Queue) submitWait(op Op, flags Flags, off, n int64, buf []byte, w *waiter) error {
	i, err := q.claim()
	if err != nil {
		return err
	}
	s := &q.slots[i]
	s.op, s.flags, s.off, s.n, s.ud, s.waiter = op, block.Flags(flags), off, n, 0, w
	s.buf1[0] = buf
	s.iov = nil
	if op == contract.OpRead || op == contract.OpWrite {
		s.iov = s.buf1[:]
	}
	q.sub.push(i)
	q.kick(q.submitBH)
	return nil
}

// ReadAt reads len(p) bytes at off (io.ReaderAt), from any goroutine.
func (d *Device) ReadAt(p []byte, off int64) (int, error) {
	if err := d.do(contract.OpRead, 0, off, int64(len(p)), p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// WriteAt writes p at off (io.WriterAt), from any goroutine.
func (d *Device) WriteAt(p []byte, off int64) (int, error) {
	if err := d.do(contract.OpWrite, 0, off, int64(len(p)), p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Flush makes completed writes durable.
func (d *Device) Flush() error { return d.do(contract.OpFlush, 0, 0, 0, nil) }

// Discard discards [off, off+length).
func (d *Device) Discard(off, length int64) error {
	return d.do(contract.OpDiscard, 0, off, length, nil)
}

// WriteZeroes zeroes [off, off+length).
func (d *Device) WriteZeroes(off, length int64, flags Flags) error {
	return d.do(contract.OpWriteZeroes, flags, off, length, nil)
}

// ---- geometry and topology ----

// Geometry reports the device's size and limits.
func (d *Device) Geometry() (Geometry, error) {
	if !d.h.enter() {
		return Geometry{}, ErrClosed
	}
	defer d.h.leave()
	n := d.fe.Root()
	if n == nil {
		return Geometry{}, ErrClosed
	}
	var size int64
	var err error
	d.h.g.Control(func() { size, err = n.Length() })
	d.mu.Lock()
	format, file := d.format, d.file
	d.mu.Unlock()
	if err != nil {
		return Geometry{}, err
	}
	g := Geometry{Size: size, LogicalBlockSize: 512, PhysicalBlockSize: 512, RequestAlignment: n.Options().Align,
		MemoryAlignment: 1, MaxTransfer: n.Options().MaxTransfer, MaxIov: 1024,
		CanDiscard: true, CanWriteZeroes: true, CanUnmapZeroes: format != "raw",
		ReadOnly: n.ReadOnly(), Format: format}
	if f := file; f != nil {
		g.LogicalBlockSize = max(f.LogicalBlockSize(), 512)
		g.PhysicalBlockSize = g.LogicalBlockSize
		g.MemoryAlignment = max(f.MemAlign(), 1)
		if g.RequestAlignment < f.RequestAlign() {
			g.RequestAlignment = f.RequestAlign()
		}
		unmap := f.Options().Discard == raw.DiscardUnmap
		if format == "raw" {
			g.CanDiscard, g.CanUnmapZeroes = unmap, unmap
		}
		if f.BlockDevice() {
			if fd, err := os.Open(f.Path()); err == nil {
				if v, err := unix.IoctlGetInt(int(fd.Fd()), unix.BLKPBSZGET); err == nil && v > 0 {
					g.PhysicalBlockSize = v
				}
				fd.Close()
			}
		}
	}
	return g, nil
}

// refreshSize reads the device's size from its node again (any
// goroutine, and its Contexts); math.MaxInt64 when the node cannot say.
func (d *Device) refreshSize() int64 {
	n := d.fe.Root()
	if n == nil {
		return d.size.Load()
	}
	size, err := n.Length()
	if err != nil {
		size = math.MaxInt64 // a node that cannot tell its size has no bound here
	}
	d.size.Store(size)
	return size
}

// beyondEnd reports whether a write or write-zeroes of n bytes at off
// ends past the device's end, reading the size again before it says so
// (the image may have grown since). On the queue's Context.
func (d *Device) beyondEnd(off, n int64) (int64, bool) {
	size := d.size.Load()
	if off+n <= size || off+n < off {
		return size, false // the block layer refuses an overflow
	}
	size = d.refreshSize()
	return size, off+n > size
}

// Resize sets the image's size; Callbacks.Resized runs afterwards. It may
// be called inside a drained section of the device.
func (d *Device) Resize(size int64) error {
	if !d.h.enter() {
		return ErrClosed
	}
	defer d.h.leave()
	if d.inContext() {
		return ErrInContext
	}
	n := d.fe.Root()
	if n == nil {
		return ErrClosed
	}
	// On the node, not through the front end: a resize inside the
	// device's own drained section must not wait for that section.
	err := n.Truncate(size)
	d.refreshSize()
	if err != nil {
		return err
	}
	if f := d.cbs.Resized; f != nil {
		d.h.g.Control(func() { f(size) })
	}
	return nil
}

// BlockStatus describes the range at off.
func (d *Device) BlockStatus(off, length int64) (BlockStatus, int64, error) {
	if !d.h.enter() {
		return 0, 0, ErrClosed
	}
	defer d.h.leave()
	n := d.fe.Root()
	if n == nil {
		return 0, 0, ErrClosed
	}
	st, pnum, err := n.BlockStatus(off, length)
	var bs BlockStatus
	if st&block.StatusData != 0 {
		bs |= contract.StatusData
	}
	if st&block.StatusZero != 0 {
		bs |= contract.StatusZero
	}
	if st&block.StatusAllocated != 0 {
		bs |= contract.StatusAllocated
	}
	return bs, pnum, err
}

// ---- drained sections and Contexts ----

// drains counts the device's open sections: plain ones in the low 16
// bits, subtree ones above.
const subtreeDrain = 1 << 16

// DrainedBegin starts a drained section of the device's node: it returns
// when nothing is in flight on the node; requests submitted meanwhile
// wait in their queues until DrainedEnd.
func (d *Device) DrainedBegin() { d.begin(1, (*block.Node).DrainedBegin) }

// DrainedEnd ends a section DrainedBegin started (an unmatched call does
// nothing).
func (d *Device) DrainedEnd() { d.end(1, (*block.Node).DrainedEnd) }

// SubtreeDrainedBegin drains the node and everything below it.
func (d *Device) SubtreeDrainedBegin() { d.begin(subtreeDrain, (*block.Node).SubtreeDrainedBegin) }

// SubtreeDrainedEnd ends a subtree section.
func (d *Device) SubtreeDrainedEnd() { d.end(subtreeDrain, (*block.Node).SubtreeDrainedEnd) }

// begin counts a section once it is in force: Close ends the counted
// ones, and ending one whose begin still drains ended it under the begin
// (its node not quiesced when it returned). Close waits for the begins
// under way instead; one that starts after Close does nothing. beginning
// goes up before closed is read, Close sets closed before it reads
// beginning: one of them sees the other.
func (d *Device) begin(unit int32, fn func(*block.Node)) {
	d.beginning.Add(1)
	defer d.beginning.Add(-1)
	n := d.fe.Root()
	if n == nil || d.isClosed() {
		return
	}
	fn(n)
	d.drains.Add(unit)
}

// end ends one counted section of the kind unit, if there is one: the
// check and the decrement are one step, so concurrent ends (Close's and
// the host's) end it once.
func (d *Device) end(unit int32, fn func(*block.Node)) {
	n := d.fe.Root()
	if n == nil {
		return
	}
	for {
		v := d.drains.Load()
		if (unit == 1 && v&(subtreeDrain-1) == 0) || (unit == subtreeDrain && v < subtreeDrain) {
			return
		}
		if d.drains.CompareAndSwap(v, v-unit) {
			fn(n)
			return
		}
	}
}

func (d *Device) endDrain() {
	if d.drains.Load() >= subtreeDrain {
		d.SubtreeDrainedEnd()
	} else {
		d.DrainedEnd()
	}
	if d.fe.Root() == nil {
		d.drains.Store(0)
	}
}

// SetContext makes I/O Context i the device's home Context (-1: main).
func (d *Device) SetContext(i int) error {
	if !d.h.enter() {
		return ErrClosed
	}
	defer d.h.leave()
	if d.isClosed() {
		return ErrClosed
	}
	ctx := d.h.main
	if i != -1 {
		if _, err := d.h.ctxIndex(i); err != nil {
			return err
		}
		ctx = d.h.ctxs[i]
	}
	d.fe.AllowContextChange(true)
	return d.fe.SetContext(ctx)
}

// ---- accounting and error policy ----

// Stats returns the device's I/O accounting; any goroutine, I/O keeps
// running.
func (d *Device) Stats() Stats {
	d.mu.Lock()
	s := d.retired
	qs := append([]*Queue(nil), d.queues...)
	d.mu.Unlock()
	paused := d.paused.Load()
	for _, q := range qs {
		q.stats.addTo(&s)
		var parked int64
		if paused {
			parked = q.parked() // else: submitted, about to be issued
		}
		s.InFlight += q.submitted.Load() - q.completed.Load() - q.held.Load() - parked
		s.Held += q.held.Load()
		s.Parked += parked
	}
	// Requests a drained section holds before the node wait, unissued,
	// until it ends: parked, not in flight (QEMU's in-flight count drops
	// them too while they wait).
	drained := int64(d.fe.ParkedCount())
	s.InFlight -= drained
	s.Parked += drained
	if s.InFlight < 0 {
		s.InFlight = 0
	}
	return s
}

func (d *Device) action(op Op, err error) ErrorPolicy {
	p := ErrorPolicy(d.werror.Load())
	switch op {
	case contract.OpRead:
		p = ErrorPolicy(d.rerror.Load())
	case contract.OpDiscard:
		return contract.ErrorReport
	}
	if p == contract.ErrorStopOnNoSpace {
		if errors.Is(err, syscall.ENOSPC) {
			return contract.ErrorStop
		}
		return contract.ErrorReport
	}
	return p
}

// stop records the I/O status of a request held by a stop policy.
func (d *Device) stop(op Op, err error) {
	st := contract.IOStatusFailed
	if errors.Is(err, syscall.ENOSPC) {
		st = contract.IOStatusNoSpace
	}
	if d.status.CompareAndSwap(uint32(contract.IOStatusOK), uint32(st)) {
		d.mu.Lock()
		d.statErr = err
		d.mu.Unlock()
	}
	if f := d.cbs.Stopped; f != nil {
		d.h.main.Schedule(func() { f(op, err) })
	}
}

// SetErrorPolicy changes the read and write error policies; requests that
// fail from then on follow them (held requests stay held until Resume).
// A closed device refuses with ErrClosed, as its other setters do.
func (d *Device) SetErrorPolicy(read, write ErrorPolicy) error {
	for _, p := range []ErrorPolicy{read, write} {
		if p > contract.ErrorStopOnNoSpace {
			return fmt.Errorf("ringblk: %s: unknown error policy %d", d.name, p)
		}
	}
	if d.isClosed() {
		return ErrClosed
	}
	d.rerror.Store(uint32(read))
	d.werror.Store(uint32(write))
	return nil
}

// IOStatus returns the I/O status and the error that set it.
func (d *Device) IOStatus() (IOStatus, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return IOStatus(d.status.Load()), d.statErr
}

// ResetIOStatus sets the status back to OK.
func (d *Device) ResetIOStatus() {
	d.mu.Lock()
	d.status.Store(uint32(contract.IOStatusOK))
	d.statErr = nil
	d.mu.Unlock()
}

// Paused reports whether a stop policy has paused the device: a request
// failed and is held, and requests submitted since wait unissued
// (Stats.Parked) until Resume.
func (d *Device) Paused() bool { return d.paused.Load() }

// Resume resets the status and lets the device run again: on each queue
// the held requests are retried, in their issue order, then the parked
// ones are issued in theirs. A retried request that fails again under a
// stop policy pauses the device again.
func (d *Device) Resume() {
	d.ResetIOStatus()
	d.paused.Store(false)
	d.mu.Lock()
	qs := append([]*Queue(nil), d.queues...)
	d.mu.Unlock()
	for _, q := range qs {
		q.kick(q.resumeBH)
	}
}

// ---- throttling and write cache ----

// SetThrottle sets the device's limits, alone (group "") or shared with
// the devices of a named group.
func (d *Device) SetThrottle(group string, l ThrottleLimits) error {
	if err := checkThrottle(l); err != nil {
		return fmt.Errorf("ringblk: %s: throttle: %w", d.name, err)
	}
	if d.isClosed() {
		return ErrClosed
	}
	bl := block.ThrottleLimits(l)
	if group == "" {
		if l == (ThrottleLimits{}) {
			d.fe.SetThrottle(nil)
			d.mu.Lock()
			d.throttle = nil
			d.mu.Unlock()
			return nil
		}
		d.mu.Lock()
		tg := d.throttle
		if tg == nil || tg.Name() != "device:"+d.name {
			tg = block.NewThrottleGroup("device:"+d.name, bl, nil)
			d.throttle = tg
		} else {
			tg.SetLimits(bl)
		}
		d.mu.Unlock()
		d.fe.SetThrottle(tg)
		return nil
	}
	h := d.h
	h.mu.Lock()
	tg := h.groups[group]
	if tg == nil {
		tg = block.NewThrottleGroup(group, bl, nil)
		h.groups[group] = tg
	} else {
		tg.SetLimits(bl)
	}
	h.mu.Unlock()
	d.mu.Lock()
	d.throttle = tg
	d.mu.Unlock()
	d.fe.SetThrottle(tg)
	return nil
}

// MaxThrottleValue is the largest rate or burst SetThrottle takes
// (QEMU's THROTTLE_VALUE_MAX).
const MaxThrottleValue = block.MaxThrottleValue

// checkThrottle refuses limits outside QEMU's range (a negative, NaN or
// infinite value, or one above 1e15) and rates below one per second:
// QEMU's limits are whole numbers, and such a rate is a unit mistake
// (the buckets would honour it: a wait of any length is clamped and
// re-checked, block.maxThrottleWait). Before the block layer clamped its
// waits, such values left requests waiting forever on timers that fired
// every microsecond.
func checkThrottle(l ThrottleLimits) error {
	values := [...]struct {
		name string
		v    float64
		rate bool
	}{
		{"IOPSTotal", l.IOPSTotal, true}, {"IOPSRead", l.IOPSRead, true}, {"IOPSWrite", l.IOPSWrite, true},
		{"BPSTotal", l.BPSTotal, true}, {"BPSRead", l.BPSRead, true}, {"BPSWrite", l.BPSWrite, true},
		{"IOPSTotalBurst", l.IOPSTotalBurst, false}, {"IOPSReadBurst", l.IOPSReadBurst, false},
		{"IOPSWriteBurst", l.IOPSWriteBurst, false}, {"BPSTotalBurst", l.BPSTotalBurst, false},
		{"BPSReadBurst", l.BPSReadBurst, false}, {"BPSWriteBurst", l.BPSWriteBurst, false},
		{"IOPSSize", l.IOPSSize, false},
	}
	for _, x := range values {
		// Written so that NaN fails it.
		if !(x.v >= 0 && x.v <= MaxThrottleValue) {
			return fmt.Errorf("%s %v outside 0…%g", x.name, x.v, MaxThrottleValue)
		}
		if x.rate && x.v > 0 && x.v < 1 {
			return fmt.Errorf("%s %v: a rate is 0 (unlimited) or at least 1 per second", x.name, x.v)
		}
	}
	return nil
}

// SetWriteCache enables or disables the write cache (disabled: every
// write and write-zeroes is FUA).
func (d *Device) SetWriteCache(enabled bool) { d.wce.Store(enabled) }

// WriteCache reports whether the write cache is enabled.
func (d *Device) WriteCache() bool { return d.wce.Load() }

// ---- snapshots and migration ----

func (d *Device) qcow2() (*qcow2.Driver, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, ErrClosed
	}
	if d.qcow == nil {
		return nil, fmt.Errorf("ringblk: %s: internal snapshots need a qcow2 image (this is %s): %w", d.name, d.format, ErrUnsupported)
	}
	return d.qcow, nil
}

// Snapshots lists the internal snapshots.
func (d *Device) Snapshots() ([]Snapshot, error) {
	if !d.h.enter() {
		return nil, ErrClosed
	}
	defer d.h.leave()
	q, err := d.qcow2()
	if err != nil {
		return nil, err
	}
	var out []Snapshot
	for _, s := range q.Snapshots() {
		out = append(out, Snapshot{ID: s.ID, Name: s.Name, Date: time.Unix(int64(s.DateSec), int64(s.DateNsec)), VMSize: int64(s.VMStateSize)})
	}
	return out, nil
}

// CreateSnapshot records the current content as an internal snapshot.
func (d *Device) CreateSnapshot(name string) error {
	if !d.h.enter() {
		return ErrClosed
	}
	defer d.h.leave()
	q, err := d.qcow2()
	if err != nil {
		return err
	}
	_, err = q.CreateSnapshot(qcow2.SnapshotCreateOptions{Name: name})
	return err
}

// ApplySnapshot reverts the content to an internal snapshot.
func (d *Device) ApplySnapshot(name string) error {
	if !d.h.enter() {
		return ErrClosed
	}
	defer d.h.leave()
	q, err := d.qcow2()
	if err != nil {
		return err
	}
	err = q.ApplySnapshot(name)
	d.refreshSize() // the snapshot's size is the image's now
	return err
}

// DeleteSnapshot deletes an internal snapshot.
func (d *Device) DeleteSnapshot(name string) error {
	if !d.h.enter() {
		return ErrClosed
	}
	defer d.h.leave()
	q, err := d.qcow2()
	if err != nil {
		return err
	}
	return q.DeleteSnapshot(name)
}

// Inactivate hands the image over (migration): everything is flushed
// (data made durable for every driver; a qcow2 node's inactivation also
// writes its cached metadata back by itself), then writes fail until
// Activate, which makes a qcow2 node re-read its metadata.
func (d *Device) Inactivate() error {
	if !d.h.enter() {
		return ErrClosed
	}
	defer d.h.leave()
	if d.inContext() {
		return ErrInContext
	}
	n := d.fe.Root()
	if n == nil {
		return ErrClosed
	}
	if err := n.Flush(); err != nil {
		return err
	}
	return n.Inactivate()
}

// Activate takes the image back.
func (d *Device) Activate() error {
	if !d.h.enter() {
		return ErrClosed
	}
	defer d.h.leave()
	n := d.fe.Root()
	if n == nil {
		return ErrClosed
	}
	err := n.Activate()
	d.refreshSize() // the metadata was read again
	return err
}

func resolve(image, backing string) string { return chain.ResolveBacking(image, backing) }
