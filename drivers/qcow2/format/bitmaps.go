package format

import (
	"encoding/binary"
	"io"
	"slices"
	"strconv"
)

// Persistent dirty bitmaps: the bitmaps header extension, the bitmap
// directory it points at, each bitmap's table and the data clusters the
// tables point at (docs/spec/qcow2.md §1.7, §2.11). This file decodes,
// validates and encodes them; drivers/qcow2 loads, tracks and stores them.
//
// Layout. The extension (24 bytes) holds nb_bitmaps, a reserved word, the
// directory's size in bytes and its cluster-aligned offset. The directory
// is nb_bitmaps variable-length entries, each 8-byte aligned: table offset
// (8), table size in entries (4), flags (4), type (1, always 1: dirty
// tracking), granularity bits (1), name size (2), extra data size (4),
// extra data, name (no NUL), zero padding. A table is table_size 8-byte
// entries, one per cluster_size*8 bits of the bitmap: bits 9..55 a data
// cluster's offset; offset 0 means every bit of that part is 0, or 1 when
// bit 0 is set. Bit i of the bitmap (granule i, bytes i<<granularity_bits
// onward) is bit i%8 of byte i/8 of the bitmap's data (least significant
// bit first).

// Bitmap directory limits (QEMU 7.2's values; MaxBitmaps and
// MaxBitmapDirectoryBytes are in limits.go).
const (
	MaxBitmapNameLen         = 1023      // name_size
	MaxBitmapTableEntries    = 0x8000000 // bitmap_table_size
	MaxBitmapExtraData       = 1 << 20   // extra_data_size we accept (QEMU writes 0)
	MaxBitmapBytes           = 1 << 29   // one bitmap's bits in memory (QEMU's BME_MAX_PHYS_SIZE)
	MinBitmapGranularityBits = 9         // granularity_bits
	MaxBitmapGranularityBits = 31        // granularity_bits
	bitmapDirEntryLen        = 24        // fixed part of a directory entry
	bitmapTypeDirty          = 1         // the only bitmap type
	bitmapEntryOffsetMask    = uint64(0x00fffffffffffe00)
	bitmapEntryAllOnes       = uint64(1) // bit 0, only without an offset
)

// Bitmap directory entry flags.
const (
	BitmapInUse               = uint32(1) << 0 // being modified, or was at a crash: inconsistent
	BitmapAuto                = uint32(1) << 1 // enabled: tracks every write
	BitmapExtraDataCompatible = uint32(1) << 2 // extra data may be ignored
	bitmapFlagsKnown          = BitmapInUse | BitmapAuto | BitmapExtraDataCompatible
)

// BitmapEntry is one bitmap directory entry.
type BitmapEntry struct {
	Name            string
	Flags           uint32
	GranularityBits uint32
	TableOffset     uint64 // cluster aligned
	TableSize       uint32 // entries
	ExtraData       []byte // kept as read; QEMU writes none
}

// InUse reports the in_use flag: the bitmap was being changed when the
// image was last closed (or is now): its bits cannot be trusted.
func (e *BitmapEntry) InUse() bool { return e.Flags&BitmapInUse != 0 }

// Auto reports the auto flag: the bitmap is enabled.
func (e *BitmapEntry) Auto() bool { return e.Flags&BitmapAuto != 0 }

// Granularity is the number of guest bytes one bit stands for.
func (e *BitmapEntry) Granularity() int64 { return int64(1) << e.GranularityBits }

// Usable reports whether the bitmap's bits may be loaded and maintained:
// not in use, and no extra data this package would have to understand.
func (e *BitmapEntry) Usable() bool {
	return !e.InUse() && (len(e.ExtraData) == 0 || e.Flags&BitmapExtraDataCompatible != 0)
}

// FlagNames lists the flags as qemu-img info names them ("auto",
// "in-use"), in QEMU's order.
func (e *BitmapEntry) FlagNames() []string {
	out := []string{}
	if e.InUse() {
		out = append(out, "in-use")
	}
	if e.Auto() {
		out = append(out, "auto")
	}
	return out
}

// BitmapTableEntries is the number of table entries a bitmap of the
// given granularity needs over a disk of size bytes with clusters of cs
// bytes: one per cs*8 bits.
func BitmapTableEntries(size uint64, granBits uint32, cs uint64) uint64 {
	bits := (size + (uint64(1)<<granBits - 1)) >> granBits
	return (bits + cs*8 - 1) / (cs * 8)
}

// BitmapDirectoryEntrySize is the bytes entry e takes in the directory.
func BitmapDirectoryEntrySize(e *BitmapEntry) uint64 {
	return (bitmapDirEntryLen + uint64(len(e.ExtraData)) + uint64(len(e.Name)) + 7) &^ 7
}

