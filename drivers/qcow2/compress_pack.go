package qcow2

import (
	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// Packing compressed clusters (QEMU's qcow2_alloc_bytes). Compressed
// clusters are allocated byte by byte from the host cluster the last one
// ended in: several share one host cluster, and one may run on into the
// next host cluster when that is the next one allocated. Every host
// cluster holds one reference per compressed cluster with bytes in it, so
// freeing a compressed cluster (the clusters its sector range covers,
// hostFree) undoes exactly its allocation.

// packState is the compressed-write state of a Driver. Guarded by
// metaLock.
type packState struct {
	// next is where the next compressed cluster may start (QEMU's
	// free_byte_offset): inside a host cluster that holds compressed
	// data, never at its start; 0 when there is none.
	next int64
	comp *format.Compressor // made on the first compressed write
}

// forget drops next when the host cluster at off (cs bytes) changes hands:
// freed to refcount 0, or handed out again by allocCluster.
func (p *packState) forget(off, cs int64) {
	if p.next != 0 && p.next&^(cs-1) == off {
		p.next = 0
	}
}

// compressor returns the Driver's compressor for its compression type.
// REQUIRES: metaLock held.
func (d writer) compressor() (*format.Compressor, error) {
	if d.pack.comp == nil {
		c, err := format.NewCompressor(d.mu.hdr.CompressionType)
		if err != nil {
			return nil, err
		}
		d.pack.comp = c
	}
	return d.pack.comp, nil
}

// allocBytes allocates n bytes (0 < n < cluster size) for one compressed
// cluster and returns their host offset: after the previous compressed
// cluster when it fits in its host cluster (or runs on into a newly
// allocated host cluster right after it) and that cluster's refcount is
// below half its maximum, else at the start of a new host cluster. Each host
// cluster the bytes touch gains one reference (R1: in the cached refcount
// block, written before the L2 entry). REQUIRES: metaLock held.
func (d writer) allocBytes(co *aio.Co, n int64) (int64, error) {
	cs := d.mu.geo.ClusterSize()
	off := d.pack.next
	if off != 0 {
		rc, err := d.refcountOf(co, off)
		if err != nil {
			return 0, err
		}
		// QEMU packs until the refcount maximum; we stop at half of it,
		// so that a snapshot (one more reference to every cluster) still
		// fits with narrow refcounts (refcount_bits 1 and 2: no packing;
		// 4: seven per cluster; 16: no practical limit).
		if rc == 0 || rc >= max(format.RefcountMax(d.mu.geo.RefcountOrder)/2, 1) {
			off = 0
		}
	}
	if off != 0 && cs-off&(cs-1) >= n {
		if err := d.incref(co, off); err != nil {
			return 0, err
		}
	} else {
		h, err := d.allocCluster(co)
		if err != nil {
			return 0, err
		}
		if off != 0 && (off+cs-1)&^(cs-1) == h {
			// The new cluster follows the current one: run on into it.
			if err := d.incref(co, off); err != nil {
				return 0, d.abortAlloc(h, err)
			}
		} else {
			off = h
		}
	}
	d.pack.next = off + n
	if d.pack.next&(cs-1) == 0 {
		d.pack.next = 0
	}
	return off, nil
}

// abortBytes gives back n bytes from allocBytes that nothing points at.
func (d writer) abortBytes(off, n int64, err error) error {
	d.mu.Lock()
	d.mu.pendingFrees = append(d.mu.pendingFrees, hostFree{off, n})
	d.mu.Unlock()
	return err
}
