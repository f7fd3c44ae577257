package formattest

import (
	"encoding/binary"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// The malformed-image catalogue of qcow2.md §3.2, built from the images
// gen.sh makes with qemu-img by patching bytes, as the catalogue does with
// dd. base64m is the catalogue's base image (create 64M, write -P 0x5a 0
// 128k): header@0, reftable@0x10000, refblock@0x20000, L1@0x30000,
// L2@0x40000, data@0x50000 and 0x60000. snap has its snapshot table at
// 0x70000 (one entry: L1@0x60000, id "1", name "s1") and the active L2 at
// 0x80000.

type Hostile struct {
	Name  string
	Image string
	Patch func(t *testing.T, b []byte) []byte
	RW    bool   // open read-write
	Err   error  // nil: must open
	Field string // prefix of FormatError.Field
}

func At64(off int, v uint64) func(*testing.T, []byte) []byte {
	return func(_ *testing.T, b []byte) []byte { binary.BigEndian.PutUint64(b[off:], v); return b }
}

func At32(off int, v uint32) func(*testing.T, []byte) []byte {
	return func(_ *testing.T, b []byte) []byte { binary.BigEndian.PutUint32(b[off:], v); return b }
}

func At16(off int, v uint16) func(*testing.T, []byte) []byte {
	return func(_ *testing.T, b []byte) []byte { binary.BigEndian.PutUint16(b[off:], v); return b }
}

func Both(ps ...func(*testing.T, []byte) []byte) func(*testing.T, []byte) []byte {
	return func(t *testing.T, b []byte) []byte {
		for _, p := range ps {
			b = p(t, b)
		}
		return b
	}
}

const SnapTable = 0x70000

// SnapshotDeferred are the catalogue rows whose snapshot table entry
// opens but whose L1 table fails when used: the patch and the error
// Image.Snapshot(0) must give.
var SnapshotDeferred = []Hostile{
	{"15 snapshot L1 huge", "snap", At32(SnapTable+8, 0x10000000), false, format.ErrLimit, "snapshot[0].l1_size"},
	{"15 snapshot L1 unaligned", "snap", At64(SnapTable, 0x60200), false, format.ErrCorrupt, "snapshot[0].l1_table_offset"},
	{"15 snapshot L1 past EOF", "snap", At64(SnapTable, 0x10000000), false, format.ErrCorrupt, "snapshot[0].l1_table_offset"},
}

var HostileImages = []Hostile{
	// Rows 1–9, 11, 13, 17, 18, 20: header fields.
	{"1 bad magic", "base64m", At32(0, 0), false, format.ErrNotQcow2, "magic"},
	{"2 version 4", "base64m", At32(4, 4), false, format.ErrUnsupported, "version"},
	{"2 version 1", "base64m", At32(4, 1), false, format.ErrUnsupported, "version"},
	{"3 cluster_bits 8", "base64m", At32(20, 8), false, format.ErrLimit, "cluster_bits"},
	{"3 cluster_bits 22", "base64m", At32(20, 22), false, format.ErrLimit, "cluster_bits"},
	{"4 header_length 96", "base64m", At32(100, 96), false, format.ErrCorrupt, "header_length"},
	{"4 header_length 0xffffffff", "base64m", At32(100, 0xffffffff), false, format.ErrCorrupt, "header_length"},
	{"5 L1 0xffffffff entries", "base64m", At32(36, 0xffffffff), false, format.ErrLimit, "l1_size"},
	{"5 L1 0x7fffffff entries", "base64m", At32(36, 0x7fffffff), false, format.ErrLimit, "l1_size"},
	{"6 L1 too small", "base64m", At32(36, 0), false, format.ErrCorrupt, "l1_size"},
	{"7 L1 offset unaligned", "base64m", At64(40, 0x30200), false, format.ErrCorrupt, "l1_table_offset"},
	{"7 L1 offset huge", "base64m", At64(40, 0x7fffffffffff0000), false, format.ErrCorrupt, "l1_table_offset"},
	{"8 reftable clusters 0", "base64m", At32(56, 0), false, format.ErrCorrupt, "refcount_table_clusters"},
	{"8 reftable clusters huge", "base64m", At32(56, 0xffffffff), false, format.ErrLimit, "refcount_table_clusters"},
	{"9 reftable unaligned", "base64m", At64(48, 0x10200), false, format.ErrCorrupt, "refcount_table_offset"},
	// Row 10: QEMU opens it and corrupts the image on the first write; we
	// refuse even read-only, because the table is not in the file at all.
	{"10 reftable beyond EOF", "base64m", At64(48, 0x1000000000), false, format.ErrCorrupt, "refcount_table_offset"},
	{"11 nb_snapshots huge", "base64m", At32(60, 0xffffffff), false, format.ErrLimit, "nb_snapshots"},
	// Row 12: as QEMU, the table opens (bytes past EOF read as zeros:
	// all-zero entries); SnapshotDeferred lists what then fails.
	{"12 snapshot table beyond EOF", "base64m", Both(At32(60, 1), At64(64, 0x12340000)), false, nil, ""},
	{"13 snapshots_offset unaligned", "base64m", Both(At32(60, 1), At64(64, 0x10008)), false, format.ErrCorrupt, "snapshots_offset"},
	{"14 snapshot extra data 2000", "snap", At32(SnapTable+36, 2000), false, format.ErrLimit, "snapshot[0].extra_data_size"},
	// Row 15: a snapshot's L1 fields are checked when the table is used
	// (QEMU 7.2, iotest 080): the image opens, Image.Snapshot and the
	// driver's snapshot operations fail (SnapshotDeferred).
	{"15 snapshot L1 huge", "snap", At32(SnapTable+8, 0x10000000), false, nil, ""},
	{"15 snapshot L1 unaligned", "snap", At64(SnapTable, 0x60200), false, nil, ""},
	{"15 snapshot L1 is the active L2", "snap", At64(SnapTable, 0x80000), false, format.ErrCorrupt, "l1_table[0]"},
	{"15 snapshot L1 past EOF", "snap", At64(SnapTable, 0x10000000), false, nil, ""},
	// Row 16: the 0xffff-byte name runs over the active L2 table, which
	// the overlap check catches; a name past EOF reads as zeros (QEMU).
	{"16 snapshot name 0xffff", "snap", At16(SnapTable+14, 0xffff), false, format.ErrCorrupt, "l1_table[0]"},
	{"16 snapshot id and name past EOF", "snap", func(_ *testing.T, b []byte) []byte {
		// Move the table into the last cluster (0x90000), then make the
		// id and name 0xffff bytes each: they run past EOF at 0xa0000.
		copy(b[0x90000:], b[SnapTable:SnapTable+72])
		binary.BigEndian.PutUint64(b[64:], 0x90000)
		binary.BigEndian.PutUint16(b[0x90000+12:], 0xffff)
		binary.BigEndian.PutUint16(b[0x90000+14:], 0xffff)
		return b
	}, false, nil, ""},
	{"17 backing offset past cluster", "base64m", At64(8, 0x100000), false, format.ErrCorrupt, "backing_file_offset"},
	{"17 backing name too long", "base64m", Both(At64(8, 512), At32(16, 0xffffffff)), false, format.ErrLimit, "backing_file_size"},
	{"18 unknown incompat 0x20", "base64m", At64(72, 0x20), false, format.ErrUnsupported, "incompatible_features"},
	{"18 unknown incompat 1<<63", "base64m", At64(72, 1<<63), false, format.ErrUnsupported, "incompatible_features"},
	{"19 corrupt bit, read-only", "base64m", At64(72, format.IncompatCorrupt), false, nil, ""},
	{"19 corrupt bit, read-write", "base64m", At64(72, format.IncompatCorrupt), true, format.ErrCorrupt, "incompatible_features"},
	{"dirty bit, read-only", "base64m", At64(72, format.IncompatDirty), false, nil, ""},
	{"dirty bit, read-write", "base64m", At64(72, format.IncompatDirty), true, format.ErrUnsupported, "incompatible_features"},
	{"20 refcount_order 7", "base64m", At32(96, 7), false, format.ErrLimit, "refcount_order"},

	// Rows 21–36, the part visible at the L1 / refcount-table level.
	{"L2 is the L1 table", "base64m", At64(0x30000, format.EntryCopied|0x30000), false, format.ErrCorrupt, "l1_table[0]"},
	{"L2 is the refcount table", "base64m", At64(0x30000, format.EntryCopied|0x10000), false, format.ErrCorrupt, "l1_table[0]"},
	{"L2 is a refcount block", "base64m", At64(0x30000, format.EntryCopied|0x20000), false, format.ErrCorrupt, "l1_table[0]"},
	{"L2 is in the snapshot table", "snap", At64(0x30000, format.EntryCopied|SnapTable), false, format.ErrCorrupt, "l1_table[0]"},
	{"refcount block is the L1 table", "base64m", At64(0x10000, 0x30000), false, format.ErrCorrupt, "refcount_table[0]"},
	{"refcount block is the header", "base64m", At64(0x10008, 0x0), false, nil, ""}, // entry 0 means none: fine
	{"refcount block zeroed, read-only", "base64m", ZeroRange(0x20000, 0x10000), false, nil, ""},
	{"refcount block zeroed, read-write", "base64m", ZeroRange(0x20000, 0x10000), true, format.ErrCorrupt, "header"},
	{"reftable entry cleared, read-write", "base64m", At64(0x10000, 0), true, format.ErrCorrupt, "header"},

	// Rows 38, 39: policy.
	{"38 json: backing name", "ovl", SetBacking(`json:{"driver":"raw","file":{"driver":"file","filename":"/etc/hostname"}}`), false, format.ErrUnsupported, "backing_file"},
	{"38 protocol backing name", "ovl", SetBacking("nbd://evil.example/x"), false, format.ErrUnsupported, "backing_file"},
	// An external data file is supported; its recorded name gets the
	// backing name's rule (plain paths only, datafile.go).
	{"39 json: data file name", "base64m", SetDataFile(`json:{"driver":"file","filename":"/etc/shadow"}`), false, format.ErrUnsupported, "data_file_ext"},
	{"39 protocol data file name", "base64m", SetDataFile("nbd:evil.example:10809"), false, format.ErrUnsupported, "data_file_ext"},
	{"LUKS encryption without its header extension", "base64m", At32(32, 2), false, format.ErrCorrupt, "full_disk_encryption_ext"},
	// Legacy AES parses (the driver asks for the key: drivers/qcow2/aes.go).
	{"AES encryption", "base64m", At32(32, 1), false, nil, ""},
	{"file shorter than a header", "base64m", func(_ *testing.T, b []byte) []byte { return b[:50] }, false, format.ErrCorrupt, "file_size"},
	{"L1 table cut by EOF", "base64m", func(_ *testing.T, b []byte) []byte { return b[:0x30004] }, false, format.ErrCorrupt, "l1_table_offset"},
}

func ZeroRange(off, n int) func(*testing.T, []byte) []byte {
	return func(_ *testing.T, b []byte) []byte { clear(b[off : off+n]); return b }
}

// SetBacking rewrites ovl's backing file name in place (it sits at the end
// of the header extensions, with room to the end of the cluster).
func SetBacking(name string) func(*testing.T, []byte) []byte {
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

// FieldIs reports whether got is want, or want followed by a sub-field
// (" l1_entry", ".len", "[3]").
func FieldIs(got, want string) bool {
	return got == want || strings.HasPrefix(got, want) && strings.ContainsRune(" .[", rune(got[len(want)]))
}

// SetDataFile gives a version 3 image the external data file bit and a
// data file extension naming name, inserted as the first header
// extension (the others move up; the header cluster has room).
func SetDataFile(name string) func(*testing.T, []byte) []byte {
	return func(t *testing.T, b []byte) []byte {
		if binary.BigEndian.Uint32(b[4:]) < 3 {
			t.Fatal("not a version 3 image")
		}
		hl := int(binary.BigEndian.Uint32(b[100:]))
		cs := 1 << binary.BigEndian.Uint32(b[20:])
		ext := make([]byte, 8+(len(name)+7)&^7)
		binary.BigEndian.PutUint32(ext, format.ExtDataFile)
		binary.BigEndian.PutUint32(ext[4:], uint32(len(name)))
		copy(ext[8:], name)
		rest := append([]byte(nil), b[hl:cs-len(ext)]...)
		copy(b[hl:], ext)
		copy(b[hl+len(ext):], rest)
		binary.BigEndian.PutUint64(b[72:], binary.BigEndian.Uint64(b[72:])|format.IncompatDataFile)
		return b
	}
}
