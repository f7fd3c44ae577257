package qmp

import (
	"bytes"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/ringblk/ringblk/host"
)

// nodeNames lists the graph's node names, sorted.
func nodeNames(d *Daemon) string {
	var out []string
	for _, n := range d.h.Graph().Nodes() {
		out = append(out, n.Name())
	}
	sort.Strings(out)
	return strings.Join(out, " ")
}

// TestDriveArgumentsRefused: drive-mirror and drive-backup arguments the
// daemon refuses, each with the error QEMU 7.2 gives (or, for what the
// daemon cannot honour, one naming the member); no job is left and no
// target node stays in the graph; errors found before the image is
// made leave no file (the later ones leave it, as QEMU does).
func TestDriveArgumentsRefused(t *testing.T) {
	d, dir, sock := testServer(t, 1, Options{})
	addQcow2(t, d, dir, "a")
	c := dialRaw(t, sock)
	c.negotiate()
	before := nodeNames(d)
	tgt := filepath.Join(dir, "t.qcow2")
	for _, tc := range []struct {
		cmd, args, want string
		created         bool // QEMU has made the image when it refuses
	}{
		{"drive-mirror", `"device":"nope","sync":"full"`, "Cannot find device='nope' nor node-name='nope'", false},
		{"drive-mirror", `"device":"a","sync":"full","mode":"relative"`, "Parameter 'mode' does not accept value 'relative'", false},
		{"drive-mirror", `"device":"a","sync":"most"`, "Parameter 'sync' does not accept value 'most'", false},
		{"drive-mirror", `"device":"a","sync":"full","copy-mode":"fast"`, "Parameter 'copy-mode' does not accept value 'fast'", false},
		{"drive-mirror", `"device":"a","sync":"full","on-source-error":"retry"`, "Parameter 'on-source-error' does not accept value 'retry'", false},
		{"drive-mirror", `"device":"a","sync":"full","format":"bogus"`, "Unknown file format 'bogus'", false},
		{"drive-mirror", `"device":"a","sync":"full","format":"vmdk"`, "Format 'vmdk' is not supported", false},
		{"drive-mirror", `"device":"a","sync":"full","replaces":"a"`, "a node-name must be provided when replacing a named node of the graph", false},
		{"drive-mirror", `"device":"a","sync":"full","replaces":"a","node-name":"n"`, "Parameter 'replaces' is not supported", false},
		{"drive-mirror", `"device":"a","sync":"none","job-id":"j"`, "drive-mirror with 'none' is not supported", false},
		{"drive-mirror", `"device":"a","sync":"full","unmap":false,"job-id":"j"`, "Parameter 'unmap': false is not supported", false},
		{"drive-mirror", `"device":"a","sync":"full","node-name":"a","job-id":"j"`, "Duplicate nodes with node-name='a'", false},
		{"drive-mirror", `"device":"a","sync":"full","node-name":"1x","job-id":"j"`, "Invalid node-name: '1x'", false},
		{"drive-mirror", `"device":"a","sync":"full","mode":"existing","job-id":"j"`, "Could not open '" + tgt + "': No such file or directory", false},
		{"drive-mirror", `"device":"a","sync":"full","granularity":1000,"job-id":"j"`, "Parameter 'granularity' expects a power of 2", true},
		{"drive-mirror", `"device":"a","sync":"full","granularity":256,"job-id":"j"`, "Parameter 'granularity' expects a value in range [512B, 64MB]", true},
		{"drive-mirror", `"device":"a","sync":"full","buf-size":-1,"job-id":"j"`, "Invalid parameter 'buf-size'", true},
		{"drive-mirror", `"device":"a","sync":"full","speed":-1,"job-id":"j"`, "Parameter 'speed' expects a non-negative value", true},
		{"drive-mirror", `"device":"a","sync":"full"`, "Invalid job ID ''", true},
		{"drive-backup", `"device":"nope","sync":"full"`, "Cannot find device='nope' nor node-name='nope'", false},
		{"drive-backup", `"device":"a","sync":"full","node-name":"n"`, "Parameter 'node-name' is unexpected", false},
		{"drive-backup", `"device":"a","sync":"full","bitmap-mode":"sometimes"`, "Parameter 'bitmap-mode' does not accept value 'sometimes'", false},
		{"drive-backup", `"device":"a","sync":"none","job-id":"j"`, "'none' is not supported by this daemon", false},
		{"drive-backup", `"device":"a","sync":"full","compress":true,"job-id":"j"`, "Parameters 'compress' and 'filter-node-name' are not supported", false},
		{"drive-backup", `"device":"a","sync":"full","format":"bogus","job-id":"j"`, "Unknown file format 'bogus'", false},
		{"drive-backup", `"device":"a","sync":"full","mode":"existing","job-id":"j"`, "Could not open '" + tgt + "': No such file or directory", false},
		{"drive-backup", `"device":"a","sync":"incremental","job-id":"j"`, "must provide a valid bitmap name for 'incremental' sync mode", true},
		{"drive-backup", `"device":"a","sync":"full","bitmap":"x","bitmap-mode":"always","job-id":"j"`, "Bitmap 'x' could not be found", true},
		{"drive-backup", `"device":"a","sync":"full"`, "Invalid job ID ''", true},
	} {
		os.Remove(tgt)
		wantError(t, c.do(`{"execute":"`+tc.cmd+`","arguments":{"target":"`+tgt+`",`+tc.args+`}}`), GenericError, tc.want)
		if _, err := os.Stat(tgt); (err == nil) != tc.created {
			t.Errorf("%s %s: target file made %v, want %v", tc.cmd, tc.args, err == nil, tc.created)
		}
		if got := nodeNames(d); got != before {
			t.Errorf("%s %s: nodes %s, want %s", tc.cmd, tc.args, got, before)
		}
	}
	if jobs := okReply(t, c, `{"execute":"query-jobs"}`).([]any); len(jobs) != 0 {
		t.Fatalf("query-jobs: %v", jobs)
	}
}

