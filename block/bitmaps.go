package block

import (
	"fmt"
	"sync/atomic"
	"syscall"

	"github.com/ringblk/ringblk/bitmap"
)

// Dirty bitmaps (QEMU's BdrvDirtyBitmap list of a BDS). A node keeps a
// copy-on-write slice of bitmaps; every write path marks the enabled ones
// when a request that changes data completes (write, write-zeroes,
// discard, compressed write, VM state excluded), on whatever Context it
// ran, successful or not (a failed write may have changed part of the
// range). Jobs' own writes are requests like any other, so they are
// tracked on the nodes they write to, as in QEMU. Adding and removing run
// on the main Context; the marking path loads one atomic pointer and
// allocates nothing. A successful truncate resizes every bitmap of the
// node to its new length before the submitter learns of it (QEMU's
// bdrv_dirty_bitmap_truncate from bdrv_co_write_req_finish): growing adds
// clean chunks, which later writes mark.

// bitmapList is the published set (never modified once stored), and the
// node's write threshold, which the same load finds.
type bitmapList struct {
	list []*bitmap.Bitmap
	thr  *writeThreshold
}

// writeThreshold is QEMU's write threshold of a node
// (block-set-write-threshold): the first data-changing write that ends
// past limit calls fire once, with the bytes past it, and turns it off.
// Checked where the bitmaps are marked, when the write completes (QEMU
// checks before the write starts: the event comes a write later, never
// before the bytes are there).
type writeThreshold struct {
	limit atomic.Int64 // 0: off
	fire  func(exceeded, limit int64)
}

// dirtyOps has bit op set for each op that changes data.
const dirtyOps = 1<<OpWrite | 1<<OpWriteZeroes | 1<<OpDiscard | 1<<OpWriteCompressed

func dirties(op Op) bool { return dirtyOps>>(op&63)&1 != 0 }

// markDirty marks the node's enabled bitmaps for r (any Context), or
// resizes them after a successful truncate. Small enough to inline: a
// node without bitmaps pays one load; the op test (one shift of a
// constant) and the marking are out of line.
func (n *Node) markDirty(r *Request, err error) {
	if l := n.bitmaps.Load(); l != nil {
		n.mark(l, r, err)
	}
}

// mark is kept out of line so that markDirty stays small enough to
// inline into Request.Complete.
//
//go:noinline
func (n *Node) mark(l *bitmapList, r *Request, err error) {
	if !dirties(r.Op) {
		if r.Op == OpTruncate && err == nil {
			n.ResizeBitmaps()
		}
		return
	}
	off, ln := r.Off, r.Len
	for _, b := range l.list {
		b.Mark(off, ln)
	}
	if t := l.thr; t != nil && r.Op != OpDiscard {
		if lim := t.limit.Load(); lim > 0 && off+ln > lim && t.limit.CompareAndSwap(lim, 0) {
			t.fire(off+ln-lim, lim)
		}
	}
}

// SetWriteThreshold arms the node's write threshold at limit bytes (0:
// off); the first write, write-zeroes or compressed write that ends past
// it calls fire (on the Context it completed on) and disarms it. Any
// Context.
func (n *Node) SetWriteThreshold(limit int64, fire func(exceeded, limit int64)) {
	n.g.Control(func() {
		n.bitmapMu.Lock()
		defer n.bitmapMu.Unlock()
		old := n.bitmaps.Load()
		var list []*bitmap.Bitmap
		if old != nil {
			list = old.list
		}
		var t *writeThreshold
		if limit > 0 {
			t = &writeThreshold{fire: fire}
			t.limit.Store(limit)
		}
		n.publishBitmaps(list, t)
	})
}

// WriteThreshold returns the armed write threshold (0: none). Any Context.
func (n *Node) WriteThreshold() int64 {
	if l := n.bitmaps.Load(); l != nil && l.thr != nil {
		return l.thr.limit.Load()
	}
	return 0
}

// publishBitmaps stores a new list and threshold (nil when both are
// empty, so that a node with neither pays one load per write).
func (n *Node) publishBitmaps(list []*bitmap.Bitmap, t *writeThreshold) {
	if len(list) == 0 && t == nil {
		n.bitmaps.Store(nil)
		return
	}
	n.bitmaps.Store(&bitmapList{list: list, thr: t})
}

// threshold is the published write threshold (nil: none).
func (n *Node) threshold() *writeThreshold {
	if l := n.bitmaps.Load(); l != nil {
		return l.thr
	}
	return nil
}

// AddBitmap creates an enabled dirty bitmap on the node covering its
// current length (QEMU's block-dirty-bitmap-add). Granularity 0 means
// bitmap.DefaultGranularity. Names are unique per node.
func (n *Node) AddBitmap(name string, granularity int64) (b *bitmap.Bitmap, err error) {
	n.g.Control(func() {
		if granularity == 0 {
			granularity = bitmap.DefaultGranularity
		}
		n.bitmapMu.Lock()
		defer n.bitmapMu.Unlock()
		var size int64
		if size, err = n.drv.Length(n); err != nil {
			return
		}
		if b, err = bitmap.New(name, size, granularity); err != nil {
			return
		}
		err = n.attachBitmap(b)
	})
	return b, err
}

