package qmp

import (
	"encoding/binary"
	"encoding/json"
	"io"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestExportBlockStatusAfterSnapshot: after an external snapshot moves
// an NBD export onto the overlay, block status describes the new chain:
// data written through the export after the snapshot is reported as data
// (a client that trusts the map, as qemu-img convert does, must not skip
// it), and the base's data too.
func TestExportBlockStatusAfterSnapshot(t *testing.T) {
	for _, tool := range []string{"qemu-io", "qemu-img"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed (scripts/deps.sh installs it)", tool)
		}
	}
	d, dir, sock := testServer(t, 1, Options{})
	addQcow2(t, d, dir, "disk0")
	c := dialRaw(t, sock)
	c.negotiate()
	nbdSock := filepath.Join(dir, "nbd.sock")
	for _, cmd := range []string{
		`{"execute":"nbd-server-start","arguments":{"addr":{"type":"unix","path":"` + nbdSock + `"}}}`,
		`{"execute":"block-export-add","arguments":{"type":"nbd","id":"e","node-name":"disk0","writable":true}}`,
	} {
		if r := c.do(cmd); r["return"] == nil {
			t.Fatal(r)
		}
	}
	url := "nbd+unix:///disk0?socket=" + nbdSock
	run := func(name string, args ...string) string {
		t.Helper()
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
		return string(out)
	}
	run("qemu-io", "-f", "raw", "-c", "write -P 0x11 0 64k", url)
	if r := c.do(`{"execute":"blockdev-snapshot-sync","arguments":{"node-name":"disk0","snapshot-file":"` + filepath.Join(dir, "s.qcow2") + `","snapshot-node-name":"s"}}`); r["return"] == nil {
		t.Fatal(r)
	}
	run("qemu-io", "-f", "raw", "-c", "write -P 0x22 1M 64k", url)
	// The map: the base's data and the overlay's are both data.
	var m []struct {
		Start, Length int64
		Data          bool
	}
	if err := json.Unmarshal([]byte(run("qemu-img", "map", "--output=json", "-f", "raw", url)), &m); err != nil {
		t.Fatal(err)
	}
	dataAt := func(off int64) bool {
		for _, e := range m {
			if off >= e.Start && off < e.Start+e.Length {
				return e.Data
			}
		}
		return false
	}
	if !dataAt(0) || !dataAt(1<<20) || dataAt(2<<20) {
		t.Errorf("block status after the snapshot: %+v; want data at 0 (base) and 1M (overlay), a hole at 2M", m)
	}
	// Copy through the export, trusting its block status, and compare.
	out := filepath.Join(dir, "copy.raw")
	run("qemu-img", "convert", "-f", "raw", "-O", "raw", url, out)
	got := run("qemu-io", "-f", "raw", "-c", "read -P 0x11 0 64k", "-c", "read -P 0x22 1M 64k", out)
	if strings.Contains(got, "Pattern verification failed") {
		t.Fatalf("the copy through the export lost data:\n%s", got)
	}
}

