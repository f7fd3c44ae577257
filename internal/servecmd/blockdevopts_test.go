package servecmd

import (
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// TestServeFileAndQcow2OptionsAsQemuStorageDaemon: blockdev-add with the
// file and qcow2 members libvirt and other management layers send (aio
// native or io_uring with cache.direct, aio-max-batch, drop-cache;
// l2-cache-size, cache-size, lazy-refcounts, pass-discard-*,
// overlap-check as a mode and as flags, cache-clean-interval), on nodes
// by reference and inline, and their errors (aio=native without
// cache.direct, a value the enum lacks, a member of another driver,
// l2-cache-size over cache-size, an unknown overlap-check flag), gets qemu-storage-daemon's replies; each added node is
// then deleted, which only a node that exists allows. Before, every one
// of these members was "Parameter 'aio' is unexpected" (or its like).
func TestServeFileAndQcow2OptionsAsQemuStorageDaemon(t *testing.T) {
	needCmd(t, "qemu-storage-daemon", "qemu-img")
	add := func(args string) string { return `{"execute":"blockdev-add","arguments":` + args + `}` }
	del := func(n string) string { return `{"execute":"blockdev-del","arguments":{"node-name":"` + n + `"}}` }
	wantR, _, gotR, _ := stdioBoth(t, func(dir string) []string {
		qemuImg(t, "create", "-q", "-f", "qcow2", filepath.Join(dir, "a.qcow2"), "4M")
		qemuImg(t, "create", "-q", "-f", "qcow2", filepath.Join(dir, "b.qcow2"), "4M")
		qemuImg(t, "create", "-q", "-f", "raw", filepath.Join(dir, "c.raw"), "4M")
		return []string{
			`{"execute":"qmp_capabilities"}`,
			// Errors first.
			add(`{"driver":"file","node-name":"e","filename":"a.qcow2","aio":"native"}`),
			add(`{"driver":"file","node-name":"e","filename":"a.qcow2","aio":"bogus"}`),
			add(`{"driver":"file","node-name":"e","filename":"a.qcow2","l2-cache-size":65536}`),
			add(`{"driver":"raw","node-name":"e","lazy-refcounts":true,"file":{"driver":"file","filename":"c.raw"}}`),
			add(`{"driver":"qcow2","node-name":"e","file":{"driver":"file","filename":"a.qcow2","aio":"native"}}`),
			add(`{"driver":"qcow2","node-name":"e","file":{"driver":"file","filename":"a.qcow2","aio":"threads"},"l2-cache-size":1048576,"cache-size":65536}`),
			add(`{"driver":"qcow2","node-name":"e","file":{"driver":"file","filename":"a.qcow2"},"overlap-check":"sometimes"}`),
			add(`{"driver":"qcow2","node-name":"e","file":{"driver":"file","filename":"a.qcow2"},"overlap-check":{"template":"all","no-such-table":true}}`),
			// libvirt's shape: a file node, then the format node by name.
			add(`{"driver":"file","node-name":"fa","filename":"a.qcow2","aio":"native","cache":{"direct":true,"no-flush":false},"discard":"unmap","auto-read-only":true,"aio-max-batch":16,"drop-cache":true}`),
			add(`{"driver":"qcow2","node-name":"qa","file":"fa","cache":{"direct":true,"no-flush":false},"discard":"unmap","l2-cache-size":1048576,"lazy-refcounts":true,"cache-clean-interval":600,"pass-discard-request":true,"pass-discard-other":false,"refcount-cache-size":65536,"overlap-check":{"template":"cached","inactive-l2":true}}`),
			add(`{"driver":"qcow2","node-name":"qb","file":{"driver":"file","filename":"b.qcow2","aio":"io_uring","x-check-cache-dropped":false},"cache-size":2097152,"l2-cache-entry-size":4096,"overlap-check":"none"}`),
			add(`{"driver":"raw","node-name":"rc","file":{"driver":"file","filename":"c.raw","aio":"threads","locking":"on"}}`),
			del("qa"), del("fa"), del("qb"), del("rc"),
			`{"execute":"quit"}`,
		}
	})
	if !strings.Contains(strings.Join(wantR, "\n"), "aio=native was specified") {
		t.Fatalf("qemu-storage-daemon's replies are not what this test compares: %q", wantR)
	}
	compareSteps(t, wantR, gotR)
	if len(gotR) != len(wantR) {
		t.Errorf("ringblk serve gave %d replies, qemu-storage-daemon %d", len(gotR), len(wantR))
	}
	// A pr-manager is refused in QEMU's words. (Not side by side:
	// qemu-storage-daemon 7.2 spins forever after this error.)
	dir := tmpDir(t)
	qemuImg(t, "create", "-q", "-f", "raw", filepath.Join(dir, "c.raw"), "1M")
	got, _ := runOnStdio(t, dir, selfExe(t), []string{asMainEnv + "=1"}, []string{`{"execute":"qmp_capabilities"}`,
		add(`{"driver":"file","node-name":"e","filename":"c.raw","pr-manager":"pr0"}`), `{"execute":"quit"}`})
	if len(got) < 2 || !strings.Contains(got[1], "No persistent reservation manager with id 'pr0'") {
		t.Errorf("pr-manager: %q", got)
	}
}

// selfExe is the test binary, which runs as ringblk serve under asMainEnv.
func selfExe(t *testing.T) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return exe
}

