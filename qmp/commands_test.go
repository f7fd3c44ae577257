package qmp

import (
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/host"
)

// TestBlockdevAddDriversAndDel: file, raw over an inline file, qcow2 over
// a file node by name, null-co; read-only and cache options reach the
// nodes; deleting in the wrong order is refused with QEMU's wording.
func TestBlockdevAddDriversAndDel(t *testing.T) {
	d, dir, sock := testServer(t, 1, Options{})
	c := dialRaw(t, sock)
	c.negotiate()
	rawImg, q := filepath.Join(dir, "r.img"), filepath.Join(dir, "q.qcow2")
	if err := d.h.Create(rawImg, host.CreateOptions{Format: "raw", Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	ok := func(cmd string) any {
		t.Helper()
		r := c.do(cmd)
		if _, found := r["return"]; !found {
			t.Fatalf("%s: %v", cmd, r)
		}
		return r["return"]
	}
	ok(`{"execute":"blockdev-add","arguments":{"driver":"file","node-name":"f0","filename":"` + rawImg + `","read-only":true}}`)
	ok(`{"execute":"blockdev-add","arguments":{"driver":"null-co","node-name":"n0","size":1048576}}`)
	// blockdev-create on a file node, then qcow2 over it by reference.
	// blockdev-create is a job, as in QEMU: it concludes and waits for
	// job-dismiss.
	created := func(id string) {
		t.Helper()
		c.waitEvent("JOB_STATUS_CHANGE", id) // created
		for {
			ev := c.waitEvent("JOB_STATUS_CHANGE", id)
			if ev["data"].(map[string]any)["status"] == "concluded" {
				break
			}
		}
		jobs := ok(`{"execute":"query-jobs"}`).([]any)
		if len(jobs) != 1 || jobs[0].(map[string]any)["type"] != "create" || jobs[0].(map[string]any)["error"] != nil {
			t.Fatalf("query-jobs after %s: %v", id, jobs)
		}
		ok(`{"execute":"job-dismiss","arguments":{"id":"` + id + `"}}`)
	}
	ok(`{"execute":"blockdev-create","arguments":{"job-id":"c0","options":{"driver":"file","filename":"` + q + `","size":0}}}`)
	created("c0")
	ok(`{"execute":"blockdev-add","arguments":{"driver":"file","node-name":"qf","filename":"` + q + `","cache":{"direct":false,"no-flush":false}}}`)
	ok(`{"execute":"blockdev-create","arguments":{"job-id":"c1","options":{"driver":"qcow2","file":"qf","size":2097152}}}`)
	created("c1")
	ok(`{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"q0","file":"qf"}}`)
	wantError(t, c.do(`{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"q0","file":"qf"}}`), GenericError, "Duplicate nodes with node-name='q0'")
	wantError(t, c.do(`{"execute":"blockdev-add","arguments":{"driver":"vmdk","node-name":"v","file":"qf"}}`), GenericError, "Invalid parameter 'vmdk'")
	wantError(t, c.do(`{"execute":"blockdev-del","arguments":{"node-name":"qf"}}`), GenericError, "Block device qf is in use")
	r := ok(`{"execute":"query-named-block-nodes"}`).([]any)
	got := map[string]map[string]any{}
	for _, n := range r {
		m := n.(map[string]any)
		got[m["node-name"].(string)] = m
	}
	if got["f0"]["ro"] != true || got["f0"]["drv"] != "file" || got["n0"]["drv"] != "null-co" || got["q0"]["drv"] != "qcow2" {
		t.Fatalf("nodes %v", got)
	}
	if img := got["q0"]["image"].(map[string]any); img["virtual-size"] != 2097152.0 {
		t.Fatalf("q0 image %v", img)
	}
	bl := ok(`{"execute":"query-block"}`).([]any)
	if len(bl) != 3 {
		t.Fatalf("query-block lists %d devices, want f0, n0, q0: %v", len(bl), bl)
	}
	st := ok(`{"execute":"query-blockstats"}`).([]any)
	if s := st[0].(map[string]any)["stats"].(map[string]any); s["rd_operations"] == nil || s["wr_bytes"] == nil {
		t.Fatalf("blockstats %v", st[0])
	}
	ok(`{"execute":"blockdev-del","arguments":{"node-name":"q0"}}`)
	// As in QEMU, the file node named by q0 stays (with a device of its
	// own again) and is deleted in turn.
	ok(`{"execute":"blockdev-del","arguments":{"node-name":"qf"}}`)
	ok(`{"execute":"blockdev-del","arguments":{"node-name":"f0"}}`)
	ok(`{"execute":"blockdev-del","arguments":{"node-name":"n0"}}`)
	if len(d.nodes) != 0 || len(d.h.Graph().Nodes()) != 0 {
		t.Fatalf("left: %v, graph %d nodes", d.nodes, len(d.h.Graph().Nodes()))
	}
	if _, err := exec.LookPath("qemu-img"); err == nil {
		out, err := exec.Command("qemu-img", "check", q).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "No errors") {
			t.Fatalf("qemu-img check of the created image: %v\n%s", err, out)
		}
	}
}

// TestNBDExportCommands: nbd-server-start, block-export-add over a Unix
// socket, query-block-exports, block-export-del, nbd-server-stop; a node
// with an export cannot be deleted.
func TestNBDExportCommands(t *testing.T) {
	d, dir, sock := testServer(t, 1, Options{})
	addQcow2(t, d, dir, "disk0")
	c := dialRaw(t, sock)
	c.negotiate()
	nbdSock := filepath.Join(dir, "nbd.sock")
	wantError(t, c.do(`{"execute":"block-export-add","arguments":{"type":"nbd","id":"e","node-name":"disk0"}}`), GenericError, "NBD server not running")
	if r := c.do(`{"execute":"nbd-server-start","arguments":{"addr":{"type":"unix","path":"` + nbdSock + `"}}}`); r["return"] == nil {
		t.Fatal(r)
	}
	if r := c.do(`{"execute":"object-add","arguments":{"qom-type":"iothread","id":"io0"}}`); r["return"] == nil {
		t.Fatal(r)
	}
	if r := c.do(`{"execute":"block-export-add","arguments":{"type":"nbd","id":"e","node-name":"disk0","writable":true,"iothread":"io0"}}`); r["return"] == nil {
		t.Fatal(r)
	}
	if got, want := d.nodes["disk0"].dev.Root().Context(), d.h.Context(d.iothreads["io0"]); got != want {
		t.Fatalf("exported node on %s, want the export's IOThread %s", got.Name(), want.Name())
	}
	wantError(t, c.do(`{"execute":"blockdev-del","arguments":{"node-name":"disk0"}}`), GenericError, "in use by block export 'e'")
	if _, err := exec.LookPath("qemu-io"); err == nil {
		out, err := exec.Command("qemu-io", "-f", "raw", "-c", "write -P 9 0 64k", "-c", "read -P 9 0 64k", "nbd+unix:///disk0?socket="+nbdSock).CombinedOutput()
		if err != nil || strings.Contains(string(out), "fail") {
			t.Fatalf("qemu-io over the export: %v\n%s", err, out)
		}
	}
	r := c.do(`{"execute":"query-block-exports"}`)
	if ex := r["return"].([]any); len(ex) != 1 || ex[0].(map[string]any)["node-name"] != "disk0" {
		t.Fatalf("exports %v", r)
	}
	if r := c.do(`{"execute":"block-export-del","arguments":{"id":"e"}}`); r["return"] == nil {
		t.Fatal(r)
	}
	if r := c.do(`{"execute":"nbd-server-stop"}`); r["return"] == nil {
		t.Fatal(r)
	}
	if r := c.do(`{"execute":"blockdev-del","arguments":{"node-name":"disk0"}}`); r["return"] == nil {
		t.Fatal(r)
	}
}

// TestBlockdevCreateJobErrors: what the schema requires fails the command;
// what fails while creating fails the job (the command succeeded), which
// then waits in query-jobs with its error until job-dismiss, as in QEMU.
func TestBlockdevCreateJobErrors(t *testing.T) {
	_, _, sock := testServer(t, 1, Options{})
	c := dialRaw(t, sock)
	c.negotiate()
	wantError(t, c.do(`{"execute":"blockdev-create","arguments":{"job-id":"c0","options":{"driver":"qcow2","file":"nope"}}}`), GenericError, "Parameter 'size' is missing")
	wantError(t, c.do(`{"execute":"blockdev-create","arguments":{"job-id":"c0","options":{"driver":"vmdk","file":"nope","size":1048576}}}`), GenericError, "does not support blockdev-create")
	r := c.do(`{"execute":"blockdev-create","arguments":{"job-id":"c0","options":{"driver":"qcow2","file":"nope","size":1048576}}}`)
	if _, found := r["return"]; !found {
		t.Fatalf("blockdev-create of a job that will fail: %v", r)
	}
	for {
		ev := c.waitEvent("JOB_STATUS_CHANGE", "c0")
		if ev["data"].(map[string]any)["status"] == "concluded" {
			break
		}
	}
	q := c.do(`{"execute":"query-jobs"}`)["return"].([]any)
	if len(q) != 1 {
		t.Fatalf("query-jobs: %v", q)
	}
	if e, _ := q[0].(map[string]any)["error"].(string); !strings.Contains(e, "nope") {
		t.Fatalf("the failed create job's error %q does not name the missing node", e)
	}
	wantError(t, c.do(`{"execute":"blockdev-create","arguments":{"job-id":"c0","options":{"driver":"file","filename":"x","size":0}}}`), GenericError, "already in use")
	if _, found := c.do(`{"execute":"job-dismiss","arguments":{"id":"c0"}}`)["return"]; !found {
		t.Fatal("job-dismiss of the concluded create job failed")
	}
	if q := c.do(`{"execute":"query-jobs"}`)["return"].([]any); len(q) != 0 {
		t.Fatalf("query-jobs after dismiss: %v", q)
	}
}

// TestNBDServerStopLeavesJobsRunning: nbd-server-stop ends the NBD server
// and its exports only; a running block job goes on (before, the daemon
// cancelled every job, as it does on shutdown).
func TestNBDServerStopLeavesJobsRunning(t *testing.T) {
	d, dir, sock := testServer(t, 1, Options{})
	c := dialRaw(t, sock)
	c.negotiate()
	okReply(t, c, `{"execute":"nbd-server-start","arguments":{"addr":{"type":"unix","path":"`+filepath.Join(dir, "nbd.sock")+`"}}}`)
	slowMirror(t, d, dir, c)
	okReply(t, c, `{"execute":"block-export-add","arguments":{"type":"nbd","id":"e","node-name":"src"}}`)
	okReply(t, c, `{"execute":"nbd-server-stop"}`)
	jobs := okReply(t, c, `{"execute":"query-jobs"}`).([]any)
	if len(jobs) != 1 || jobs[0].(map[string]any)["status"] != "running" {
		t.Fatalf("query-jobs after nbd-server-stop: %v", jobs)
	}
}

// TestNBDServerStartLegacyAddress: nbd-server-start takes QEMU's
// SocketAddressLegacy ({"type":"unix","data":{"path":…}}), the form QEMU
// 7.2 accepts and libvirt sends; the flat form of the command line still
// works. Before, the legacy form failed on the unknown member "data".
func TestNBDServerStartLegacyAddress(t *testing.T) {
	_, dir, sock := testServer(t, 1, Options{})
	c := dialRaw(t, sock)
	c.negotiate()
	nbdSock := filepath.Join(dir, "nbd.sock")
	okReply(t, c, `{"execute":"nbd-server-start","arguments":{"addr":{"type":"unix","data":{"path":"`+nbdSock+`"}}}}`)
	if nc, err := net.Dial("unix", nbdSock); err != nil {
		t.Fatalf("nobody listens on %s: %v", nbdSock, err)
	} else {
		nc.Close()
	}
	okReply(t, c, `{"execute":"nbd-server-stop"}`)
	wantError(t, c.do(`{"execute":"nbd-server-start","arguments":{"addr":{"type":"unix","data":{"path":"/x"},"path":"/y"}}}`), GenericError, "Parameter 'addr.path' is unexpected")
	okReply(t, c, `{"execute":"nbd-server-start","arguments":{"addr":{"type":"unix","path":"`+nbdSock+`"}}}`)
}

// TestIdentifiersAsQEMU: node names and job IDs follow QEMU's rule (a
// letter, then letters, digits, '-', '.', '_'; node names up to 31
// bytes) and bitmap names its 1023-byte limit, with QEMU's messages.
// Before, any string was taken: a node named "#backup-cbw-j0" or
// "#node3" collides with the names the daemon gives its own nodes.
func TestIdentifiersAsQEMU(t *testing.T) {
	d, dir, sock := testServer(t, 1, Options{})
	c := dialRaw(t, sock)
	c.negotiate()
	p := filepath.Join(dir, "a.qcow2")
	if err := d.h.Create(p, host.CreateOptions{Format: "qcow2", Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	add := func(name string) map[string]any {
		return c.do(`{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"` + name + `","file":{"driver":"file","filename":"` + p + `"}}}`)
	}
	for _, bad := range []string{"1bad", "#backup-cbw-j0", "a b", "-x"} {
		wantError(t, add(bad), GenericError, "Invalid node-name: '"+bad+"'")
	}
	wantError(t, add(strings.Repeat("n", 32)), GenericError, "Node name too long")
	okReply(t, c, `{"execute":"blockdev-add","arguments":{"driver":"null-co","node-name":"`+strings.Repeat("n", 31)+`","size":1048576}}`)
	okReply(t, c, `{"execute":"blockdev-add","arguments":{"driver":"null-co","node-name":"t.x-1_","size":1048576}}`)
	wantError(t, c.do(`{"execute":"blockdev-backup","arguments":{"job-id":"1bad","device":"t.x-1_","target":"`+strings.Repeat("n", 31)+`","sync":"full"}}`),
		GenericError, "Invalid job ID '1bad'")
	wantError(t, c.do(`{"execute":"blockdev-create","arguments":{"job-id":"a b","options":{"driver":"file","filename":"`+filepath.Join(dir, "c.img")+`","size":0}}}`),
		GenericError, "Invalid job ID 'a b'")
	long := strings.Repeat("b", 1024)
	wantError(t, c.do(`{"execute":"block-dirty-bitmap-add","arguments":{"node":"t.x-1_","name":"`+long+`"}}`), GenericError, "Bitmap name too long: "+long)
	okReply(t, c, `{"execute":"block-dirty-bitmap-add","arguments":{"node":"t.x-1_","name":"`+long[:1023]+`"}}`)
	if jobs := okReply(t, c, `{"execute":"query-jobs"}`).([]any); len(jobs) != 0 {
		t.Fatalf("query-jobs: %v", jobs)
	}
}

// TestNBDServerStopAnnouncesExports: nbd-server-stop closes the exports
// left, each with its BLOCK_EXPORT_DELETED (in id order), as QEMU does;
// before, they went without an event.
func TestNBDServerStopAnnouncesExports(t *testing.T) {
	d, dir, sock := testServer(t, 1, Options{})
	addQcow2(t, d, dir, "disk0")
	c := dialRaw(t, sock)
	c.negotiate()
	okReply(t, c, `{"execute":"nbd-server-start","arguments":{"addr":{"type":"unix","path":"`+filepath.Join(dir, "nbd.sock")+`"}}}`)
	okReply(t, c, `{"execute":"block-export-add","arguments":{"type":"nbd","id":"e2","node-name":"disk0","name":"b"}}`)
	okReply(t, c, `{"execute":"block-export-add","arguments":{"type":"nbd","id":"e1","node-name":"disk0","name":"a"}}`)
	okReply(t, c, `{"execute":"nbd-server-stop"}`)
	var got []any
	for _, ev := range c.events {
		if ev["event"] == "BLOCK_EXPORT_DELETED" {
			got = append(got, ev["data"].(map[string]any)["id"])
		}
	}
	if fmt.Sprint(got) != "[e1 e2]" {
		t.Fatalf("BLOCK_EXPORT_DELETED for %v, want [e1 e2]", got)
	}
}

// TestWritableExportOfReadOnlyNodeRefused: block-export-add writable of
// a read-only node is refused with QEMU's message; before, it succeeded
// and every client opening the export for writing got EPERM.
func TestWritableExportOfReadOnlyNodeRefused(t *testing.T) {
	d, dir, sock := testServer(t, 1, Options{})
	p := filepath.Join(dir, "ro.qcow2")
	if err := d.h.Create(p, host.CreateOptions{Format: "qcow2", Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	c := dialRaw(t, sock)
	c.negotiate()
	okReply(t, c, `{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"ro","read-only":true,"file":{"driver":"file","filename":"`+p+`"}}}`)
	okReply(t, c, `{"execute":"nbd-server-start","arguments":{"addr":{"type":"unix","path":"`+filepath.Join(dir, "nbd.sock")+`"}}}`)
	wantError(t, c.do(`{"execute":"block-export-add","arguments":{"type":"nbd","id":"e","node-name":"ro","writable":true}}`), GenericError,
		"Cannot export read-only node as writable")
	okReply(t, c, `{"execute":"block-export-add","arguments":{"type":"nbd","id":"e","node-name":"ro"}}`)
}

// TestJobTargetAndExportExclusive: an NBD export of a running mirror's
// target is refused (writable or not), and so is a mirror or backup into
// an exported node; an export of the mirror's source, through which the
// guest goes on writing, is fine. QEMU's permissions refuse both; before,
// NBD clients could write the target under the job.
func TestJobTargetAndExportExclusive(t *testing.T) {
	d, dir, sock := testServer(t, 1, Options{})
	c := dialRaw(t, sock)
	c.negotiate()
	okReply(t, c, `{"execute":"nbd-server-start","arguments":{"addr":{"type":"unix","path":"`+filepath.Join(dir, "nbd.sock")+`"}}}`)
	slowMirror(t, d, dir, c)
	for _, w := range []string{"true", "false"} {
		wantError(t, c.do(`{"execute":"block-export-add","arguments":{"type":"nbd","id":"e","node-name":"tgt","writable":`+w+`}}`), GenericError,
			"Node 'tgt' is busy: block device is in use by block job: mirror")
	}
	okReply(t, c, `{"execute":"block-export-add","arguments":{"type":"nbd","id":"s","node-name":"src","writable":true}}`)
	for _, n := range []string{"free", "other"} {
		p := filepath.Join(dir, n+".qcow2")
		if err := d.h.Create(p, host.CreateOptions{Format: "qcow2", Size: 16 << 20}); err != nil {
			t.Fatal(err)
		}
		okReply(t, c, `{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"`+n+`","file":{"driver":"file","filename":"`+p+`"}}}`)
	}
	okReply(t, c, `{"execute":"block-export-add","arguments":{"type":"nbd","id":"o","node-name":"other","writable":true}}`)
	for _, cmd := range []string{"blockdev-backup", "blockdev-mirror"} {
		wantError(t, c.do(`{"execute":"`+cmd+`","arguments":{"job-id":"b","device":"free","target":"other","sync":"full"}}`), GenericError,
			"Node 'other' is busy: exported as 'o'")
	}
}

// TestBlockdevReopenRefusesBusyWriters: a node with an export or a job on
// it is not made read-only under them (their writes would fail from then
// on; QEMU's permissions refuse the reopen too), and the flag is kept.
func TestBlockdevReopenRefusesBusyWriters(t *testing.T) {
	d, dir, sock := testServer(t, 1, Options{})
	addQcow2(t, d, dir, "a")
	c := dialRaw(t, sock)
	c.negotiate()
	okReply(t, c, `{"execute":"nbd-server-start","arguments":{"addr":{"type":"unix","data":{"path":"`+filepath.Join(dir, "nbd.sock")+`"}}}}`)
	okReply(t, c, `{"execute":"block-export-add","arguments":{"type":"nbd","id":"e","node-name":"a","writable":true}}`)
	wantError(t, c.do(`{"execute":"blockdev-reopen","arguments":{"options":[{"driver":"qcow2","node-name":"a","read-only":true}]}}`),
		GenericError, "Node 'a' is busy: block device is in use by block export 'e'")
	okReply(t, c, `{"execute":"block-export-del","arguments":{"id":"e"}}`)
	okReply(t, c, `{"execute":"blockdev-reopen","arguments":{"options":[{"driver":"qcow2","node-name":"a","read-only":true}]}}`)
	if n := d.h.Graph().NodeByName("a"); n == nil || !n.ReadOnly() {
		t.Fatal("node a is not read-only after the reopen")
	}
	okReply(t, c, `{"execute":"blockdev-reopen","arguments":{"options":[{"driver":"qcow2","node-name":"a"}]}}`)
	if n := d.h.Graph().NodeByName("a"); n == nil || n.ReadOnly() {
		t.Fatal("node a is still read-only after the reopen to read-write")
	}
	fill(t, d, "a", 0x11, 0, 4096)
}
