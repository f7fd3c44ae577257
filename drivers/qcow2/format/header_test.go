package format_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// firstCluster returns a copy of the first cluster of a testdata image.
func firstCluster(t testing.TB, name string) []byte {
	t.Helper()
	b := loadImage(t, name)
	cs, err := format.ParsePrefix(b)
	if err != nil {
		t.Fatal(err)
	}
	return append([]byte(nil), b[:min(int(cs), len(b))]...)
}

func put32(b []byte, off int, v uint32) { binary.BigEndian.PutUint32(b[off:], v) }
func put64(b []byte, off int, v uint64) { binary.BigEndian.PutUint64(b[off:], v) }

// roundTrip encodes h, parses the result, and checks that the parsed
// header equals h apart from the backing-name layout fields, and that a
// second encoding is byte-identical (a fixed point).
func roundTrip(t *testing.T, h *format.Header) *format.Header {
	t.Helper()
	enc, err := h.MarshalBinary()
	if err != nil {
		t.Fatalf("MarshalBinary: %v", err)
	}
	h2, err := format.ParseHeader(enc)
	if err != nil {
		t.Fatalf("ParseHeader(MarshalBinary): %v", err)
	}
	a, b := *h, *h2
	a.BackingFileOffset, a.BackingFileSize, b.BackingFileOffset, b.BackingFileSize = 0, 0, 0, 0
	if !reflect.DeepEqual(a, b) {
		t.Fatalf("round trip changed the header\nbefore %+v\nafter  %+v", a, b)
	}
	enc2, err := h2.MarshalBinary()
	if err != nil || !bytes.Equal(enc, enc2) {
		t.Fatalf("second encoding differs (%v)", err)
	}
	return h2
}

func TestQcow2HeaderRoundTripPreservesUnknown(t *testing.T) {
	h, err := format.ParseHeader(firstCluster(t, "ovl"))
	if err != nil {
		t.Fatal(err)
	}
	// Unknown extensions of awkward lengths, a longer header with unknown
	// additional fields, and unknown compatible/autoclear bits.
	h.Unknown = []format.Extension{
		{Magic: 0x12345678, Data: []byte{1, 2, 3}},
		{Magic: 0xdeadbeef, Data: nil},
		{Magic: 0x12345678, Data: bytes.Repeat([]byte{0xee}, 17)},
	}
	h.HeaderLength = 128
	h.HeaderTail = make([]byte, 128-105)
	h.HeaderTail[10] = 0x42
	h.CompatibleFeatures |= 1 << 40
	h.AutoclearFeatures |= 1 << 9
	h2 := roundTrip(t, h)
	enc, _ := h2.MarshalBinary()
	// The unknown extensions are byte-for-byte in the encoding, in order,
	// after the feature table, each padded to 8.
	var want []byte
	for _, u := range h.Unknown {
		want = binary.BigEndian.AppendUint32(want, u.Magic)
		want = binary.BigEndian.AppendUint32(want, uint32(len(u.Data)))
		want = append(want, u.Data...)
		for len(want)%8 != 0 {
			want = append(want, 0)
		}
	}
	if !bytes.Contains(enc, want) {
		t.Errorf("unknown extensions not preserved verbatim")
	}
	if h2.BackingFile != "base.qcow2" || h2.BackingFormat != "qcow2" {
		t.Errorf("backing %q fmt %q", h2.BackingFile, h2.BackingFormat)
	}
	if int(h2.BackingFileOffset)+len(h2.BackingFile) != len(enc) || !strings.HasSuffix(string(enc), "base.qcow2") {
		t.Errorf("backing name not placed after the end marker")
	}
}

func TestQcow2HeaderV2AndV104(t *testing.T) {
	h, err := format.ParseHeader(firstCluster(t, "v2"))
	if err != nil {
		t.Fatal(err)
	}
	if h.HeaderLength != 72 || h.RefcountOrder != 4 || h.IncompatibleFeatures != 0 {
		t.Errorf("v2 header: %+v", h)
	}
	h.BackingFile, h.BackingFormat = "b.img", "raw"
	roundTrip(t, h)
	h.CompatibleFeatures = format.CompatLazyRefcounts
	if _, err := h.MarshalBinary(); !errors.Is(err, format.ErrCorrupt) {
		t.Errorf("v2 with feature bits encoded: %v", err)
	}

	// header_length 104 (QEMU <= 5.0): no compression_type byte; bytes
	// 104.. are then the first extension.
	b := firstCluster(t, "v3")
	h3, _ := format.ParseHeader(b)
	h3.HeaderLength, h3.HeaderTail = 104, nil
	h104 := roundTrip(t, h3)
	if h104.CompressionType != 0 || len(h104.FeatureNames) != 8 {
		t.Errorf("104-byte header: compression %d, %d feature names", h104.CompressionType, len(h104.FeatureNames))
	}
	enc, _ := h104.MarshalBinary()
	if binary.BigEndian.Uint32(enc[104:]) != format.ExtFeatureTable {
		t.Errorf("extensions do not start at 104")
	}
}

