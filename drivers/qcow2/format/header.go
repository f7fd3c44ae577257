package format

import (
	"encoding/binary"
	"math"
	"strconv"
	"strings"
)

// Magic is "QFI\xfb", the first four bytes of every qcow2 image.
const Magic = 0x514649fb

// Feature bits (header offsets 72, 80 and 88; version 3 only).
const (
	IncompatDirty           = uint64(1) << 0 // refcounts may be stale
	IncompatCorrupt         = uint64(1) << 1 // image must not be written
	IncompatDataFile        = uint64(1) << 2 // guest data lives in an external file
	IncompatCompressionType = uint64(1) << 3 // compression_type != zlib
	IncompatExtendedL2      = uint64(1) << 4 // 128-bit L2 entries, 32 subclusters
	// IncompatKnown is every incompatible bit this package understands. Any
	// other bit makes the image unreadable (ErrUnsupported).
	IncompatKnown = IncompatDirty | IncompatCorrupt | IncompatDataFile | IncompatCompressionType | IncompatExtendedL2

	CompatLazyRefcounts = uint64(1) << 0
	CompatKnown         = CompatLazyRefcounts

	AutoclearBitmaps     = uint64(1) << 0 // bitmaps extension is consistent
	AutoclearRawExternal = uint64(1) << 1 // external data file is valid raw
	AutoclearKnown       = AutoclearBitmaps | AutoclearRawExternal
)

// Compression types (header byte 104).
const (
	CompressionZlib = 0
	CompressionZstd = 1
)

// Header extension magics.
const (
	ExtEnd                = 0x00000000
	ExtBackingFormat      = 0xe2792aca
	ExtFeatureTable       = 0x6803f857
	ExtBitmaps            = 0x23852875
	ExtFullDiskEncryption = 0x0537be77
	ExtDataFile           = 0x44415441
)

// Feature name table entry types.
const (
	FeatureIncompatible = 0
	FeatureCompatible   = 1
	FeatureAutoclear    = 2
)

// FeatureName is one entry of the feature name table extension.
type FeatureName struct {
	Type uint8  // FeatureIncompatible, FeatureCompatible or FeatureAutoclear
	Bit  uint8  // 0..63
	Name string // at most 46 bytes, without the zero padding
}

// Extension is a header extension this package does not interpret. Its
// bytes are kept exactly and written back by MarshalBinary.
type Extension struct {
	Magic uint32
	Data  []byte
}

// BitmapsExtension is the bitmaps header extension. Its content is only
// meaningful while the autoclear bit AutoclearBitmaps is set.
type BitmapsExtension struct {
	Count           uint32 // nb_bitmaps
	Reserved        uint32 // must be 0
	DirectorySize   uint64 // bitmap_directory_size, bytes
	DirectoryOffset uint64 // bitmap_directory_offset, cluster aligned
}

// Header is a decoded, validated qcow2 header with its extensions and
// backing file name: everything stored in the first cluster.
//
// Layout fields (BackingFileOffset, BackingFileSize) describe where the
// parsed image kept the backing name; MarshalBinary recomputes them, placing
// the name right after the end-of-extensions marker as QEMU does.
type Header struct {
	Version               uint32 // 2 (compat=0.10) or 3 (compat=1.1)
	BackingFileOffset     uint64
	BackingFileSize       uint32
	ClusterBits           uint32
	Size                  uint64 // virtual disk size, bytes
	CryptMethod           uint32 // CryptNone, CryptAES or CryptLUKS after ParseHeader (crypto.go)
	L1Entries             uint32 // l1_size: number of L1 entries
	L1Offset              uint64 // l1_table_offset
	RefcountTableOffset   uint64
	RefcountTableClusters uint32
	SnapshotCount         uint32 // nb_snapshots
	SnapshotsOffset       uint64
	// Version 3 fields; zero for version 2.
	IncompatibleFeatures uint64
	CompatibleFeatures   uint64
	AutoclearFeatures    uint64
	RefcountOrder        uint32 // 4 for version 2
	HeaderLength         uint32 // 72 for version 2
	CompressionType      uint8  // present when HeaderLength > 104
	// HeaderTail holds bytes 105..HeaderLength: padding and any additional
	// fields from a newer writer, preserved for rewriting. It is empty when
	// HeaderLength is 104 (or for version 2).
	HeaderTail []byte

	BackingFile   string // "" when none
	BackingFormat string // from ExtBackingFormat; "" when absent
	DataFile      string // from ExtDataFile (ignored unless IncompatDataFile)
	// CryptoOffset and CryptoLength are the full disk encryption
	// extension: where the LUKS header area is (crypto.go).
	CryptoOffset, CryptoLength uint64
	hasCryptoExt               bool
	FeatureNames               []FeatureName
	Bitmaps                    *BitmapsExtension
	Unknown                    []Extension // in image order
}

