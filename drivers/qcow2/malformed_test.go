package qcow2

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
)

// The malformed-image catalogue of qcow2.md §3.2, built from the images
// gen.sh makes with qemu-img by patching bytes, as the catalogue does with
// dd. base64m is the catalogue's base image (create 64M, write -P 0x5a 0
// 128k): header@0, reftable@0x10000, refblock@0x20000, L1@0x30000,
// L2@0x40000, data@0x50000 and 0x60000. snap has its snapshot table at
// 0x70000 (one entry: L1@0x60000, id "1", name "s1") and the active L2 at
// 0x80000.

type hostile struct {
	name  string
	image string
	patch func(t *testing.T, b []byte) []byte
	rw    bool   // open read-write
	err   error  // nil: must open
	field string // prefix of FormatError.Field
}

func at64(off int, v uint64) func(*testing.T, []byte) []byte {
	return func(_ *testing.T, b []byte) []byte { binary.BigEndian.PutUint64(b[off:], v); return b }
}

func at32(off int, v uint32) func(*testing.T, []byte) []byte {
	return func(_ *testing.T, b []byte) []byte { binary.BigEndian.PutUint32(b[off:], v); return b }
}

func at16(off int, v uint16) func(*testing.T, []byte) []byte {
	return func(_ *testing.T, b []byte) []byte { binary.BigEndian.PutUint16(b[off:], v); return b }
}

func both(ps ...func(*testing.T, []byte) []byte) func(*testing.T, []byte) []byte {
	return func(t *testing.T, b []byte) []byte {
		for _, p := range ps {
			b = p(t, b)
		}
		return b
	}
}

const snapTable = 0x70000