// TestExportDirtyBitmap: block-export-add with bitmaps offers
// qemu:dirty-bitmap:NAME (nbdinfo maps exactly what a client wrote
// through the export), refuses an unknown bitmap with QEMU's wording, and
// the exported bitmap cannot be removed until the export is deleted.
func TestExportDirtyBitmap(t *testing.T) {
	for _, tool := range []string{"qemu-io", "nbdinfo"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed (scripts/deps.sh installs it)", tool)
		}
	}
	d, dir, sock := testServer(t, 1, Options{})
	addQcow2(t, d, dir, "disk0")
	c := dialRaw(t, sock)
	c.negotiate()
	nbdSock := filepath.Join(dir, "nbd.sock")
	okReply(t, c, `{"execute":"nbd-server-start","arguments":{"addr":{"type":"unix","path":"`+nbdSock+`"}}}`)
	okReply(t, c, `{"execute":"block-dirty-bitmap-add","arguments":{"node":"disk0","name":"b0","granularity":65536}}`)
	wantError(t, c.do(`{"execute":"block-export-add","arguments":{"type":"nbd","id":"e","node-name":"disk0","writable":true,"bitmaps":["zz"]}}`),
		GenericError, "Bitmap 'zz' is not found")
	okReply(t, c, `{"execute":"block-export-add","arguments":{"type":"nbd","id":"e","node-name":"disk0","writable":true,"bitmaps":["b0"]}}`)
	if r := c.do(`{"execute":"block-dirty-bitmap-remove","arguments":{"node":"disk0","name":"b0"}}`); r["error"] == nil {
		t.Fatalf("removing an exported bitmap: %v", r)
	}
	url := "nbd+unix:///disk0?socket=" + nbdSock
	if out, err := exec.Command("qemu-io", "-f", "raw", "-c", "write 1M 4k", "-c", "write 3M 128k", url).CombinedOutput(); err != nil {
		t.Fatalf("qemu-io: %v\n%s", err, out)
	}
	out, err := exec.Command("nbdinfo", "--map=qemu:dirty-bitmap:b0", url).CombinedOutput()
	if err != nil {
		t.Fatalf("nbdinfo: %v\n%s", err, out)
	}
	var dirty []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if f := strings.Fields(l); len(f) == 4 && f[3] == "dirty" {
			dirty = append(dirty, f[0]+"+"+f[1])
		}
	}
	if strings.Join(dirty, " ") != "1048576+65536 3145728+131072" {
		t.Fatalf("dirty ranges %q, want 1M+64k 3M+128k\n%s", dirty, out)
	}
	okReply(t, c, `{"execute":"block-export-del","arguments":{"id":"e"}}`)
	okReply(t, c, `{"execute":"block-dirty-bitmap-remove","arguments":{"node":"disk0","name":"b0"}}`)
}

// nbdClient connects to export name on the Unix socket path with the
// fixed newstyle handshake (NBD_OPT_EXPORT_NAME) and completes one 512
// byte read, so the connection is in the transmission phase when it
// returns.
func nbdClient(t *testing.T, path, name string) net.Conn {
	t.Helper()
	nc, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(30 * time.Second))
	greet := make([]byte, 18) // NBDMAGIC, IHAVEOPT, handshake flags
	if _, err := io.ReadFull(nc, greet); err != nil {
		t.Fatal(err)
	}
	var msg []byte
	msg = binary.BigEndian.AppendUint32(msg, 3) // fixed newstyle, no zeroes
	msg = binary.BigEndian.AppendUint64(msg, 0x49484156454F5054)
	msg = binary.BigEndian.AppendUint32(msg, 1) // NBD_OPT_EXPORT_NAME
	msg = binary.BigEndian.AppendUint32(msg, uint32(len(name)))
	msg = append(msg, name...)
	if _, err := nc.Write(msg); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(nc, make([]byte, 10)); err != nil { // size, transmission flags
		t.Fatal(err)
	}
	req := binary.BigEndian.AppendUint32(nil, 0x25609513)
	req = binary.BigEndian.AppendUint32(req, 0) // flags 0, NBD_CMD_READ
	req = binary.BigEndian.AppendUint64(req, 7) // handle
	req = binary.BigEndian.AppendUint64(req, 0) // offset
	req = binary.BigEndian.AppendUint32(req, 512)
	if _, err := nc.Write(req); err != nil {
		t.Fatal(err)
	}
	reply := make([]byte, 16+512)
	if _, err := io.ReadFull(nc, reply); err != nil {
		t.Fatal(err)
	}
	if binary.BigEndian.Uint32(reply) != 0x67446698 || binary.BigEndian.Uint32(reply[4:]) != 0 {
		t.Fatalf("read reply %x", reply[:16])
	}
	return nc
}

// TestBlockExportDelModes: block-export-del of an export with a
// connected client is refused in the default mode (safe), as QEMU does,
// and mode hard disconnects the client. Before, the mode was ignored and
// the client was cut off mid-use.
func TestBlockExportDelModes(t *testing.T) {
	d, dir, sock := testServer(t, 1, Options{})
	addQcow2(t, d, dir, "disk0")
	c := dialRaw(t, sock)
	c.negotiate()
	nbdSock := filepath.Join(dir, "nbd.sock")
	okReply(t, c, `{"execute":"nbd-server-start","arguments":{"addr":{"type":"unix","path":"`+nbdSock+`"}}}`)
	okReply(t, c, `{"execute":"block-export-add","arguments":{"type":"nbd","id":"e","node-name":"disk0"}}`)
	nc := nbdClient(t, nbdSock, "disk0")
	wantError(t, c.do(`{"execute":"block-export-del","arguments":{"id":"e"}}`), GenericError, "export 'e' still in use")
	wantError(t, c.do(`{"execute":"block-export-del","arguments":{"id":"e","mode":"safe"}}`), GenericError, "export 'e' still in use")
	wantError(t, c.do(`{"execute":"block-export-del","arguments":{"id":"e","mode":"soft"}}`), GenericError, "Parameter 'mode' does not accept value 'soft'")
	if ex := okReply(t, c, `{"execute":"query-block-exports"}`).([]any); len(ex) != 1 {
		t.Fatalf("exports after the refused deletes: %v", ex)
	}
	okReply(t, c, `{"execute":"block-export-del","arguments":{"id":"e","mode":"hard"}}`)
	c.waitEvent("BLOCK_EXPORT_DELETED", "e")
	if _, err := nc.Read(make([]byte, 1)); err == nil {
		t.Fatal("the client is still connected after block-export-del mode hard")
	}
}

