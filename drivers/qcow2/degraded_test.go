package qcow2

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// Degraded open (issue 14 item 8; docs/design/qcow2-repair.md): damaged
// active L1 or refcount table entries no longer make the open fail.

// TestQcow2DegradedOpenCatalogue: the catalogue's damaged-entry rows open
// (read-only and read-write), the damaged entry is recorded, and mapping
// the guest range under a damaged L1 entry fails naming it.
func TestQcow2DegradedOpenCatalogue(t *testing.T) {
	cases := []struct {
		name  string
		patch func(*testing.T, []byte) []byte
		l1    bool // an L1 entry (else a refcount table entry)
	}{
		{"L1 entry unaligned", at64(0x30000, format.EntryCopied|0x40200), true},
		{"L1 entry reserved bit 0", at64(0x30000, format.EntryCopied|0x40001), true},
		{"L1 entry reserved bit 60", at64(0x30000, format.EntryCopied|1<<60|0x40000), true},
		{"L1 entry past EOF", at64(0x30000, format.EntryCopied|0x100000000), true},
		{"reftable entry reserved bits", at64(0x10000, 0x20001), false},
		{"reftable entry unaligned", at64(0x10000, 0x20200), false},
		{"reftable entry past EOF", at64(0x10000, 0x100000000), false},
	}
	for _, c := range cases {
		for _, rw := range []bool{false, true} {
			b := c.patch(t, append([]byte(nil), loadImage(t, "base64m")...))
			im, err := format.ReadImage(bytes.NewReader(b), int64(len(b)), format.Options{ReadWrite: rw})
			if err != nil {
				t.Fatalf("%s (rw %v): open failed: %v", c.name, rw, err)
			}
			if c.l1 {
				if !im.DamagedL1.Has(0) || im.DamagedL1.Len() != 1 || im.DamagedRT.Len() != 0 {
					t.Errorf("%s: damaged L1 %d, RT %d entries", c.name, im.DamagedL1.Len(), im.DamagedRT.Len())
				}
				_, err := im.Map(nil, 0, 65536)
				var fe *format.FormatError
				if !errors.Is(err, format.ErrCorrupt) || !errors.As(err, &fe) || !fieldIs(fe.Field, "l1_table[0]") {
					t.Errorf("%s: Map of the damaged range: %v", c.name, err)
				}
			} else if !im.DamagedRT.Has(0) || im.DamagedRT.Len() != 1 || im.DamagedL1.Len() != 0 {
				t.Errorf("%s: damaged RT %d, L1 %d entries", c.name, im.DamagedRT.Len(), im.DamagedL1.Len())
			}
		}
	}
}

// degradedImage makes a 2 GiB qcow2 image with qemu-img whose L1 table
// has two L2 tables (guest 0..128k in L1 entry 0, guest 1G in entry 2,
// L2 at 0x70000, data at 0x80000) and applies damage.
func degradedImage(t *testing.T, damage func(path string)) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "d.qcow2")
	qemuCreate(t, img, "", 2<<30)
	qemuIO(t, img, "write -P 0x5a 0 128k", "write -P 0x6b 1G 64k")
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	if binary.BigEndian.Uint64(b[0x30010:]) != format.EntryCopied|0x70000 || len(b) != 0x90000 {
		t.Fatalf("qemu-img made another layout")
	}
	damage(img)
	return img
}

func patchU64(t *testing.T, path string, off int64, v uint64) {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	patch(t, path, off, b[:])
}

