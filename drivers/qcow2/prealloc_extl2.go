package qcow2

import (
	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// Growing an extended-L2 image with preallocation (qemu-img resize
// --preallocation=metadata|falloc|full), with the subcluster bitmaps
// QEMU 7.2 leaves (iotest 271, "Image resizing with preallocation"). The
// growth itself (truncateLocked) comes first: with a backing file longer
// than the old size (hide) it has already zeroed [old, size) with zero
// bits and real zeros up to the first subcluster boundary. Then every
// cluster from the one holding the old end gets a host cluster:
//
//   - metadata: a cluster without one gets a fresh zeroed cluster, its
//     bitmap unchanged (zero subclusters stay zero, unallocated ones
//     unallocated: QEMU links preallocated clusters without touching the
//     bitmap); a cluster with one keeps it;
//   - falloc, full: every one of them gets a fresh cluster, as QEMU
//     moves the cluster holding the old end into the preallocated area:
//     the guest bytes before the old end are copied into the new cluster
//     (the old host cluster is freed after the next flush, R2). The
//     bitmap is unchanged, except with hide: then QEMU's file truncation
//     zeroed the new area and every subcluster becomes allocated.
//
// A compressed cluster holding the old end is copied the same way in
// every mode and its subclusters become allocated (its bitmap means
// nothing).
//
// Crash ordering: a moved cluster is written whole (the copied head,
// zeros after) before its entry changes, and the other new clusters read
// as zeros before theirs do (fresh past the end of the file, or zeroed);
// flushMetadata then syncs the data before the entries (R4). The old host
// clusters are queued for freeing only after the loop, so no allocation
// in it flushes early (reuseBeforeGrow) an entry whose cluster backData
// has not yet put inside the file.

// preallocGrowExtL2 is preallocGrow for extended L2. REQUIRES: metaLock
// held.
func (d maintOps) preallocGrowExtL2(co *aio.Co, old, size int64, mode format.Prealloc, hide bool) error {
	cs := d.mu.geo.ClusterSize()
	fileLen, err := d.file.Node().Length()
	if err != nil {
		return err
	}
	fresh := (fileLen + cs - 1) &^ (cs - 1) // clusters from here on were never written
	var data []int64
	var olds []format.L2Entry
	for off := old &^ (cs - 1); off < size; off += cs {
		t, l2i, le, _, bm, err := d.lockEntry(co, nil, off)
		if err != nil {
			return err // an *errWait included: runLocked reruns
		}
		d.mu.Unlock()
		compressed := le.Type == format.Compressed
		move := mode != format.PreallocMetadata || compressed
		if le.HostOff != 0 && !move {
			d.l2Unpin(t)
			continue
		}
		var whole []byte // the moved cluster's new content
		if move && off < old && (le.HostOff != 0 || compressed || d.backing != nil) {
			whole = make([]byte, cs)
			err = d.readGuest(co, nil, [][]byte{whole[:old-off]}, off, old-off)
		}
		var h int64
		if err == nil {
			h, err = d.allocCluster(co)
		}
		switch {
		case err != nil:
		case whole != nil:
			err = d.fileWrite(co, nil, whole, h)
		case h < fresh:
			err = d.childIO(co, nil, d.file, block.OpWriteZeroes, h, nil, cs)
		}
		if err != nil {
			d.l2Unpin(t)
			return err
		}
		nbm := bm
		if (hide && mode != format.PreallocMetadata) || compressed {
			nbm = format.BitmapAllocMask
		}
		d.mu.Lock()
		e, err := d.mu.geo.EncodeL2Entry(format.Normal, h, true)
		if err == nil {
			d.setL2EntryLocked(t, l2i, e)
			d.setL2BitmapLocked(t, l2i, nbm)
			d.mu.cowPending = true
		}
		d.mu.Unlock()
		d.l2Unpin(t)
		if err != nil {
			return err
		}
		if le.HostOff != 0 || compressed {
			olds = append(olds, le)
		}
		if whole == nil {
			data = append(data, h)
		}
	}
	if err := d.backData(co, data, mode); err != nil {
		return err
	}
	d.mu.Lock()
	for _, le := range olds {
		d.freeDataLocked(le) // datafile.go; applied after the flush (R2)
	}
	d.mu.Unlock()
	return d.flushMetadata(co, nil)
}
