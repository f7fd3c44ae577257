package qcow2

import (
	"encoding/binary"
	"io"
	"slices"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
)

// Persistent dirty bitmaps (the bitmaps header extension). This package
// does not maintain bitmaps; it only needs to know which host clusters they
// own, so that a writer that drops the extension can free them.

// Bitmap directory limits (QEMU 7.2's values; MaxBitmaps and
// MaxBitmapDirectoryBytes are in limits.go).
const (
	MaxBitmapNameLen         = 1023                       // name_size
	MaxBitmapTableEntries    = 0x8000000                  // bitmap_table_size
	MinBitmapGranularityBits = 9                          // granularity_bits
	MaxBitmapGranularityBits = 31                         // granularity_bits
	bitmapDirEntryLen        = 24                         // fixed part of a directory entry
	bitmapFlagsKnown         = uint32(1)<<0 | 1<<1 | 1<<2 // in_use, auto, extra_data_compatible
	bitmapTypeDirty          = 1                          // the only bitmap type
	bitmapEntryOffsetMask    = uint64(0x00fffffffffffe00) // bits 9..55
	bitmapEntryAllOnes       = uint64(1)                  // bit 0, only without an offset
)

// BitmapClusters reads the bitmap directory that h.Bitmaps describes
// through r (an image file of fileSize bytes) and returns the host offsets
// of every cluster the bitmaps own: the directory's clusters, each bitmap
// table's clusters and each data cluster a table entry points at. The
// result is sorted and has no duplicates.
//
// The directory is untrusted: every size is checked against QEMU's limits,
// every offset against cluster alignment and the end of the file, before
// anything proportional to it is read or allocated. The directory is read
// at most MaxBitmapDirectoryBytes bytes at once, tables one cluster at a
// time, and the result holds at most one offset per cluster of the file (a
// cluster owned twice is an error). Errors are *FormatError values.
func BitmapClusters(r io.ReaderAt, h *Header, fileSize int64) ([]int64, error) {
	bm := h.Bitmaps
	if bm == nil {
		return nil, nil
	}
	cs := uint64(h.ClusterSize())
	fs := uint64(max(fileSize, 0))
	switch {
	case bm.Count == 0:
		return nil, corrupt("bitmaps_ext.nb_bitmaps", 0, "bitmaps extension with zero bitmaps")
	case bm.Count > MaxBitmaps:
		return nil, limit("bitmaps_ext.nb_bitmaps", uint64(bm.Count), "too many bitmaps")
	case bm.Reserved != 0:
		return nil, corrupt("bitmaps_ext.reserved", uint64(bm.Reserved), "reserved field is not zero")
	case bm.DirectorySize > MaxBitmapDirectoryBytes:
		return nil, limit("bitmaps_ext.bitmap_directory_size", bm.DirectorySize, "bitmap directory too large")
	case bm.DirectorySize < uint64(bm.Count)*bitmapDirEntryLen:
		return nil, corrupt("bitmap_directory_size", bm.DirectorySize, "bitmap directory too small for nb_bitmaps entries")
	}
	if err := bitmapArea("bitmaps_ext.bitmap_directory_offset", bm.DirectoryOffset, bm.DirectorySize, cs, fs); err != nil {
		return nil, err
	}
	dir := make([]byte, bm.DirectorySize)
	if err := readAt(r, dir, int64(bm.DirectoryOffset)); err != nil {
		return nil, err
	}
	maxOwned := fs / cs
	var owned []int64
	add := func(field string, off uint64) error {
		if uint64(len(owned)) >= maxOwned {
			return corrupt(field, off, "bitmaps own more clusters than the file has")
		}
		owned = append(owned, int64(off))
		return nil
	}
	for c := bm.DirectoryOffset; c < bm.DirectoryOffset+bm.DirectorySize; c += cs {
		if err := add("bitmaps_ext.bitmap_directory_offset", c); err != nil {
			return nil, err
		}
	}

	be := binary.BigEndian
	buf := make([]byte, cs)
	p := uint64(0)
	for i := uint32(0); i < bm.Count; i++ {
		e := dir[p:]
		if uint64(len(e)) < bitmapDirEntryLen {
			return nil, corrupt(indexed("bitmap_directory", uint64(i)), p, "directory entry past the end of the directory")
		}
		tableOff := be.Uint64(e[0:])
		tableSize := uint64(be.Uint32(e[8:]))
		flags := be.Uint32(e[12:])
		typ, gran := e[16], uint32(e[17])
		nameSize, extraSize := uint64(be.Uint16(e[18:])), uint64(be.Uint32(e[20:]))
		entLen := (bitmapDirEntryLen + extraSize + nameSize + 7) &^ 7
		switch {
		case entLen > uint64(len(e)):
			return nil, corrupt("bitmap_directory.extra_data_size", extraSize, "directory entry past the end of the directory")
		case flags&^bitmapFlagsKnown != 0:
			return nil, corrupt("bitmap_directory.flags", uint64(flags), "reserved bitmap flags set")
		case typ != bitmapTypeDirty:
			return nil, unsupported("bitmap_directory.type", uint64(typ), "unknown bitmap type")
		case gran < MinBitmapGranularityBits || gran > MaxBitmapGranularityBits:
			return nil, corrupt("bitmap_directory.granularity_bits", uint64(gran), "bitmap granularity outside 2^9..2^31")
		case nameSize == 0 || nameSize > MaxBitmapNameLen:
			return nil, corrupt("bitmap_directory.name_size", nameSize, "bitmap name size outside 1..1023")
		case tableSize == 0 || tableSize > MaxBitmapTableEntries:
			return nil, limit("bitmap_directory.bitmap_table_size", tableSize, "bitmap table size outside 1..2^27")
		}
		// The table must have exactly the entries the disk size needs:
		// one bit per granule, cluster_size*8 bits per data cluster.
		bits := (h.Size + (uint64(1)<<gran - 1)) >> gran
		if want := (bits + cs*8 - 1) / (cs * 8); tableSize != want {
			return nil, corrupt("bitmap_directory.bitmap_table_size", tableSize, "bitmap table size does not match the disk size")
		}
		tableBytes := tableSize * 8
		if err := bitmapArea("bitmap_directory.bitmap_table_offset", tableOff, tableBytes, cs, fs); err != nil {
			return nil, err
		}
		for c := tableOff; c < tableOff+tableBytes; c += cs {
			if err := add("bitmap_directory.bitmap_table_offset", c); err != nil {
				return nil, err
			}
			n := min(cs, tableOff+tableBytes-c)
			if err := readAt(r, buf[:n], int64(c)); err != nil {
				return nil, err
			}
			for j := uint64(0); j < n; j += 8 {
				v := be.Uint64(buf[j:])
				off := v & bitmapEntryOffsetMask
				field := "bitmap_table"
				if v&^(bitmapEntryOffsetMask|bitmapEntryAllOnes) != 0 {
					return nil, corrupt(field, v, "reserved bits set in a bitmap table entry")
				}
				if off == 0 {
					continue // all zeros, or all ones with bit 0
				}
				if v&bitmapEntryAllOnes != 0 {
					return nil, corrupt(field, v, "bitmap table entry with both an offset and bit 0")
				}
				// A data cluster at the end of the file may be short
				// (reads past EOF are zeros): only its start must be in it.
				if err := bitmapArea(field, off, 1, cs, fs); err != nil {
					return nil, err
				}
				if err := add(field, off); err != nil {
					return nil, err
				}
			}
		}
		p += entLen
	}
	if p != bm.DirectorySize {
		return nil, corrupt("bitmap_directory_size", bm.DirectorySize, "bitmap directory size does not match its entries")
	}
	slices.Sort(owned)
	for i := 1; i < len(owned); i++ {
		if owned[i] == owned[i-1] {
			return nil, corrupt("bitmap_directory", uint64(owned[i]), "cluster owned twice by bitmaps")
		}
	}
	return owned, nil
}

