package format_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/drivers/qcow2/format"
	"github.com/ringblk/ringblk/drivers/qcow2/format/formattest"
)

// Snapshot tables as hostile input, as QEMU 7.2 treats them (iotests 080
// and 261): what an open refuses, what it defers to the operations that
// use a table, and what a check reads and repairs.

// TestSnapshotL1CheckedWhenUsed: a snapshot whose L1 fields are invalid
// does not stop the open; Image.Snapshot fails with the field, and Check
// counts the entry as QEMU does.
func TestSnapshotL1CheckedWhenUsed(t *testing.T) {
	for _, c := range formattest.SnapshotDeferred {
		t.Run(c.Name, func(t *testing.T) {
			b := c.Patch(t, loadImage(t, c.Image))
			im := openBytes(t, b, format.Options{})
			_, err := im.Snapshot(0)
			var fe *format.FormatError
			if !errors.Is(err, c.Err) || !errors.As(err, &fe) || !fieldIs(fe.Field, c.Field) {
				t.Fatalf("Snapshot(0): %v, want %v naming %q", err, c.Err, c.Field)
			}
			res, err := im.Check()
			if err != nil {
				t.Fatal(err)
			}
			if res.Corruptions == 0 {
				t.Errorf("check found no corruption: %+v", res)
			}
			want := map[string]string{
				"15 snapshot L1 huge":      "ERROR snapshot 1 (s1) l1_size=0x10000000: L1 table is too large; snapshot table entry corrupted",
				"15 snapshot L1 unaligned": "ERROR snapshot 1 (s1) l1_offset=0x60200: L1 table is not cluster aligned; snapshot table entry corrupted",
			}[c.Name]
			if want != "" && (len(res.Messages) == 0 || res.Messages[0] != want) {
				t.Errorf("messages %q, want first %q", res.Messages, want)
			}
		})
	}
}

// TestSnapshotTablePastEOFOpens: iotest 080's "hitting snapshot table
// size limit": 65536 entries at 16 MiB, past the end of the file, read as
// all-zero entries.
func TestSnapshotTablePastEOFOpens(t *testing.T) {
	b := loadImage(t, "base64m")
	binary.BigEndian.PutUint32(b[60:], format.MaxSnapshots)
	binary.BigEndian.PutUint64(b[64:], 16<<20)
	im := openBytes(t, b, format.Options{})
	if len(im.Snapshots) != format.MaxSnapshots || im.SnapshotTableSize != 40*format.MaxSnapshots {
		t.Fatalf("%d snapshots, table %d bytes", len(im.Snapshots), im.SnapshotTableSize)
	}
	if s := im.Snapshots[format.MaxSnapshots-1]; s.L1Offset != 0 || s.ID != "" || s.ExtraDataSize != 0 {
		t.Errorf("entry past EOF is not all zeros: %+v", s)
	}
}

// snapTableReader is an image whose snapshot table (at off, count
// entries of the same fixed part, the rest zeros) is synthesized on
// reads, so a 64 MiB table costs no memory.
type snapTableReader struct {
	head  []byte // the file before off
	off   int64
	entry []byte // one entry's fixed part
	step  int64  // entry stride
	size  int64
}

func (r *snapTableReader) ReadAt(p []byte, at int64) (int, error) {
	for i := range p {
		o := at + int64(i)
		switch {
		case o >= r.size:
			return i, io.EOF
		case o < int64(len(r.head)):
			p[i] = r.head[o]
		case o >= r.off && (o-r.off)%r.step < int64(len(r.entry)):
			p[i] = r.entry[(o-r.off)%r.step]
		default:
			p[i] = 0
		}
	}
	return len(p), nil
}