// TestQcow2HeaderRejects patches single fields of a qemu-img header and
// checks the error class and the named field: the header-level limits of
// qcow2.md §3.1 and the header rows of §3.2.
func TestQcow2HeaderRejects(t *testing.T) {
	type patch func(b []byte)
	u32 := func(off int, v uint32) patch { return func(b []byte) { put32(b, off, v) } }
	u64 := func(off int, v uint64) patch { return func(b []byte) { put64(b, off, v) } }
	cases := []struct {
		name  string
		image string
		p     patch
		err   error
		field string
	}{
		{"bad magic", "v3", u32(0, 0), format.ErrNotQcow2, "magic"},
		{"version 4", "v3", u32(4, 4), format.ErrUnsupported, "version"},
		{"version 1", "v3", u32(4, 1), format.ErrUnsupported, "version"},
		{"cluster_bits 8", "v3", u32(20, 8), format.ErrLimit, "cluster_bits"},
		{"cluster_bits 22", "v3", u32(20, 22), format.ErrLimit, "cluster_bits"},
		{"cluster_bits 0xffffffff", "v3", u32(20, 0xffffffff), format.ErrLimit, "cluster_bits"},
		{"header_length 96", "v3", u32(100, 96), format.ErrCorrupt, "header_length"},
		{"header_length huge", "v3", u32(100, 0xffffffff), format.ErrCorrupt, "header_length"},
		{"header_length unaligned", "v3", u32(100, 108), format.ErrCorrupt, "header_length"},
		{"l1_size huge", "v3", u32(36, 0xffffffff), format.ErrLimit, "l1_size"},
		{"l1_size 0x7fffffff", "v3", u32(36, 0x7fffffff), format.ErrLimit, "l1_size"},
		{"l1_size just over 32 MiB", "v3", u32(36, format.MaxL1Bytes/8+1), format.ErrLimit, "l1_size"},
		{"L1 too small", "v3", u32(36, 0), format.ErrCorrupt, "l1_size"},
		{"L1 offset unaligned", "v3", u64(40, 0x30200), format.ErrCorrupt, "l1_table_offset"},
		{"L1 offset at 2^63", "v3", u64(40, 1<<63), format.ErrCorrupt, "l1_table_offset"},
		{"reftable end past 2^63", "v3", u64(48, 1<<63-0x10000), format.ErrCorrupt, "refcount_table_offset"},
		{"size above 2^61", "v3", u64(24, 1<<61+1), format.ErrLimit, "size"},
		{"size needs more L1", "v3", u64(24, 1<<40), format.ErrCorrupt, "l1_size"},
		{"reftable clusters 0", "v3", u32(56, 0), format.ErrCorrupt, "refcount_table_clusters"},
		{"reftable clusters huge", "v3", u32(56, 0xffffffff), format.ErrLimit, "refcount_table_clusters"},
		{"reftable just over 8 MiB", "v3", u32(56, format.MaxRefcountTableBytes/65536+1), format.ErrLimit, "refcount_table_clusters"},
		{"reftable unaligned", "v3", u64(48, 0x10200), format.ErrCorrupt, "refcount_table_offset"},
		{"nb_snapshots huge", "v3", u32(60, 0xffffffff), format.ErrLimit, "nb_snapshots"},
		{"nb_snapshots 65537", "v3", u32(60, format.MaxSnapshots+1), format.ErrLimit, "nb_snapshots"},
		{"snapshots_offset unaligned", "v3", u64(64, 0x10008), format.ErrCorrupt, "snapshots_offset"},
		{"refcount_order 7", "v3", u32(96, 7), format.ErrLimit, "refcount_order"},
		{"unknown incompat bit 5", "v3", u64(72, 1<<5), format.ErrUnsupported, "incompatible_features"},
		{"unknown incompat bit 63", "v3", u64(72, 1<<63), format.ErrUnsupported, "incompatible_features"},
		{"crypt_method LUKS without its extension", "v3", u32(32, 2), format.ErrCorrupt, "full_disk_encryption_ext"},
		{"crypt_method 3", "v3", u32(32, 3), format.ErrUnsupported, "crypt_method"},
		{"compression type 2", "v3", func(b []byte) { b[104] = 2; put64(b, 72, format.IncompatCompressionType) }, format.ErrUnsupported, "compression_type"},
		{"zstd without bit 3", "v3", func(b []byte) { b[104] = 1 }, format.ErrCorrupt, "compression_type"},
		{"bit 3 with zlib", "v3", u64(72, format.IncompatCompressionType), format.ErrCorrupt, "incompatible_features"},
		{"extended L2 with 4 KiB clusters", "c512", func(b []byte) { put64(b, 72, format.IncompatExtendedL2); put32(b, 20, 12) }, format.ErrCorrupt, "cluster_bits"},
		{"backing offset past cluster", "ovl", u64(8, 0x100000), format.ErrCorrupt, "backing_file_offset"},
		{"backing offset inside header", "ovl", u64(8, 64), format.ErrCorrupt, "backing_file_offset"},
		{"backing name too long", "ovl", u32(16, 0xffffffff), format.ErrLimit, "backing_file_size"},
		{"backing name 1024", "ovl", u32(16, 1024), format.ErrLimit, "backing_file_size"},
		{"extension too large", "v3", u32(116, 0x10000), format.ErrCorrupt, "feature_name_table_ext"},
		{"end marker too large", "v3", u32(508, 0xfffffff0), format.ErrCorrupt, "end_of_extensions"},
		{"backing format 16 bytes", "ovl", u32(116, 16), format.ErrLimit, "backing_format_ext.len"},
		{"encryption extension length", "v3", u32(112, format.ExtFullDiskEncryption), format.ErrCorrupt, "full_disk_encryption_ext.len"},
		{"bitmaps extension length", "bitmap", func(b []byte) { bitmapsExt(t, b, func(p []byte) { put32(p, 4, 16) }) }, format.ErrCorrupt, "bitmaps_ext.len"},
		{"bitmaps zero count", "bitmap", func(b []byte) { bitmapsExt(t, b, func(p []byte) { put32(p, 8, 0) }) }, format.ErrCorrupt, "bitmaps_ext.nb_bitmaps"},
		{"bitmaps too many", "bitmap", func(b []byte) { bitmapsExt(t, b, func(p []byte) { put32(p, 8, 65536) }) }, format.ErrLimit, "bitmaps_ext.nb_bitmaps"},
		{"bitmaps reserved", "bitmap", func(b []byte) { bitmapsExt(t, b, func(p []byte) { put32(p, 12, 1) }) }, format.ErrCorrupt, "bitmaps_ext.reserved"},
		{"bitmap dir too large", "bitmap", func(b []byte) { bitmapsExt(t, b, func(p []byte) { put64(p, 16, format.MaxBitmapDirectoryBytes+1) }) }, format.ErrLimit, "bitmaps_ext.bitmap_directory_size"},
		{"bitmap dir unaligned", "bitmap", func(b []byte) { bitmapsExt(t, b, func(p []byte) { put64(p, 24, 0x50008) }) }, format.ErrCorrupt, "bitmaps_ext.bitmap_directory_offset"},
		{"duplicate feature table", "v3", func(b []byte) {
			// Copy the 392-byte feature table extension after itself.
			copy(b[504:], b[112:504])
		}, format.ErrCorrupt, "feature_name_table_ext"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := firstCluster(t, c.image)
			if _, err := format.ParseHeader(b); err != nil {
				t.Fatalf("unpatched header: %v", err)
			}
			c.p(b)
			_, err := format.ParseHeader(b)
			var fe *format.FormatError
			if !errors.Is(err, c.err) || !errors.As(err, &fe) || fe.Field != c.field {
				t.Fatalf("got %v, want %v on field %q", err, c.err, c.field)
			}
			if !strings.Contains(err.Error(), c.field) {
				t.Errorf("message %q does not name the field", err)
			}
		})
	}
}

