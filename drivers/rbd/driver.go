//go:build rbd

package rbd

/*
#include "rb.h"
*/
import "C"

import (
	"fmt"
	"runtime"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
)

const (
	maxSlots     = 1024    // librbd operations in flight per image
	reapBatch    = 64      // completions taken per rb_reap call
	subBatch     = 64      // operations started per rb_submit_batch call
	statusExtent = 64      // extents asked of rbd_diff_iterate2 per block status
	maxStatusLen = 1 << 30 // longest range one block status looks at
)

// Driver is one node's open RBD image. Its completions arrive on an
// eventfd that librbd writes (rbd_set_image_notification), watched by the
// node's Context; requests from other Contexts reach it through a
// block.Inbox and get their completions back through their own Context's
// outbox (block.Request.CompleteRemote), so the slot table is owner-only.
type Driver struct {
	block.DriverBase

	spec     Spec
	im       *image
	efd      int
	readOnly bool
	size     atomic.Int64
	fastDiff bool

	ctx     atomic.Pointer[aio.Context]
	node    *block.Node
	handler *aio.FDHandler

	// Owner-only (the node's Context).
	slots   []slot
	free    []int32
	waiting []*block.Request
	waitPos int
	busy    int // librbd operations outstanding
	efdBuf  [8]byte
	comps   *C.rbd_completion_t // C arrays of reapBatch entries
	tags    *C.uintptr_t
	rets    *C.int64_t
	ext     *C.struct_rb_extent // statusExtent entries
	subs    *C.struct_rb_sub    // subBatch entries: the plugged section's operations
	nsub    int
	calls   int // cgo submission calls (tests)

	inbox block.Inbox
}

type slot struct {
	r        *block.Request
	iov      *C.struct_iovec // C memory: librbd keeps the pointer until completion
	iovCap   int
	pin      runtime.Pinner // the request's buffers, which librbd reads or fills after the call
	busy     bool
	fuaFlush bool // a FUA write: flush before completing
}

// NewNode opens the image s names and a node on g for it. Call it outside
// g's Contexts (it connects to the cluster synchronously).
func NewNode(g *block.Graph, s Spec, readOnly bool, bopts block.Options) (*block.Node, error) {
	d, err := Open(s, readOnly || bopts.ReadOnly)
	if err != nil {
		return nil, err
	}
	bopts.ReadOnly = d.readOnly
	if bopts.Name == "" {
		bopts.Name = s.Image
	}
	n, err := g.Open(d, bopts)
	if err != nil {
		d.release()
		return nil, err
	}
	return n, nil
}

// Open connects and opens the image without a node (NewNode's first half).
func Open(s Spec, readOnly bool) (*Driver, error) {
	im, err := openImage(s, readOnly)
	if err != nil {
		return nil, fmt.Errorf("Could not open '%s': %w", s, err)
	}
	d := &Driver{spec: s, im: im, efd: -1, readOnly: readOnly || s.Snap != ""}
	fail := func(what string, err error) (*Driver, error) {
		d.release()
		return nil, fmt.Errorf("Could not open '%s': %s: %w", s, what, err)
	}
	sz, err := im.size()
	if err != nil {
		return fail("size", err)
	}
	d.size.Store(sz)
	if info, err := im.info(); err == nil {
		d.fastDiff = info.Features&C.RBD_FEATURE_FAST_DIFF != 0
	}
	if d.efd, err = unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC); err != nil {
		return fail("eventfd", err)
	}
	if err := im.setNotification(d.efd); err != nil {
		return fail("rbd_set_image_notification", err)
	}
	d.slots = make([]slot, maxSlots)
	d.free = make([]int32, 0, maxSlots)
	for i := maxSlots - 1; i >= 0; i-- {
		d.free = append(d.free, int32(i))
	}
	d.comps = (*C.rbd_completion_t)(C.calloc(reapBatch, C.size_t(unsafe.Sizeof(C.rbd_completion_t(nil)))))
	d.tags = (*C.uintptr_t)(C.calloc(reapBatch, C.size_t(unsafe.Sizeof(C.uintptr_t(0)))))
	d.rets = (*C.int64_t)(C.calloc(reapBatch, C.size_t(unsafe.Sizeof(C.int64_t(0)))))
	d.ext = (*C.struct_rb_extent)(C.calloc(statusExtent, C.size_t(unsafe.Sizeof(C.struct_rb_extent{}))))
	d.subs = (*C.struct_rb_sub)(C.calloc(subBatch, C.size_t(unsafe.Sizeof(C.struct_rb_sub{}))))
	return d, nil
}