// checkBitmapsExt checks the extension's fields and the directory's place.
func checkBitmapsExt(h *Header, cs, fs uint64) error {
	bm := h.Bitmaps
	switch {
	case bm.Count == 0:
		return Corrupt("bitmaps_ext.nb_bitmaps", 0, "bitmaps extension with zero bitmaps")
	case bm.Count > MaxBitmaps:
		return Limit("bitmaps_ext.nb_bitmaps", uint64(bm.Count), "too many bitmaps")
	case bm.Reserved != 0:
		return Corrupt("bitmaps_ext.reserved", uint64(bm.Reserved), "reserved field is not zero")
	case bm.DirectorySize > MaxBitmapDirectoryBytes:
		return Limit("bitmaps_ext.bitmap_directory_size", bm.DirectorySize, "bitmap directory too large")
	case bm.DirectorySize < uint64(bm.Count)*bitmapDirEntryLen:
		return Corrupt("bitmap_directory_size", bm.DirectorySize, "bitmap directory too small for nb_bitmaps entries")
	}
	return bitmapArea("bitmaps_ext.bitmap_directory_offset", bm.DirectoryOffset, bm.DirectorySize, cs, fs)
}

// ReadBitmapDirectory reads and validates the bitmap directory h.Bitmaps
// describes, through r (an image file of fileSize bytes). It does not
// look at the autoclear bit: callers decide whether the extension is
// trusted (Header.BitmapsConsistent). Errors are *FormatError values.
func ReadBitmapDirectory(r io.ReaderAt, h *Header, fileSize int64) ([]BitmapEntry, error) {
	if h.Bitmaps == nil {
		return nil, nil
	}
	cs, fs := uint64(h.ClusterSize()), uint64(max(fileSize, 0))
	if err := checkBitmapsExt(h, cs, fs); err != nil {
		return nil, err
	}
	dir := make([]byte, h.Bitmaps.DirectorySize)
	if err := ReadFull(r, dir, int64(h.Bitmaps.DirectoryOffset)); err != nil {
		return nil, err
	}
	return ParseBitmapDirectory(dir, h, fileSize)
}

