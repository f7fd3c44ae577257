package format_test

import (
	"testing"

	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// TestExtL2QemuCorruptionText: an invalid extended-L2 entry met by a
// write, located with L2EntryAt, is worded as QEMU's corruption event
// (iotest 271); unlocated or other errors get no QEMU text.
func TestExtL2QemuCorruptionText(t *testing.T) {
	g := format.Geometry{ClusterBits: 16, ExtendedL2: true, Size: 1 << 30, FileSize: 1 << 20}
	_, both := g.DecodeL2Entry(format.EntryCopied|0x60000, 1|1<<32)
	_, noOff := g.DecodeL2Entry(0, 1)
	_, unaligned := g.DecodeL2Entry(format.EntryCopied|0x50200, 1)
	for _, c := range []struct {
		err  error
		want string
	}{
		{format.L2EntryAt(both, 0x40000, 1), "Invalid cluster entry found (L2 offset: 0x40000, L2 index: 0x1)"},
		{format.L2EntryAt(noOff, 0x40000, 0), "Invalid cluster entry found (L2 offset: 0x40000, L2 index: 0)"},
		{format.L2EntryAt(unaligned, 0x40000, 0), "Cluster allocation offset 0x50200 unaligned (L2 offset: 0x40000, L2 index: 0)"},
		{both, ""},
	} {
		if c.err == nil {
			t.Fatalf("no decode error for %q", c.want)
		}
		if got := format.QemuCorruptionText(c.err); got != c.want {
			t.Errorf("%v: %q, want %q", c.err, got, c.want)
		}
	}
}