// zbuf reads a byte slice as if it were followed by zeros: the first
// cluster of an image may be cut short by EOF, and QEMU reads past EOF as
// zeros.
type zbuf []byte

func (z zbuf) u8(off int) uint8 {
	if off < len(z) {
		return z[off]
	}
	return 0
}

func (z zbuf) u16(off int) uint16 { return uint16(z.u8(off))<<8 | uint16(z.u8(off+1)) }
func (z zbuf) u32(off int) uint32 { return uint32(z.u16(off))<<16 | uint32(z.u16(off+2)) }
func (z zbuf) u64(off int) uint64 { return uint64(z.u32(off))<<32 | uint64(z.u32(off+4)) }

// bytes returns a copy of n bytes at off, zero-filled past the end.
// REQUIRES: n is bounded by the caller (at most one cluster here).
func (z zbuf) bytes(off, n int) []byte {
	if n == 0 {
		return nil
	}
	out := make([]byte, n)
	if off < len(z) {
		copy(out, z[off:])
	}
	return out
}

// HeaderPrefixLength is how many bytes ParsePrefix needs to learn the
// cluster size; read this much, then the whole first cluster.
const HeaderPrefixLength = MinHeaderLengthV3

// ParsePrefix checks magic, version and cluster_bits and returns the cluster
// size, so that a reader knows how much to read for ParseHeader. Bytes past
// len(b) read as zero.
func ParsePrefix(b []byte) (clusterSize int64, err error) {
	z := zbuf(b)
	if m := z.u32(0); m != Magic {
		return 0, &FormatError{Field: "magic", Value: uint64(m), Reason: "not a qcow2 image", Err: ErrNotQcow2}
	}
	switch v := z.u32(4); v {
	case 2, 3:
	case 1:
		return 0, Unsupported("version", uint64(v), "version 1 is the older qcow format")
	default:
		return 0, Unsupported("version", uint64(v), "unsupported qcow2 version")
	}
	cb := z.u32(20)
	if cb < MinClusterBits || cb > MaxClusterBits {
		return 0, Limit("cluster_bits", uint64(cb), "cluster size outside 2^9..2^21")
	}
	return int64(1) << cb, nil
}

// ParseHeader decodes and validates the first cluster of an image: header
// fields, extensions and backing file name. b may be shorter than a cluster
// (a short file); missing bytes read as zero. b is not retained.
//
// It enforces every header-level limit of limits.go and rejects what the
// format or our policy forbids: unknown incompatible bits, encryption, an
// external data file, an unknown compression type, and backing names that
// use json: or a protocol prefix. The dirty and corrupt bits are accepted
// here; CheckWritable refuses them for read-write use.
func ParseHeader(b []byte) (*Header, error) { return parseHeader(b, false) }