// TestDriveBackupGroupedTransaction: two drive-backup actions in a
// grouped transaction; a third action failing rolls both back (no job,
// no target node left), and without it both jobs run and complete
// together, their targets hold the sources' data and leave the graph
// with the jobs.
func TestDriveBackupGroupedTransaction(t *testing.T) {
	d, dir, sock := testServer(t, 1, Options{})
	addQcow2(t, d, dir, "a")
	addQcow2(t, d, dir, "b")
	fill(t, d, "a", 0x61, 0, 1<<20)
	fill(t, d, "b", 0x62, 1<<20, 1<<20)
	c := dialRaw(t, sock)
	c.negotiate()
	before := nodeNames(d)
	action := func(dev, job string) string {
		return `{"type":"drive-backup","data":{"device":"` + dev + `","target":"` + filepath.Join(dir, job+".qcow2") + `","sync":"full","job-id":"` + job + `"}}`
	}
	wantError(t, c.do(`{"execute":"transaction","arguments":{"actions":[`+action("a", "ja")+`,`+action("b", "jb")+
		`,{"type":"blockdev-backup","data":{"device":"a","target":"nope","sync":"full"}}],"properties":{"completion-mode":"grouped"}}}`),
		GenericError, "Cannot find device='' nor node-name='nope'")
	if got := nodeNames(d); got != before {
		t.Fatalf("after the rollback nodes %s, want %s", got, before)
	}
	if jobs := okReply(t, c, `{"execute":"query-jobs"}`).([]any); len(jobs) != 0 {
		t.Fatalf("after the rollback query-jobs: %v", jobs)
	}
	okReply(t, c, `{"execute":"transaction","arguments":{"actions":[`+action("a", "ja")+`,`+action("b", "jb")+`],"properties":{"completion-mode":"grouped"}}}`)
	for _, j := range []string{"ja", "jb"} {
		ev := c.waitEvent("BLOCK_JOB_COMPLETED", j)
		if _, failed := ev["data"].(map[string]any)["error"]; failed {
			t.Fatalf("%s: %v", j, ev)
		}
	}
	waitFor(t, "the targets leave the graph", func() bool { return nodeNames(d) == before })
	for _, tc := range []struct {
		img string
		b   byte
		off int64
	}{{"ja", 0x61, 0}, {"jb", 0x62, 1 << 20}} {
		dev, err := d.h.OpenDevice(filepath.Join(dir, tc.img+".qcow2"), host.OpenOptions{Format: "qcow2", ReadOnly: true, Name: "check-" + tc.img})
		if err != nil {
			t.Fatal(err)
		}
		if got := readBack(t, dev, tc.off, 1<<20); !bytes.Equal(got, bytes.Repeat([]byte{tc.b}, 1<<20)) {
			t.Errorf("%s does not hold the source's data", tc.img)
		}
		dev.Close()
	}
}