// AttachBitmap adds an existing bitmap to the node (a checkpoint's new
// bitmap, a successor); its size must be the node's length.
func (n *Node) AttachBitmap(b *bitmap.Bitmap) (err error) {
	n.g.Control(func() {
		n.bitmapMu.Lock()
		defer n.bitmapMu.Unlock()
		var size int64
		if size, err = n.drv.Length(n); err != nil {
			return
		}
		if b.Size() != size {
			err = n.bitmapErr(b.Name(), fmt.Errorf("bitmap covers %d bytes, node has %d", b.Size(), size))
			return
		}
		err = n.attachBitmap(b)
	})
	return err
}

func (n *Node) attachBitmap(b *bitmap.Bitmap) error {
	n.g.assertMain()
	if b.Name() == "" {
		return n.bitmapErr("", fmt.Errorf("empty bitmap name"))
	}
	old := n.bitmaps.Load()
	var list []*bitmap.Bitmap
	if old != nil {
		for _, x := range old.list {
			if x.Name() == b.Name() {
				return n.bitmapErr(b.Name(), syscall.EEXIST)
			}
			if x == b {
				return n.bitmapErr(b.Name(), fmt.Errorf("bitmap already attached"))
			}
		}
		list = append(list, old.list...)
	}
	n.publishBitmaps(append(list, b), n.threshold())
	return nil
}

// RemoveBitmap removes the named bitmap (QEMU's block-dirty-bitmap-remove);
// a busy one is refused.
func (n *Node) RemoveBitmap(name string) (err error) {
	n.g.Control(func() {
		b := n.bitmapNamed(name)
		switch {
		case b == nil:
			err = n.bitmapErr(name, syscall.ENOENT)
		case b.Busy():
			err = n.bitmapErr(name, bitmap.ErrBusy)
		default:
			n.DetachBitmap(b)
		}
	})
	return err
}

// DetachBitmap removes b from the node whether busy or not (the operation
// holding it calls this). Main Context.
func (n *Node) DetachBitmap(b *bitmap.Bitmap) {
	n.g.assertMain()
	old := n.bitmaps.Load()
	if old == nil {
		return
	}
	list := make([]*bitmap.Bitmap, 0, len(old.list))
	for _, x := range old.list {
		if x != b {
			list = append(list, x)
		}
	}
	n.publishBitmaps(list, n.threshold())
}

// Bitmap returns the named bitmap, or nil. Any Context.
func (n *Node) Bitmap(name string) *bitmap.Bitmap { return n.bitmapNamed(name) }

func (n *Node) bitmapNamed(name string) *bitmap.Bitmap {
	if l := n.bitmaps.Load(); l != nil {
		for _, b := range l.list {
			if b.Name() == name {
				return b
			}
		}
	}
	return nil
}

// Bitmaps returns the node's bitmaps in creation order. Any Context.
func (n *Node) Bitmaps() []*bitmap.Bitmap {
	if l := n.bitmaps.Load(); l != nil {
		return append([]*bitmap.Bitmap(nil), l.list...)
	}
	return nil
}

// BitmapError names the node and bitmap of a failed bitmap operation.
type BitmapError struct {
	Node, Bitmap string
	Err          error
}

func (e *BitmapError) Error() string {
	return fmt.Sprintf("node %s: bitmap %q: %v", e.Node, e.Bitmap, e.Err)
}

func (e *BitmapError) Unwrap() error { return e.Err }

func (n *Node) bitmapErr(name string, err error) error {
	return &BitmapError{Node: n.name, Bitmap: name, Err: err}
}

// ResizeBitmaps makes every bitmap of the node cover its current length
// (any Context). A successful truncate request calls it; a driver that
// changes its node's length by other means (qcow2's preallocated resize
// and amend) calls it after the change. Every bitmap is resized, busy
// ones included: a backup's frozen bitmap and its successor, a
// checkpoint's frozen bitmaps and an export's all keep one size with the
// node, so the merges that end those operations still apply. (QEMU
// asserts that no bitmap is busy here: its op blockers and permissions
// keep a resize away from a node a job works on, as ringblk serve's
// block_resize does; the block layer accepts it and loses no mark.)
// Marks racing the resize are not lost (bitmap.Bitmap.Resize).
func (n *Node) ResizeBitmaps() {
	n.bitmapMu.Lock()
	defer n.bitmapMu.Unlock()
	l := n.bitmaps.Load()
	if l == nil {
		return
	}
	size, err := n.drv.Length(n)
	if err != nil {
		return // the length is unknown: the bitmaps keep theirs
	}
	for _, b := range l.list {
		_ = b.Resize(size) // size >= 0: Resize cannot fail
	}
}