// parseHeader is ParseHeader; checkMode leaves the snapshot table pointer
// unchecked (QEMU's BDRV_O_CHECK open: Image.ReadSnapshotsForCheck checks
// and repairs it).
func parseHeader(b []byte, checkMode bool) (*Header, error) {
	cs, err := ParsePrefix(b)
	if err != nil {
		return nil, err
	}
	z := zbuf(b)
	h := &Header{
		Version:               z.u32(4),
		BackingFileOffset:     z.u64(8),
		BackingFileSize:       z.u32(16),
		ClusterBits:           z.u32(20),
		Size:                  z.u64(24),
		CryptMethod:           z.u32(32),
		L1Entries:             z.u32(36),
		L1Offset:              z.u64(40),
		RefcountTableOffset:   z.u64(48),
		RefcountTableClusters: z.u32(56),
		SnapshotCount:         z.u32(60),
		SnapshotsOffset:       z.u64(64),
	}
	if h.Version == 2 {
		h.RefcountOrder = 4
		h.HeaderLength = HeaderLengthV2
	} else {
		h.IncompatibleFeatures = z.u64(72)
		h.CompatibleFeatures = z.u64(80)
		h.AutoclearFeatures = z.u64(88)
		h.RefcountOrder = z.u32(96)
		h.HeaderLength = z.u32(100)
		if h.HeaderLength < MinHeaderLengthV3 {
			return nil, Corrupt("header_length", uint64(h.HeaderLength), "qcow2 header too short")
		}
		if int64(h.HeaderLength) > cs {
			return nil, Corrupt("header_length", uint64(h.HeaderLength), "header exceeds cluster size")
		}
		if h.HeaderLength%8 != 0 {
			return nil, Corrupt("header_length", uint64(h.HeaderLength), "not a multiple of 8")
		}
		if h.HeaderLength > MinHeaderLengthV3 {
			h.CompressionType = z.u8(104)
			h.HeaderTail = z.bytes(105, int(h.HeaderLength)-105)
		}
	}

	// The extension area runs from the end of the header to the backing
	// file name, or to the end of the first cluster.
	extEnd := uint64(cs)
	if h.BackingFileOffset != 0 {
		if h.BackingFileOffset > uint64(cs) {
			return nil, Corrupt("backing_file_offset", h.BackingFileOffset, "invalid backing file offset (beyond the first cluster)")
		}
		if h.BackingFileOffset < uint64(h.HeaderLength) {
			return nil, Corrupt("backing_file_offset", h.BackingFileOffset, "backing file name overlaps the header")
		}
		extEnd = h.BackingFileOffset
	}
	if err := h.parseExtensions(z, uint64(h.HeaderLength), extEnd); err != nil {
		return nil, err
	}
	if h.BackingFileOffset != 0 {
		room := uint64(cs) - h.BackingFileOffset
		if uint64(h.BackingFileSize) > MaxBackingNameLen || uint64(h.BackingFileSize) > room {
			return nil, Limit("backing_file_size", uint64(h.BackingFileSize), "backing file name too long")
		}
		h.BackingFile = string(z.bytes(int(h.BackingFileOffset), int(h.BackingFileSize)))
	} else {
		h.BackingFileSize = 0
	}
	if err := h.validate(checkMode); err != nil {
		return nil, err
	}
	return h, nil
}

