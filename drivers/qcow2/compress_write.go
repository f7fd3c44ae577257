package qcow2

import (
	"syscall"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
)

// WriteCompressed writes whole clusters compressed (block.CompressedWriter,
// QEMU's write -c / convert -c). r.Off must be cluster aligned and r.Len a
// multiple of the cluster size (or reach the end of the disk); anything
// else is EINVAL, as in QEMU.
//
// The clusters are compressed as QEMU does (format.Compressor: deflate
// with a 4 KiB window at about zlib's default level, or a zstd frame) and
// packed into shared host clusters byte by byte (allocBytes,
// compress_pack.go): every host cluster holds a reference for each
// compressed cluster that has bytes in it. A cluster that does not shrink
// is written as a normal cluster, like QEMU does. The L2 entry is written
// after the data like any allocation (R1, R4 via the flush stages), the
// old cluster freed after the flush (R2).
func (d *Driver) WriteCompressed(r *block.Request) {
	if d.refuseCompressed(r) {
		return
	}
	if err := d.refuseDataFile(); err != nil { // datafile.go
		r.Complete(err)
		return
	}
	cs := d.mu.geo.ClusterSize()
	d.mu.Lock()
	size := d.mu.geo.Size
	d.mu.Unlock()
	if r.Off%cs != 0 || (r.Len%cs != 0 && r.Off+r.Len != size) || r.Off+r.Len > size {
		r.Complete(&block.Error{Kind: block.OutOfBounds, Op: r.Op, Node: d.nodeName(), Offset: r.Off, Err: syscall.EINVAL})
		return
	}
	r.Context().Go(func(co *aio.Co) {
		d.metaLock.lock(co)
		var skip int64
		err := writerOf(d).writeCompressedLocked(co, r, &skip)
		for wait := waitFor(err); wait != nil; wait = waitFor(err) {
			// A busy cluster: WriteCompressed took metaLock, so it drops
			// it to wait, then goes on from that cluster.
			d.metaLock.unlock()
			wait(co)
			d.metaLock.lock(co)
			err = writerOf(d).writeCompressedLocked(co, r, &skip)
		}
		d.metaLock.unlock()
		r.CompleteLater(d.formatErr(block.OpWrite, r.Off, err))
	})
}

// writeCompressedLocked writes the clusters of r from *skip on, moving
// *skip past each one written. A busy cluster returns an *errWait with
// *skip at it. REQUIRES: metaLock held; it never releases it.
func (d writer) writeCompressedLocked(co *aio.Co, r *block.Request, skip *int64) error {
	comp, err := d.compressor()
	if err != nil {
		return err
	}
	if err := d.prepareWrite(co, r); err != nil {
		return err
	}
	cs := d.mu.geo.ClusterSize()
	plain := make([]byte, cs)
	for ; *skip < r.Len; *skip += cs {
		skip := *skip
		off := r.Off + skip
		k := min(cs, r.Len-skip)
		clear(plain)
		block.CopyFromIov(plain[:k], r.Iov, skip)
		// A whole cluster, zero-padded: QEMU inflates exactly
		// cluster_size bytes.
		out, err := comp.Compress(plain)
		if err != nil {
			return err
		}
		if out == nil {
			win := iovSlice(nil, r.Iov, skip, k)
			if err := d.writeCluster(co, r, win, off, k); err != nil {
				return err
			}
			continue
		}
		if err := d.writeCompressedCluster(co, r, off, out); err != nil {
			return err
		}
	}
	if d.needFlush() {
		return d.flushMetadata(co, r)
	}
	return nil
}

func (d writer) writeCompressedCluster(co *aio.Co, r *block.Request, off int64, data []byte) error {
	l1i, l2i, _ := d.mu.geo.Split(off)
	if err := d.admitted(co, off/d.mu.geo.ClusterSize(), 1); err != nil {
		return err // an *errWait: WriteCompressed waits and comes back
	}
	t, _, err := d.l2ForWrite(co, r, l1i)
	if err != nil {
		return err
	}
	defer d.l2Unpin(t)
	n := int64(len(data))
	host, err := d.allocBytes(co, n)
	if err != nil {
		return err
	}
	ne, err := d.mu.geo.EncodeCompressed(host, n)
	if err != nil {
		return d.abortBytes(host, n, err)
	}
	if err := d.fileWrite(co, r, data, host); err != nil {
		return d.abortBytes(host, n, err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	e, bm, _ := d.mu.geo.L2EntryAt(t.buf, l2i)
	le, err := d.mu.geo.DecodeL2Entry(e, bm)
	if err != nil {
		return err
	}
	d.mu.cowPending = true
	d.setL2EntryLocked(t, l2i, ne)
	if d.mu.geo.ExtendedL2 { // compressed clusters have no subclusters
		d.setL2BitmapLocked(t, l2i, 0)
	}
	d.freeDataLocked(le) // datafile.go
	return nil
}