// TestServeReopenOptionsAsQemuStorageDaemon: blockdev-reopen of a qcow2
// node whose file was given inline with a node-name, and of that file
// node, with the options they were opened with, succeeds as in
// qemu-storage-daemon; changing force-share, locking or aio is refused
// in the same words. Before, the file's name was "Cannot change the
// option 'file'" and the file node "Failed to find node".
func TestServeReopenOptionsAsQemuStorageDaemon(t *testing.T) {
	needCmd(t, "qemu-storage-daemon", "qemu-img")
	reopen := func(opts string) string {
		return `{"execute":"blockdev-reopen","arguments":{"options":[` + opts + `]}}`
	}
	wantR, _, gotR, _ := stdioBoth(t, func(dir string) []string {
		qemuImg(t, "create", "-q", "-f", "qcow2", filepath.Join(dir, "a.qcow2"), "4M")
		return []string{
			`{"execute":"qmp_capabilities"}`,
			`{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"q","file":{"driver":"file","node-name":"qf","filename":"a.qcow2","aio":"io_uring"}}}`,
			reopen(`{"driver":"qcow2","node-name":"q","file":"qf"}`),
			reopen(`{"driver":"file","node-name":"qf","filename":"a.qcow2","aio":"io_uring"}`),
			reopen(`{"driver":"qcow2","node-name":"q","file":"qf","read-only":true},{"driver":"file","node-name":"qf","filename":"a.qcow2","aio":"io_uring","read-only":true}`),
			reopen(`{"driver":"file","node-name":"qf","filename":"a.qcow2","read-only":true}`),
			reopen(`{"driver":"file","node-name":"qf","filename":"a.qcow2","aio":"threads","read-only":true}`),
			reopen(`{"driver":"file","node-name":"qf","filename":"a.qcow2","aio":"io_uring","locking":"off","read-only":true}`),
			reopen(`{"driver":"qcow2","node-name":"q","file":"qf","read-only":true,"force-share":true}`),
			`{"execute":"quit"}`,
		}
	})
	if !strings.Contains(strings.Join(wantR, "\n"), "Cannot change the option 'aio'") || !strings.Contains(strings.Join(wantR, "\n"), "cannot be reset") {
		t.Fatalf("qemu-storage-daemon's replies are not what this test compares: %q", wantR)
	}
	compareSteps(t, wantR, gotR)
}

