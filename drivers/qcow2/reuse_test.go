package qcow2

import (
	"bytes"
	"path/filepath"
	"testing"
)

// TestQcow2DiscardedClustersReusedBeforeGrow: clusters freed by a discard
// are handed out again before the file grows, in the same session (no
// flush in between), as QEMU does. The same commands run through qemu-io
// on a copy of the image must give the same qemu-img map, offsets
// included, and the same file length.
func TestQcow2DiscardedClustersReusedBeforeGrow(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	want := filepath.Join(dir, "qemu.qcow2")
	got := filepath.Join(dir, "ours.qcow2")
	qemuCreate(t, want, "", 4<<20)
	qemuIO(t, want, "write -P 0x11 0 1M")
	copyFile(t, want, got)
	qemuIO(t, want, "discard 0 512k", "write -P 0x22 2M 512k")

	e := newTestEnv(t)
	n := e.mustOpen(got, false)
	if err := n.Discard(0, 512<<10); err != nil {
		t.Fatal(err)
	}
	if _, err := n.WriteAt(bytes.Repeat([]byte{0x22}, 512<<10), 2<<20); err != nil {
		t.Fatal(err)
	}
	n.Unref()
	qemuCheck(t, got)
	if w, g := qemuImg(t, "map", "--output=json", want), qemuImg(t, "map", "--output=json", got); !bytes.Equal(w, g) {
		t.Errorf("qemu-img map:\nqemu-io: %s\nours:    %s", w, g)
	}
	if w, g := fileSize(t, want), fileSize(t, got); w != g {
		t.Errorf("file is %d bytes, qemu-io's %d", g, w)
	}
}