var hostileImages = []hostile{
	// Rows 1–9, 11, 13, 17, 18, 20: header fields.
	{"1 bad magic", "base64m", at32(0, 0), false, ErrNotQcow2, "magic"},
	{"2 version 4", "base64m", at32(4, 4), false, ErrUnsupported, "version"},
	{"2 version 1", "base64m", at32(4, 1), false, ErrUnsupported, "version"},
	{"3 cluster_bits 8", "base64m", at32(20, 8), false, ErrLimit, "cluster_bits"},
	{"3 cluster_bits 22", "base64m", at32(20, 22), false, ErrLimit, "cluster_bits"},
	{"4 header_length 96", "base64m", at32(100, 96), false, ErrCorrupt, "header_length"},
	{"4 header_length 0xffffffff", "base64m", at32(100, 0xffffffff), false, ErrCorrupt, "header_length"},
	{"5 L1 0xffffffff entries", "base64m", at32(36, 0xffffffff), false, ErrLimit, "l1_size"},
	{"5 L1 0x7fffffff entries", "base64m", at32(36, 0x7fffffff), false, ErrLimit, "l1_size"},
	{"6 L1 too small", "base64m", at32(36, 0), false, ErrCorrupt, "l1_size"},
	{"7 L1 offset unaligned", "base64m", at64(40, 0x30200), false, ErrCorrupt, "l1_table_offset"},
	{"7 L1 offset huge", "base64m", at64(40, 0x7fffffffffff0000), false, ErrCorrupt, "l1_table_offset"},
	{"8 reftable clusters 0", "base64m", at32(56, 0), false, ErrCorrupt, "refcount_table_clusters"},
	{"8 reftable clusters huge", "base64m", at32(56, 0xffffffff), false, ErrLimit, "refcount_table_clusters"},
	{"9 reftable unaligned", "base64m", at64(48, 0x10200), false, ErrCorrupt, "refcount_table_offset"},
	// Row 10: QEMU opens it and corrupts the image on the first write; we
	// refuse even read-only, because the table is not in the file at all.
	{"10 reftable beyond EOF", "base64m", at64(48, 0x1000000000), false, ErrCorrupt, "refcount_table_offset"},
	{"11 nb_snapshots huge", "base64m", at32(60, 0xffffffff), false, ErrLimit, "nb_snapshots"},
	// Row 12: QEMU opens it (reads zeros past EOF); we refuse.
	{"12 snapshot table beyond EOF", "base64m", both(at32(60, 1), at64(64, 0x12340000)), false, ErrCorrupt, "snapshots_offset"},
	{"13 snapshots_offset unaligned", "base64m", both(at32(60, 1), at64(64, 0x10008)), false, ErrCorrupt, "snapshots_offset"},
	{"14 snapshot extra data 2000", "snap", at32(snapTable+36, 2000), false, ErrLimit, "snapshot[0].extra_data_size"},
	{"15 snapshot L1 huge", "snap", at32(snapTable+8, 0x10000000), false, ErrLimit, "snapshot[0].l1_size"},
	{"15 snapshot L1 unaligned", "snap", at64(snapTable, 0x60200), false, ErrCorrupt, "snapshot[0].l1_table_offset"},
	{"15 snapshot L1 is the active L2", "snap", at64(snapTable, 0x80000), false, ErrCorrupt, "l1_table[0]"},
	{"15 snapshot L1 past EOF", "snap", at64(snapTable, 0x10000000), false, ErrCorrupt, "snapshot[0].l1_table_offset"},
	// Row 16: the 0xffff-byte name runs over the active L2 table, which
	// the overlap check catches; with a name past EOF, the size check does.
	{"16 snapshot name 0xffff", "snap", at16(snapTable+14, 0xffff), false, ErrCorrupt, "l1_table[0]"},
	{"16 snapshot id and name past EOF", "snap", func(_ *testing.T, b []byte) []byte {
		// Move the table into the last cluster (0x90000), then make the
		// id and name 0xffff bytes each: they run past EOF at 0xa0000.
		copy(b[0x90000:], b[snapTable:snapTable+72])
		binary.BigEndian.PutUint64(b[64:], 0x90000)
		binary.BigEndian.PutUint16(b[0x90000+12:], 0xffff)
		binary.BigEndian.PutUint16(b[0x90000+14:], 0xffff)
		return b
	}, false, ErrCorrupt, "snapshots_offset"},
	{"17 backing offset past cluster", "base64m", at64(8, 0x100000), false, ErrCorrupt, "backing_file_offset"},
	{"17 backing name too long", "base64m", both(at64(8, 512), at32(16, 0xffffffff)), false, ErrLimit, "backing_file_size"},
	{"18 unknown incompat 0x20", "base64m", at64(72, 0x20), false, ErrUnsupported, "incompatible_features"},
	{"18 unknown incompat 1<<63", "base64m", at64(72, 1<<63), false, ErrUnsupported, "incompatible_features"},
	{"19 corrupt bit, read-only", "base64m", at64(72, IncompatCorrupt), false, nil, ""},
	{"19 corrupt bit, read-write", "base64m", at64(72, IncompatCorrupt), true, ErrCorrupt, "incompatible_features"},
	{"dirty bit, read-only", "base64m", at64(72, IncompatDirty), false, nil, ""},
	{"dirty bit, read-write", "base64m", at64(72, IncompatDirty), true, ErrUnsupported, "incompatible_features"},
	{"20 refcount_order 7", "base64m", at32(96, 7), false, ErrLimit, "refcount_order"},

	// Rows 21–36, the part visible at the L1 / refcount-table level.
	{"L2 is the L1 table", "base64m", at64(0x30000, EntryCopied|0x30000), false, ErrCorrupt, "l1_table[0]"},
	{"L2 is the refcount table", "base64m", at64(0x30000, EntryCopied|0x10000), false, ErrCorrupt, "l1_table[0]"},
	{"L2 is a refcount block", "base64m", at64(0x30000, EntryCopied|0x20000), false, ErrCorrupt, "l1_table[0]"},
	{"L2 is in the snapshot table", "snap", at64(0x30000, EntryCopied|snapTable), false, ErrCorrupt, "l1_table[0]"},
	{"refcount block is the L1 table", "base64m", at64(0x10000, 0x30000), false, ErrCorrupt, "refcount_table[0]"},
	{"refcount block is the header", "base64m", at64(0x10008, 0x0), false, nil, ""}, // entry 0 means none: fine
	{"refcount block zeroed, read-only", "base64m", zeroRange(0x20000, 0x10000), false, nil, ""},
	{"refcount block zeroed, read-write", "base64m", zeroRange(0x20000, 0x10000), true, ErrCorrupt, "header"},
	{"reftable entry cleared, read-write", "base64m", at64(0x10000, 0), true, ErrCorrupt, "header"},

	// Rows 38, 39: policy.
	{"38 json: backing name", "ovl", setBacking(`json:{"driver":"raw","file":{"driver":"file","filename":"/etc/hostname"}}`), false, ErrUnsupported, "backing_file"},
	{"38 protocol backing name", "ovl", setBacking("nbd://evil.example/x"), false, ErrUnsupported, "backing_file"},
	{"39 external data file bit", "base64m", at64(72, IncompatDataFile), false, ErrUnsupported, "incompatible_features"},
	{"encryption", "base64m", at32(32, 2), false, ErrUnsupported, "crypt_method"},
	{"file shorter than a header", "base64m", func(_ *testing.T, b []byte) []byte { return b[:50] }, false, ErrCorrupt, "file_size"},
	{"L1 table cut by EOF", "base64m", func(_ *testing.T, b []byte) []byte { return b[:0x30004] }, false, ErrCorrupt, "l1_table_offset"},
}