// bitmapArea checks that n bytes at off are cluster aligned, outside the
// header cluster and inside a file of fs bytes.
func bitmapArea(field string, off, n, cs, fs uint64) error {
	switch {
	case off == 0 || off%cs != 0:
		return corrupt(field, off, "offset not cluster aligned or in the header cluster")
	case off < cs:
		return corrupt(field, off, "offset in the header cluster")
	case off >= fs || n > fs-off:
		return outOfRange(field, off, "area past the end of the file")
	}
	return nil
}

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
func (d *Driver) dropBitmaps(co *aio.Co, r *block.Request) error {
	d.mu.Lock()
	h := *d.hdr
	fileSize := d.geo.FileSize
	d.mu.Unlock()
	if h.Bitmaps == nil || h.Version < 3 || h.BackingFile != "" {
		// With a backing file the name would move after the end marker;
		// that rewrite is not torn-write safe, so the clusters leak.
		return nil
	}
	owned, err := BitmapClusters(coReader{d, co, r}, &h, fileSize)
	if err != nil {
		return nil // damaged or hostile directory: leak, keep the extension
	}
	cs := d.geo.ClusterSize()
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
		rc, err := RefcountGet(rb.buf, d.geo.RefcountOrder, bi)
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
	const span = 8 + bitmapsExtLen + 8 // extension header, data, old end marker
	if p+span > cs {
		return nil
	}
	disk := make([]byte, p+span)
	if err := d.fileRead(co, r, disk, 0); err != nil {
		return err
	}
	be := binary.BigEndian
	if string(disk[:p]) != string(nb[:p]) || be.Uint32(disk[p:]) != ExtBitmaps ||
		be.Uint32(disk[p+4:]) != bitmapsExtLen || be.Uint64(disk[p+32:]) != 0 {
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
	d.hdr.Bitmaps = nil
	for _, c := range owned {
		d.pendingFrees = append(d.pendingFrees, hostFree{c, cs})
	}
	d.mu.Unlock()
	return nil
}
