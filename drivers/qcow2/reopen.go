package qcow2

import (
	"errors"
	"sync/atomic"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// Reopening between read-only and read-write (block.Reopener, QEMU's
// qcow2 reopen of the read-only flag; docs/design/qcow2-metadata.md,
// "Read-only and read-write reopen").
//
// A node opened read-only skipped what only a writer needs: the dirty
// image's repair, the read-write checks of the header (unknown
// autoclear bits, the corrupt bit), the refcount check of the fixed
// metadata (untrusted.go), lazy refcounts, and the in_use marks of its
// persistent bitmaps. To read-write, the metadata is read again from the
// file (now open for writing) the way a read-write open reads it — a
// dirty image is repaired first — and replaces the in-memory copy, which
// holds nothing dirty; the bitmaps are marked in use before the first
// write as after an open (R13). To read-only, everything is written back
// as at a clean close — bitmaps stored (in_use cleared), every refcount
// block written, the dirty bit this driver set cleared, the file synced
// — and nothing is written from then on.

var _ block.Reopener = (*Driver)(nil)

// Reopen changes the driver between read-only and read-write. block
// calls it on the main Context inside a subtree drained section, after
// the file (and data file) became writable or before they become
// read-only.
func (d *Driver) Reopen(n *block.Node, readOnly bool) error {
	if d.mu.hdr == nil || d.readOnly == readOnly {
		return nil
	}
	if readOnly {
		return d.reopenReadOnly(n)
	}
	return d.formatErr(block.OpOpen, 0, d.reopenReadWrite())
}

// reopenReadOnly writes everything back, then stops writing. An inactive
// node was written back by Inactivate and may belong to another process:
// nothing is written then.
func (d *Driver) reopenReadOnly(n *block.Node) error {
	if !n.Inactive() {
		var done atomic.Bool
		var err error
		main := n.Graph().Main()
		n.Context().Go(func(co *aio.Co) {
			d.metaLock.lock(co)
			err = maintOf(d).storeBitmaps(co) // bitmaps.go
			if err == nil {
				err = metaOf(d).closeMetadata(co, nil) // lazy.go
			}
			if err == nil {
				err = d.fileSync(co, nil)
			}
			d.metaLock.unlock()
			done.Store(true)
			main.Kick()
		})
		main.WaitWhile(func() bool { return !done.Load() })
		if err != nil {
			return d.formatErr(block.OpFlush, 0, err)
		}
	}
	d.mu.Lock()
	d.readOnly = true
	d.mu.lazy.on = false
	d.mu.untrusted = nil
	d.mu.pbm.marked = false
	d.publishLocked()
	d.mu.Unlock()
	return nil
}

// errReopenDirty refuses a read-write reopen over unwritten metadata,
// which a read-only node never has.
var errReopenDirty = errors.New("qcow2: reopen read-write: metadata of this node is unwritten; it cannot be re-read over")

// reopenReadWrite reads the metadata again as a read-write open does and
// installs it. On error the driver stays read-only with its old state.
func (d *Driver) reopenReadWrite() (err error) {
	d.mu.Lock()
	dirty := d.l2.dirty != 0 || len(d.mu.dirtyRT) != 0 || len(d.mu.dirtyL1) != 0 ||
		len(d.mu.pendingFrees) != 0 || metaOf(d).anyDirtyRefblockLocked() || len(d.mu.inflight) != 0
	old := d.mu.hdr
	d.mu.Unlock()
	if dirty {
		return errReopenDirty
	}
	file := d.file.Node()
	d.readOnly = false
	defer func() {
		if err != nil {
			d.readOnly = true
			d.mu.Lock()
			d.mu.lazy.needRepair = false
			d.mu.Unlock()
		}
	}()
	iopts := d.opts.Image
	iopts.ReadWrite = true
	iopts.DeferMetadataRefcounts = true // untrusted.go
	// A dirty image is repaired first, as at a read-write open (lazy.go,
	// repair.go): refcounts left stale by a crash must not be trusted by
	// the allocator.
	relaxed, err := maintOf(d).openRepair(file)
	if err != nil {
		return err
	}
	if relaxed {
		iopts.ReadWrite = false
	}
	size, err := file.Length()
	if err != nil {
		return err
	}
	im, err := format.ReadImage(nodeReader{file}, size, d.imageOptions(iopts))
	if err != nil {
		return err
	}
	if err := sameShape(old, d.mu.geo.ExtendedL2, im, "read-only"); err != nil {
		return err
	}
	d.checkModeSnapshots(im) // snapshot_check.go
	var untrusted error
	if iopts.ReadWrite {
		if untrusted, err = d.untrustedOf(im); err != nil {
			return err
		}
	}
	d.mu.Lock()
	d.mu.untrusted = untrusted
	d.mu.pbm.marked = false
	d.installImageLocked(im)
	d.mu.Unlock()
	return nil
}