// release frees everything the driver holds (Close, or a failed open).
func (d *Driver) release() error {
	var err error
	if d.im != nil {
		err = d.im.close()
		d.im = nil
	}
	if d.efd >= 0 {
		unix.Close(d.efd)
		d.efd = -1
	}
	for i := range d.slots {
		if d.slots[i].iov != nil {
			C.free(unsafe.Pointer(d.slots[i].iov))
			d.slots[i].iov = nil
		}
	}
	for _, p := range []unsafe.Pointer{unsafe.Pointer(d.comps), unsafe.Pointer(d.tags), unsafe.Pointer(d.rets), unsafe.Pointer(d.ext), unsafe.Pointer(d.subs)} {
		if p != nil {
			C.free(p)
		}
	}
	d.comps, d.tags, d.rets, d.ext, d.subs = nil, nil, nil, nil, nil
	return err
}

// ContextBound reports that the driver's state belongs to its node's
// Context: requests from other Contexts take a hop through its inbox and
// back through their outbox, so the node is best placed on the Context
// that submits to it (bench does so for a clone).
func (d *Driver) ContextBound() bool { return true }

// LibraryThreads reports that librbd's own threads (its messenger and its
// completion pool) carry the I/O; the Context only submits and reaps, so
// bench leaves the submitting thread unpinned (bench.libraryThreaded).
func (d *Driver) LibraryThreads() bool { return true }

// Spec returns what the node was opened with.
func (d *Driver) Spec() Spec { return d.spec }

// Open watches the eventfd on the node's Context.
func (d *Driver) Open(n *block.Node) error {
	d.node = n
	d.attach(n.Context())
	return nil
}

func (d *Driver) attach(ctx *aio.Context) {
	d.ctx.Store(ctx)
	d.inbox.Attach(ctx, d.fromInbox)
	ctx.Run(func() {
		// Not external: a drain must see librbd's completions.
		d.handler = ctx.SetFDHandler(d.efd, unix.POLLIN, d.ready, false)
	})
}

// DetachContext stops watching on the old Context. The node is drained:
// no librbd operation is outstanding.
func (d *Driver) DetachContext(*block.Node) {
	d.ctx.Load().Run(d.removeHandler)
	d.inbox.Detach()
}

// AttachContext watches the eventfd on the new Context.
func (d *Driver) AttachContext(_ *block.Node, ctx *aio.Context) { d.attach(ctx) }

func (d *Driver) removeHandler() {
	if d.handler != nil {
		d.handler.Remove()
		d.handler = nil
	}
}

// Close closes the image (rbd_close flushes librbd's cache) and the
// cluster connection. The node is drained: nothing is outstanding.
func (d *Driver) Close(*block.Node) error {
	d.ctx.Load().Run(d.removeHandler)
	d.inbox.Detach()
	if err := d.release(); err != nil {
		return fmt.Errorf("rbd: closing %s: %w", d.spec, err)
	}
	return nil
}

// Length reports the image size.
func (d *Driver) Length(*block.Node) (int64, error) { return d.size.Load(), nil }

func (d *Driver) Read(r *block.Request)        { d.submit(r) }
func (d *Driver) Write(r *block.Request)       { d.submit(r) }
func (d *Driver) Flush(r *block.Request)       { d.submit(r) }
func (d *Driver) Discard(r *block.Request)     { d.submit(r) }
func (d *Driver) WriteZeroes(r *block.Request) { d.submit(r) }
func (d *Driver) BlockStatus(r *block.Request) { d.submit(r) }

// submit runs on r's Context.
func (d *Driver) submit(r *block.Request) {
	if r.Context() != d.ctx.Load() {
		d.inbox.Push(r)
		return
	}
	d.enqueue(r, true)
}

// fromInbox starts a request submitted on another Context.
func (d *Driver) fromInbox(r *block.Request) { d.enqueue(r, false) }

// enqueue starts r in a free slot or queues it; inline says the caller is
// the submission itself (a completion then goes through a bottom half).
func (d *Driver) enqueue(r *block.Request, inline bool) {
	if r.Op == block.OpBlockStatus {
		d.finish(r, d.blockStatus(r), inline)
		return
	}
	if (r.Op == block.OpRead || r.Op == block.OpWrite || r.Op == block.OpDiscard || r.Op == block.OpWriteZeroes) && r.Len == 0 {
		d.finish(r, nil, inline)
		return
	}
	if (r.Op == block.OpWrite || r.Op == block.OpWriteZeroes) && r.Off+r.Len > d.size.Load() {
		// A write past the end grows the image first, as a file grows
		// (QEMU's rbd driver does the same): a qcow2 image stored in RBD
		// allocates its clusters there.
		if err := d.grow(r.Off + r.Len); err != nil {
			d.finish(r, d.ioError(r, err.(syscall.Errno)), inline)
			return
		}
	}
	if len(d.free) == 0 || len(d.waiting) > d.waitPos {
		d.waiting = append(d.waiting, r)
		return
	}
	d.start(r, inline)
}

