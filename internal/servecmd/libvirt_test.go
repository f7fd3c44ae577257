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
