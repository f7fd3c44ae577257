package block

import (
	"errors"
	"fmt"
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
// allocates nothing.

// bitmapList is the published set (never modified once stored).
type bitmapList struct{ list []*bitmap.Bitmap }

// dirtyOps has bit op set for each op that changes data.
const dirtyOps = 1<<OpWrite | 1<<OpWriteZeroes | 1<<OpDiscard | 1<<OpWriteCompressed

func dirties(op Op) bool { return dirtyOps>>(op&63)&1 != 0 }

// markDirty marks the node's enabled bitmaps for r (any Context). Small
// enough to inline: a node without bitmaps pays one load; the op test (one
// shift of a constant) and the marking are out of line.
func (n *Node) markDirty(r *Request) {
	if l := n.bitmaps.Load(); l != nil {
		l.mark(r)
	}
}

// mark is kept out of line so that markDirty stays small enough to
// inline into Request.Complete.
//
//go:noinline
func (l *bitmapList) mark(r *Request) {
	if !dirties(r.Op) {
		return
	}
	off, n := r.Off, r.Len
	for _, b := range l.list {
		b.Mark(off, n)
	}
}

// AddBitmap creates an enabled dirty bitmap on the node covering its
// current length (QEMU's block-dirty-bitmap-add). Granularity 0 means
// bitmap.DefaultGranularity. Names are unique per node.
func (n *Node) AddBitmap(name string, granularity int64) (b *bitmap.Bitmap, err error) {
	n.g.Control(func() {
		if granularity == 0 {
			granularity = bitmap.DefaultGranularity
		}
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
	n.bitmaps.Store(&bitmapList{list: append(list, b)})
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
	if len(list) == 0 {
		n.bitmaps.Store(nil)
		return
	}
	n.bitmaps.Store(&bitmapList{list: list})
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

// ErrBitmapTooSmall refuses to grow a node past the end of one of its
// dirty bitmaps.
var ErrBitmapTooSmall = errors.New("a dirty bitmap does not cover the new size")

// bitmapsCover refuses a truncate to size when a bitmap of the node
// covers less: a bitmap keeps the length it was created with (its
// words are read by every write without a lock), so writes past its end
// would go unrecorded and an incremental backup taken from it would miss
// them. QEMU grows its bitmaps with the node; until ringblk does, growing
// is refused while such a bitmap exists (docs/design/jobs.md). Shrinking
// is allowed: marks past the end are never read back.
func (n *Node) bitmapsCover(size int64) error {
	l := n.bitmaps.Load()
	if l == nil {
		return nil
	}
	for _, b := range l.list {
		if size > b.Size() {
			return fmt.Errorf("%w: bitmap %q covers %d bytes; remove it before growing the node to %d (%w)",
				ErrBitmapTooSmall, b.Name(), b.Size(), size, syscall.EBUSY)
		}
	}
	return nil
}
