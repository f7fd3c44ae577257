package format

import (
	"encoding/binary"
	"io"
	"slices"
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
		return nil, Corrupt("bitmaps_ext.nb_bitmaps", 0, "bitmaps extension with zero bitmaps")
	case bm.Count > MaxBitmaps:
		return nil, Limit("bitmaps_ext.nb_bitmaps", uint64(bm.Count), "too many bitmaps")
	case bm.Reserved != 0:
		return nil, Corrupt("bitmaps_ext.reserved", uint64(bm.Reserved), "reserved field is not zero")
	case bm.DirectorySize > MaxBitmapDirectoryBytes:
		return nil, Limit("bitmaps_ext.bitmap_directory_size", bm.DirectorySize, "bitmap directory too large")
	case bm.DirectorySize < uint64(bm.Count)*bitmapDirEntryLen:
		return nil, Corrupt("bitmap_directory_size", bm.DirectorySize, "bitmap directory too small for nb_bitmaps entries")
	}
	if err := bitmapArea("bitmaps_ext.bitmap_directory_offset", bm.DirectoryOffset, bm.DirectorySize, cs, fs); err != nil {
		return nil, err
	}
	dir := make([]byte, bm.DirectorySize)
	if err := ReadFull(r, dir, int64(bm.DirectoryOffset)); err != nil {
		return nil, err
	}
	maxOwned := fs / cs
	var owned []int64
	add := func(field string, off uint64) error {
		if uint64(len(owned)) >= maxOwned {
			return Corrupt(field, off, "bitmaps own more clusters than the file has")
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
			return nil, Corrupt(Indexed("bitmap_directory", uint64(i)), p, "directory entry past the end of the directory")
		}
		tableOff := be.Uint64(e[0:])
		tableSize := uint64(be.Uint32(e[8:]))
		flags := be.Uint32(e[12:])
		typ, gran := e[16], uint32(e[17])
		nameSize, extraSize := uint64(be.Uint16(e[18:])), uint64(be.Uint32(e[20:]))
		entLen := (bitmapDirEntryLen + extraSize + nameSize + 7) &^ 7
		switch {
		case entLen > uint64(len(e)):
			return nil, Corrupt("bitmap_directory.extra_data_size", extraSize, "directory entry past the end of the directory")
		case flags&^bitmapFlagsKnown != 0:
			return nil, Corrupt("bitmap_directory.flags", uint64(flags), "reserved bitmap flags set")
		case typ != bitmapTypeDirty:
			return nil, Unsupported("bitmap_directory.type", uint64(typ), "unknown bitmap type")
		case gran < MinBitmapGranularityBits || gran > MaxBitmapGranularityBits:
			return nil, Corrupt("bitmap_directory.granularity_bits", uint64(gran), "bitmap granularity outside 2^9..2^31")
		case nameSize == 0 || nameSize > MaxBitmapNameLen:
			return nil, Corrupt("bitmap_directory.name_size", nameSize, "bitmap name size outside 1..1023")
		case tableSize == 0 || tableSize > MaxBitmapTableEntries:
			return nil, Limit("bitmap_directory.bitmap_table_size", tableSize, "bitmap table size outside 1..2^27")
		}
		// The table must have exactly the entries the disk size needs:
		// one bit per granule, cluster_size*8 bits per data cluster.
		bits := (h.Size + (uint64(1)<<gran - 1)) >> gran
		if want := (bits + cs*8 - 1) / (cs * 8); tableSize != want {
			return nil, Corrupt("bitmap_directory.bitmap_table_size", tableSize, "bitmap table size does not match the disk size")
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
			if err := ReadFull(r, buf[:n], int64(c)); err != nil {
				return nil, err
			}
			for j := uint64(0); j < n; j += 8 {
				v := be.Uint64(buf[j:])
				off := v & bitmapEntryOffsetMask
				field := "bitmap_table"
				if v&^(bitmapEntryOffsetMask|bitmapEntryAllOnes) != 0 {
					return nil, Corrupt(field, v, "reserved bits set in a bitmap table entry")
				}
				if off == 0 {
					continue // all zeros, or all ones with bit 0
				}
				if v&bitmapEntryAllOnes != 0 {
					return nil, Corrupt(field, v, "bitmap table entry with both an offset and bit 0")
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
		return nil, Corrupt("bitmap_directory_size", bm.DirectorySize, "bitmap directory size does not match its entries")
	}
	slices.Sort(owned)
	for i := 1; i < len(owned); i++ {
		if owned[i] == owned[i-1] {
			return nil, Corrupt("bitmap_directory", uint64(owned[i]), "cluster owned twice by bitmaps")
		}
	}
	return owned, nil
}

// bitmapArea checks that n bytes at off are cluster aligned, outside the
// header cluster and inside a file of fs bytes.
func bitmapArea(field string, off, n, cs, fs uint64) error {
	switch {
	case off == 0 || off%cs != 0:
		return Corrupt(field, off, "offset not cluster aligned or in the header cluster")
	case off < cs:
		return Corrupt(field, off, "offset in the header cluster")
	case off >= fs || n > fs-off:
		return OutOfRange(field, off, "area past the end of the file")
	}
	return nil
}