// parseExtensions walks {magic, len, data, pad to 8}* from start to end.
func (h *Header) parseExtensions(z zbuf, start, end uint64) error {
	var seen uint8 // bit per known extension, to refuse duplicates
	for off := start; off < end; {
		magic, n := z.u32(int(off)), uint64(z.u32(int(off)+4))
		off += 8
		// An extension header that does not fit before end is refused
		// too, even the end marker, as QEMU does (iotest 080).
		if off > end || n > end-off {
			return Corrupt(extName(magic), n, "header extension too large")
		}
		if magic == ExtEnd {
			return nil
		}
		data := z.bytes(int(off), int(n)) // n < one cluster
		var bit uint8
		switch magic {
		case ExtBackingFormat:
			// A second backing format extension replaces the first,
			// as in QEMU (iotest 114): not a duplicate to refuse.
			if n > MaxBackingFormatLen {
				return Limit("backing_format_ext.len", n, "backing format name too long")
			}
			if strings.IndexByte(string(data), 0) >= 0 {
				return Corrupt("backing_format_ext", n, "NUL byte in backing format name")
			}
			h.BackingFormat = string(data)
		case ExtFeatureTable:
			bit = 2
			// A trailing partial entry reads as if padded with zeros,
			// as QEMU reads it (its buffer is zeroed past the data).
			h.FeatureNames = nil
			if n > 0 {
				h.FeatureNames = make([]FeatureName, 0, (n+featureNameLen-1)/featureNameLen)
			}
			for p := uint64(0); p < n; p += featureNameLen {
				var e [featureNameLen]byte
				copy(e[:], data[p:])
				name := e[2:]
				if i := strings.IndexByte(string(name), 0); i >= 0 {
					name = name[:i]
				}
				h.FeatureNames = append(h.FeatureNames, FeatureName{Type: e[0], Bit: e[1], Name: string(name)})
			}
		case ExtBitmaps:
			bit = 4
			if n != BitmapsExtLen {
				return Corrupt("bitmaps_ext.len", n, "invalid bitmaps extension length")
			}
			h.Bitmaps = &BitmapsExtension{
				Count:           binary.BigEndian.Uint32(data[0:]),
				Reserved:        binary.BigEndian.Uint32(data[4:]),
				DirectorySize:   binary.BigEndian.Uint64(data[8:]),
				DirectoryOffset: binary.BigEndian.Uint64(data[16:]),
			}
		case ExtFullDiskEncryption:
			bit = 16
			if err := parseCryptoExt(h, data); err != nil {
				return err
			}
		case ExtDataFile:
			bit = 8
			if strings.IndexByte(string(data), 0) >= 0 {
				return Corrupt("data_file_ext", n, "NUL byte in data file name")
			}
			h.DataFile = string(data)
		default:
			h.Unknown = append(h.Unknown, Extension{Magic: magic, Data: data})
		}
		if seen&bit != 0 {
			return Corrupt(extName(magic), uint64(magic), "duplicate header extension")
		}
		seen |= bit
		off += (n + 7) &^ 7
	}
	return nil
}

func extName(magic uint32) string {
	switch magic {
	case ExtEnd:
		return "end_of_extensions"
	case ExtBackingFormat:
		return "backing_format_ext"
	case ExtFeatureTable:
		return "feature_name_table_ext"
	case ExtBitmaps:
		return "bitmaps_ext"
	case ExtFullDiskEncryption:
		return "full_disk_encryption_ext"
	case ExtDataFile:
		return "data_file_ext"
	}
	return "extension_0x" + strconv.FormatUint(uint64(magic), 16)
}

