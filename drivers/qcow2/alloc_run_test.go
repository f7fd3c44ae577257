package qcow2

import (
	"os"
	"path/filepath"
	"testing"
)

// TestWholeClusterRunTakesFreeRunLikeQemu: a write of whole clusters that
// all need new host clusters takes the first run of that many free
// clusters, as qemu-io 7.2 places them, skipping a single free cluster (a
// discarded one) before it; standard and extended L2 entries alike.
func TestWholeClusterRunTakesFreeRunLikeQemu(t *testing.T) {
	needQemu(t)
	for _, opts := range []string{"extended_l2=off", "extended_l2=on"} {
		dir := t.TempDir()
		theirs, ours := filepath.Join(dir, "theirs.qcow2"), filepath.Join(dir, "ours.qcow2")
		for _, p := range []string{theirs, ours} {
			qemuImg(t, "create", "-q", "-f", "qcow2", "-o", opts, p, "1M")
			qemuIO(t, p, "write 0 256k")
			qemuIO(t, p, "discard 64k 64k")
		}
		qemuIO(t, theirs, "write -P 7 512k 128k")
		e := newTestEnv(t)
		n := e.mustOpen(ours, false)
		buf := make([]byte, 128<<10)
		for i := range buf {
			buf[i] = 7
		}
		if _, err := n.WriteAt(buf, 512<<10); err != nil {
			t.Fatal(err)
		}
		if err := n.Unref(); err != nil {
			t.Fatal(err)
		}
		a, _ := os.ReadFile(theirs)
		b, _ := os.ReadFile(ours)
		if len(a) != len(b) {
			t.Errorf("%s: the image is %d bytes, qemu-io's %d", opts, len(b), len(a))
		} else if d := firstDiff(a, b); d >= 0 {
			t.Errorf("%s: the image differs from qemu-io's at byte %#x", opts, d)
		}
	}
}