// bitmapsExt finds the bitmaps extension in a header cluster and lets f
// patch it; p[0:8] is the extension header, p[8:32] the payload.
func bitmapsExt(t testing.TB, b []byte, f func(p []byte)) {
	for off := 112; off+8 <= len(b); {
		magic, n := binary.BigEndian.Uint32(b[off:]), int(binary.BigEndian.Uint32(b[off+4:]))
		if magic == format.ExtBitmaps {
			f(b[off:])
			return
		}
		if magic == 0 {
			break
		}
		off += 8 + (n+7)&^7
	}
	t.Fatal("no bitmaps extension")
}

func TestQcow2HeaderNamesUnknownFeatures(t *testing.T) {
	b := firstCluster(t, "v3")
	// Rename the feature table's entry for incompat bit 4 to bit 9 and set
	// bits 9 and 40: the message names both, bit 9 by its table name.
	p := 112 + 8 + 4*48
	if b[p] != format.FeatureIncompatible || b[p+1] != 4 {
		t.Fatalf("unexpected feature table layout")
	}
	b[p+1] = 9
	put64(b, 72, 1<<9|1<<40)
	_, err := format.ParseHeader(b)
	if !errors.Is(err, format.ErrUnsupported) {
		t.Fatalf("got %v", err)
	}
	msg := err.Error()
	if !strings.Contains(msg, `bit 9 "extended L2 entries"`) || !strings.Contains(msg, "bit 40") {
		t.Errorf("message %q does not name the bits", msg)
	}
}