// validate checks the fields that do not depend on the rest of the file.
func (h *Header) validate(checkMode bool) error {
	cs := uint64(1) << h.ClusterBits
	if unknown := h.IncompatibleFeatures &^ IncompatKnown; unknown != 0 {
		return h.featureError(unknown)
	}
	if err := h.validateDataFile(); err != nil { // datafile.go
		return err
	}
	if err := h.validateCrypto(); err != nil {
		return err
	}
	if h.RefcountOrder > MaxRefcountOrder {
		return Limit("refcount_order", uint64(h.RefcountOrder), "reference count entry width too large (above 64 bits)")
	}
	bit3 := h.IncompatibleFeatures&IncompatCompressionType != 0
	switch {
	case h.CompressionType > CompressionZstd:
		return Unsupported("compression_type", uint64(h.CompressionType), "unknown compression type")
	case h.CompressionType != CompressionZlib && !bit3:
		return Corrupt("compression_type", uint64(h.CompressionType), "compression type set without incompatible bit 3")
	case h.CompressionType == CompressionZlib && bit3:
		return Corrupt("incompatible_features", h.IncompatibleFeatures, "compression type bit set but compression_type is zlib or absent")
	}
	extL2 := h.IncompatibleFeatures&IncompatExtendedL2 != 0
	if extL2 && h.ClusterBits < MinClusterBitsExtendedL2 {
		return Corrupt("cluster_bits", uint64(h.ClusterBits), "extended L2 entries need clusters of at least 16 KiB")
	}
	// AutoclearRawExternal without a data file is meaningless but harmless:
	// QEMU ignores it, and as an autoclear bit a writer simply clears it.

	// Virtual size and the active L1 table.
	if h.Size > MaxImageSize {
		return Limit("size", h.Size, "virtual size above 2^61")
	}
	if uint64(h.L1Entries) > MaxL1Bytes/8 {
		return Limit("l1_size", uint64(h.L1Entries), "active L1 table too large")
	}
	if err := tableOffset("l1_table_offset", h.L1Offset, uint64(h.L1Entries)*8, cs); err != nil {
		return err
	}
	if need := L1EntriesFor(h.Size, h.ClusterBits, extL2); uint64(h.L1Entries) < need {
		if need > math.MaxInt32 {
			// No L1 table can be that large (QEMU: "Image is too big").
			return Corrupt("l1_size", uint64(h.L1Entries), "image is too big: size "+strconv.FormatUint(h.Size, 10)+" needs "+strconv.FormatUint(need, 10)+" L1 entries (at most 2^31-1)")
		}
		return Corrupt("l1_size", uint64(h.L1Entries), "L1 table is too small for size "+strconv.FormatUint(h.Size, 10))
	}

	// Refcount table.
	if h.RefcountTableClusters == 0 {
		return Corrupt("refcount_table_clusters", 0, "image does not contain a reference count table")
	}
	if uint64(h.RefcountTableClusters) > MaxRefcountTableBytes>>h.ClusterBits {
		return Limit("refcount_table_clusters", uint64(h.RefcountTableClusters), "reference count table too large")
	}
	if err := tableOffset("refcount_table_offset", h.RefcountTableOffset, uint64(h.RefcountTableClusters)<<h.ClusterBits, cs); err != nil {
		return err
	}

	// Snapshot table: the count is checked as QEMU does (fixed part of
	// every entry within MaxSnapshots entries); the exact size needs the
	// table itself (ReadImage, ParseSnapshotTable).
	if !checkMode {
		if err := h.validateSnapshotPointer(); err != nil {
			return err
		}
	}

	// Bitmaps: validated only while the autoclear bit vouches for them;
	// otherwise QEMU ignores the extension as stale.
	if b := h.Bitmaps; b != nil && h.BitmapsConsistent() {
		switch {
		case b.Reserved != 0:
			return Corrupt("bitmaps_ext.reserved", uint64(b.Reserved), "reserved field is not zero")
		case b.Count == 0:
			return Corrupt("bitmaps_ext.nb_bitmaps", 0, "bitmaps extension with zero bitmaps")
		case b.Count > MaxBitmaps:
			return Limit("bitmaps_ext.nb_bitmaps", uint64(b.Count), "too many bitmaps")
		case b.DirectorySize > MaxBitmapDirectoryBytes:
			return Limit("bitmaps_ext.bitmap_directory_size", b.DirectorySize, "bitmap directory too large")
		}
		if err := tableOffset("bitmaps_ext.bitmap_directory_offset", b.DirectoryOffset, b.DirectorySize, cs); err != nil {
			return err
		}
	}

	// Backing file name policy (qcow2.md §3.2 rows 38 and 40).
	if name := h.BackingFile; name != "" {
		if strings.IndexByte(name, 0) >= 0 {
			return Corrupt("backing_file", uint64(len(name)), "NUL byte in backing file name")
		}
		// rbd: names pass: whether to follow one is the opener's policy
		// (off unless asked for, design/rbd.md), as it reaches a cluster.
		if hasProtocol(name) && !strings.HasPrefix(name, "rbd:") {
			shown := name
			if len(shown) > 40 {
				shown = shown[:40] + "..."
			}
			return Unsupported("backing_file", uint64(len(name)),
				"json: and protocol-prefixed backing file names are refused: "+strconv.Quote(shown))
		}
	}
	return nil
}