// TestQcow2DegradedReadWrite: through the driver, reads outside the
// damage return the data and reads under a damaged L1 entry fail naming
// it; writes outside work (in place and allocating); a write under the
// damaged entry, or one that needs a refcount block through a damaged
// refcount table entry, fails, sets the corrupt bit, and never grows the
// file to the bogus offset. Afterwards every request fails, and a
// read-write open is refused, as QEMU does after marking an image corrupt.
func TestQcow2DegradedReadWrite(t *testing.T) {
	needQemu(t)
	cases := []struct {
		name    string
		damage  func(t *testing.T, path string)
		l1      bool  // the damage hides guest 1G
		allocOK bool  // allocating writes outside the damage work
		refuse  int64 // guest offset of a write that must be refused
	}{
		{"truncated", func(t *testing.T, p string) {
			if err := os.Truncate(p, 0x70000); err != nil {
				t.Fatal(err)
			}
		}, true, true, 1<<30 + 4096},
		{"l1-past-eof", func(t *testing.T, p string) { patchU64(t, p, 0x30010, format.EntryCopied|0x100000) }, true, true, 1 << 30},
		{"l1-unaligned", func(t *testing.T, p string) { patchU64(t, p, 0x30010, format.EntryCopied|0x70200) }, true, true, 1<<30 + 65536},
		{"l1-reserved-bit", func(t *testing.T, p string) { patchU64(t, p, 0x30010, format.EntryCopied|0x70001) }, true, true, 1 << 30},
		{"reftable-unaligned", func(t *testing.T, p string) { patchU64(t, p, 0x10000, 0x20200) }, false, false, 200 << 20},
		{"reftable-past-eof", func(t *testing.T, p string) { patchU64(t, p, 0x10000, 0x1000000) }, false, false, 200 << 20},
		{"reftable-unaligned-unused", func(t *testing.T, p string) { patchU64(t, p, 0x10008, 0x20200) }, false, true, -1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			img := degradedImage(t, func(p string) { c.damage(t, p) })
			e := newTestEnv(t)
			n := e.mustOpen(img, false)
			defer func() {
				if n != nil {
					n.Unref()
				}
			}()
			buf := make([]byte, 65536)
			if _, err := n.ReadAt(buf, 0); err != nil || buf[0] != 0x5a || buf[65535] != 0x5a {
				t.Fatalf("read outside the damage: %v", err)
			}
			_, err := n.ReadAt(buf, 1<<30)
			if c.l1 {
				if !block.IsKind(err, block.Corrupt) || !strings.Contains(err.Error(), "l1_table[2]") {
					t.Errorf("read under the damaged L1 entry: %v", err)
				}
			} else if err != nil || buf[0] != 0x6b {
				t.Errorf("read at 1G: %v", err)
			}
			// In place: no metadata involved.
			if _, err := n.WriteAt(bytes.Repeat([]byte{1}, 4096), 4096); err != nil {
				t.Errorf("in-place write outside the damage: %v", err)
			}
			// Allocating, in the undamaged L2 table.
			_, err = n.WriteAt(bytes.Repeat([]byte{2}, 4096), 300<<20)
			if c.allocOK && err != nil {
				t.Errorf("allocating write outside the damage: %v", err)
			}
			if !c.allocOK {
				if !block.IsKind(err, block.Corrupt) || !strings.Contains(err.Error(), "refcount_table[0]") {
					t.Errorf("allocating write through a damaged refcount table entry: %v", err)
				}
			}
			if c.refuse >= 0 && c.allocOK {
				_, err = n.WriteAt(bytes.Repeat([]byte{3}, 4096), c.refuse)
				if !block.IsKind(err, block.Corrupt) || !strings.Contains(err.Error(), "damaged metadata") {
					t.Errorf("write into the damage: %v", err)
				}
			}
			if c.refuse >= 0 {
				if _, err := n.ReadAt(buf, 0); err == nil {
					t.Error("read after the image was marked corrupt succeeded")
				}
			}
			if err := n.Unref(); err != nil {
				t.Errorf("close: %v", err)
			}
			n = nil
			st, err := os.Stat(img)
			if err != nil {
				t.Fatal(err)
			}
			if st.Size() > 0xa0000 {
				t.Errorf("file grew to %#x", st.Size())
			}
			hdr, err := os.ReadFile(img)
			if err != nil {
				t.Fatal(err)
			}
			marked := binary.BigEndian.Uint64(hdr[72:])&format.IncompatCorrupt != 0
			if marked != (c.refuse >= 0) {
				t.Errorf("corrupt bit %v after the session", marked)
			}
			if marked {
				if _, err := e.open(img, false); err == nil {
					t.Error("read-write open of the image marked corrupt succeeded")
				}
			}
			// The writes that succeeded are on disk (their metadata was
			// written back before the image was marked).
			ro := e.mustOpen(img, true)
			defer ro.Unref()
			if _, err := ro.ReadAt(buf[:4096], 4096); err != nil || buf[0] != 1 {
				t.Errorf("in-place write after reopen: %v %x", err, buf[0])
			}
			if c.allocOK {
				if _, err := ro.ReadAt(buf[:4096], 300<<20); err != nil || buf[0] != 2 || buf[4095] != 2 {
					t.Errorf("allocating write after reopen: %v %x", err, buf[0])
				}
			}
		})
	}
}