// ParseBitmapDirectory decodes the directory bytes dir of the image with
// header h (h.Bitmaps gives the entry count and the directory's place)
// in a file of fileSize bytes, and validates every entry: known flags and
// type, granularity 2^9..2^31, name 1..1023 bytes and unique, table size
// exactly what the disk size needs (unless in use), tables cluster aligned, inside the
// file, outside the header cluster and not overlapping each other or the
// directory, and entries that fill the directory exactly.
func ParseBitmapDirectory(dir []byte, h *Header, fileSize int64) ([]BitmapEntry, error) {
	bm := h.Bitmaps
	if bm == nil {
		return nil, nil
	}
	cs, fs := uint64(h.ClusterSize()), uint64(max(fileSize, 0))
	if uint64(len(dir)) != bm.DirectorySize {
		return nil, Corrupt("bitmap_directory_size", bm.DirectorySize, "directory bytes do not match bitmap_directory_size")
	}
	if err := checkBitmapsExt(h, cs, fs); err != nil {
		return nil, err
	}
	be := binary.BigEndian
	out := make([]BitmapEntry, 0, bm.Count)
	type span struct{ start, end uint64 }
	areas := []span{{bm.DirectoryOffset, bm.DirectoryOffset + (bm.DirectorySize+cs-1)&^(cs-1)}}
	p := uint64(0)
	for i := uint32(0); i < bm.Count; i++ {
		field := Indexed("bitmap_directory", uint64(i))
		e := dir[p:]
		if uint64(len(e)) < bitmapDirEntryLen {
			return nil, Corrupt(field, p, "directory entry past the end of the directory")
		}
		var ent BitmapEntry
		ent.TableOffset = be.Uint64(e[0:])
		tableSize := uint64(be.Uint32(e[8:]))
		ent.TableSize = uint32(tableSize)
		ent.Flags = be.Uint32(e[12:])
		typ := e[16]
		ent.GranularityBits = uint32(e[17])
		nameSize, extraSize := uint64(be.Uint16(e[18:])), uint64(be.Uint32(e[20:]))
		entLen := (bitmapDirEntryLen + extraSize + nameSize + 7) &^ 7
		switch {
		case extraSize > MaxBitmapExtraData:
			return nil, Limit(field+".extra_data_size", extraSize, "bitmap extra data too large")
		case ent.Flags&^bitmapFlagsKnown != 0:
			return nil, Corrupt(field+".flags", uint64(ent.Flags), "reserved bitmap flags set")
		case typ != bitmapTypeDirty:
			return nil, Unsupported(field+".type", uint64(typ), "unknown bitmap type")
		case ent.GranularityBits < MinBitmapGranularityBits || ent.GranularityBits > MaxBitmapGranularityBits:
			return nil, Corrupt(field+".granularity_bits", uint64(ent.GranularityBits), "bitmap granularity outside 2^9..2^31")
		case nameSize == 0 || nameSize > MaxBitmapNameLen:
			return nil, Corrupt(field+".name_size", nameSize, "bitmap name size outside 1..1023")
		case entLen > uint64(len(e)):
			return nil, Corrupt(field+".extra_data_size", extraSize, "directory entry past the end of the directory")
		case tableSize == 0 || tableSize > MaxBitmapTableEntries:
			return nil, Limit(field+".bitmap_table_size", tableSize, "bitmap table size outside 1..2^27")
		}
		if bits := (h.Size + (uint64(1)<<ent.GranularityBits - 1)) >> ent.GranularityBits; (bits+7)/8 > MaxBitmapBytes {
			return nil, Limit(field+".granularity_bits", uint64(ent.GranularityBits), "bitmap too large for memory at this granularity")
		}
		// An entry in use may have been sized for another disk size: a
		// resize and a crash before the close stored it again (QEMU's
		// check_dir_entry checks only entries not in use). Its bits are
		// never loaded; it is listed and removable.
		if want := BitmapTableEntries(h.Size, ent.GranularityBits, cs); tableSize != want && ent.Flags&BitmapInUse == 0 {
			return nil, Corrupt(field+".bitmap_table_size", tableSize, "bitmap table size does not match the disk size (want "+strconv.FormatUint(want, 10)+")")
		}
		tableBytes := tableSize * 8
		if err := bitmapArea(field+".bitmap_table_offset", ent.TableOffset, tableBytes, cs, fs); err != nil {
			return nil, err
		}
		if extraSize > 0 {
			ent.ExtraData = append([]byte(nil), e[bitmapDirEntryLen:bitmapDirEntryLen+extraSize]...)
		}
		ent.Name = string(e[bitmapDirEntryLen+extraSize : bitmapDirEntryLen+extraSize+nameSize])
		for _, x := range e[bitmapDirEntryLen+extraSize+nameSize : entLen] {
			if x != 0 {
				return nil, Corrupt(field+".padding", uint64(x), "directory entry padding is not zero")
			}
		}
		for j := range out {
			if out[j].Name == ent.Name {
				return nil, Corrupt(field+".name", uint64(i), "duplicate bitmap name "+strconv.Quote(ent.Name))
			}
		}
		areas = append(areas, span{ent.TableOffset, ent.TableOffset + (tableBytes+cs-1)&^(cs-1)})
		out = append(out, ent)
		p += entLen
	}
	if p != bm.DirectorySize {
		return nil, Corrupt("bitmap_directory_size", bm.DirectorySize, "bitmap directory size does not match its entries")
	}
	slices.SortFunc(areas, func(a, b span) int {
		switch {
		case a.start < b.start:
			return -1
		case a.start > b.start:
			return 1
		}
		return 0
	})
	for i := 1; i < len(areas); i++ {
		if areas[i].start < areas[i-1].end {
			return nil, Corrupt("bitmap_directory", areas[i].start, "bitmap tables or directory overlap")
		}
	}
	return out, nil
}