// waitFor polls cond for up to ten seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for i := 0; i < 1000; i++ {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s: not within ten seconds", what)
}

// TestDriveMirrorCancelAndComplete: a drive-mirror cancelled when ready
// drops its target node and leaves the device on the source; one into
// an existing image (format probed, a node-name given) completed moves
// the device onto the target node, which holds the data.
func TestDriveMirrorCancelAndComplete(t *testing.T) {
	d, dir, sock := testServer(t, 1, Options{})
	addQcow2(t, d, dir, "a")
	fill(t, d, "a", 0x71, 0, 1<<20)
	c := dialRaw(t, sock)
	c.negotiate()
	before := nodeNames(d)
	okReply(t, c, `{"execute":"drive-mirror","arguments":{"device":"a","target":"`+filepath.Join(dir, "c.qcow2")+`","sync":"full","job-id":"m1","node-name":"cn"}}`)
	c.waitEvent("BLOCK_JOB_READY", "m1")
	if !strings.Contains(nodeNames(d), "cn") {
		t.Fatalf("the running mirror's target node is not in the graph: %s", nodeNames(d))
	}
	okReply(t, c, `{"execute":"block-job-cancel","arguments":{"device":"m1"}}`)
	c.waitEvent("BLOCK_JOB_COMPLETED", "m1")
	waitFor(t, "the cancelled mirror's target leaves the graph", func() bool { return nodeNames(d) == before })
	if r := d.nodes["a"].dev.Root().Name(); r != "a" {
		t.Fatalf("device on %s after the cancel, want a", r)
	}
	ex := filepath.Join(dir, "ex.qcow2")
	if err := d.h.Create(ex, host.CreateOptions{Format: "qcow2", Size: imgSize}); err != nil {
		t.Fatal(err)
	}
	// A small buf-size: one request of 64 KiB at a time.
	okReply(t, c, `{"execute":"drive-mirror","arguments":{"device":"a","target":"`+ex+`","sync":"full","mode":"existing","job-id":"m2","node-name":"exn","buf-size":65536}}`)
	c.waitEvent("BLOCK_JOB_READY", "m2")
	okReply(t, c, `{"execute":"block-job-complete","arguments":{"device":"m2"}}`)
	ev := c.waitEvent("BLOCK_JOB_COMPLETED", "m2")
	if _, failed := ev["data"].(map[string]any)["error"]; failed {
		t.Fatalf("m2: %v", ev)
	}
	waitFor(t, "the device moves to the target", func() bool { return d.nodes["a"].dev.Root().Name() == "exn" })
	if got := readBack(t, d.nodes["a"].dev, 0, 1<<20); !bytes.Equal(got, bytes.Repeat([]byte{0x71}, 1<<20)) {
		t.Fatal("the target does not hold the source's data")
	}
}