// TestQcow2DegradedNeverAllocatesBogusTarget: the cluster a damaged L1
// entry points at past the end of the file is never handed out when
// allocations grow the file over it (else a later open would take the
// entry as valid and read guest data as an L2 table).
func TestQcow2DegradedNeverAllocatesBogusTarget(t *testing.T) {
	needQemu(t)
	const target = 0x100000
	img := degradedImage(t, func(p string) { patchU64(t, p, 0x30010, format.EntryCopied|target) })
	e := newTestEnv(t)
	n := e.mustOpen(img, false)
	data := bytes.Repeat([]byte{7}, 1<<20)
	if _, err := n.WriteAt(data, 400<<20); err != nil {
		t.Fatal(err)
	}
	if err := n.Unref(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) <= target {
		t.Fatalf("the file did not grow over the target (%#x bytes)", len(b))
	}
	im, err := format.ReadImage(bytes.NewReader(b), int64(len(b)), format.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if rc, err := im.Refcount(target); err != nil || rc != 0 {
		t.Errorf("refcount of the bogus target: %d %v", rc, err)
	}
	ext, err := im.Map(nil, 400<<20, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range ext {
		if x.Kind == format.ExtentData && x.HostOff <= target && target < x.HostOff+x.Len {
			t.Errorf("guest %#x was put in the cluster the damaged entry points at", x.GuestOff)
		}
	}
}

// TestQcow2DegradedL2EntryWrite: in a copy truncated inside the data
// (guest 64k's cluster, 0x60000, is gone), reading that guest cluster
// fails, and writing it — which would write in place past the end of the
// file — fails and marks the image corrupt instead, as QEMU does for
// invalid entries met at run time; the file does not grow.
func TestQcow2DegradedL2EntryWrite(t *testing.T) {
	needQemu(t)
	img := degradedImage(t, func(p string) {
		if err := os.Truncate(p, 0x60000); err != nil {
			t.Fatal(err)
		}
	})
	e := newTestEnv(t)
	n := e.mustOpen(img, false)
	buf := make([]byte, 4096)
	if _, err := n.ReadAt(buf, 0); err != nil || buf[0] != 0x5a {
		t.Fatalf("read before the damage: %v", err)
	}
	if _, err := n.ReadAt(buf, 65536); !block.IsKind(err, block.Corrupt) {
		t.Errorf("read of the truncated cluster: %v", err)
	}
	_, err := n.WriteAt(bytes.Repeat([]byte{4}, 4096), 65536+4096)
	if !block.IsKind(err, block.Corrupt) || !strings.Contains(err.Error(), "past end of file") {
		t.Errorf("write into the truncated cluster: %v", err)
	}
	if err := n.Unref(); err != nil {
		t.Errorf("close: %v", err)
	}
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != 0x60000 {
		t.Errorf("file size %#x after the refused write", len(b))
	}
	if binary.BigEndian.Uint64(b[72:])&format.IncompatCorrupt == 0 {
		t.Error("corrupt bit not set")
	}
}
