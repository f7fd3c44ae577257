package qmp

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/ringblk/ringblk/host"
)

// TestExportPermissionsAsQEMU: NBD exports of nodes other nodes use
// follow QEMU's permissions, with its messages (checked against
// qemu-storage-daemon 7.2, and qemu-iotests qsd-jobs):
//
//   - an overlay's backing node may be exported read-only and writable;
//     before, both were refused ("node is used as backing hd"), so a base
//     image under a running overlay could not be served at all;
//   - a stream job refuses a writable export of a node it copies from,
//     after the job was created (created, then null, then the error), and
//     such an export is refused while the job runs;
//   - a format node's file node: no writable export, and no export at all
//     while the format node is writable (resize);
//   - block-export-add looks at the node before it asks for the NBD
//     server, as QEMU does;
//   - a deleted export's name can be used again (before, the NBD server
//     kept the closed export and refused the name for its whole life).
func TestExportPermissionsAsQEMU(t *testing.T) {
	d, dir, sock := testServer(t, 1, Options{})
	c := dialRaw(t, sock)
	c.negotiate()
	base, top := filepath.Join(dir, "base.qcow2"), filepath.Join(dir, "top.qcow2")
	if err := d.h.Create(base, host.CreateOptions{Format: "qcow2", Size: 4 << 20}); err != nil {
		t.Fatal(err)
	}
	if err := d.h.Create(top, host.CreateOptions{Format: "qcow2", Size: 4 << 20, BackingFile: base, BackingFormat: "qcow2"}); err != nil {
		t.Fatal(err)
	}
	wantError(t, c.do(`{"execute":"block-export-add","arguments":{"type":"nbd","id":"x","node-name":"nosuch"}}`),
		GenericError, "Cannot find device='' nor node-name='nosuch'")
	okReply(t, c, `{"execute":"blockdev-add","arguments":{"driver":"file","node-name":"file_base","filename":"`+base+`"}}`)
	okReply(t, c, `{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"fmt_base","file":"file_base"}}`)
	okReply(t, c, `{"execute":"blockdev-add","arguments":{"driver":"file","node-name":"file_top","filename":"`+top+`"}}`)
	okReply(t, c, `{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"fmt_top","file":"file_top","backing":"fmt_base"}}`)
	okReply(t, c, `{"execute":"nbd-server-start","arguments":{"addr":{"type":"unix","path":"`+filepath.Join(dir, "nbd.sock")+`"}}}`)

	okReply(t, c, `{"execute":"block-export-add","arguments":{"type":"nbd","id":"ro","node-name":"fmt_base"}}`)
	okReply(t, c, `{"execute":"block-export-del","arguments":{"id":"ro"}}`)
	c.waitEvent("BLOCK_EXPORT_DELETED", "")
	okReply(t, c, `{"execute":"block-export-add","arguments":{"type":"nbd","id":"rw","node-name":"fmt_base","writable":true}}`)

	const streamConflict = "Permission conflict on node 'fmt_base': permissions 'write' are both required by an unnamed block device (uses node 'fmt_base' as 'root' child) and unshared by stream job 'job0' (uses node 'fmt_base' as 'intermediate node' child)."
	c.send(`{"execute":"block-stream","arguments":{"job-id":"job0","device":"fmt_top"}}`)
	var statuses []string
	for {
		m := c.recvAny()
		if m["event"] == "JOB_STATUS_CHANGE" {
			statuses = append(statuses, m["data"].(map[string]any)["status"].(string))
			continue
		}
		if _, ok := m["event"]; ok {
			continue
		}
		wantError(t, m, GenericError, streamConflict)
		break
	}
	if len(statuses) != 2 || statuses[0] != "created" || statuses[1] != "null" {
		t.Fatalf("job0 went through %v, want [created null]", statuses)
	}
	okReply(t, c, `{"execute":"block-export-del","arguments":{"id":"rw"}}`)
	c.waitEvent("BLOCK_EXPORT_DELETED", "")

	// The other order: the job first (slowed down so that it runs).
	okReply(t, c, `{"execute":"block-stream","arguments":{"job-id":"job0","device":"fmt_top","speed":1024}}`)
	wantError(t, c.do(`{"execute":"block-export-add","arguments":{"type":"nbd","id":"rw","node-name":"fmt_base","writable":true}}`),
		GenericError, streamConflict)
	okReply(t, c, `{"execute":"block-export-add","arguments":{"type":"nbd","id":"ro","node-name":"fmt_base"}}`)
	wantError(t, c.do(`{"execute":"block-export-add","arguments":{"type":"nbd","id":"ro2","node-name":"fmt_base"}}`),
		GenericError, "NBD server already has export named 'fmt_base'")

	wantError(t, c.do(`{"execute":"block-export-add","arguments":{"type":"nbd","id":"f","node-name":"file_top"}}`), GenericError,
		"Permission conflict on node 'file_top': permissions 'resize' are both required by node 'fmt_top' (uses node 'file_top' as 'file' child) and unshared by an unnamed block device (uses node 'file_top' as 'root' child).")
	wantError(t, c.do(`{"execute":"block-export-add","arguments":{"type":"nbd","id":"f","node-name":"file_base","writable":true}}`), GenericError,
		"Permission conflict on node 'file_base': permissions 'write' are both required by an unnamed block device (uses node 'file_base' as 'root' child) and unshared by node 'fmt_base' (uses node 'file_base' as 'file' child).")
}

