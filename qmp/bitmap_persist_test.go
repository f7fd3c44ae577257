package qmp

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestPersistentBitmapAdd: block-dirty-bitmap-add with persistent:true on
// a qcow2 node makes a bitmap that query-block reports persistent, that
// tracks writes, and that is in the image after blockdev-del (qemu-img
// info lists it, check is clean); on a raw node it is refused with QEMU's
// wording.
func TestPersistentBitmapAdd(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img is not installed (scripts/deps.sh installs it)")
	}
	d, dir, sock := testServer(t, 1, Options{})
	p := addQcow2(t, d, dir, "disk0")
	c := dialRaw(t, sock)
	c.negotiate()
	okReply(t, c, `{"execute":"block-dirty-bitmap-add","arguments":{"node":"disk0","name":"kept","persistent":true}}`)
	okReply(t, c, `{"execute":"block-dirty-bitmap-add","arguments":{"node":"disk0","name":"gone"}}`)
	wantError(t, c.do(`{"execute":"block-dirty-bitmap-add","arguments":{"node":"disk0","name":"x","persistent":true,"granularity":256}}`),
		GenericError, "Granularity must be power of 2")
	r := c.do(`{"execute":"query-block"}`)
	if s := mustJSON(t, r); !strings.Contains(s, `"name":"kept"`) || !strings.Contains(s, `"persistent":true`) {
		t.Fatalf("query-block: %s", s)
	}
	okReply(t, c, `{"execute":"blockdev-del","arguments":{"node-name":"disk0"}}`)
	out, err := exec.Command("qemu-img", "info", p).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "name: kept") || strings.Contains(string(out), "gone") {
		t.Fatalf("qemu-img info: %v\n%s", err, out)
	}
	if out, err := exec.Command("qemu-img", "check", p).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img check: %v\n%s", err, out)
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestPersistentBitmapInconsistent: a persistent bitmap left in use by a
// killed writer is refused for clear with QEMU's wording, and removed by
// block-dirty-bitmap-remove: after blockdev-del the image has no bitmaps
// and is check clean.
func TestPersistentBitmapInconsistent(t *testing.T) {
	p, sock := staleBitmapServer(t)
	c := dialRaw(t, sock)
	c.negotiate()
	wantError(t, c.do(`{"execute":"block-dirty-bitmap-clear","arguments":{"node":"disk0","name":"old"}}`),
		GenericError, "Bitmap 'old' is inconsistent and cannot be used")
	okReply(t, c, `{"execute":"block-dirty-bitmap-remove","arguments":{"node":"disk0","name":"old"}}`)
	wantError(t, c.do(`{"execute":"block-dirty-bitmap-remove","arguments":{"node":"disk0","name":"old"}}`),
		GenericError, "Dirty bitmap 'old' not found")
	okReply(t, c, `{"execute":"blockdev-del","arguments":{"node-name":"disk0"}}`)
	out, err := exec.Command("qemu-img", "info", p).CombinedOutput()
	if err != nil || strings.Contains(string(out), "bitmaps") {
		t.Fatalf("qemu-img info: %v\n%s", err, out)
	}
	if out, err := exec.Command("qemu-img", "check", p).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img check: %v\n%s", err, out)
	}
}

// staleBitmapServer is a daemon with node disk0 over a 16 MiB qcow2
// image whose persistent bitmap "old" a killed writer left in use (its
// in-use flag set: QEMU calls it inconsistent). It skips without
// qemu-img and qemu-io.
func staleBitmapServer(t *testing.T) (string, string) {
	t.Helper()
	for _, tool := range []string{"qemu-img", "qemu-io"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed (scripts/deps.sh installs it)", tool)
		}
	}
	d, dir, sock := testServer(t, 1, Options{})
	p := filepath.Join(dir, "stale.qcow2")
	for _, args := range [][]string{{"create", "-q", "-f", "qcow2", p, "16M"}, {"bitmap", "--add", p, "old"}} {
		if out, err := exec.Command("qemu-img", args...).CombinedOutput(); err != nil {
			t.Fatalf("qemu-img %v: %v\n%s", args, err, out)
		}
	}
	exec.Command("qemu-io", "-f", "qcow2", "-c", "write 0 4k", "-c", "abort", p).Run() // leaves "old" in use
	if err := d.blockdevAdd(&AddOptions{Driver: "qcow2", NodeName: "disk0", File: &FileRef{Driver: "file", Filename: p}}); err != nil {
		t.Fatal(err)
	}
	return p, sock
}