// TestServeReopenRefusesWhatItCannotChange: QEMU changes detect-zeroes,
// discard and the qcow2 cache members on reopen; ringblk cannot change
// them on an open node and says so in QEMU's words for such an option.
// Before, blockdev-reopen took them, answered success and changed
// nothing.
func TestServeReopenRefusesWhatItCannotChange(t *testing.T) {
	needCmd(t, "qemu-img")
	dir := tmpDir(t)
	qemuImg(t, "create", "-q", "-f", "qcow2", filepath.Join(dir, "a.qcow2"), "4M")
	reopen := func(extra string) string {
		return `{"execute":"blockdev-reopen","arguments":{"options":[{"driver":"qcow2","node-name":"q","file":{"driver":"file","filename":"a.qcow2"}` + extra + `}]}}`
	}
	got, _ := runOnStdio(t, dir, selfExe(t), []string{asMainEnv + "=1"}, []string{`{"execute":"qmp_capabilities"}`,
		`{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"q","file":{"driver":"file","filename":"a.qcow2"},"l2-cache-size":1048576}}`,
		reopen(`,"l2-cache-size":1048576`),
		reopen(`,"l2-cache-size":1048576,"detect-zeroes":"on"`),
		reopen(`,"l2-cache-size":1048576,"discard":"unmap"`),
		reopen(``),
		reopen(`,"l2-cache-size":1048576,"lazy-refcounts":true`),
		`{"execute":"quit"}`})
	want := []string{`{"return":{}}`, `{"return":{}}`, `{"return":{}}`,
		"Cannot change the option 'detect-zeroes'", "Cannot change the option 'discard'",
		"Cannot change the option 'l2-cache-size'", "Cannot change the option 'lazy-refcounts'", `{"return":{}}`}
	if len(got) != len(want) {
		t.Fatalf("replies %q", got)
	}
	for i, w := range want {
		if !strings.Contains(got[i], w) {
			t.Errorf("reply %d: %s, want %s", i, got[i], w)
		}
	}
}

// TestServeTreeNodeTakesBackingByName: a qcow2 node that opens from an
// option tree (here for its l2-cache-size; also an inline file with a
// node-name) takes the backing node "backing" names, as any qcow2 node
// does: query-named-block-nodes shows the backing file, and the node's
// backing is in use. Before, the tree path dropped "backing" without a
// word and the overlay read zeroes where its base had data.
func TestServeTreeNodeTakesBackingByName(t *testing.T) {
	needCmd(t, "qemu-img")
	dir := tmpDir(t)
	qemuImg(t, "create", "-q", "-f", "qcow2", filepath.Join(dir, "base.qcow2"), "4M")
	for _, n := range []string{"t1", "t2"} {
		qemuImg(t, "create", "-q", "-f", "qcow2", filepath.Join(dir, n+".qcow2"), "4M")
	}
	got, _ := runOnStdio(t, dir, selfExe(t), []string{asMainEnv + "=1"}, []string{`{"execute":"qmp_capabilities"}`,
		`{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"base","file":{"driver":"file","filename":"base.qcow2"}}}`,
		`{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"t1","file":{"driver":"file","filename":"t1.qcow2"},"backing":"base","l2-cache-size":1048576}}`,
		`{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"t2","file":{"driver":"file","node-name":"t2f","filename":"t2.qcow2"},"backing":"base"}}`,
		`{"execute":"query-named-block-nodes","arguments":{"flat":true}}`,
		`{"execute":"blockdev-del","arguments":{"node-name":"base"}}`,
		`{"execute":"quit"}`})
	if len(got) != 7 {
		t.Fatalf("replies %q", got)
	}
	var nodes struct {
		Return []struct {
			NodeName    string `json:"node-name"`
			BackingFile string `json:"backing_file"`
		}
	}
	if err := json.Unmarshal([]byte(got[4]), &nodes); err != nil {
		t.Fatal(err)
	}
	seen := map[string]string{}
	for _, n := range nodes.Return {
		seen[n.NodeName] = n.BackingFile
	}
	for _, n := range []string{"t1", "t2"} {
		if seen[n] != "base.qcow2" {
			t.Errorf("node %s has backing file %q, want base.qcow2 (nodes %v)", n, seen[n], seen)
		}
	}
	if !strings.Contains(got[5], "in use") && !strings.Contains(got[5], "busy") {
		t.Errorf("blockdev-del of the shared backing node: %s, want it refused", got[5])
	}
}