// TestSnapshotTableCheckRepair: the three tables a normal open refuses
// with QEMU's sentence and hint, which a check without repair cannot read
// either, and which a repair reads with QEMU's "Discarding" lines: extra
// data cut to 1 KiB, entries past 65536 or past 64 MiB of table dropped.
func TestSnapshotTableCheckRepair(t *testing.T) {
	base := loadImage(t, "snap")

	extra := append([]byte(nil), base...)
	binary.BigEndian.PutUint32(extra[formattest.SnapTable+36:], 0x10000)

	many := loadImage(t, "base64m")
	binary.BigEndian.PutUint32(many[60:], format.MaxSnapshots+1)
	binary.BigEndian.PutUint64(many[64:], 0x100000)

	// 261's "snapshot table too big": entries of 40 + 1 KiB + two 64 KiB
	// strings; the 508th ends past 64 MiB.
	const step = 40 + 1024 + 0xffff + 0xffff + 2
	big := loadImage(t, "base64m")
	binary.BigEndian.PutUint32(big[60:], 508)
	binary.BigEndian.PutUint64(big[64:], 0x100000)
	entry := make([]byte, 40)
	binary.BigEndian.PutUint16(entry[12:], 0xffff)
	binary.BigEndian.PutUint16(entry[14:], 0xffff)
	binary.BigEndian.PutUint32(entry[36:], 1024)
	bigR := &snapTableReader{head: big, off: 0x100000, entry: entry, step: step, size: 0x100000 + 508*step}

	cases := []struct {
		name     string
		r        io.ReaderAt
		size     int64
		open     string // QEMU's open refusal, hint included
		check    string // a check's "ERROR …" text without repair
		repaired []string
		kept     int
	}{
		{"extra data", bytes.NewReader(extra), int64(len(extra)),
			"Too much extra metadata in snapshot table entry 0\nYou can force-remove this extra metadata with qemu-img check -r all",
			"failed to read the snapshot table: Too much extra metadata in snapshot table entry 0\nYou can force-remove this extra metadata with qemu-img check -r all",
			[]string{"Discarding too much extra metadata in snapshot table entry 0 (65536 > 1024)"}, 1},
		{"too many", bytes.NewReader(many), int64(len(many)),
			"", // the header check: "Snapshot table too large" (qemuheader.go)
			"snapshot table too large\nYou can force-remove all 1 overhanging snapshots with qemu-img check -r all",
			[]string{"Discarding 1 overhanging snapshots"}, format.MaxSnapshots},
		{"too big", bigR, bigR.size,
			"Snapshot table is too big\nYou can force-remove all 1 overhanging snapshots with qemu-img check -r all",
			"failed to read the snapshot table: Snapshot table is too big\nYou can force-remove all 1 overhanging snapshots with qemu-img check -r all",
			[]string{"Discarding 1 overhanging snapshots (snapshot table is too big)"}, 507},
	}
	text := func(err error) string {
		var ste *format.SnapshotTableError
		if !errors.As(err, &ste) {
			return ""
		}
		return strings.TrimSuffix(ste.Text+"\n"+ste.Hint, "\n")
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := format.ReadImage(c.r, c.size, format.Options{})
			if err == nil {
				t.Fatal("a normal open took the table")
			}
			if c.open != "" && text(err) != c.open {
				t.Errorf("open: %v (QEMU text %q), want %q", err, text(err), c.open)
			}
			im, err := format.ReadImage(c.r, c.size, format.Options{CheckMode: true})
			if err != nil {
				t.Fatalf("check-mode open: %v", err)
			}
			if _, err := im.ReadSnapshotsForCheck(false); text(err) != c.check {
				t.Errorf("check: %v (QEMU text %q), want %q", err, text(err), c.check)
			}
			sc, err := im.ReadSnapshotsForCheck(true)
			if err != nil {
				t.Fatalf("repair read: %v", err)
			}
			if strings.Join(sc.Messages, "\n") != strings.Join(c.repaired, "\n") {
				t.Errorf("repair messages %q, want %q", sc.Messages, c.repaired)
			}
			if len(im.Snapshots) != c.kept {
				t.Errorf("%d entries kept, want %d", len(im.Snapshots), c.kept)
			}
			// The kept entries encode as a table the normal open takes.
			tb, err := format.AppendSnapshotTable(nil, im.Snapshots)
			if err != nil {
				t.Fatalf("encode: %v", err)
			}
			if _, _, err := format.ParseSnapshotTable(tb, uint32(len(im.Snapshots)), 0); err != nil {
				t.Errorf("repaired table does not parse: %v", err)
			}
			if c.name == "extra data" {
				s := im.Snapshots[0]
				if s.ExtraDataSize != 1024 || len(s.ExtraUnknown) != 1000 {
					t.Errorf("cut entry: extra %d (%d unknown)", s.ExtraDataSize, len(s.ExtraUnknown))
				}
				// The on-disk extent keeps the whole stored extra data: the
				// refcount check counts the clusters it spans.
				if want := int64(40 + 0x10000 + 1 + 2); im.SnapshotTableSize != want {
					t.Errorf("table extent %d, want %d", im.SnapshotTableSize, want)
				}
			}
		})
	}
}