func zeroRange(off, n int) func(*testing.T, []byte) []byte {
	return func(_ *testing.T, b []byte) []byte { clear(b[off : off+n]); return b }
}

// setBacking rewrites ovl's backing file name in place (it sits at the end
// of the header extensions, with room to the end of the cluster).
func setBacking(name string) func(*testing.T, []byte) []byte {
	return func(t *testing.T, b []byte) []byte {
		off := binary.BigEndian.Uint64(b[8:])
		if off == 0 {
			t.Fatal("no backing file")
		}
		binary.BigEndian.PutUint32(b[16:], uint32(len(name)))
		copy(b[off:], name)
		return b
	}
}

// TestQcow2MalformedCatalogue opens each hostile image and checks the
// specific error: sentinel and the field it names.
func TestQcow2MalformedCatalogue(t *testing.T) {
	for _, c := range hostileImages {
		t.Run(c.name, func(t *testing.T) {
			orig := loadImage(t, c.image)
			if _, err := ReadImage(bytes.NewReader(orig), int64(len(orig)), Options{ReadWrite: c.rw}); err != nil {
				t.Fatalf("unpatched %s: %v", c.image, err)
			}
			b := c.patch(t, append([]byte(nil), orig...))
			im, err := ReadImage(bytes.NewReader(b), int64(len(b)), Options{ReadWrite: c.rw})
			if c.err == nil {
				if err != nil {
					t.Fatalf("want open, got %v", err)
				}
				// It opened: mapping the whole disk must not panic, and
				// must either work or report a format error.
				if _, err := im.Map(nil, 0, im.Geometry.Size); err != nil {
					var fe *FormatError
					if !errors.As(err, &fe) {
						t.Errorf("Map: %v", err)
					}
				}
				return
			}
			var fe *FormatError
			if !errors.Is(err, c.err) || !errors.As(err, &fe) || !fieldIs(fe.Field, c.field) {
				t.Fatalf("got %v, want %v naming %q", err, c.err, c.field)
			}
			t.Log(err)
		})
	}
}