// tableOffset checks a table's offset as QEMU's qcow2_validate_table does:
// cluster aligned, and offset + size must not pass 2^63.
// validateSnapshotPointer checks nb_snapshots and snapshots_offset as
// QEMU's open does (qcow2_validate_table: at most MaxSnapshots entries of
// the fixed 40 bytes, an aligned offset whose table ends below 2^63).
func (h *Header) validateSnapshotPointer() error {
	if h.SnapshotCount > MaxSnapshots {
		return Limit("nb_snapshots", uint64(h.SnapshotCount), "snapshot table too large")
	}
	return tableOffset("snapshots_offset", h.SnapshotsOffset, uint64(h.SnapshotCount)*snapshotHeaderLen, uint64(1)<<h.ClusterBits)
}

func tableOffset(field string, off, size, cs uint64) error {
	if off&(cs-1) != 0 {
		return Corrupt(field, off, "offset invalid (not cluster aligned)")
	}
	if off > 1<<63-1-size {
		return Corrupt(field, off, "offset invalid (table end beyond 2^63)")
	}
	return nil
}

// hasProtocol reports whether name would be taken as "protocol:rest" by
// QEMU (path_has_protocol: a ':' before any '/'), which covers json:,
// nbd:, file: and every other protocol prefix.
func hasProtocol(name string) bool {
	i := strings.IndexAny(name, ":/")
	return i >= 0 && name[i] == ':'
}

// describeBits names each set bit of mask, using the image's feature name
// table where it has an entry ("bit 5 \"foo\", bit 63").
func (h *Header) describeBits(typ uint8, mask uint64) string {
	var sb strings.Builder
	for bit := uint8(0); bit < 64; bit++ {
		if mask&(uint64(1)<<bit) == 0 {
			continue
		}
		if sb.Len() > 0 {
			sb.WriteString(", ")
		}
		sb.WriteString("bit ")
		sb.WriteString(strconv.Itoa(int(bit)))
		for _, f := range h.FeatureNames {
			if f.Type == typ && f.Bit == bit {
				sb.WriteString(" ")
				sb.WriteString(strconv.Quote(f.Name))
				break
			}
		}
	}
	return sb.String()
}

// ClusterSize returns the cluster size in bytes.
func (h *Header) ClusterSize() int64 { return int64(1) << h.ClusterBits }

// ExtendedL2 reports whether L2 entries are 128-bit with subclusters.
func (h *Header) ExtendedL2() bool { return h.IncompatibleFeatures&IncompatExtendedL2 != 0 }

// BitmapsConsistent reports whether the bitmaps extension may be trusted:
// it is present and the autoclear bit is still set.
func (h *Header) BitmapsConsistent() bool {
	return h.Bitmaps != nil && h.AutoclearFeatures&AutoclearBitmaps != 0
}

// Geometry returns the mapping parameters of this header for a file of
// fileSize bytes (0: skip end-of-file checks).
func (h *Header) Geometry(fileSize int64) Geometry {
	return Geometry{
		ClusterBits:   h.ClusterBits,
		RefcountOrder: h.RefcountOrder,
		ExtendedL2:    h.ExtendedL2(),
		ZeroFlag:      h.Version >= 3 && !h.ExtendedL2(),
		Size:          int64(h.Size),
		FileSize:      fileSize,
		ExternalData:  h.HasDataFile(),
	}
}

