package servecmd

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestServeLibvirtChainAsQemuStorageDaemon runs what libvirt sends for a
// disk with a backing chain, a checkpoint and an external snapshot, on
// both daemons: file nodes with aio=native, cache.direct and
// auto-read-only under qcow2 format nodes (the base read-only, the top
// naming it as backing); a persistent bitmap on the top; the base
// reopened read-write for a persistent bitmap of its own and read-only
// again; one transaction that adds a bitmap to the new overlay and puts
// it on top with blockdev-snapshot (libvirt's order: the bitmap first);
// then a commit of the old top into the read-only base. The replies are
// compared, then which bitmaps each image holds, and every image is
// checked. Before: aio was refused; the transaction failed and lost the
// overlay node; the base's bitmap was stored in the top's image; the
// commit was refused ("Block node is read-only").
func TestServeLibvirtChainAsQemuStorageDaemon(t *testing.T) {
	needCmd(t, "qemu-storage-daemon", "qemu-img", "qemu-io")
	file := func(n, f string) string {
		return `{"execute":"blockdev-add","arguments":{"driver":"file","filename":"` + f + `","node-name":"` + n +
			`","cache":{"direct":true,"no-flush":false},"auto-read-only":true,"discard":"unmap","aio":"native"}}`
	}
	format := func(n, f, ro, backing string) string {
		return `{"node-name":"` + n + `","read-only":` + ro + `,"discard":"unmap","cache":{"direct":true,"no-flush":false},"driver":"qcow2","file":"` + f + `","backing":` + backing + `}`
	}
	cmds := []string{
		`{"execute":"qmp_capabilities"}`,
		file("libvirt-2-storage", "base.qcow2"),
		`{"execute":"blockdev-add","arguments":` + format("libvirt-2-format", "libvirt-2-storage", "true", "null") + `}`,
		file("libvirt-1-storage", "top.qcow2"),
		`{"execute":"blockdev-add","arguments":` + format("libvirt-1-format", "libvirt-1-storage", "false", `"libvirt-2-format"`) + `}`,
		`{"execute":"block-dirty-bitmap-add","arguments":{"node":"libvirt-1-format","name":"chk1","persistent":true}}`,
		`{"execute":"blockdev-reopen","arguments":{"options":[` + format("libvirt-2-format", "libvirt-2-storage", "false", "null") + `]}}`,
		`{"execute":"block-dirty-bitmap-add","arguments":{"node":"libvirt-2-format","name":"chk0","persistent":true,"disabled":true}}`,
		`{"execute":"blockdev-reopen","arguments":{"options":[` + format("libvirt-2-format", "libvirt-2-storage", "true", "null") + `]}}`,
		file("libvirt-3-storage", "snap.qcow2"),
		`{"execute":"blockdev-add","arguments":` + format("libvirt-3-format", "libvirt-3-storage", "false", "null") + `}`,
		`{"execute":"transaction","arguments":{"actions":[` +
			`{"type":"block-dirty-bitmap-add","data":{"node":"libvirt-3-format","name":"chk2","persistent":true}},` +
			`{"type":"blockdev-snapshot","data":{"node":"libvirt-1-format","overlay":"libvirt-3-format"}}]}}`,
		`{"execute":"block-commit","arguments":{"job-id":"commit1","device":"libvirt-3-format","top-node":"libvirt-1-format","base-node":"libvirt-2-format"}}`,
		`{"execute":"quit"}`,
	}
	replies := map[string][]string{}
	bitmaps := map[string]string{}
	for _, side := range []struct{ name, exe string }{{"qsd", "qemu-storage-daemon"}, {"ringblk", selfExe(t)}} {
		dir := filepath.Join(tmpDir(t), side.name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		base, top, snap := filepath.Join(dir, "base.qcow2"), filepath.Join(dir, "top.qcow2"), filepath.Join(dir, "snap.qcow2")
		qemuImg(t, "create", "-q", "-f", "qcow2", base, "4M")
		qemuIO(t, "-c", "write -P 0x11 0 1M", base)
		qemuImg(t, "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", top)
		qemuImg(t, "create", "-q", "-f", "qcow2", "-b", "top.qcow2", "-F", "qcow2", snap)
		var env []string
		if side.name == "ringblk" {
			env = []string{asMainEnv + "=1"}
		}
		replies[side.name], _ = runOnStdio(t, dir, side.exe, env, cmds)
		var held []string
		for _, img := range []string{base, top, snap} {
			var names []string
			for _, l := range strings.Split(qemuImg(t, "info", img), "\n") {
				if n, ok := strings.CutPrefix(strings.TrimSpace(l), "name: "); ok {
					names = append(names, n)
				}
			}
			held = append(held, filepath.Base(img)+"="+strings.Join(names, ","))
		}
		bitmaps[side.name] = strings.Join(held, " ")
		checkClean(t, side.name, base, top, snap)
	}
	if !strings.Contains(bitmaps["qsd"], "base.qcow2=chk0 top.qcow2=chk1 snap.qcow2=chk2") {
		t.Fatalf("qemu-storage-daemon's bitmaps are not what this test compares: %s", bitmaps["qsd"])
	}
	compareSteps(t, replies["qsd"], replies["ringblk"])
	if bitmaps["qsd"] != bitmaps["ringblk"] {
		t.Errorf("bitmaps held:\nqemu-storage-daemon %s\nringblk serve       %s", bitmaps["qsd"], bitmaps["ringblk"])
	}
}

// TestServeWriteThresholdAsQemuStorageDaemon: block-set-write-threshold
// on a format node and on its storage node (libvirt's
// virDomainSetBlockThreshold), query-named-block-nodes' write_threshold,
// a guest write through an NBD export past the format node's threshold:
// BLOCK_WRITE_THRESHOLD with the bytes past it, once, and the threshold
// off again; an unknown node. Before, the command did not exist.
func TestServeWriteThresholdAsQemuStorageDaemon(t *testing.T) {
	needCmd(t, "qemu-storage-daemon", "qemu-img", "qemu-io")
	setup := func(dir string) {
		qemuImg(t, "create", "-q", "-f", "qcow2", filepath.Join(dir, "w.qcow2"), "4M")
	}
	body := func(s *qmpSession) {
		sock := filepath.Join(s.dir, "nbd.sock")
		s.mustReply(`{"execute":"blockdev-add","arguments":{"driver":"file","node-name":"ws","filename":"` + filepath.Join(s.dir, "w.qcow2") + `"}}`)
		s.mustReply(`{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"wf","file":"ws"}}`)
		s.reply(`{"execute":"block-set-write-threshold","arguments":{"node-name":"nope","write-threshold":1}}`)
		s.mustReply(`{"execute":"block-set-write-threshold","arguments":{"node-name":"ws","write-threshold":1073741824}}`)
		s.mustReply(`{"execute":"block-set-write-threshold","arguments":{"node-name":"wf","write-threshold":2097152}}`)
		s.nodeField("wf", "write_threshold")
		s.nodeField("ws", "write_threshold")
		s.mustReply(`{"execute":"nbd-server-start","arguments":{"addr":{"type":"unix","data":{"path":"` + sock + `"}}}}`)
		s.mustReply(`{"execute":"block-export-add","arguments":{"type":"nbd","id":"e","node-name":"wf","writable":true}}`)
		qemuIO(t, "-f", "raw", "-c", "write 1M 64k", "nbd+unix:///wf?socket="+sock) // below: no event
		qemuIO(t, "-f", "raw", "-c", "write 3M 64k", "nbd+unix:///wf?socket="+sock)
		s.jobEvent("BLOCK_WRITE_THRESHOLD")
		s.nodeField("wf", "write_threshold")
		qemuIO(t, "-f", "raw", "-c", "write 3M 64k", "nbd+unix:///wf?socket="+sock) // off now: no second event
		s.exportDel("e")
	}
	sideBySide(t, setup, body, func(*qmpSession) {})
}

// TestServeNBDServerAddAsQemuStorageDaemon: QEMU's older export commands,
// nbd-server-add and nbd-server-remove (kept by qemu-storage-daemon 7.2,
// used by older libvirt), and query-block-exports' order (newest first),
// with their errors: no server yet, an unknown node, an id in use, a
// missing bitmap, an unknown export, a bad mode. Before, both commands
// were CommandNotFound, a missing bitmap carried ringblk's prefix and the
// exports were listed by id.
func TestServeNBDServerAddAsQemuStorageDaemon(t *testing.T) {
	needCmd(t, "qemu-storage-daemon", "qemu-img")
	wantR, _, gotR, _ := stdioBoth(t, func(dir string) []string {
		qemuImg(t, "create", "-q", "-f", "qcow2", filepath.Join(dir, "w.qcow2"), "4M")
		return []string{
			`{"execute":"qmp_capabilities"}`,
			`{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"wf","file":{"driver":"file","filename":"w.qcow2"}}}`,
			`{"execute":"nbd-server-add","arguments":{"device":"wf"}}`,
			`{"execute":"nbd-server-start","arguments":{"addr":{"type":"unix","data":{"path":"n.sock"}}}}`,
			`{"execute":"nbd-server-add","arguments":{"device":"nope"}}`,
			`{"execute":"nbd-server-add","arguments":{"device":"wf"}}`,
			`{"execute":"nbd-server-add","arguments":{"device":"wf","name":"x2","writable":true,"description":"d"}}`,
			`{"execute":"nbd-server-add","arguments":{"device":"wf"}}`,
			`{"execute":"query-block-exports"}`,
			`{"execute":"nbd-server-add","arguments":{"device":"wf","name":"x3","bitmap":"nob"}}`,
			`{"execute":"nbd-server-remove","arguments":{"name":"nope"}}`,
			`{"execute":"nbd-server-remove","arguments":{"name":"wf","mode":"bogus"}}`,
			`{"execute":"nbd-server-remove","arguments":{"name":"wf"}}`,
			`{"execute":"nbd-server-remove","arguments":{"name":"x2","mode":"hard"}}`,
			`{"execute":"query-block-exports"}`,
			`{"execute":"quit"}`,
		}
	})
	if !strings.Contains(strings.Join(wantR, "\n"), "Block export id 'wf' is already in use") {
		t.Fatalf("qemu-storage-daemon's replies are not what this test compares: %q", wantR)
	}
	compareSteps(t, wantR, gotR)
}

// TestServeFleecingBackupAsQemuStorageDaemon: libvirt's pull-mode backup
// (image fleecing). A scratch overlay takes the disk as its backing node,
// blockdev-backup sync=none copies the disk's old data into it before
// each guest write, and a read-only NBD export of the scratch node
// (with the disk's bitmap given as node and name) serves the disk as it
// was when the backup started, while a guest writes through another
// export. The job is never ready and ends when cancelled. Replies,
// events and what the backup client reads are compared with
// qemu-storage-daemon 7.2. Before, sync=none was refused, the device
// name led to the scratch node, the filter made a loop with the
// scratch's backing edge, and such exports were refused.
func TestServeFleecingBackupAsQemuStorageDaemon(t *testing.T) {
	needCmd(t, "qemu-storage-daemon", "qemu-img", "qemu-io")
	setup := func(dir string) {
		disk := filepath.Join(dir, "disk.qcow2")
		qemuImg(t, "create", "-q", "-f", "qcow2", disk, "4M")
		qemuIO(t, "-c", "write -P 0x22 0 2M", disk)
		qemuImg(t, "create", "-q", "-f", "qcow2", filepath.Join(dir, "scratch.qcow2"), "4M")
	}
	body := func(s *qmpSession) {
		sock := filepath.Join(s.dir, "nbd.sock")
		s.mustReply(`{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"disk","file":{"driver":"file","filename":"` + filepath.Join(s.dir, "disk.qcow2") + `"}}}`)
		s.mustReply(`{"execute":"block-dirty-bitmap-add","arguments":{"node":"disk","name":"c1","disabled":true}}`)
		s.mustReply(`{"execute":"nbd-server-start","arguments":{"addr":{"type":"unix","data":{"path":"` + sock + `"}}}}`)
		// The guest's export exists before the backup, as a VM's disk
		// does: the filter goes in between.
		s.mustReply(`{"execute":"block-export-add","arguments":{"type":"nbd","id":"guest","node-name":"disk","name":"guest","writable":true}}`)
		s.mustReply(`{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"scratch","file":{"driver":"file","filename":"` + filepath.Join(s.dir, "scratch.qcow2") + `"},"backing":"disk"}}`)
		s.reply(`{"execute":"blockdev-backup","arguments":{"device":"disk","job-id":"j0","target":"scratch","sync":"none","bitmap":"c1"}}`)
		s.mustReply(`{"execute":"transaction","arguments":{"actions":[{"type":"blockdev-backup","data":{"device":"disk","job-id":"b","target":"scratch","sync":"none","auto-dismiss":false}}]}}`)
		s.mustReply(`{"execute":"block-export-add","arguments":{"type":"nbd","id":"fleece","node-name":"scratch","name":"backup","bitmaps":[{"node":"disk","name":"c1"}]}}`)
		// The guest overwrites half of the old data and writes past it.
		qemuIO(t, "-f", "raw", "-c", "write -P 0x33 1M 2M", "nbd+unix:///guest?socket="+sock)
		// The backup reads the point in time; the guest its new data.
		qemuIO(t, "-r", "-f", "raw", "-c", "read -P 0x22 0 2M", "-c", "read -P 0 2M 2M", "nbd+unix:///backup?socket="+sock)
		qemuIO(t, "-r", "-f", "raw", "-c", "read -P 0x22 0 1M", "-c", "read -P 0x33 1M 2M", "nbd+unix:///guest?socket="+sock)
		s.reply(`{"execute":"query-block-jobs"}`)
		s.reply(`{"execute":"block-job-complete","arguments":{"device":"b"}}`)
		s.exportDel("fleece")
		s.exportDel("guest")
		s.mustReply(`{"execute":"job-cancel","arguments":{"id":"b"}}`)
		s.jobEvent("BLOCK_JOB_CANCELLED")
		s.mustReply(`{"execute":"job-dismiss","arguments":{"id":"b"}}`)
		s.mustReply(`{"execute":"blockdev-del","arguments":{"node-name":"scratch"}}`)
	}
	sideBySide(t, setup, body, func(s *qmpSession) {
		checkClean(t, s.name, filepath.Join(s.dir, "disk.qcow2"), filepath.Join(s.dir, "scratch.qcow2"))
		qemuIO(t, "-r", "-c", "read -P 0x22 0 1M", "-c", "read -P 0x33 1M 2M", filepath.Join(s.dir, "disk.qcow2"))
	})
}