// TestQcow2MalformedL2 covers the catalogue rows that only show when an L2
// table is read: ReadImage succeeds (open is O(L1), not O(L2)), and Map,
// Lookup and ReadAt report the damaged entry.
func TestQcow2MalformedL2(t *testing.T) {
	cases := []struct {
		name  string
		image string
		patch func(*testing.T, []byte) []byte
		off   int64 // guest offset to map
		err   error
	}{
		{"L2 entry unaligned", "base64m", at64(0x40000, EntryCopied|0x50200), 0, ErrCorrupt},
		{"L2 entry reserved bit 1", "base64m", at64(0x40000, EntryCopied|0x50002), 0, ErrCorrupt},
		{"L2 entry reserved bit 57", "base64m", at64(0x40000, EntryCopied|1<<57|0x50000), 0, ErrCorrupt},
		{"L2 entry past EOF", "base64m", at64(0x40008, EntryCopied|0x10000000000), 65536, ErrCorrupt},
		{"compressed with COPIED", "base64m", at64(0x40000, EntryCopied|EntryCompressed|0x50000), 0, ErrCorrupt},
		{"compressed past EOF", "base64m", at64(0x40000, EntryCompressed|0x100000000), 0, ErrCorrupt},
		{"compressed in header", "base64m", at64(0x40000, EntryCompressed|0x10), 0, ErrCorrupt},
		{"zero flag in v2", "v2", func(t *testing.T, b []byte) []byte { return patchL2(t, b, 0, func(e uint64) uint64 { return e | 1 }) }, 0, ErrCorrupt},
		{"ext L2 alloc and zero", "ext", func(t *testing.T, b []byte) []byte {
			return patchL2(t, b, 0, func(e uint64) uint64 { return e }, func(bm uint64) uint64 { return bm | bm<<32 })
		}, 0, ErrCorrupt},
		{"ext L2 alloc without offset", "ext", func(t *testing.T, b []byte) []byte {
			return patchL2(t, b, 65536, func(uint64) uint64 { return 0 }, func(uint64) uint64 { return 1 })
		}, 65536, ErrCorrupt},
		{"ext L2 bitmap on compressed", "ext", func(t *testing.T, b []byte) []byte {
			return patchL2(t, b, 0, func(uint64) uint64 { return EntryCompressed | 0x50000 }, func(uint64) uint64 { return 1 << 40 })
		}, 0, ErrCorrupt},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := c.patch(t, loadImage(t, c.image))
			im := openBytes(t, b, Options{})
			if _, err := im.Map(nil, c.off, 512); !errors.Is(err, c.err) {
				t.Errorf("Map: %v, want %v", err, c.err)
			}
			if _, err := im.Lookup(c.off); !errors.Is(err, c.err) {
				t.Errorf("Lookup: %v, want %v", err, c.err)
			}
			if _, err := im.ReadAt(make([]byte, 512), c.off, nil); !errors.Is(err, c.err) {
				t.Errorf("ReadAt: %v, want %v", err, c.err)
			}
		})
	}

	// A valid descriptor pointing at bytes that are not a deflate stream:
	// the data read fails as corrupt, the mapping itself is fine.
	b := at64(0x40000, EntryCompressed|0x50000)(t, loadImage(t, "base64m"))
	im := openBytes(t, b, Options{})
	if _, err := im.Map(nil, 0, 65536); err != nil {
		t.Fatalf("Map: %v", err)
	}
	if _, err := im.ReadAt(make([]byte, 4096), 0, nil); !errors.Is(err, ErrCorrupt) {
		t.Errorf("garbage compressed data: %v, want ErrCorrupt", err)
	}
}

// patchL2 rewrites the L2 entry (and, with extended L2, the bitmap) of the
// guest cluster at off, found through the image's own metadata.
func patchL2(t *testing.T, b []byte, off int64, entry func(uint64) uint64, bitmap ...func(uint64) uint64) []byte {
	t.Helper()
	im := openBytes(t, b, Options{})
	g := &im.Geometry
	l1i, l2i, _ := g.Split(off)
	l2Off := int64(im.L1[l1i] & OffsetMask)
	if l2Off == 0 {
		t.Fatalf("guest offset %#x has no L2 table", off)
	}
	p := l2Off + l2i*g.L2EntrySize()
	binary.BigEndian.PutUint64(b[p:], entry(binary.BigEndian.Uint64(b[p:])))
	if len(bitmap) > 0 {
		binary.BigEndian.PutUint64(b[p+8:], bitmap[0](binary.BigEndian.Uint64(b[p+8:])))
	}
	return b
}

// fieldIs reports whether got is want, or want followed by a sub-field
// (" l1_entry", ".len", "[3]").
func fieldIs(got, want string) bool {
	return got == want || strings.HasPrefix(got, want) && strings.ContainsRune(" .[", rune(got[len(want)]))
}
