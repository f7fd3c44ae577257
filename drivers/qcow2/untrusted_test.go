package qcow2

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// untrustedImage makes a 1 GiB image (64 KiB clusters; data written at
// guest 0 when withData) and zeroes the first four refcounts of its first
// refcount block, as iotest 137 does: the header, refcount table,
// refcount block and L1 table now have refcount 0.
func untrustedImage(t *testing.T, e *testEnv, withData bool) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "u.qcow2")
	if err := e.create(path, 1<<30, format.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if withData {
		n := e.mustOpen(path, false)
		if _, err := n.WriteAt(bytes.Repeat([]byte{0x5a}, 65536), 0); err != nil {
			t.Fatal(err)
		}
		if err := n.Unref(); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	rt := binary.BigEndian.Uint64(b[48:])
	rb := binary.BigEndian.Uint64(b[rt:])
	patch(t, path, int64(rb), make([]byte, 8))
	return path
}

// TestQcow2UntrustedRefcountsOpenRefusesAllocation: a read-write open of
// an image whose own metadata has refcount 0 succeeds (QEMU opens it; it
// used to be refused); reads and writes in place work; the first
// allocation is refused without writing anything over metadata: the
// request fails as corrupt, the corrupt bit is set and QEMU's "Marking
// image as corrupt" line is reported, worded as QEMU's allocator would
// have met the header (a new L2 table at offset 0, or a data cluster
// overlapping it).
func TestQcow2UntrustedRefcountsOpenRefusesAllocation(t *testing.T) {
	for _, c := range []struct {
		name     string
		withData bool
		want     string
	}{
		{"new L2 table", false, "qcow2: Marking image as corrupt: Preventing invalid allocation of L2 table at offset 0; further corruption events will be suppressed"},
		{"data cluster", true, "qcow2: Marking image as corrupt: Preventing invalid write on metadata (overlaps with qcow2_header); further corruption events will be suppressed"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var reports []string
			old := CorruptionReport
			CorruptionReport = func(m string) { reports = append(reports, m) }
			defer func() { CorruptionReport = old }()
			e := newTestEnv(t)
			path := untrustedImage(t, e, c.withData)
			before, _ := os.ReadFile(path)
			n, err := e.open(path, false)
			if err != nil {
				t.Fatalf("read-write open: %v", err)
			}
			defer n.Unref()
			buf := make([]byte, 4096)
			if _, err := n.ReadAt(buf, 0); err != nil {
				t.Fatalf("read: %v", err)
			}
			if c.withData {
				if _, err := n.WriteAt(bytes.Repeat([]byte{0x5a}, 4096), 0); err != nil { // the same bytes: the file must not change
					t.Errorf("write in place: %v", err)
				}
			}
			_, err = n.WriteAt(bytes.Repeat([]byte{2}, 4096), 65536)
			if !block.IsKind(err, block.Corrupt) || !strings.Contains(err.Error(), "refcount 0") {
				t.Errorf("allocating write: %v, want a corrupt error naming the refcount", err)
			}
			if len(reports) != 1 || reports[0] != c.want {
				t.Errorf("reports %q, want [%q]", reports, c.want)
			}
			after, _ := os.ReadFile(path)
			if binary.BigEndian.Uint64(after[72:])&format.IncompatCorrupt == 0 {
				t.Error("corrupt bit not set")
			}
			if len(after) != len(before) || !bytes.Equal(after[:72], before[:72]) || !bytes.Equal(after[80:], before[80:]) {
				t.Error("the refused allocation changed the file beyond the corrupt bit")
			}
		})
	}
}

// TestQcow2UntrustedRefcountsRepaired: check -r all on such an image
// (opened read-write) rebuilds the refcounts, after which allocating
// writes work and the image checks clean.
func TestQcow2UntrustedRefcountsRepaired(t *testing.T) {
	e := newTestEnv(t)
	path := untrustedImage(t, e, true)
	n, err := e.open(path, false)
	if err != nil {
		t.Fatalf("read-write open: %v", err)
	}
	res, err := n.Check(block.CheckFixLeaks | block.CheckFixErrors)
	if err != nil || res.CorruptionsFixed == 0 {
		t.Fatalf("repair: %+v, %v", res, err)
	}
	if _, err := n.WriteAt(bytes.Repeat([]byte{7}, 4096), 512<<20); err != nil {
		t.Errorf("allocating write after the repair: %v", err)
	}
	if err := n.Unref(); err != nil {
		t.Fatal(err)
	}
	ro := e.mustOpen(path, true)
	defer ro.Unref()
	res, err = ro.Check(0)
	if err != nil || res.Corruptions != 0 || res.Leaks != 0 {
		t.Errorf("check after the repair: %+v, %v", res, err)
	}
	buf := make([]byte, 4096)
	if _, err := ro.ReadAt(buf, 512<<20); err != nil || buf[0] != 7 {
		t.Errorf("read back: %v %x", err, buf[0])
	}
}