// CheckWritable reports why the image must not be opened read-write: the
// corrupt bit (QEMU: "image is corrupt; cannot be opened read/write") and
// the dirty bit (refcounts may be stale; a rebuild is not implemented).
// Read-only use of such images is fine.
func (h *Header) CheckWritable() error {
	if h.IncompatibleFeatures&IncompatCorrupt != 0 {
		return Corrupt("incompatible_features", h.IncompatibleFeatures, "image is marked corrupt; cannot be opened read/write")
	}
	if h.IncompatibleFeatures&IncompatDirty != 0 {
		return Unsupported("incompatible_features", h.IncompatibleFeatures, "image is dirty (lazy refcounts): its refcounts must be repaired before read/write use (the driver does this at a read-write open; qemu-img check -r all does it offline)")
	}
	return nil
}

// AutoclearToClear returns the autoclear bits a writer must clear (header
// write, then flush) before its first write to the image: every set bit
// except those in maintained that this package also knows. Unknown bits
// are always returned, because a writer that does not know a feature cannot
// keep its data consistent. Pass 0 if the writer maintains no autoclear
// feature (then AutoclearBitmaps is cleared too, and QEMU will treat the
// bitmaps as inconsistent rather than trust stale ones).
func (h *Header) AutoclearToClear(maintained uint64) uint64 {
	return h.AutoclearFeatures &^ (maintained & AutoclearKnown)
}

// DefaultFeatureNames returns the feature name table QEMU 7.2 writes into
// version 3 images with clusters above 4 KiB.
func DefaultFeatureNames() []FeatureName {
	return []FeatureName{
		{FeatureIncompatible, 0, "dirty bit"},
		{FeatureIncompatible, 1, "corrupt bit"},
		{FeatureIncompatible, 2, "external data file"},
		{FeatureIncompatible, 3, "compression type"},
		{FeatureIncompatible, 4, "extended L2 entries"},
		{FeatureCompatible, 0, "lazy refcounts"},
		{FeatureAutoclear, 0, "bitmaps"},
		{FeatureAutoclear, 1, "raw external data"},
	}
}

