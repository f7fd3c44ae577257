package qmp

import (
	"encoding/json"
	"os/exec"
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