// grow resizes the image to end (synchronously, on the node's Context:
// requests already in flight below the old end are not affected).
func (d *Driver) grow(end int64) error {
	if err := d.im.resize(end); err != nil {
		return err
	}
	d.size.Store(end)
	return nil
}

// start issues r's librbd operation in a free slot.
func (d *Driver) start(r *block.Request, inline bool) {
	idx := d.free[len(d.free)-1]
	d.free = d.free[:len(d.free)-1]
	sl := &d.slots[idx]
	sl.r, sl.busy, sl.fuaFlush = r, true, false
	var op C.int
	var iov *C.struct_iovec
	iovcnt := 0
	zflags := C.int(0)
	switch r.Op {
	case block.OpRead, block.OpWrite:
		op = opRead
		if r.Op == block.OpWrite {
			op = opWrite
			sl.fuaFlush = r.Flags&block.FUA != 0
		}
		iov, iovcnt = d.buildIov(sl, r.Iov)
	case block.OpFlush:
		op = opFlush
	case block.OpDiscard:
		op = opDiscard
	case block.OpWriteZeroes:
		op = opZeroes
		// librbd may deallocate zeroed whole objects; MayUnmap is not
		// required for that to read back as zeroes, so both are the same.
	default:
		d.release1(sl, idx)
		d.finish(r, &block.Error{Kind: block.Unsupported, Op: r.Op, Node: d.node.Name(), Offset: r.Off, Err: syscall.ENOTSUP}, inline)
		return
	}
	d.issue(sl, idx, op, r.Off, r.Len, iov, iovcnt, zflags, inline)
}

// issue starts the operation of slot idx. Inside a plugged section of the
// node's Context it joins the section's batch, which RunDeferred starts
// with one cgo call when the section ends (the Context submits its own
// ring's batch at the same point); otherwise it starts now.
func (d *Driver) issue(sl *slot, idx int32, op C.int, off, n int64, iov *C.struct_iovec, iovcnt int, zflags C.int, inline bool) {
	if d.nsub == subBatch {
		d.flushSubs()
	}
	if d.ctx.Load().Defer(d) {
		s := &unsafe.Slice(d.subs, subBatch)[d.nsub]
		d.nsub++
		s.off, s.len, s.tag = C.uint64_t(off), C.uint64_t(n), C.uintptr_t(idx)
		s.op, s.iovcnt, s.zflags = op, C.int(iovcnt), zflags
		// An integer store, as in buildIov: the array is C memory.
		*(*uintptr)(unsafe.Pointer(&s.iov)) = uintptr(unsafe.Pointer(iov))
		d.busy++
		return
	}
	d.calls++
	ret := C.rb_submit(d.im.img, op, C.uint64_t(off), C.uint64_t(n), iov, C.int(iovcnt), C.uintptr_t(idx), zflags)
	if ret < 0 {
		r := sl.r
		d.release1(sl, idx)
		d.finish(r, d.ioError(r, syscall.Errno(-ret)), inline)
		return
	}
	d.busy++
}

// RunDeferred starts the plugged section's batch (aio.Deferred).
func (d *Driver) RunDeferred(*aio.Context) { d.flushSubs() }

// flushSubs starts the queued operations with one cgo call; one librbd
// refused completes with its error (from a bottom half: the caller may be
// a plugged section's end).
func (d *Driver) flushSubs() {
	n := d.nsub
	if n == 0 {
		return
	}
	d.nsub = 0
	d.calls++
	C.rb_submit_batch(d.im.img, d.subs, C.int(n))
	for _, s := range unsafe.Slice(d.subs, subBatch)[:n] {
		if s.ret < 0 {
			idx := int32(s.tag)
			sl := &d.slots[idx]
			r := sl.r
			d.busy--
			d.release1(sl, idx)
			d.finish(r, d.ioError(r, syscall.Errno(-s.ret)), true)
		}
	}
}

// SubmitCalls reports the cgo calls that started librbd operations
// (owner only; tests).
func (d *Driver) SubmitCalls() int { return d.calls }

// buildIov fills the slot's C iovec array with the request's buffers and
// pins them (librbd reads or fills them after rb_submit returns).
func (d *Driver) buildIov(sl *slot, bufs [][]byte) (*C.struct_iovec, int) {
	if len(bufs) > sl.iovCap {
		c := max(len(bufs), 8)
		p := C.realloc(unsafe.Pointer(sl.iov), C.size_t(c)*C.size_t(unsafe.Sizeof(C.struct_iovec{})))
		if p == nil {
			panic("rbd: out of C memory for an iovec array")
		}
		sl.iov, sl.iovCap = (*C.struct_iovec)(p), c
	}
	v := unsafe.Slice(sl.iov, sl.iovCap)
	n := 0
	for _, b := range bufs {
		if len(b) == 0 {
			continue
		}
		sl.pin.Pin(&b[0])
		// A plain integer store: assigning an unsafe.Pointer field would
		// run the GC's write barrier on C memory, which shades the stale
		// pointer of an earlier request left there (a buffer that may be
		// freed by now: "found pointer to free object"). The pin keeps the
		// buffer alive and in place until the completion.
		*(*uintptr)(unsafe.Pointer(&v[n].iov_base)) = uintptr(unsafe.Pointer(&b[0]))
		v[n].iov_len = C.size_t(len(b))
		n++
	}
	return sl.iov, n
}

