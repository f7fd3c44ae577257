package qcow2

import (
	"errors"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// Activation for migration (block.Activator; docs/design/qcow2-metadata.md,
// "Inactive images").
//
// Inactivate is a clean close without the close: every dirty piece of
// metadata goes out in the flush's stage order, the dirty bit this driver
// set for lazy refcounts is cleared, and the file is synced, so another
// process may open the image from then on. block marked the node inactive
// before calling it (no new write reaches the driver) and inactivates the
// file child after it.
//
// Activate forgets everything read from the image — L2 tables in tier 1
// and, by a generation step, their tier-2 copies, refcount blocks, the
// inflated compressed cluster — and reads header, L1, refcount and
// snapshot tables again with the checks of an open, then republishes the
// fast paths' view. If the image cannot be used any more (damaged, dirty,
// another shape or backing file) it fails and the in-memory state is left
// as it was: block keeps the node inactive.

var _ block.Activator = (*Driver)(nil)

// Inactivate writes every piece of dirty metadata back (block.Activator).
func (d *Driver) Inactivate(r *block.Request) {
	if d.readOnly || d.mu.hdr == nil {
		r.Complete(nil)
		return
	}
	r.Context().Go(func(co *aio.Co) {
		d.metaLock.lock(co)
		m := metaOf(d)
		err := maintOf(d).storeBitmaps(co) // bitmaps.go
		if cerr := m.closeMetadata(co, r); err == nil {
			err = cerr
		}
		if err == nil {
			// Data written in place since the last flush, and the
			// metadata above: durable before the image changes hands.
			err = d.fileSync(co, r)
		}
		d.metaLock.unlock()
		r.CompleteLater(d.formatErr(block.OpInactivate, 0, err))
	})
}

// Activate re-reads the image's metadata (block.Activator).
func (d *Driver) Activate(r *block.Request) {
	if d.mu.hdr == nil {
		r.Complete(nil)
		return
	}
	r.Context().Go(func(co *aio.Co) {
		d.metaLock.lock(co)
		err := d.reloadForActivate(co, r)
		if err == nil {
			err = maintOf(d).reloadBitmaps(co, r) // bitmaps.go
		}
		d.metaLock.unlock()
		r.CompleteLater(d.formatErr(block.OpActivate, 0, err))
	})
}

// errActivateDirty refuses an activation over unwritten metadata: the
// image was not inactivated by this driver (or its write-back failed).
var errActivateDirty = errors.New("qcow2: activate: metadata of this node is still unwritten; it cannot be re-read over")

// reloadForActivate reads the metadata again and replaces the in-memory
// copy. REQUIRES: metaLock held.
func (d *Driver) reloadForActivate(co *aio.Co, r *block.Request) error {
	d.mu.Lock()
	dirty := d.l2.dirty != 0 || len(d.mu.dirtyRT) != 0 || len(d.mu.dirtyL1) != 0 ||
		len(d.mu.pendingFrees) != 0 || metaOf(d).anyDirtyRefblockLocked() || len(d.mu.inflight) != 0
	old := d.mu.hdr
	d.mu.Unlock()
	if dirty {
		return errActivateDirty
	}
	size, err := d.file.Node().Length()
	if err != nil {
		return err
	}
	iopts := d.opts.Image
	iopts.ReadWrite = !d.readOnly
	im, err := format.ReadImage(coReader{d, co, r}, size, iopts)
	if err != nil {
		return err
	}
	if err := sameShape(old, d.mu.geo.ExtendedL2, im, "inactive"); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.installImageLocked(im)
	return nil
}

// sameShape refuses a re-read image whose format parameters or backing
// file differ from the ones the node was opened with (while, a word for
// the message, the node was inactive or read-only).
func sameShape(old *format.Header, extL2 bool, im *format.Image, while string) error {
	h := im.Header
	switch {
	case h.Version != old.Version || h.ClusterBits != old.ClusterBits || h.RefcountOrder != old.RefcountOrder ||
		h.CompressionType != old.CompressionType || im.Geometry.ExtendedL2 != extL2:
		return &format.FormatError{Field: "header", Reason: "image format parameters changed while the node was " + while + " (version, cluster size, refcount width, compression or extended L2); reopen it", Err: format.ErrUnsupported}
	case h.BackingFile != old.BackingFile || h.BackingFormat != old.BackingFormat:
		return &format.FormatError{Field: "backing_file", Reason: "backing file changed while the node was " + while + "; reopen it", Err: format.ErrUnsupported}
	}
	return nil
}

// installImageLocked replaces the in-memory metadata with im, read again
// from the file (activation, a read-write reopen): every cached L2 table
// and refcount block is forgotten and the fast paths' view republished.
// REQUIRES: mu held, nothing dirty in memory, no request in flight.
func (d *Driver) installImageLocked(im *format.Image) {
	// Every L2 table of this image, resident or only known by its
	// generation: drop moves the generation on (tier-2 copies become
	// unreachable) and the free epoch (loads in flight throw their bytes
	// away); a lock-free reader's View misses from now on.
	c := d.l2
	for i := 0; i < c.set.Capacity(); i++ {
		if k := c.set.Slot(i).Key(); k.Image == c.image && k.Kind == kindL2 {
			c.drop(k.Off)
		}
	}
	for off := range c.gens {
		c.drop(off)
	}
	d.mu.hdr, d.mu.l1, d.mu.rt = im.Header, im.L1, im.RefcountTable
	d.mu.geo = im.Geometry
	d.mu.snaps, d.mu.snapSz = im.Snapshots, im.SnapshotTableSize
	d.setDamage(im)
	d.initLazy()
	d.mu.lazy.ownDirty = false
	d.mu.rb = make(map[int64]*refBlock)
	d.mu.cowPending = false
	d.mu.freeIdx = 0
	d.mu.zcache.buf = nil
	d.resetMetaClusters()
	// The other process may have set autoclear bits again: the first
	// write clears them as after an open (prepareWrite).
	d.headerReady.Store(false)
	d.publishLocked()
}