// MarshalBinary encodes the header, its extensions and the backing file
// name as QEMU's qcow2_update_header lays them out: header fields (with
// HeaderTail preserved), then extensions in the order backing format, data
// file, feature name table, bitmaps, unknown ones in their original order,
// the end marker, and the backing name right after it. The result is the
// prefix of the first cluster; the rest of the cluster is zero.
//
// The output is parsed again before it is returned, so MarshalBinary never
// produces a header ParseHeader would refuse.
func (h *Header) MarshalBinary() ([]byte, error) {
	if h.ClusterBits < MinClusterBits || h.ClusterBits > MaxClusterBits {
		return nil, Limit("cluster_bits", uint64(h.ClusterBits), "cluster size outside 2^9..2^21")
	}
	cs := 1 << h.ClusterBits
	var hl int
	switch h.Version {
	case 2:
		if h.HeaderLength != HeaderLengthV2 || h.IncompatibleFeatures != 0 || h.CompatibleFeatures != 0 ||
			h.AutoclearFeatures != 0 || h.RefcountOrder != 4 || h.CompressionType != 0 || len(h.HeaderTail) != 0 {
			return nil, Corrupt("version", 2, "version 2 header with version 3 fields")
		}
		hl = HeaderLengthV2
	case 3:
		hl = int(h.HeaderLength)
		tail := 0
		if hl > MinHeaderLengthV3 {
			tail = hl - 105
		}
		if hl < MinHeaderLengthV3 || hl > cs || hl%8 != 0 || len(h.HeaderTail) != tail ||
			(hl == MinHeaderLengthV3 && h.CompressionType != 0) {
			return nil, Corrupt("header_length", uint64(h.HeaderLength), "header length does not match the header fields")
		}
	default:
		return nil, Unsupported("version", uint64(h.Version), "unsupported qcow2 version")
	}
	if len(h.BackingFile) > MaxBackingNameLen {
		return nil, Limit("backing_file_size", uint64(len(h.BackingFile)), "backing file name too long")
	}

	b := make([]byte, hl, cs)
	be := binary.BigEndian
	be.PutUint32(b[0:], Magic)
	be.PutUint32(b[4:], h.Version)
	be.PutUint32(b[20:], h.ClusterBits)
	be.PutUint64(b[24:], h.Size)
	be.PutUint32(b[32:], h.CryptMethod)
	be.PutUint32(b[36:], h.L1Entries)
	be.PutUint64(b[40:], h.L1Offset)
	be.PutUint64(b[48:], h.RefcountTableOffset)
	be.PutUint32(b[56:], h.RefcountTableClusters)
	be.PutUint32(b[60:], h.SnapshotCount)
	be.PutUint64(b[64:], h.SnapshotsOffset)
	if h.Version == 3 {
		be.PutUint64(b[72:], h.IncompatibleFeatures)
		be.PutUint64(b[80:], h.CompatibleFeatures)
		be.PutUint64(b[88:], h.AutoclearFeatures)
		be.PutUint32(b[96:], h.RefcountOrder)
		be.PutUint32(b[100:], h.HeaderLength)
		if hl > MinHeaderLengthV3 {
			b[104] = h.CompressionType
			copy(b[105:], h.HeaderTail)
		}
	}

	ext := func(magic uint32, data []byte) {
		b = be.AppendUint32(b, magic)
		b = be.AppendUint32(b, uint32(len(data)))
		b = append(b, data...)
		for len(b)%8 != 0 {
			b = append(b, 0)
		}
	}
	if h.BackingFormat != "" {
		ext(ExtBackingFormat, []byte(h.BackingFormat))
	}
	if h.DataFile != "" {
		ext(ExtDataFile, []byte(h.DataFile))
	}
	if h.CryptoOffset != 0 || h.CryptoLength != 0 {
		ext(ExtFullDiskEncryption, h.cryptoExt())
	}
	if len(h.FeatureNames) > 0 {
		if len(h.FeatureNames) > cs/featureNameLen {
			return nil, Limit("feature_name_table_ext.len", uint64(len(h.FeatureNames)), "feature table does not fit in a cluster")
		}
		data := make([]byte, featureNameLen*len(h.FeatureNames))
		for i, f := range h.FeatureNames {
			if len(f.Name) > featureNameLen-2 {
				return nil, Limit("feature_name_table_ext.name", uint64(len(f.Name)), "feature name longer than 46 bytes")
			}
			p := data[i*featureNameLen:]
			p[0], p[1] = f.Type, f.Bit
			copy(p[2:], f.Name)
		}
		ext(ExtFeatureTable, data)
	}
	if bm := h.Bitmaps; bm != nil {
		data := make([]byte, BitmapsExtLen)
		be.PutUint32(data[0:], bm.Count)
		be.PutUint32(data[4:], bm.Reserved)
		be.PutUint64(data[8:], bm.DirectorySize)
		be.PutUint64(data[16:], bm.DirectoryOffset)
		ext(ExtBitmaps, data)
	}
	for _, u := range h.Unknown {
		switch u.Magic {
		case ExtEnd, ExtBackingFormat, ExtFeatureTable, ExtBitmaps, ExtFullDiskEncryption, ExtDataFile:
			return nil, Corrupt(extName(u.Magic), uint64(u.Magic), "known extension magic in the unknown list")
		}
		if len(u.Data) > cs {
			return nil, Limit(extName(u.Magic), uint64(len(u.Data)), "extension does not fit in a cluster")
		}
		ext(u.Magic, u.Data)
	}
	b = append(b, 0, 0, 0, 0, 0, 0, 0, 0) // end of extensions
	if h.BackingFile != "" {
		be.PutUint64(b[8:], uint64(len(b)))
		be.PutUint32(b[16:], uint32(len(h.BackingFile)))
		b = append(b, h.BackingFile...)
	}
	if len(b) > cs {
		return nil, Limit("header_length", uint64(len(b)), "header, extensions and backing name exceed one cluster")
	}
	if _, err := ParseHeader(b); err != nil {
		return nil, err
	}
	return b, nil
}