// AppendBitmapDirectory appends the encoded directory of entries to dst.
// Entries are checked as ParseBitmapDirectory would (names, flags,
// granularity, table sizes up to 2^27), except against an image.
func AppendBitmapDirectory(dst []byte, entries []BitmapEntry) ([]byte, error) {
	if len(entries) == 0 || len(entries) > MaxBitmaps {
		return nil, Limit("bitmaps_ext.nb_bitmaps", uint64(len(entries)), "bitmap count outside 1..65535")
	}
	start := len(dst)
	be := binary.BigEndian
	for i := range entries {
		e := &entries[i]
		field := Indexed("bitmap_directory", uint64(i))
		switch {
		case len(e.Name) == 0 || len(e.Name) > MaxBitmapNameLen:
			return nil, Limit(field+".name_size", uint64(len(e.Name)), "bitmap name size outside 1..1023")
		case e.Flags&^bitmapFlagsKnown != 0:
			return nil, Corrupt(field+".flags", uint64(e.Flags), "reserved bitmap flags set")
		case e.GranularityBits < MinBitmapGranularityBits || e.GranularityBits > MaxBitmapGranularityBits:
			return nil, Corrupt(field+".granularity_bits", uint64(e.GranularityBits), "bitmap granularity outside 2^9..2^31")
		case e.TableSize == 0 || e.TableSize > MaxBitmapTableEntries:
			return nil, Limit(field+".bitmap_table_size", uint64(e.TableSize), "bitmap table size outside 1..2^27")
		case len(e.ExtraData) > MaxBitmapExtraData:
			return nil, Limit(field+".extra_data_size", uint64(len(e.ExtraData)), "bitmap extra data too large")
		}
		for j := 0; j < i; j++ {
			if entries[j].Name == e.Name {
				return nil, Corrupt(field+".name", uint64(i), "duplicate bitmap name "+strconv.Quote(e.Name))
			}
		}
		dst = be.AppendUint64(dst, e.TableOffset)
		dst = be.AppendUint32(dst, e.TableSize)
		dst = be.AppendUint32(dst, e.Flags)
		dst = append(dst, bitmapTypeDirty, byte(e.GranularityBits))
		dst = be.AppendUint16(dst, uint16(len(e.Name)))
		dst = be.AppendUint32(dst, uint32(len(e.ExtraData)))
		dst = append(dst, e.ExtraData...)
		dst = append(dst, e.Name...)
		for (len(dst)-start)%8 != 0 {
			dst = append(dst, 0)
		}
	}
	if n := uint64(len(dst) - start); n > MaxBitmapDirectoryBytes {
		return nil, Limit("bitmaps_ext.bitmap_directory_size", n, "bitmap directory too large")
	}
	return dst, nil
}

// BitmapTableEntry is one decoded bitmap table entry.
type BitmapTableEntry struct {
	Offset  uint64 // data cluster, 0 if none
	AllOnes bool   // no data cluster, every bit set
}

// ParseBitmapTableEntry decodes and checks table entry v of an image with
// clusters of cs bytes in a file of fileSize bytes.
func ParseBitmapTableEntry(v uint64, cs uint64, fileSize int64) (BitmapTableEntry, error) {
	const field = "bitmap_table"
	if v&^(bitmapEntryOffsetMask|bitmapEntryAllOnes) != 0 {
		return BitmapTableEntry{}, Corrupt(field, v, "reserved bits set in a bitmap table entry")
	}
	off := v & bitmapEntryOffsetMask
	if off == 0 {
		return BitmapTableEntry{AllOnes: v&bitmapEntryAllOnes != 0}, nil
	}
	if v&bitmapEntryAllOnes != 0 {
		return BitmapTableEntry{}, Corrupt(field, v, "bitmap table entry with both an offset and bit 0")
	}
	// A data cluster at the end of the file may be short (reads past EOF
	// are zeros): only its start must be in it.
	if err := bitmapArea(field, off, 1, cs, uint64(max(fileSize, 0))); err != nil {
		return BitmapTableEntry{}, err
	}
	return BitmapTableEntry{Offset: off}, nil
}

// ParseBitmapTable decodes the table bytes b (8 bytes per entry).
func ParseBitmapTable(b []byte, cs uint64, fileSize int64) ([]BitmapTableEntry, error) {
	if len(b)%8 != 0 {
		return nil, Corrupt("bitmap_table", uint64(len(b)), "bitmap table length not a multiple of 8")
	}
	out := make([]BitmapTableEntry, len(b)/8)
	for i := range out {
		e, err := ParseBitmapTableEntry(binary.BigEndian.Uint64(b[i*8:]), cs, fileSize)
		if err != nil {
			return nil, err
		}
		out[i] = e
	}
	return out, nil
}

// BitmapTableWord encodes a table entry pointing at data cluster off (0:
// all zeros).
func BitmapTableWord(off uint64) uint64 { return off & bitmapEntryOffsetMask }

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
	entries, err := ReadBitmapDirectory(r, h, fileSize)
	if err != nil || entries == nil {
		return nil, err
	}
	bm := h.Bitmaps
	cs := uint64(h.ClusterSize())
	fs := uint64(max(fileSize, 0))
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
	buf := make([]byte, cs)
	for i := range entries {
		tableOff, tableBytes := entries[i].TableOffset, uint64(entries[i].TableSize)*8
		for c := tableOff; c < tableOff+tableBytes; c += cs {
			if err := add("bitmap_directory.bitmap_table_offset", c); err != nil {
				return nil, err
			}
			n := min(cs, tableOff+tableBytes-c)
			if err := ReadFull(r, buf[:n], int64(c)); err != nil {
				return nil, err
			}
			for j := uint64(0); j < n; j += 8 {
				e, err := ParseBitmapTableEntry(binary.BigEndian.Uint64(buf[j:]), cs, fileSize)
				if err != nil {
					return nil, err
				}
				if e.Offset != 0 {
					if err := add("bitmap_table", e.Offset); err != nil {
						return nil, err
					}
				}
			}
		}
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
