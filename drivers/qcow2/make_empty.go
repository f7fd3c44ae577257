package qcow2

import (
	"errors"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// MakeEmpty drops every cluster of the image: afterwards it reads as its
// backing file (or zeros), as after `qemu-img commit` without -d (QEMU's
// bdrv_make_empty; qcow2's make_completely_empty). The node must be
// read-write and idle (the caller's only user).
//
// Only the simple layout is done in place: version 3 (the dirty bit
// covers the steps), no internal snapshots, no persistent bitmaps, no
// encryption, no external data file, and the header, refcount table,
// one refcount block and the L1 table fit in one refcount block. Other
// images get ErrMakeEmptyUnsupported and the caller empties them its own
// way. The steps, with QEMU's debug events before each:
//
//  1. every dirty table written (the caches are then dropped), the dirty
//     bit set and synced: from here on the on-disk refcounts may be wrong,
//     and a read-write open repairs them (lazy.go);
//  2. l1_update: the L1 table's clusters are zeroed (every cluster the
//     image had is now leaked, none referenced);
//  3. empty_image_prepare: clusters 1 .. 2 + L1 clusters are zeroed (the
//     new refcount table at cluster 1, refcount block at 2, L1 table at 3
//     may overlap the old ones: the image is dirty and all of it is lost
//     on purpose);
//  4. reftable_load, reftable_update: one 20-byte synced header write of
//     l1_table_offset = 3 clusters, refcount_table_offset = 1 cluster,
//     refcount_table_clusters = 1 (R6);
//  5. refblock_alloc: the refcount table's first entry points at cluster
//     2 (synced);
//  6. the refcount block counts clusters 0 .. 2 + L1 clusters once
//     (synced), the dirty bit is cleared (synced), the file is cut after
//     the L1 table, and the driver reads the metadata again.
//
// A failure in steps 2–5 leaves a dirty image whose next read-write open
// repairs it (leaks or a rebuilt refcount structure; iotest 098 checks
// each case): the driver refuses all further requests, as QEMU ejects
// the node.
func (d *Driver) MakeEmpty() error {
	if d.node == nil || d.mu.hdr == nil {
		return errors.New("qcow2: image is not open")
	}
	if d.readOnly {
		return &block.Error{Kind: block.Unsupported, Op: block.OpWrite, Node: d.nodeName(), Err: errors.New("qcow2: make empty needs a read-write node")}
	}
	if !d.canMakeEmpty() {
		return ErrMakeEmptyUnsupported
	}
	return d.formatErr(block.OpWrite, 0, d.runLocked(d.node, func(co *aio.Co) error {
		return maintOf(d).makeEmptyLocked(co)
	}))
}

// ErrMakeEmptyUnsupported: the image's layout is not one MakeEmpty empties
// in place (see MakeEmpty).
var ErrMakeEmptyUnsupported = errors.New("qcow2: this image cannot be emptied in place")

func (d *Driver) canMakeEmpty() bool {
	d.mu.Lock()
	h, g, l1n, snaps := d.mu.hdr, d.mu.geo, int64(len(d.mu.l1)), len(d.mu.snaps)
	d.mu.Unlock()
	cs := g.ClusterSize()
	l1c := (l1n*8 + cs - 1) / cs
	perBlock := cs * 8 >> g.RefcountOrder
	return h.Version >= 3 && snaps == 0 && !d.hasPersistentBitmaps() && !d.encrypted() &&
		h.IncompatibleFeatures&format.IncompatDataFile == 0 && 3+l1c <= perBlock
}

// errEmptied is the state of a driver whose emptying failed half way.
var errEmptied = &format.FormatError{Field: "image", Reason: "emptying the image failed; reopen it (the open repairs it)", Err: format.ErrCorrupt}

func (d maintOps) makeEmptyLocked(co *aio.Co) error {
	if err := d.prepareWrite(co, nil); err != nil {
		return err
	}
	if err := d.flushAllMetadata(co, nil); err != nil {
		return err
	}
	d.mu.Lock()
	cs := d.mu.geo.ClusterSize()
	l1n := int64(len(d.mu.l1))
	l1Off := int64(d.mu.hdr.L1Offset)
	order := d.mu.geo.RefcountOrder
	dirty := d.mu.lazy.dirtyOnDisk
	d.mu.Unlock()
	l1c := (l1n*8 + cs - 1) / cs
	if !dirty {
		if err := d.writeIncompat(co, nil, format.IncompatDirty, 0); err != nil {
			return err
		}
		d.mu.Lock()
		d.mu.lazy.dirtyOnDisk, d.mu.lazy.ownDirty = true, true
		d.mu.Unlock()
	}
	broken := func(err error) error {
		d.mu.Lock()
		d.setCorruptLocked(errEmptied)
		d.publishLocked()
		d.mu.Unlock()
		return err
	}
	// From the first zeroing on, the in-memory tables no longer describe
	// the file: any failure leaves the driver refusing everything.
	d.event(block.DbgL1Update)
	if l1c > 0 {
		if err := d.childIO(co, nil, d.file, block.OpWriteZeroes, l1Off, nil, l1c*cs); err != nil {
			return broken(err)
		}
	}
	d.event(block.DbgEmptyImagePrepare)
	if err := d.childIO(co, nil, d.file, block.OpWriteZeroes, cs, nil, (2+l1c)*cs); err != nil {
		return broken(err)
	}
	d.event(block.DbgReftableLoad)
	d.event(block.DbgReftableUpdate)
	var hb [20]byte
	putU64(hb[0:], uint64(3*cs))
	putU64(hb[8:], uint64(cs))
	hb[19] = 1
	if err := d.fileWrite(co, nil, hb[:], 40); err != nil {
		return broken(err)
	}
	if err := d.fileSync(co, nil); err != nil {
		return broken(err)
	}
	d.event(block.DbgRefblockAlloc)
	var rt [8]byte
	putU64(rt[:], uint64(2*cs))
	if err := d.fileWrite(co, nil, rt[:], cs); err != nil {
		return broken(err)
	}
	if err := d.fileSync(co, nil); err != nil {
		return broken(err)
	}
	rb := make([]byte, cs)
	for i := int64(0); i < 3+l1c; i++ {
		if err := format.RefcountSet(rb, order, i, 1); err != nil {
			return broken(err)
		}
	}
	if err := d.fileWrite(co, nil, rb, 2*cs); err != nil {
		return broken(err)
	}
	if err := d.fileSync(co, nil); err != nil {
		return broken(err)
	}
	if err := d.writeIncompat(co, nil, 0, format.IncompatDirty); err != nil {
		return broken(err)
	}
	if err := d.childIO(co, nil, d.file, block.OpTruncate, (3+l1c)*cs, nil, 0); err != nil {
		return broken(err)
	}
	d.mu.Lock()
	d.mu.lazy.dirtyOnDisk, d.mu.lazy.ownDirty = false, false
	clear(d.mu.dirtyL1)
	d.mu.Unlock()
	if err := d.reloadForActivate(co, nil); err != nil {
		return broken(err)
	}
	return nil
}