// TestExportDiscardAndDetectZeroesFollowTheNode: an export applies its
// node's discard and detect-zeroes options at the top, as QEMU does. With
// discard=ignore (the default) a TRIM through the export leaves a qcow2
// overlay's backing data visible (the chain put the setting on the file
// node only, so the qcow2 layer wrote zero clusters over it); with
// discard=unmap it reads as zeroes; detect-zeroes=on stores a written
// block of zeroes as zeroes, not data.
func TestExportDiscardAndDetectZeroesFollowTheNode(t *testing.T) {
	for _, tool := range []string{"qemu-io", "qemu-img"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed (scripts/deps.sh installs it)", tool)
		}
	}
	_, dir, sock := testServer(t, 1, Options{})
	run := func(name string, args ...string) string {
		t.Helper()
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil || strings.Contains(string(out), "failed") {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
		return string(out)
	}
	base := filepath.Join(dir, "base.qcow2")
	run("qemu-img", "create", "-q", "-f", "qcow2", base, "4M")
	run("qemu-io", "-f", "qcow2", "-c", "write -P 0xaa 0 4M", base)
	c := dialRaw(t, sock)
	c.negotiate()
	nbdSock := filepath.Join(dir, "nbd.sock")
	okReply(t, c, `{"execute":"nbd-server-start","arguments":{"addr":{"type":"unix","path":"`+nbdSock+`"}}}`)
	for i, opts := range []string{``, `,"discard":"unmap"`, `,"detect-zeroes":"on"`} {
		name := []string{"ign", "unmap", "dz"}[i]
		ov := filepath.Join(dir, name+".qcow2")
		run("qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", ov)
		okReply(t, c, `{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"`+name+`","file":{"driver":"file","filename":"`+ov+`"}`+opts+`}}`)
		okReply(t, c, `{"execute":"block-export-add","arguments":{"type":"nbd","id":"`+name+`","node-name":"`+name+`","writable":true}}`)
		url := "nbd+unix:///" + name + "?socket=" + nbdSock
		switch name {
		case "ign":
			run("qemu-io", "-f", "raw", "-c", "discard 0 1M", "-c", "read -P 0xaa 0 1M", url)
		case "unmap":
			run("qemu-io", "-f", "raw", "-c", "discard 0 1M", "-c", "read -P 0 0 1M", url)
		case "dz":
			run("qemu-io", "-f", "raw", "-c", "write -P 0 1M 1M", "-c", "read -P 0 1M 1M", url)
			var m []struct {
				Start, Length int64
				Data, Zero    bool
			}
			if err := json.Unmarshal([]byte(run("qemu-img", "map", "--output=json", "-f", "raw", url)), &m); err != nil {
				t.Fatal(err)
			}
			for _, e := range m {
				if e.Start <= 1<<20 && e.Start+e.Length > 1<<20 && (e.Data || !e.Zero) {
					t.Errorf("detect-zeroes=on: the zero write at 1M is %+v, want zero and not data", e)
				}
			}
		}
	}
	wantError(t, c.do(`{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"x","file":{"driver":"file","filename":"`+base+`"},"detect-zeroes":"unmap"}}`),
		GenericError, "setting detect-zeroes to unmap is not allowed without setting discard operation to unmap")
	wantError(t, c.do(`{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"x","file":{"driver":"file","filename":"`+base+`"},"detect-zeroes":"maybe"}}`),
		GenericError, "Parameter 'detect-zeroes' does not accept value 'maybe'")
}