// TestBlockdevAddOpenErrorsAsQEMU: an image blockdev-add cannot open is
// reported in qemu-storage-daemon's words (checked against 7.2). Before,
// the reply carried ringblk's chain of causes ("block: open on /x at 0:
// io: open /x: no such file or directory").
func TestBlockdevAddOpenErrorsAsQEMU(t *testing.T) {
	_, dir, sock := testServer(t, 1, Options{})
	c := dialRaw(t, sock)
	c.negotiate()
	junk := filepath.Join(dir, "junk.qcow2")
	if err := os.WriteFile(junk, []byte("junk\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ args, want string }{
		{`{"driver":"file","node-name":"a","filename":"/nonexist"}`, "Could not open '/nonexist': No such file or directory"},
		{`{"driver":"qcow2","node-name":"b","file":{"driver":"file","filename":"/nonexist"}}`, "Could not open '/nonexist': No such file or directory"},
		{`{"driver":"file","node-name":"c","filename":"` + dir + `"}`, "Could not open '" + dir + "': Is a directory"},
		{`{"driver":"qcow2","node-name":"d","file":{"driver":"file","filename":"` + junk + `"}}`, "Image is not in qcow2 format"},
	} {
		r := c.do(`{"execute":"blockdev-add","arguments":` + tc.args + `}`)
		e, _ := r["error"].(map[string]any)
		if e == nil || e["desc"] != tc.want {
			t.Errorf("blockdev-add %s: %v, want %q", tc.args, r, tc.want)
		}
	}
}

// TestSharedBackingNodeData: two overlays over one backing node read its
// data, keep their own writes apart, and the backing node stays in use
// until the last of them is deleted.
func TestSharedBackingNodeData(t *testing.T) {
	d, dir, sock := testServer(t, 1, Options{})
	c := dialRaw(t, sock)
	c.negotiate()
	base := filepath.Join(dir, "base.qcow2")
	if err := d.h.Create(base, host.CreateOptions{Format: "qcow2", Size: 4 << 20}); err != nil {
		t.Fatal(err)
	}
	okReply(t, c, `{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"base","file":{"driver":"file","filename":"`+base+`"}}}`)
	fill := func(name string, b byte, off int64) {
		t.Helper()
		if _, err := d.nodes[name].dev.Root().WriteAt(bytes.Repeat([]byte{b}, 4096), off); err != nil {
			t.Fatal(err)
		}
	}
	check := func(name string, b byte, off int64) {
		t.Helper()
		got := make([]byte, 4096)
		if _, err := d.nodes[name].dev.Root().ReadAt(got, off); err != nil || !bytes.Equal(got, bytes.Repeat([]byte{b}, 4096)) {
			t.Errorf("%s at %d: %v, want all 0x%x (got 0x%x)", name, off, err, b, got[0])
		}
	}
	fill("base", 0x11, 0)
	fill("base", 0x11, 16384)
	for _, o := range []string{"o1", "o2"} {
		p := filepath.Join(dir, o+".qcow2")
		if err := d.h.Create(p, host.CreateOptions{Format: "qcow2", Size: 4 << 20, BackingFile: base, BackingFormat: "qcow2"}); err != nil {
			t.Fatal(err)
		}
		okReply(t, c, `{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"`+o+`","backing":"base","file":{"driver":"file","filename":"`+p+`"}}}`)
	}
	fill("o1", 0x22, 0)
	fill("o2", 0x33, 8192)
	check("o1", 0x22, 0)
	check("o2", 0x11, 0)
	check("o2", 0x33, 8192)
	check("o1", 0, 8192)
	// A stream into o2 takes base out of o2's chain; base stays o1's.
	okReply(t, c, `{"execute":"block-stream","arguments":{"job-id":"s2","device":"o2"}}`)
	c.waitEvent("BLOCK_JOB_COMPLETED", "s2")
	check("o2", 0x11, 16384)
	wantError(t, c.do(`{"execute":"blockdev-del","arguments":{"node-name":"base"}}`), GenericError, "node is used as backing hd of 'o1'")
	okReply(t, c, `{"execute":"blockdev-del","arguments":{"node-name":"o2"}}`)
	wantError(t, c.do(`{"execute":"blockdev-del","arguments":{"node-name":"base"}}`), GenericError, "node is used as backing hd of 'o1'")
	check("o1", 0x11, 16384)
	check("o1", 0x22, 0)
	okReply(t, c, `{"execute":"blockdev-del","arguments":{"node-name":"o1"}}`)
	okReply(t, c, `{"execute":"blockdev-del","arguments":{"node-name":"base"}}`)
}