// TestServeRawNodesListedAsQemuStorageDaemon: query-named-block-nodes
// lists a raw format node and its file node as QEMU does (libvirt's
// "libvirt-1-format" over "libvirt-1-storage"), by reference and inline
// with a node-name, and each node's detect-zeroes. Before, ringblk listed
// one node, drv "file", under the format node's name (or only the file's),
// and detect_zeroes "off" whatever the node said.
func TestServeRawNodesListedAsQemuStorageDaemon(t *testing.T) {
	needCmd(t, "qemu-storage-daemon", "qemu-img")
	wantR, _, gotR, _ := stdioBoth(t, func(dir string) []string {
		for _, n := range []string{"a", "b", "c"} {
			qemuImg(t, "create", "-q", "-f", "raw", filepath.Join(dir, n+".raw"), "1M")
		}
		return []string{
			`{"execute":"qmp_capabilities"}`,
			`{"execute":"blockdev-add","arguments":{"driver":"file","node-name":"libvirt-1-storage","filename":"a.raw","discard":"unmap"}}`,
			`{"execute":"blockdev-add","arguments":{"driver":"raw","node-name":"libvirt-1-format","file":"libvirt-1-storage","discard":"unmap","detect-zeroes":"unmap"}}`,
			`{"execute":"blockdev-add","arguments":{"driver":"raw","node-name":"r2","file":{"driver":"file","node-name":"f2","filename":"b.raw"},"detect-zeroes":"on"}}`,
			`{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"q3","file":{"driver":"file","filename":"c.raw"}}}`,
			`{"execute":"query-named-block-nodes","arguments":{"flat":true}}`,
			`{"execute":"quit"}`,
		}
	})
	list := func(replies []string) []string {
		var out []string
		for _, r := range replies {
			var m struct {
				Return []struct {
					Name         string `json:"node-name"`
					Drv          string `json:"drv"`
					DetectZeroes string `json:"detect_zeroes"`
					Image        struct {
						Format string `json:"format"`
					} `json:"image"`
				} `json:"return"`
			}
			if json.Unmarshal([]byte(r), &m) != nil {
				continue
			}
			for _, n := range m.Return {
				if !strings.HasPrefix(n.Name, "#") {
					out = append(out, n.Name+" "+n.Drv+" "+n.Image.Format+" "+n.DetectZeroes)
				}
			}
		}
		sort.Strings(out)
		return out
	}
	want, got := list(wantR), list(gotR)
	if len(want) != 4 {
		t.Fatalf("qemu-storage-daemon's nodes are not what this test compares: %q (replies %q)", want, wantR)
	}
	if strings.Join(want, "; ") != strings.Join(got, "; ") {
		t.Errorf("nodes:\nqemu-storage-daemon %q\nringblk serve       %q", want, got)
	}
}

// TestServeFileAndQcow2OptionsOnCommandLine: the same members given with
// --blockdev (keyval: every value a string, overlap-check's flags
// dotted) open the nodes as qemu-storage-daemon does; deleting them then
// succeeds. Before, overlap-check.inactive-l2=off was "Invalid parameter
// type ... expected: boolean".
func TestServeFileAndQcow2OptionsOnCommandLine(t *testing.T) {
	needCmd(t, "qemu-storage-daemon", "qemu-img")
	wantR, _, gotR, _ := stdioBothArgs(t, func(dir string) ([]string, []string) {
		qemuImg(t, "create", "-q", "-f", "qcow2", filepath.Join(dir, "k.qcow2"), "4M")
		return []string{
				"--blockdev", "driver=file,node-name=f,filename=k.qcow2,aio=native,cache.direct=on,aio-max-batch=8",
				"--blockdev", "driver=qcow2,node-name=q,file=f,l2-cache-size=1048576,overlap-check.template=all,overlap-check.inactive-l2=off,lazy-refcounts=on,pass-discard-other=on",
			}, []string{
				`{"execute":"qmp_capabilities"}`,
				`{"execute":"blockdev-del","arguments":{"node-name":"q"}}`,
				`{"execute":"blockdev-del","arguments":{"node-name":"f"}}`,
				`{"execute":"quit"}`,
			}
	})
	if len(wantR) != 4 {
		t.Fatalf("qemu-storage-daemon's replies are not what this test compares: %q", wantR)
	}
	compareSteps(t, wantR, gotR)
}