func TestQcow2BackingNamePolicy(t *testing.T) {
	cases := []struct {
		name string
		err  error
	}{
		{"base.qcow2", nil},
		{"/var/lib/images/base.qcow2", nil},
		{"./dir:with:colons/base", nil},
		{"../a:b", nil},
		{`json:{"driver":"raw","file":{"driver":"file","filename":"/etc/hostname"}}`, format.ErrUnsupported},
		{"nbd:localhost:10809", format.ErrUnsupported},
		{"file:/etc/passwd", format.ErrUnsupported},
		{"a:b", format.ErrUnsupported},
		{"base\x00.qcow2", format.ErrCorrupt},
		// rbd: names pass here; following one is chain's opt-in.
		{"rbd:pool/image:conf=/etc/ceph/ceph.conf", nil},
		{"rbdx:pool/image", format.ErrUnsupported},
	}
	h, err := format.ParseHeader(firstCluster(t, "ovl"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		hh := *h
		hh.BackingFile = c.name
		_, err := hh.MarshalBinary() // MarshalBinary re-parses its output
		if !errors.Is(err, c.err) {
			t.Errorf("backing %q: %v, want %v", c.name, err, c.err)
		}
	}
}

func TestQcow2WritableAndAutoclear(t *testing.T) {
	h, err := format.ParseHeader(firstCluster(t, "bitmap"))
	if err != nil {
		t.Fatal(err)
	}
	if err := h.CheckWritable(); err != nil {
		t.Errorf("clean image not writable: %v", err)
	}
	h.AutoclearFeatures |= 1 << 7 // unknown autoclear bit
	if got := h.AutoclearToClear(0); got != format.AutoclearBitmaps|1<<7 {
		t.Errorf("AutoclearToClear(0) = %#x", got)
	}
	if got := h.AutoclearToClear(format.AutoclearBitmaps); got != 1<<7 {
		t.Errorf("AutoclearToClear(bitmaps) = %#x", got)
	}
	if got := h.AutoclearToClear(^uint64(0)); got != 1<<7 {
		t.Errorf("unknown bits must be cleared even if claimed maintained: %#x", got)
	}
	h.IncompatibleFeatures = format.IncompatCorrupt
	if err := h.CheckWritable(); !errors.Is(err, format.ErrCorrupt) {
		t.Errorf("corrupt bit: %v", err)
	}
	h.IncompatibleFeatures = format.IncompatDirty
	if err := h.CheckWritable(); !errors.Is(err, format.ErrUnsupported) {
		t.Errorf("dirty bit: %v", err)
	}
}

// TestQcow2HeaderShortInput checks that truncated first clusters parse as
// zero-filled (as QEMU reads past EOF) and never panic.
func TestQcow2HeaderShortInput(t *testing.T) {
	b := firstCluster(t, "ovl")
	for n := 0; n <= 600; n++ {
		h, err := format.ParseHeader(b[:n])
		if n < 24 && err == nil {
			t.Fatalf("%d bytes parsed", n)
		}
		if err == nil && h.BackingFile != "" && n < int(h.BackingFileOffset)+len(h.BackingFile) {
			// Past EOF the name reads as zeros, which is a NUL: refused.
			t.Fatalf("%d bytes: backing name %q from past EOF", n, h.BackingFile)
		}
	}
}