// FuzzQcow2SnapshotCheck: a check-mode open and the check's read of the
// snapshot table (with and without repair) of a fuzzed image must not
// panic, must return the package's errors, must stay within the table
// limit's memory, and a repaired table must encode and parse again.
func FuzzQcow2SnapshotCheck(f *testing.F) {
	for _, name := range testImages {
		b := loadImage(f, name)
		keep := metadataRanges(f, b)
		f.Add(encodeSparse(b, keep), uint8(0))
		f.Add(encodeSparse(b, keep), uint8(1))
	}
	for _, c := range append(append([]formattest.Hostile(nil), hostileImages...), formattest.SnapshotDeferred...) {
		orig := loadImage(f, c.Image)
		keep := metadataRanges(f, orig)
		p := c.Patch(&testing.T{}, append([]byte(nil), orig...))
		f.Add(encodeSparse(p, keep), uint8(1))
	}
	f.Fuzz(func(t *testing.T, data []byte, flags uint8) {
		file := decodeSparse(data)
		im, err := format.ReadImage(file, file.Size, format.Options{CheckMode: true, MaxL1Bytes: 1 << 20, MaxRefcountTableBytes: 1 << 20})
		if err != nil {
			checkError(t, err)
			return
		}
		var sc *format.SnapshotCheck
		repair := flags&1 != 0
		// The kept entries (at most 64 MiB of table) and the read window.
		n := allocated(func() { sc, err = im.ReadSnapshotsForCheck(repair) })
		if budget := uint64(96 << 20); n > budget {
			t.Fatalf("ReadSnapshotsForCheck allocated %d bytes (budget %d)", n, budget)
		}
		if err != nil {
			var ste *format.SnapshotTableError
			if !errors.As(err, &ste) || ste.Text == "" {
				t.Fatalf("not a SnapshotTableError: %v", err)
			}
			return
		}
		if !repair && (sc.Overhanging != 0 || sc.Truncated != 0 || len(sc.Messages) != 0) {
			t.Fatalf("a read without repair changed the table: %+v", sc)
		}
		if len(im.Snapshots) > format.MaxSnapshots || im.SnapshotTableSize < 0 {
			t.Fatalf("%d entries, extent %d", len(im.Snapshots), im.SnapshotTableSize)
		}
		if len(im.Snapshots) > 0 && len(im.Snapshots) <= 4096 {
			tb, err := format.AppendSnapshotTable(nil, im.Snapshots)
			if err != nil {
				t.Fatalf("kept entries do not encode: %v", err)
			}
			if _, _, err := format.ParseSnapshotTable(tb, uint32(len(im.Snapshots)), 0); err != nil {
				t.Fatalf("kept entries do not parse again: %v", err)
			}
		}
	})
}

// TestSnapshotL1ValidAgrees: the allocation-free check the driver's
// overlap checks use agrees with ValidateSnapshot.
func TestSnapshotL1ValidAgrees(t *testing.T) {
	im := openBytes(t, loadImage(t, "snap"), format.Options{})
	g := im.Geometry
	base := im.Snapshots[0]
	for _, s := range []format.Snapshot{
		base,
		{L1Offset: base.L1Offset + 512, L1Entries: 1},
		{L1Offset: base.L1Offset, L1Entries: format.MaxL1Bytes/8 + 1},
		{L1Offset: 1 << 40, L1Entries: 1},
		{L1Offset: 1<<63 - 65536, L1Entries: 1 << 20},
		{L1Offset: 1 << 40, L1Entries: 0},
	} {
		if got, want := s.L1Valid(&g), format.ValidateSnapshot(&s, 0, &g, 0) == nil; got != want {
			t.Errorf("%+v: L1Valid %v, ValidateSnapshot ok %v", s, got, want)
		}
	}
	if n := testing.AllocsPerRun(100, func() { base.L1Valid(&g) }); n != 0 {
		t.Errorf("L1Valid allocates %v times", n)
	}
}