func (d *Driver) release1(sl *slot, idx int32) {
	sl.pin.Unpin()
	sl.r, sl.busy, sl.fuaFlush = nil, false, false
	d.free = append(d.free, idx)
}

// ready runs on the node's Context when librbd signalled completions.
func (d *Driver) ready(uint32) {
	unix.Read(d.efd, d.efdBuf[:]) // reset the counter before polling: a later signal re-arms
	tags := unsafe.Slice(d.tags, reapBatch)
	rets := unsafe.Slice(d.rets, reapBatch)
	for {
		n := int(C.rb_reap(d.im.img, d.comps, d.tags, d.rets, reapBatch))
		for i := 0; i < n; i++ {
			d.done(int32(tags[i]), int64(rets[i]))
		}
		if n < reapBatch {
			break
		}
	}
	for d.waitPos < len(d.waiting) && len(d.free) > 0 {
		r := d.waiting[d.waitPos]
		d.waiting[d.waitPos] = nil
		d.waitPos++
		d.start(r, false)
	}
	if d.waitPos == len(d.waiting) {
		d.waiting, d.waitPos = d.waiting[:0], 0
	}
}

// done handles one completion of slot idx with librbd's result ret.
func (d *Driver) done(idx int32, ret int64) {
	d.busy--
	if idx < 0 || int(idx) >= len(d.slots) || !d.slots[idx].busy {
		panic(fmt.Sprintf("rbd: completion for slot %d, which is not in use", idx))
	}
	sl := &d.slots[idx]
	r := sl.r
	var err error
	if ret < 0 {
		err = d.ioError(r, syscall.Errno(-ret))
	} else if sl.fuaFlush {
		sl.fuaFlush = false
		sl.pin.Unpin()
		d.issue(sl, idx, opFlush, 0, 0, nil, 0, 0, false)
		return
	}
	d.release1(sl, idx)
	d.finish(r, err, false)
}

func (d *Driver) ioError(r *block.Request, e syscall.Errno) error {
	return &block.Error{Kind: block.Io, Op: r.Op, Node: d.node.Name(), Offset: r.Off, Err: e}
}

// finish completes r on its own Context.
func (d *Driver) finish(r *block.Request, err error, inline bool) {
	if r.Context() == d.ctx.Load() {
		if inline {
			r.CompleteLater(err)
		} else {
			r.Complete(err)
		}
		return
	}
	r.CompleteRemote(err)
}

// blockStatus asks librbd which objects of the range hold data
// (rbd_diff_iterate2; with fast-diff from the object map) and sets
// r.Status and r.Pnum. It runs synchronously on the node's Context (its
// extent array is owner-only), bounded to maxStatusLen per call.
func (d *Driver) blockStatus(r *block.Request) error {
	off, n := r.Off, min(r.Len, maxStatusLen)
	got, err := d.im.diff(off, n, d.fastDiff, d.ext, statusExtent)
	if err != nil {
		return d.ioError(r, err.(syscall.Errno))
	}
	const data, zero = block.StatusData | block.StatusAllocated, block.StatusZero | block.StatusAllocated
	ext := unsafe.Slice(d.ext, statusExtent)[:got]
	r.Status, r.Pnum = zero, n
	pos := off
	for _, e := range ext {
		eo, el := int64(e.off), int64(e.len)
		if e.exists == 0 || eo+el <= pos {
			continue
		}
		if eo > pos {
			if r.Status == zero {
				r.Pnum = eo - off // a hole up to the first extent
			}
			break
		}
		r.Status = data
		pos = eo + el
		r.Pnum = min(pos, off+n) - off
	}
	return nil
}

// Truncate resizes the image (rbd_resize, synchronous on the caller's
// Context: a control operation, not a data path one).
func (d *Driver) Truncate(r *block.Request) {
	if err := d.im.resize(r.Off); err != nil {
		r.Complete(d.ioError(r, err.(syscall.Errno)))
		return
	}
	d.size.Store(r.Off)
	r.Complete(nil)
}

// InFlight reports librbd operations outstanding (owner only; tests).
func (d *Driver) InFlight() int { return d.busy }
