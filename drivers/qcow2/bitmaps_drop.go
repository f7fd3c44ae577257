package qcow2

import (
	"encoding/binary"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// dropBitmaps runs in prepareWrite right after the synced write that
// cleared autoclear bit 0 (R10). The bitmaps are stale for QEMU from then
// on; their clusters have no trusted reference left, and qemu-img check
// would count them as leaks. So: remove the bitmaps extension from the
// header (synced), then queue every bitmap-owned cluster on pendingFrees,
// decremented after the next flush like any other free (R2).
//
// If anything is doubtful — the directory does not parse (damaged or
// hostile), a bitmap cluster overlaps our own metadata, has refcount 0 or
// no refcount block, or the header is not laid out so that removing the
// extension is a zeroing of its bytes in place — nothing is freed and the
// extension stays: the bit is already clear, so QEMU ignores it, and
// leaked clusters are harmless (qemu-img check -r leaks reclaims them),
// whereas freeing a cluster something else still uses is corruption.
//
// The removal is torn-write safe: it only zeroes the 32 bytes of the
// extension (the first 8 become the new end marker) and the old end
// marker. No other header byte moves, and every 8-byte extension header
// lies inside one sector, so a torn write leaves either the extension
// (ignored, bit 0 is clear) or the end marker at its place.
//
// REQUIRES: metaLock held; the autoclear bit is durably clear.
func (d writer) dropBitmaps(co *aio.Co, r *block.Request) error {
	d.mu.Lock()
	h := *d.mu.hdr
	fileSize := d.mu.geo.FileSize
	d.mu.Unlock()
	if h.Bitmaps == nil || h.Version < 3 || h.BackingFile != "" {
		// With a backing file the name would move after the end marker;
		// that rewrite is not torn-write safe, so the clusters leak.
		return nil
	}
	owned, err := format.BitmapClusters(coReader{d.Driver, co, r}, &h, fileSize)
	if err != nil {
		return nil // damaged or hostile directory: leak, keep the extension
	}
	cs := d.mu.geo.ClusterSize()
	for _, c := range owned {
		if d.overlapsMetadata(c, cs) {
			return nil
		}
		rb, _, bi, err := d.refcountBlock(co, c/cs)
		if err == errNoSpace || (err == nil && rb == nil) {
			return nil
		}
		if err != nil {
			return err // I/O error reading a refcount block
		}
		d.mu.Lock()
		rc, err := format.RefcountGet(rb.buf, d.mu.geo.RefcountOrder, bi)
		d.mu.Unlock()
		if err != nil || rc == 0 {
			return nil
		}
	}

	// The new header must be the on-disk one with the extension and the
	// old end marker zeroed at position p.
	nh := h
	nh.Bitmaps = nil
	nb, err := nh.MarshalBinary()
	if err != nil {
		return nil
	}
	p := int64(len(nb)) - 8
	const span = 8 + format.BitmapsExtLen + 8 // extension header, data, old end marker
	if p+span > cs {
		return nil
	}
	disk := make([]byte, p+span)
	if err := d.fileRead(co, r, disk, 0); err != nil {
		return err
	}
	be := binary.BigEndian
	if string(disk[:p]) != string(nb[:p]) || be.Uint32(disk[p:]) != format.ExtBitmaps ||
		be.Uint32(disk[p+4:]) != format.BitmapsExtLen || be.Uint64(disk[p+32:]) != 0 {
		return nil
	}
	if err := d.fileWrite(co, r, make([]byte, span), p); err != nil {
		return err
	}
	// Durable before any bitmap cluster can be decremented (R2).
	if err := d.fileSync(co, r); err != nil {
		return err
	}
	d.mu.Lock()
	d.mu.hdr.Bitmaps = nil
	for _, c := range owned {
		d.mu.pendingFrees = append(d.mu.pendingFrees, hostFree{c, cs})
	}
	d.mu.Unlock()
	return nil
}
