package format_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"reflect"
	"testing"

	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// TestQcow2SnapshotTableQemuRoundTrip decodes the table qemu-img wrote into
// testdata/snap and checks that encoding it reproduces QEMU's bytes.
func TestQcow2SnapshotTableQemuRoundTrip(t *testing.T) {
	b := loadImage(t, "snap")
	im := openBytes(t, b, format.Options{ReadWrite: true})
	if len(im.Snapshots) != 1 {
		t.Fatalf("%d snapshots", len(im.Snapshots))
	}
	s := im.Snapshots[0]
	// What gen.sh did: `qemu-img snapshot -c s1` on a 4 MiB image; QEMU
	// 7.2 writes 24 bytes of extra data and ids counting from "1".
	if s.ID != "1" || s.Name != "s1" || s.ExtraDataSize != 24 || s.DiskSize != 4<<20 || s.L1Entries != 1 || s.VMStateSize != 0 {
		t.Errorf("snapshot %+v", s)
	}
	off := im.Header.SnapshotsOffset
	raw := b[off : off+uint64(im.SnapshotTableSize)]
	enc, err := format.AppendSnapshotTable(nil, im.Snapshots)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(enc, raw) {
		t.Errorf("re-encoded table differs\nours %x\nqemu %x", enc, raw)
	}
	// The snapshot's L1 is a copy of the L1 at snapshot time; its L2 still
	// maps the old data (0x88) while the active image has 0x99.
	snapL1 := binary.BigEndian.Uint64(b[s.L1Offset:])
	if snapL1&format.OffsetMask == im.L1[0]&format.OffsetMask {
		t.Errorf("snapshot and active L1 share the L2 table after a COW write")
	}
}

func TestQcow2SnapshotTableVariants(t *testing.T) {
	snaps := []format.Snapshot{
		{L1Offset: 0x60000, L1Entries: 2, ID: "1", Name: "first", DateSec: 1700000000, DateNsec: 5,
			VMClockNsec: 123, VMStateSize: 1 << 33, DiskSize: 1 << 30, Icount: 77, ExtraDataSize: 24},
		{L1Offset: 0x70000, L1Entries: 1, ID: "2", Name: "", VMStateSize32: 4096, VMStateSize: 4096, ExtraDataSize: 0},            // v2 style
		{L1Offset: 0x80000, L1Entries: 1, ID: "3", Name: "sixteen", VMStateSize: 9, DiskSize: 1 << 20, ExtraDataSize: 16},         // QEMU < 5.0
		{L1Offset: 0x90000, ID: "four", Name: "x", ExtraDataSize: 24 + 5, ExtraUnknown: []byte{1, 2, 3, 4, 5}, DiskSize: 1 << 20}, // newer writer
	}
	enc, err := format.AppendSnapshotTable(nil, snaps)
	if err != nil {
		t.Fatal(err)
	}
	got, size, err := format.ParseSnapshotTable(enc, uint32(len(snaps)), 0)
	if err != nil {
		t.Fatal(err)
	}
	if size != int64(len(enc)) || !reflect.DeepEqual(got, snaps) {
		t.Errorf("round trip (size %d of %d):\n got %+v\nwant %+v", size, len(enc), got, snaps)
	}
	// Entry starts are 8-byte aligned: entry 1 starts after entry 0's
	// 40 + 24 + len("1") + len("first") = 70 bytes, at 72.
	if binary.BigEndian.Uint64(enc[72:]) != 0x70000 {
		t.Errorf("second entry not at offset 72")
	}

	// Limits and truncation.
	if _, _, err := format.ParseSnapshotTable(enc, format.MaxSnapshots+1, 0); !errors.Is(err, format.ErrLimit) {
		t.Errorf("count above limit: %v", err)
	}
	if _, _, err := format.ParseSnapshotTable(enc, 5, 0); !errors.Is(err, format.ErrCorrupt) {
		t.Errorf("count above the entries present: %v", err)
	}
	if _, _, err := format.ParseSnapshotTable(enc[:len(enc)-1], 4, 0); !errors.Is(err, format.ErrCorrupt) {
		t.Errorf("truncated name: %v", err)
	}
	if _, _, err := format.ParseSnapshotTable(enc, 4, int64(len(enc))-1); !errors.Is(err, format.ErrLimit) {
		t.Errorf("table above the byte cap: %v", err)
	}
	big := append([]byte(nil), enc...)
	binary.BigEndian.PutUint32(big[36:], format.MaxSnapshotExtraData+1)
	if _, _, err := format.ParseSnapshotTable(big, 1, 0); !errors.Is(err, format.ErrLimit) {
		t.Errorf("extra data above 1024: %v", err)
	}
	bad := snaps[0]
	bad.ExtraDataSize = 30 // no unknown bytes to fill it
	if _, err := format.AppendSnapshotTable(nil, []format.Snapshot{bad}); !errors.Is(err, format.ErrCorrupt) {
		t.Errorf("inconsistent extra size encoded: %v", err)
	}

	g := &format.Geometry{ClusterBits: 16, RefcountOrder: 4, FileSize: 1 << 20}
	for _, c := range []struct {
		s   format.Snapshot
		err error
	}{
		{format.Snapshot{L1Offset: 0x60000, L1Entries: 2}, nil},
		{format.Snapshot{L1Offset: 0x60200, L1Entries: 2}, format.ErrCorrupt},
		{format.Snapshot{L1Offset: 0x60000, L1Entries: format.MaxL1Bytes/8 + 1}, format.ErrLimit},
		{format.Snapshot{L1Offset: 1 << 20, L1Entries: 1}, format.ErrCorrupt},
		{format.Snapshot{L1Offset: 1 << 20, L1Entries: 0}, nil}, // empty L1: nothing to read
	} {
		if err := format.ValidateSnapshot(&c.s, 0, g, 0); !errors.Is(err, c.err) {
			t.Errorf("ValidateSnapshot(%+v) = %v want %v", c.s, err, c.err)
		}
	}
	if err := format.ValidateSnapshot(&format.Snapshot{L1Offset: 0x60000, L1Entries: 1024}, 0, g, 4096); !errors.Is(err, format.ErrLimit) {
		t.Errorf("caller cap not applied: %v", err)
	}
}

// TestQcow2SnapshotView reads testdata/snap's snapshot through its own L1:
// gen.sh wrote 0x88 to the first 64 KiB before `snapshot -c s1` and 0x99
// after it.
func TestQcow2SnapshotView(t *testing.T) {
	im := openBytes(t, loadImage(t, "snap"), format.Options{})
	sv, err := im.Snapshot(0)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 128<<10)
	if _, err := sv.ReadAt(got, 0, nil); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:64<<10], bytes.Repeat([]byte{0x88}, 64<<10)) || !bytes.Equal(got[64<<10:], make([]byte, 64<<10)) {
		t.Errorf("snapshot content is not 64 KiB of 0x88 then zeros")
	}
	if _, err := im.ReadAt(got[:1], 0, nil); err != nil || got[0] != 0x99 {
		t.Errorf("active image byte 0 = %#x (%v), want 0x99", got[0], err)
	}
	if _, err := im.Snapshot(1); !errors.Is(err, format.ErrRange) {
		t.Errorf("Snapshot(1): %v", err)
	}
}
