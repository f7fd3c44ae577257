package qmp

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/host"
	"github.com/ringblk/ringblk/job"
)

func okReply(t *testing.T, c *rawClient, cmd string) any {
	t.Helper()
	r := c.do(cmd)
	if _, ok := r["return"]; !ok {
		t.Fatalf("%s: %v", cmd, r)
	}
	return r["return"]
}

func fill(t *testing.T, d *Daemon, node string, b byte, off, n int64) {
	t.Helper()
	if _, err := d.nodes[node].dev.WriteAt(bytes.Repeat([]byte{b}, int(n)), off); err != nil {
		t.Fatal(err)
	}
}

func readBack(t *testing.T, dev *host.Device, off, n int64) []byte {
	t.Helper()
	buf := make([]byte, n)
	if _, err := dev.ReadAt(buf, off); err != nil {
		t.Fatal(err)
	}
	return buf
}

// TestMirrorReadyCompleteOverQMP: blockdev-mirror of a drive on an
// IOThread to a second node: JOB_STATUS_CHANGE and BLOCK_JOB_READY,
// job-complete, BLOCK_JOB_COMPLETED; the target then holds the data and
// the drive's device uses it.
func TestMirrorReadyCompleteOverQMP(t *testing.T) {
	d, dir, sock := testServer(t, 2, Options{})
	addQcow2(t, d, dir, "src")
	addQcow2(t, d, dir, "tgt")
	fill(t, d, "src", 0x5a, 0, 1<<20)
	c := dialRaw(t, sock)
	c.negotiate()
	okReply(t, c, `{"execute":"object-add","arguments":{"qom-type":"iothread","id":"io0"}}`)
	okReply(t, c, `{"execute":"x-blockdev-set-iothread","arguments":{"node-name":"src","iothread":"io0"}}`)
	okReply(t, c, `{"execute":"blockdev-mirror","arguments":{"job-id":"m0","device":"src","target":"tgt","sync":"full"}}`)
	c.waitEvent("BLOCK_JOB_READY", "m0")
	jobs := okReply(t, c, `{"execute":"query-jobs"}`).([]any)
	if len(jobs) != 1 || jobs[0].(map[string]any)["status"] != "ready" {
		t.Fatalf("query-jobs %v", jobs)
	}
	okReply(t, c, `{"execute":"job-complete","arguments":{"id":"m0"}}`)
	ev := c.waitEvent("BLOCK_JOB_COMPLETED", "m0")
	if _, failed := ev["data"].(map[string]any)["error"]; failed {
		t.Fatalf("completed with %v", ev)
	}
	if got := readBack(t, d.nodes["src"].dev, 0, 1<<20); !bytes.Equal(got, bytes.Repeat([]byte{0x5a}, 1<<20)) {
		t.Fatal("data after the pivot differs")
	}
	if r := d.nodes["src"].dev.Root().Name(); r != "tgt" {
		t.Fatalf("the drive's device uses %s after the pivot, want tgt", r)
	}
}

// TestMirrorAsTransactionAction: blockdev-mirror in a transaction (a
// ringblk extension) starts at commit, gets ready, and a cancel of the
// ready job leaves the source in place.
func TestMirrorAsTransactionAction(t *testing.T) {
	d, dir, sock := testServer(t, 1, Options{})
	addQcow2(t, d, dir, "src")
	addQcow2(t, d, dir, "tgt")
	c := dialRaw(t, sock)
	c.negotiate()
	okReply(t, c, `{"execute":"transaction","arguments":{"actions":[
		{"type":"blockdev-mirror","data":{"job-id":"m","device":"src","target":"tgt","sync":"full"}},
		{"type":"block-dirty-bitmap-add","data":{"node":"tgt","name":"since-mirror"}}]}}`)
	c.waitEvent("BLOCK_JOB_READY", "m")
	okReply(t, c, `{"execute":"job-cancel","arguments":{"id":"m"}}`)
	c.waitEvent("JOB_STATUS_CHANGE", "m")
	for len(okReply(t, c, `{"execute":"query-jobs"}`).([]any)) > 0 {
		time.Sleep(time.Millisecond)
	}
	if r := d.nodes["src"].dev.Root().Name(); r != "src" {
		t.Fatalf("after the cancel the device is on %s, want src", r)
	}
}

// TestBackupWithBitmapCheckpointInOneTransaction: the classic
// incremental-backup start: add a bitmap and start a full backup in one
// transaction (the same point in time); later writes land in the bitmap;
// an incremental backup copies only them.
func TestBackupWithBitmapCheckpointInOneTransaction(t *testing.T) {
	d, dir, sock := testServer(t, 1, Options{})
	addQcow2(t, d, dir, "disk0")
	addQcow2(t, d, dir, "full")
	addQcow2(t, d, dir, "inc")
	fill(t, d, "disk0", 1, 0, 1<<20)
	c := dialRaw(t, sock)
	c.negotiate()
	okReply(t, c, `{"execute":"transaction","arguments":{"actions":[
		{"type":"block-dirty-bitmap-add","data":{"node":"disk0","name":"bm0"}},
		{"type":"blockdev-backup","data":{"job-id":"b0","device":"disk0","target":"full","sync":"full"}}]}}`)
	c.waitEvent("BLOCK_JOB_COMPLETED", "b0")
	fill(t, d, "disk0", 2, 2<<20, 64<<10)
	bm := d.nodes["disk0"].dev.Root().Bitmap("bm0")
	if bm == nil || bm.Count() == 0 {
		t.Fatalf("bitmap %v: the write after the checkpoint is not in it", bm)
	}
	okReply(t, c, `{"execute":"blockdev-backup","arguments":{"job-id":"b1","device":"disk0","target":"inc","sync":"incremental","bitmap":"bm0"}}`)
	c.waitEvent("BLOCK_JOB_COMPLETED", "b1")
	if got := readBack(t, d.nodes["full"].dev, 0, 1<<20); !bytes.Equal(got, bytes.Repeat([]byte{1}, 1<<20)) {
		t.Fatal("full backup differs")
	}
	if got := readBack(t, d.nodes["inc"].dev, 2<<20, 64<<10); !bytes.Equal(got, bytes.Repeat([]byte{2}, 64<<10)) {
		t.Fatal("incremental backup lacks the new write")
	}
	if got := readBack(t, d.nodes["inc"].dev, 0, 64<<10); !bytes.Equal(got, make([]byte, 64<<10)) {
		t.Fatal("incremental backup copied old data")
	}
	if bm.Count() != 0 {
		t.Fatalf("bitmap holds %d bytes after the incremental backup", bm.Count())
	}
}

// TestBitmapAndBackupActionsAbort: each bitmap action and a backup,
// followed by an abort action, leaves the bitmaps as they were and starts
// no job.
func TestBitmapAndBackupActionsAbort(t *testing.T) {
	d, dir, sock := testServer(t, 1, Options{})
	addQcow2(t, d, dir, "disk0")
	addQcow2(t, d, dir, "tgt")
	c := dialRaw(t, sock)
	c.negotiate()
	okReply(t, c, `{"execute":"block-dirty-bitmap-add","arguments":{"node":"disk0","name":"a"}}`)
	okReply(t, c, `{"execute":"block-dirty-bitmap-add","arguments":{"node":"disk0","name":"b","disabled":true}}`)
	fill(t, d, "disk0", 9, 0, 128<<10)
	root := d.nodes["disk0"].dev.Root()
	state := func() string {
		var parts []string
		for _, b := range root.Bitmaps() {
			parts = append(parts, fmt.Sprintf("%s:%v:%d", b.Name(), b.Enabled(), b.Count()))
		}
		sort.Strings(parts) // the order of a node's bitmaps means nothing
		return strings.Join(parts, " ")
	}
	before := state()
	for _, act := range []string{
		`{"type":"block-dirty-bitmap-add","data":{"node":"disk0","name":"c"}}`,
		`{"type":"block-dirty-bitmap-remove","data":{"node":"disk0","name":"a"}}`,
		`{"type":"block-dirty-bitmap-clear","data":{"node":"disk0","name":"a"}}`,
		`{"type":"block-dirty-bitmap-enable","data":{"node":"disk0","name":"b"}}`,
		`{"type":"block-dirty-bitmap-disable","data":{"node":"disk0","name":"a"}}`,
		`{"type":"block-dirty-bitmap-merge","data":{"node":"disk0","target":"b","bitmaps":["a"]}}`,
		`{"type":"blockdev-backup","data":{"job-id":"bk","device":"disk0","target":"tgt","sync":"full"}}`,
		`{"type":"blockdev-mirror","data":{"job-id":"mi","device":"disk0","target":"tgt","sync":"full"}}`,
	} {
		r := c.do(`{"execute":"transaction","arguments":{"actions":[` + act + `,{"type":"abort","data":{}}]}}`)
		wantError(t, r, GenericError, "Transaction aborted using Abort action")
		if got := state(); got != before {
			t.Errorf("%s: bitmaps %s after the abort, want %s", act, got, before)
		}
		if n := len(okReply(t, c, `{"execute":"query-jobs"}`).([]any)); n != 0 {
			t.Errorf("%s: %d jobs after the abort", act, n)
		}
		if top := d.nodes["disk0"].dev.Root(); top != root {
			t.Errorf("%s: the device's top is %s after the abort (a job's filter left?)", act, top.Name())
		}
	}
	// Applied alone, the merge puts a's bits into b.
	okReply(t, c, `{"execute":"block-dirty-bitmap-merge","arguments":{"node":"disk0","target":"b","bitmaps":["a"]}}`)
	if b := root.Bitmap("b"); b.Count() != root.Bitmap("a").Count() {
		t.Fatalf("merge: b has %d, a %d", b.Count(), root.Bitmap("a").Count())
	}
	wantError(t, c.do(`{"execute":"block-dirty-bitmap-add","arguments":{"node":"disk0","name":"a"}}`), GenericError, "Bitmap already exists: a")
	// query-named-block-nodes reports them as QEMU does.
	for _, n := range okReply(t, c, `{"execute":"query-named-block-nodes"}`).([]any) {
		m := n.(map[string]any)
		if m["node-name"] != "disk0" {
			continue
		}
		bms, _ := m["dirty-bitmaps"].([]any)
		if len(bms) != 2 {
			t.Fatalf("dirty-bitmaps %v", m["dirty-bitmaps"])
		}
		for _, b := range bms {
			bm := b.(map[string]any)
			if bm["name"] == "a" && (bm["count"] != 131072.0 || bm["recording"] != true || bm["granularity"] != 65536.0) {
				t.Fatalf("bitmap a: %v", bm)
			}
		}
	}
	wantError(t, c.do(`{"execute":"block-dirty-bitmap-remove","arguments":{"node":"disk0","name":"zz"}}`), GenericError, "Dirty bitmap 'zz' not found")
}

// TestStreamToBottom: after an external snapshot, block-stream to the
// bottom (no base) rewrites the qcow2 overlay's header without a backing
// file, detaches the old image and the device reads the same data.
func TestStreamToBottom(t *testing.T) {
	d, dir, sock := testServer(t, 1, Options{})
	addQcow2(t, d, dir, "disk0")
	fill(t, d, "disk0", 3, 0, 256<<10)
	c := dialRaw(t, sock)
	c.negotiate()
	okReply(t, c, `{"execute":"blockdev-snapshot-sync","arguments":{"node-name":"disk0","snapshot-file":"`+filepath.Join(dir, "s1.qcow2")+`","snapshot-node-name":"s1"}}`)
	fill(t, d, "disk0", 4, 256<<10, 256<<10)
	okReply(t, c, `{"execute":"block-stream","arguments":{"job-id":"st","device":"s1"}}`)
	ev := c.waitEvent("BLOCK_JOB_COMPLETED", "st")
	if e, failed := ev["data"].(map[string]any)["error"]; failed {
		t.Fatalf("stream failed: %v", e)
	}
	root := d.nodes["disk0"].dev.Root()
	if root.Child(block.RoleBacking) != nil {
		t.Fatalf("%s still has a backing node after the stream", root.Name())
	}
	want := append(bytes.Repeat([]byte{3}, 256<<10), bytes.Repeat([]byte{4}, 256<<10)...)
	if got := readBack(t, d.nodes["disk0"].dev, 0, 512<<10); !bytes.Equal(got, want) {
		t.Fatal("data after the stream differs")
	}
}

// TestActiveCommitCompletes: after an external snapshot, block-commit of
// the overlay (an active commit) gets ready, completes on job-complete,
// and the device then uses the base again with all the data.
func TestActiveCommitCompletes(t *testing.T) {
	d, dir, sock := testServer(t, 1, Options{})
	addQcow2(t, d, dir, "disk0")
	fill(t, d, "disk0", 3, 0, 256<<10)
	c := dialRaw(t, sock)
	c.negotiate()
	okReply(t, c, `{"execute":"blockdev-snapshot-sync","arguments":{"node-name":"disk0","snapshot-file":"`+filepath.Join(dir, "s1.qcow2")+`","snapshot-node-name":"s1"}}`)
	fill(t, d, "disk0", 4, 256<<10, 256<<10) // lands in s1: the device follows the snapshot
	okReply(t, c, `{"execute":"block-commit","arguments":{"job-id":"cm","device":"disk0"}}`)
	c.waitEvent("BLOCK_JOB_READY", "cm")
	okReply(t, c, `{"execute":"job-complete","arguments":{"id":"cm"}}`)
	ev := c.waitEvent("BLOCK_JOB_COMPLETED", "cm")
	if e, failed := ev["data"].(map[string]any)["error"]; failed {
		t.Fatalf("commit failed: %v", e)
	}
	if r := d.nodes["disk0"].dev.Root().Name(); r != "disk0" {
		t.Fatalf("device on %s after the commit, want disk0", r)
	}
	want := append(bytes.Repeat([]byte{3}, 256<<10), bytes.Repeat([]byte{4}, 256<<10)...)
	if got := readBack(t, d.nodes["disk0"].dev, 0, 512<<10); !bytes.Equal(got, want) {
		t.Fatal("data after the commit differs")
	}
}

// TestStressJobsTransactionsWithIO: random transactions of backups (to
// fresh targets), bitmap actions and aborts, with writes on an IOThread
// all along. Every job concludes, every backup holds the data of the
// first MiB (never written during the run), no job filter is left, no
// node stays drained or has requests in flight, and once the daemon and
// host are closed no goroutine of theirs is left.
func TestStressJobsTransactionsWithIO(t *testing.T) {
	iters := 20
	if testing.Short() {
		iters = 8
	}
	// Registered first, so it runs after the server, daemon and host are
	// closed: nothing of theirs may still run.
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if n := runtime.NumGoroutine(); n > before {
			buf := make([]byte, 1<<16)
			t.Errorf("%d goroutines after close, %d before:\n%s", n, before, buf[:runtime.Stack(buf, true)])
		}
	})
	d, dir, sock := testServer(t, 2, Options{})
	addQcow2(t, d, dir, "disk0")
	fill(t, d, "disk0", 7, 0, 1<<20) // the first MiB is never written again
	c := dialRaw(t, sock)
	c.negotiate()
	okReply(t, c, `{"execute":"object-add","arguments":{"qom-type":"iothread","id":"io0"}}`)
	okReply(t, c, `{"execute":"x-blockdev-set-iothread","arguments":{"node-name":"disk0","iothread":"io0"}}`)
	stop := make(chan struct{})
	done := make(chan struct{})
	dev := d.nodes["disk0"].dev
	go func() {
		defer close(done)
		buf := bytes.Repeat([]byte{9}, 4096)
		for i := int64(0); ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := dev.WriteAt(buf, (1<<20)+(i%256)*4096); err != nil {
				t.Errorf("write: %v", err)
				return
			}
		}
	}()
	var targets []string
	bitmaps := 0
	for it := 0; it < iters; it++ {
		tgt := fmt.Sprintf("t%d", it)
		addQcow2(t, d, dir, tgt)
		acts := []string{fmt.Sprintf(`{"type":"blockdev-backup","data":{"job-id":"j%d","device":"disk0","target":"%s","sync":"full"}}`, it, tgt)}
		switch it % 3 {
		case 0:
			bitmaps++
			acts = append(acts, fmt.Sprintf(`{"type":"block-dirty-bitmap-add","data":{"node":"disk0","name":"b%d"}}`, bitmaps))
		case 1:
			if bitmaps > 0 {
				acts = append(acts, fmt.Sprintf(`{"type":"block-dirty-bitmap-clear","data":{"node":"disk0","name":"b%d"}}`, bitmaps))
			}
		}
		abort := it%4 == 3
		if abort {
			acts = append(acts, `{"type":"abort","data":{}}`)
			if strings.Contains(acts[len(acts)-2], "bitmap-add") {
				bitmaps--
			}
		}
		r := c.do(`{"execute":"transaction","arguments":{"actions":[` + strings.Join(acts, ",") + `]}}`)
		if abort {
			wantError(t, r, GenericError, "Transaction aborted")
			continue
		}
		if _, ok := r["return"]; !ok {
			t.Fatalf("iteration %d: %v", it, r)
		}
		targets = append(targets, tgt)
		if it%2 == 0 {
			c.waitEvent("BLOCK_JOB_COMPLETED", fmt.Sprintf("j%d", it))
		}
	}
	close(stop)
	<-done
	for len(okReply(t, c, `{"execute":"query-jobs"}`).([]any)) > 0 {
		time.Sleep(10 * time.Millisecond)
	}
	want := bytes.Repeat([]byte{7}, 1<<20)
	for _, tg := range targets {
		if got := readBack(t, d.nodes[tg].dev, 0, 1<<20); !bytes.Equal(got, want) {
			t.Fatalf("backup %s: the quiet first MiB differs", tg)
		}
	}
	for _, n := range d.h.Graph().Nodes() {
		if n.Quiesce() != 0 || n.InFlight() != 0 {
			t.Errorf("node %s: quiesce %d, in flight %d", n.Name(), n.Quiesce(), n.InFlight())
		}
		if strings.HasPrefix(n.Name(), "#backup") {
			t.Errorf("filter %s left in the graph", n.Name())
		}
	}
	if bm := d.nodes["disk0"].dev.Root().Bitmaps(); len(bm) != bitmaps {
		t.Errorf("%d bitmaps, want %d", len(bm), bitmaps)
	}
}

// TestCloseCancelsRunningJobs: the daemon's Close (SIGTERM, quit) cancels
// a ready mirror, so it does not pivot, and closes every image cleanly.
func TestCloseCancelsRunningJobs(t *testing.T) {
	h, err := host.New(host.Options{Contexts: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	d := NewDaemon(h, NewRegistry())
	dir := t.TempDir()
	addQcow2(t, d, dir, "src")
	addQcow2(t, d, dir, "tgt")
	j, err := d.newMirror(&MirrorArgs{JobArgs: JobArgs{JobID: "m"}, Device: "src", Target: "tgt", Sync: "full"})
	if err := d.startJob(j, err); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for !j.IsReady() && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if !j.IsReady() {
		t.Fatal("mirror never ready")
	}
	if err := d.Close(); err != nil {
		t.Fatalf("close with a running mirror: %v", err)
	}
	if n := d.jobs.Len(); n != 0 {
		t.Fatalf("%d jobs after Close", n)
	}
	if !errors.Is(j.Result(), job.ErrCancelled) && j.Result() != nil {
		t.Fatalf("mirror result %v", j.Result())
	}
	if got := d.h.Graph().Nodes(); len(got) != 0 {
		t.Fatalf("%d nodes left after Close", len(got))
	}
}

// TestCheckpointChain: x-ringblk-checkpoint (job.Chain through QMP):
// an aborted first checkpoint leaves no bitmap; the first checkpoint
// starts tracking; writes land in the active bitmap; an aborted second
// checkpoint leaves the active bitmap with those writes; the second
// checkpoint, in one transaction with an incremental backup of its frozen
// bitmap, freezes exactly those writes and the backup copies exactly them.
func TestCheckpointChain(t *testing.T) {
	d, dir, sock := testServer(t, 1, Options{})
	addQcow2(t, d, dir, "disk0")
	addQcow2(t, d, dir, "inc")
	fill(t, d, "disk0", 4, 0, 64<<10)
	c := dialRaw(t, sock)
	c.negotiate()
	root := d.nodes["disk0"].dev.Root()
	aborted := `{"execute":"transaction","arguments":{"actions":[
		{"type":"x-ringblk-checkpoint","data":{"node":"disk0","chain":"cp"}},{"type":"abort","data":{}}]}}`
	wantError(t, c.do(aborted), GenericError, "Transaction aborted")
	if n := len(root.Bitmaps()); n != 0 {
		t.Fatalf("%d bitmaps after an aborted first checkpoint", n)
	}
	r := okReply(t, c, `{"execute":"x-ringblk-checkpoint","arguments":{"node":"disk0","chain":"cp"}}`).(map[string]any)
	if r["seq"] != 1.0 || r["bitmap"] != "cp@1" {
		t.Fatalf("first checkpoint %v", r)
	}
	fill(t, d, "disk0", 5, 1<<20, 64<<10)
	wantError(t, c.do(aborted), GenericError, "Transaction aborted")
	if bms := root.Bitmaps(); len(bms) != 1 || bms[0].Name() != "cp" || bms[0].Count() != 64<<10 || !bms[0].Enabled() {
		t.Fatalf("after an aborted second checkpoint: %d bitmaps", len(bms))
	}
	// The checkpoint and the backup of what it froze, at one instant. (The
	// aborted one used up number 2: the frozen bitmap is cp@3.)
	okReply(t, c, `{"execute":"transaction","arguments":{"actions":[
		{"type":"x-ringblk-checkpoint","data":{"node":"disk0","chain":"cp"}},
		{"type":"blockdev-backup","data":{"job-id":"inc","device":"disk0","target":"inc","sync":"bitmap","bitmap":"cp@3","bitmap-mode":"never"}}]}}`)
	c.waitEvent("BLOCK_JOB_COMPLETED", "inc")
	if got := readBack(t, d.nodes["inc"].dev, 1<<20, 64<<10); !bytes.Equal(got, bytes.Repeat([]byte{5}, 64<<10)) {
		t.Fatal("the incremental backup lacks the write since the first checkpoint")
	}
	if got := readBack(t, d.nodes["inc"].dev, 0, 64<<10); !bytes.Equal(got, make([]byte, 64<<10)) {
		t.Fatal("the incremental backup copied data from before the first checkpoint")
	}
}

// TestIntermediateCommitAndStreamRecordBaseFile: an intermediate
// block-commit and a block-stream with a base, both without backing-file,
// leave the overlay's qcow2 header naming the base's image file, as QEMU
// does (base's filename), not a node name that no later open could find.
// qemu-img then opens the chain and reads the data.
func TestIntermediateCommitAndStreamRecordBaseFile(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img not installed (scripts/deps.sh installs it)")
	}
	for _, op := range []string{"commit", "stream"} {
		t.Run(op, func(t *testing.T) {
			d, dir, sock := testServer(t, 1, Options{})
			basePath := addQcow2(t, d, dir, "disk0")
			fill(t, d, "disk0", 3, 0, 256<<10)
			c := dialRaw(t, sock)
			c.negotiate()
			s1, s2 := filepath.Join(dir, "s1.qcow2"), filepath.Join(dir, "s2.qcow2")
			okReply(t, c, `{"execute":"blockdev-snapshot-sync","arguments":{"node-name":"disk0","snapshot-file":"`+s1+`","snapshot-node-name":"s1"}}`)
			fill(t, d, "disk0", 4, 256<<10, 256<<10)
			okReply(t, c, `{"execute":"blockdev-snapshot-sync","arguments":{"node-name":"s1","snapshot-file":"`+s2+`","snapshot-node-name":"s2"}}`)
			fill(t, d, "disk0", 5, 512<<10, 256<<10)
			if op == "commit" {
				okReply(t, c, `{"execute":"block-commit","arguments":{"job-id":"j","device":"disk0","top-node":"s1","base-node":"disk0"}}`)
			} else {
				okReply(t, c, `{"execute":"block-stream","arguments":{"job-id":"j","device":"s2","base-node":"disk0"}}`)
			}
			ev := c.waitEvent("BLOCK_JOB_COMPLETED", "j")
			if e, failed := ev["data"].(map[string]any)["error"]; failed {
				t.Fatalf("%s failed: %v", op, e)
			}
			want := append(append(bytes.Repeat([]byte{3}, 256<<10), bytes.Repeat([]byte{4}, 256<<10)...), bytes.Repeat([]byte{5}, 256<<10)...)
			if got := readBack(t, d.nodes["disk0"].dev, 0, 768<<10); !bytes.Equal(got, want) {
				t.Fatalf("data after the %s differs", op)
			}
			out, err := exec.Command("qemu-img", "info", "-U", "--output=json", s2).CombinedOutput()
			if err != nil {
				t.Fatalf("qemu-img info %s: %v\n%s", s2, err, out)
			}
			var info map[string]any
			if err := json.Unmarshal(out, &info); err != nil {
				t.Fatal(err)
			}
			if got := info["backing-filename"]; got != basePath {
				t.Fatalf("after the %s, s2's header names backing file %v, want the base image %s", op, got, basePath)
			}
			out, err = exec.Command("qemu-io", "-U", "-r", "-c", "read -P 4 256k 256k", s2).CombinedOutput()
			if err != nil || strings.Contains(string(out), "Pattern verification failed") {
				t.Fatalf("qemu-io through the rewritten chain: %v\n%s", err, out)
			}
		})
	}
}

// slowMirror starts mirror m0 from a 16 MiB source full of data to tgt
// at 1 byte/s: the first iteration copies 8 requests of 1 MiB and the
// speed limit then holds the job in running, never ready.
func slowMirror(t *testing.T, d *Daemon, dir string, c *rawClient) {
	t.Helper()
	const size = 16 << 20
	for _, n := range []string{"src", "tgt"} {
		p := filepath.Join(dir, n+".qcow2")
		if err := d.h.Create(p, host.CreateOptions{Format: "qcow2", Size: size}); err != nil {
			t.Fatal(err)
		}
		if err := d.blockdevAdd(&AddOptions{Driver: "qcow2", NodeName: n, File: &FileRef{Driver: "file", Filename: p}}); err != nil {
			t.Fatal(err)
		}
	}
	fill(t, d, "src", 0x11, 0, size)
	okReply(t, c, `{"execute":"blockdev-mirror","arguments":{"job-id":"m0","device":"src","target":"tgt","sync":"full","speed":1}}`)
}

// TestBlockdevDelRefusedUnderJob: blockdev-del of a running mirror's
// source or target is refused with QEMU's wording and the job goes on;
// once the job is gone, both nodes can be deleted. Before, blockdev-del
// closed either device under the running job.
func TestBlockdevDelRefusedUnderJob(t *testing.T) {
	d, dir, sock := testServer(t, 1, Options{})
	c := dialRaw(t, sock)
	c.negotiate()
	slowMirror(t, d, dir, c)
	for _, n := range []string{"src", "tgt"} {
		wantError(t, c.do(`{"execute":"blockdev-del","arguments":{"node-name":"`+n+`"}}`), GenericError,
			"Node '"+n+"' is busy: block device is in use by block job: mirror")
	}
	if j := d.jobs.Get("m0"); j == nil || j.Status() != job.Running {
		t.Fatalf("job after the refused deletes: %v", j)
	}
	okReply(t, c, `{"execute":"job-cancel","arguments":{"id":"m0"}}`)
	for {
		ev := c.waitEvent("JOB_STATUS_CHANGE", "m0")
		if ev["data"].(map[string]any)["status"] == "null" {
			break
		}
	}
	okReply(t, c, `{"execute":"blockdev-del","arguments":{"node-name":"src"}}`)
	okReply(t, c, `{"execute":"blockdev-del","arguments":{"node-name":"tgt"}}`)
}

// TestManualFinalizeDismissOverQMP: a mirror with auto-finalize and
// auto-dismiss false, as QEMU reports it: query-block-jobs shows both
// flags as given, BLOCK_JOB_PENDING follows the change to pending, and
// the concluded job stays in query-block-jobs until job-dismiss. Before,
// the flags were always true, BLOCK_JOB_PENDING was never sent and a
// concluded job vanished from query-block-jobs.
func TestManualFinalizeDismissOverQMP(t *testing.T) {
	d, dir, sock := testServer(t, 1, Options{})
	addQcow2(t, d, dir, "src")
	addQcow2(t, d, dir, "tgt")
	fill(t, d, "src", 0x33, 0, 1<<20)
	c := dialRaw(t, sock)
	c.negotiate()
	okReply(t, c, `{"execute":"blockdev-mirror","arguments":{"job-id":"m0","device":"src","target":"tgt","sync":"full","auto-finalize":false,"auto-dismiss":false}}`)
	c.waitEvent("BLOCK_JOB_READY", "m0")
	blockJob := func() map[string]any {
		t.Helper()
		bj := okReply(t, c, `{"execute":"query-block-jobs"}`).([]any)
		if len(bj) != 1 {
			t.Fatalf("query-block-jobs %v", bj)
		}
		return bj[0].(map[string]any)
	}
	if j := blockJob(); j["auto-finalize"] != false || j["auto-dismiss"] != false {
		t.Fatalf("query-block-jobs %v, want auto-finalize and auto-dismiss false", j)
	}
	okReply(t, c, `{"execute":"job-complete","arguments":{"id":"m0"}}`)
	ev := c.waitEvent("BLOCK_JOB_PENDING", "m0")
	if data := ev["data"].(map[string]any); data["type"] != "mirror" {
		t.Fatalf("BLOCK_JOB_PENDING %v", ev)
	}
	if j := blockJob(); j["status"] != "pending" {
		t.Fatalf("after BLOCK_JOB_PENDING: %v", j)
	}
	okReply(t, c, `{"execute":"job-finalize","arguments":{"id":"m0"}}`)
	c.waitEvent("BLOCK_JOB_COMPLETED", "m0")
	if j := blockJob(); j["status"] != "concluded" {
		t.Fatalf("after BLOCK_JOB_COMPLETED: %v", j)
	}
	okReply(t, c, `{"execute":"job-dismiss","arguments":{"id":"m0"}}`)
	if bj := okReply(t, c, `{"execute":"query-block-jobs"}`).([]any); len(bj) != 0 {
		t.Fatalf("query-block-jobs after job-dismiss: %v", bj)
	}
}

// TestJobVerbErrorsAsQEMU: refused job verbs get qemu-storage-daemon's
// classes and messages (compared by hand with 7.2): job-* on an unknown
// id is a GenericError "Job not found" (block-job-* a DeviceNotActive),
// a verb the state does not allow names job, state and verb, and a
// second pause or a resume of a job that is not paused is refused.
// Before, job-* answered DeviceNotActive, the verb error was Go's
// wording, and the second pause and the stray resume succeeded.
func TestJobVerbErrorsAsQEMU(t *testing.T) {
	d, dir, sock := testServer(t, 1, Options{})
	c := dialRaw(t, sock)
	c.negotiate()
	wantError(t, c.do(`{"execute":"job-pause","arguments":{"id":"nope"}}`), GenericError, "Job not found")
	wantError(t, c.do(`{"execute":"block-job-pause","arguments":{"device":"nope"}}`), DeviceNotActive, "Block job 'nope' not found")
	slowMirror(t, d, dir, c)
	wantError(t, c.do(`{"execute":"job-complete","arguments":{"id":"m0"}}`), GenericError,
		"Job 'm0' in state 'running' cannot accept command verb 'complete'")
	wantError(t, c.do(`{"execute":"job-resume","arguments":{"id":"m0"}}`), GenericError, "Can't resume a job that was not paused")
	okReply(t, c, `{"execute":"job-pause","arguments":{"id":"m0"}}`)
	wantError(t, c.do(`{"execute":"block-job-pause","arguments":{"device":"m0"}}`), GenericError, "Job is already paused")
	okReply(t, c, `{"execute":"job-resume","arguments":{"id":"m0"}}`)
	wantError(t, c.do(`{"execute":"block-job-resume","arguments":{"device":"m0"}}`), GenericError, "Can't resume a job that was not paused")
	okReply(t, c, `{"execute":"job-cancel","arguments":{"id":"m0"}}`)
	c.waitEvent("BLOCK_JOB_CANCELLED", "m0")
}

// TestSecondJobOnBusyNodeRefused: a block job cannot start on a node
// another job uses (QEMU's op blockers): a backup into a running mirror's
// target, a mirror from it, a backup of the mirror's source or a stream
// of it is refused with QEMU's message, and no job is created. Before,
// every one of them started, and two jobs wrote one target at once.
func TestSecondJobOnBusyNodeRefused(t *testing.T) {
	d, dir, sock := testServer(t, 1, Options{})
	c := dialRaw(t, sock)
	c.negotiate()
	slowMirror(t, d, dir, c)
	p := filepath.Join(dir, "other.qcow2")
	if err := d.h.Create(p, host.CreateOptions{Format: "qcow2", Size: 16 << 20}); err != nil {
		t.Fatal(err)
	}
	okReply(t, c, `{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"other","file":{"driver":"file","filename":"`+p+`"}}}`)
	for cmd, node := range map[string]string{
		`{"execute":"blockdev-backup","arguments":{"job-id":"x","device":"other","target":"tgt","sync":"full"}}`: "tgt",
		`{"execute":"blockdev-mirror","arguments":{"job-id":"x","device":"tgt","target":"other","sync":"full"}}`: "tgt",
		`{"execute":"blockdev-backup","arguments":{"job-id":"x","device":"src","target":"other","sync":"full"}}`: "src",
		`{"execute":"block-stream","arguments":{"job-id":"x","device":"src"}}`:                                   "src",
	} {
		wantError(t, c.do(cmd), GenericError, "Node '"+node+"' is busy: block device is in use by block job: mirror")
	}
	if jobs := okReply(t, c, `{"execute":"query-jobs"}`).([]any); len(jobs) != 1 {
		t.Fatalf("query-jobs after the refused jobs: %v", jobs)
	}
}

// TestBlockResizeRefusedUnderJob: block_resize of a running mirror's
// target or source is refused (QEMU refuses both); before, the target was
// resized under the job (the source failed only because the job's filter
// cannot truncate).
func TestBlockResizeRefusedUnderJob(t *testing.T) {
	d, dir, sock := testServer(t, 1, Options{})
	c := dialRaw(t, sock)
	c.negotiate()
	slowMirror(t, d, dir, c)
	for _, n := range []string{"tgt", "src"} {
		wantError(t, c.do(`{"execute":"block_resize","arguments":{"node-name":"`+n+`","size":33554432}}`), GenericError,
			"Node '"+n+"' is busy: block device is in use by block job: mirror")
	}
	if size, err := d.nodes["tgt"].dev.Root().Length(); err != nil || size != 16<<20 {
		t.Fatalf("target length %d, %v; want 16 MiB", size, err)
	}
}

// TestBackupBitmapArgumentsAsQEMU: blockdev-backup's bitmap and
// bitmap-mode are checked as qemu-storage-daemon 7.2 checks them (its
// replies, compared by hand). Before, every one of these ran: a full
// backup naming a bitmap cleared it on success (mode on-success by
// default), incremental ran with any mode, and a mode without a bitmap
// was ignored.
func TestBackupBitmapArgumentsAsQEMU(t *testing.T) {
	d, dir, sock := testServer(t, 1, Options{})
	addQcow2(t, d, dir, "a")
	addQcow2(t, d, dir, "b")
	c := dialRaw(t, sock)
	c.negotiate()
	okReply(t, c, `{"execute":"block-dirty-bitmap-add","arguments":{"node":"a","name":"x"}}`)
	for _, tc := range []struct{ args, want string }{
		{`"sync":"full","bitmap":"x"`, "Bitmap sync mode must be given when providing a bitmap"},
		{`"sync":"bitmap","bitmap":"x"`, "Bitmap sync mode must be given when providing a bitmap"},
		{`"sync":"incremental","bitmap":"x","bitmap-mode":"always"`, "Bitmap sync mode must be 'on-success' when using sync mode 'incremental'"},
		{`"sync":"full","bitmap-mode":"always"`, "Cannot specify bitmap sync mode without a bitmap"},
		{`"sync":"full","bitmap":"x","bitmap-mode":"never"`, "Bitmap sync mode 'never' has no meaningful effect when combined with sync mode 'full'"},
		{`"sync":"incremental"`, "must provide a valid bitmap name for 'incremental' sync mode"},
		{`"sync":"bitmap","bitmap":"nope","bitmap-mode":"always"`, "Bitmap 'nope' could not be found"},
	} {
		wantError(t, c.do(`{"execute":"blockdev-backup","arguments":{"job-id":"j","device":"a","target":"b",`+tc.args+`}}`), GenericError, tc.want)
	}
	if jobs := okReply(t, c, `{"execute":"query-jobs"}`).([]any); len(jobs) != 0 {
		t.Fatalf("query-jobs: %v", jobs)
	}
}

// TestCancelledJobErrorAsQEMU: a cancelled job kept for job-dismiss
// reports QEMU's error text, "Operation canceled", in query-jobs and
// query-block-jobs (it said "job cancelled").
func TestCancelledJobErrorAsQEMU(t *testing.T) {
	d, dir, sock := testServer(t, 1, Options{})
	c := dialRaw(t, sock)
	c.negotiate()
	slowMirror(t, d, dir, c)
	okReply(t, c, `{"execute":"block-job-cancel","arguments":{"device":"m0"}}`)
	c.waitEvent("BLOCK_JOB_CANCELLED", "m0")
	// slowMirror's job dismisses itself; a second one with auto-dismiss
	// false stays concluded.
	okReply(t, c, `{"execute":"blockdev-mirror","arguments":{"job-id":"m1","device":"src","target":"tgt","sync":"full","speed":1,"auto-dismiss":false}}`)
	okReply(t, c, `{"execute":"job-cancel","arguments":{"id":"m1"}}`)
	c.waitEvent("BLOCK_JOB_CANCELLED", "m1")
	for _, q := range []string{"query-jobs", "query-block-jobs"} {
		var m1 map[string]any
		for _, j := range okReply(t, c, `{"execute":"`+q+`"}`).([]any) {
			if jm := j.(map[string]any); jm["id"] == "m1" || jm["device"] == "m1" {
				m1 = jm
			}
		}
		if m1 == nil || m1["error"] != "Operation canceled" {
			t.Fatalf("%s: m1 is %v, want error \"Operation canceled\"", q, m1)
		}
	}
}

// TestCheckpointChainOfReaddedNode: after blockdev-del and blockdev-add
// of a node of the same name, x-ringblk-checkpoint starts a new chain on
// the new node. Before, it went on with the deleted node's chain: it
// answered "c@3" and froze the closed node's bitmap; the new node had no
// bitmap at all, so its writes were never tracked and a backup of the
// next checkpoint could not find it.
func TestCheckpointChainOfReaddedNode(t *testing.T) {
	d, dir, sock := testServer(t, 1, Options{})
	p := addQcow2(t, d, dir, "a")
	c := dialRaw(t, sock)
	c.negotiate()
	okReply(t, c, `{"execute":"x-ringblk-checkpoint","arguments":{"node":"a","chain":"c"}}`)
	okReply(t, c, `{"execute":"x-ringblk-checkpoint","arguments":{"node":"a","chain":"c"}}`)
	okReply(t, c, `{"execute":"blockdev-del","arguments":{"node-name":"a"}}`)
	okReply(t, c, `{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"a","file":{"driver":"file","filename":"`+p+`"}}}`)
	r := okReply(t, c, `{"execute":"x-ringblk-checkpoint","arguments":{"node":"a","chain":"c"}}`).(map[string]any)
	root := d.nodes["a"].dev.Root()
	if r["seq"] != float64(1) || root.Bitmap("c") == nil {
		t.Fatalf("checkpoint %v on the re-added node: want the first of a new chain, with its active bitmap c on the node", r)
	}
	r = okReply(t, c, `{"execute":"x-ringblk-checkpoint","arguments":{"node":"a","chain":"c"}}`).(map[string]any)
	if name, _ := r["bitmap"].(string); root.Bitmap(name) == nil {
		t.Fatalf("checkpoint %v: bitmap %q is not on the re-added node", r, name)
	}
}

// TestReopeningCommandsRefuseJobNodes: the commands that close a node's
// device to reopen it in another shape refuse a node a job uses:
// blockdev-add of a format node over a file node by name, blockdev-create
// on a file node (its job fails), blockdev-snapshot with a job's target
// as the overlay. Before, each closed the device under the running job.
func TestReopeningCommandsRefuseJobNodes(t *testing.T) {
	d, dir, sock := testServer(t, 1, Options{})
	c := dialRaw(t, sock)
	c.negotiate()
	slowMirror(t, d, dir, c) // qcow2 src -> tgt, job m0
	const size = 16 << 20
	for _, n := range []string{"fs", "ft", "base"} {
		p := filepath.Join(dir, n+".img")
		if err := d.h.Create(p, host.CreateOptions{Format: "raw", Size: size}); err != nil {
			t.Fatal(err)
		}
		okReply(t, c, `{"execute":"blockdev-add","arguments":{"driver":"file","node-name":"`+n+`","filename":"`+p+`"}}`)
	}
	fill(t, d, "fs", 0x66, 0, size)
	okReply(t, c, `{"execute":"blockdev-mirror","arguments":{"job-id":"m1","device":"fs","target":"ft","sync":"full","speed":1}}`)
	wantError(t, c.do(`{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"q","file":"ft"}}`), GenericError,
		"Node 'ft' is busy: block device is in use by block job: mirror")
	okReply(t, c, `{"execute":"blockdev-create","arguments":{"job-id":"c0","options":{"driver":"qcow2","file":"ft","size":1048576}}}`)
	c.waitEvent("JOB_STATUS_CHANGE", "c0")
	for {
		if ev := c.waitEvent("JOB_STATUS_CHANGE", "c0"); ev["data"].(map[string]any)["status"] == "concluded" {
			break
		}
	}
	var cerr any
	for _, j := range okReply(t, c, `{"execute":"query-jobs"}`).([]any) {
		if jm := j.(map[string]any); jm["id"] == "c0" {
			cerr = jm["error"]
		}
	}
	if s, _ := cerr.(string); !strings.Contains(s, "Node 'ft' is busy: block device is in use by block job: mirror") {
		t.Fatalf("blockdev-create on the mirror's target: job error %v", cerr)
	}
	wantError(t, c.do(`{"execute":"blockdev-snapshot","arguments":{"node":"base","overlay":"tgt"}}`), GenericError,
		"Node 'tgt' is busy: block device is in use by block job: mirror")
	for _, id := range []string{"m0", "m1"} {
		if j := d.jobs.Get(id); j == nil || j.Status() != job.Running {
			t.Fatalf("job %s after the refused commands: %v", id, j)
		}
	}
}

// TestQueriesDuringJobAsQEMU: while a mirror runs, query-named-block-nodes
// names its filter's driver as QEMU does ("mirror_top", with the source's
// file) and query-block describes the node under that implicit filter.
// Before, the filter's drv was the Go type "*job.filter" with no file,
// and query-block showed the filter as the device's inserted node.
func TestQueriesDuringJobAsQEMU(t *testing.T) {
	d, dir, sock := testServer(t, 1, Options{})
	c := dialRaw(t, sock)
	c.negotiate()
	slowMirror(t, d, dir, c)
	srcFile := filepath.Join(dir, "src.qcow2")
	var filter map[string]any
	for _, n := range okReply(t, c, `{"execute":"query-named-block-nodes"}`).([]any) {
		if nm := n.(map[string]any); nm["node-name"] == "#mirror-top-m0" {
			filter = nm
		}
	}
	if filter == nil || filter["drv"] != "mirror_top" || filter["file"] != srcFile {
		t.Fatalf("the mirror's filter in query-named-block-nodes: %v", filter)
	}
	for _, b := range okReply(t, c, `{"execute":"query-block"}`).([]any) {
		bm := b.(map[string]any)
		if bm["device"] != "src" {
			continue
		}
		if in := bm["inserted"].(map[string]any); in["node-name"] != "src" || in["drv"] != "qcow2" || in["file"] != srcFile {
			t.Fatalf("query-block src during the mirror: inserted %v", in)
		}
	}
}

// TestBlockJobFinalizeDismiss: block-job-finalize and block-job-dismiss
// (QEMU's block-job names of job-finalize and job-dismiss, taking the
// job's id) move a mirror kept pending to concluded and then remove it;
// an unknown id is a DeviceNotActive "Block job ... not found". Before,
// both answered CommandNotFound.
func TestBlockJobFinalizeDismiss(t *testing.T) {
	d, dir, sock := testServer(t, 1, Options{})
	addQcow2(t, d, dir, "src")
	addQcow2(t, d, dir, "tgt")
	c := dialRaw(t, sock)
	c.negotiate()
	wantError(t, c.do(`{"execute":"block-job-finalize","arguments":{"id":"nope"}}`), DeviceNotActive, "Block job 'nope' not found")
	wantError(t, c.do(`{"execute":"block-job-dismiss","arguments":{"id":"nope"}}`), DeviceNotActive, "Block job 'nope' not found")
	okReply(t, c, `{"execute":"blockdev-mirror","arguments":{"job-id":"m0","device":"src","target":"tgt","sync":"full","auto-finalize":false,"auto-dismiss":false}}`)
	c.waitEvent("BLOCK_JOB_READY", "m0")
	wantError(t, c.do(`{"execute":"block-job-dismiss","arguments":{"id":"m0"}}`), GenericError,
		"Job 'm0' in state 'ready' cannot accept command verb 'dismiss'")
	okReply(t, c, `{"execute":"block-job-complete","arguments":{"device":"m0"}}`)
	c.waitEvent("BLOCK_JOB_PENDING", "m0")
	okReply(t, c, `{"execute":"block-job-finalize","arguments":{"id":"m0"}}`)
	c.waitEvent("BLOCK_JOB_COMPLETED", "m0")
	okReply(t, c, `{"execute":"block-job-dismiss","arguments":{"id":"m0"}}`)
	if bj := okReply(t, c, `{"execute":"query-block-jobs"}`).([]any); len(bj) != 0 {
		t.Fatalf("query-block-jobs after block-job-dismiss: %v", bj)
	}
}

// TestBitmapCommandErrorsAsQEMU: the bitmap commands' refusals in
// qemu-storage-daemon 7.2's words (compared side by side): an unknown node
// is "Node ... not found" except for block-dirty-bitmap-add, which words it
// as its node lookup does; a granularity past 32 bits is the visitor's
// uint32_t error. Before, all said "Cannot find device= nor
// node-name=...", and a 2^32 granularity got the power-of-two message.
func TestBitmapCommandErrorsAsQEMU(t *testing.T) {
	d, dir, sock := testServer(t, 1, Options{})
	addQcow2(t, d, dir, "a")
	c := dialRaw(t, sock)
	c.negotiate()
	wantError(t, c.do(`{"execute":"block-dirty-bitmap-add","arguments":{"node":"nope","name":"x"}}`), GenericError,
		"Cannot find device='nope' nor node-name='nope'")
	for _, cmd := range []string{"remove", "clear", "enable", "disable"} {
		wantError(t, c.do(`{"execute":"block-dirty-bitmap-`+cmd+`","arguments":{"node":"nope","name":"x"}}`), GenericError, "Node 'nope' not found")
	}
	wantError(t, c.do(`{"execute":"block-dirty-bitmap-merge","arguments":{"node":"nope","target":"x","bitmaps":["y"]}}`), GenericError, "Node 'nope' not found")
	wantError(t, c.do(`{"execute":"x-debug-block-dirty-bitmap-sha256","arguments":{"node":"nope","name":"x"}}`), GenericError, "Node 'nope' not found")
	for _, g := range []string{"4294967296", "-1"} {
		wantError(t, c.do(`{"execute":"block-dirty-bitmap-add","arguments":{"node":"a","name":"g","granularity":`+g+`}}`), GenericError,
			"Parameter 'granularity' expects uint32_t")
	}
	okReply(t, c, `{"execute":"block-dirty-bitmap-add","arguments":{"node":"a","name":"old"}}`)
	okReply(t, c, `{"execute":"block-dirty-bitmap-add","arguments":{"node":"a","name":"new"}}`)
	// An empty bitmap of 4 MiB (imgSize) at 64 KiB: 64 bits, one zero word.
	want := sha256.Sum256(make([]byte, imgSize/(64<<10)/8))
	if r := okReply(t, c, `{"execute":"x-debug-block-dirty-bitmap-sha256","arguments":{"node":"a","name":"new"}}`).(map[string]any); r["sha256"] != hex.EncodeToString(want[:]) {
		t.Fatalf("sha256 %v, want %x", r, want)
	}
	var names []string
	for _, n := range okReply(t, c, `{"execute":"query-named-block-nodes"}`).([]any) {
		if bms, ok := n.(map[string]any)["dirty-bitmaps"].([]any); ok {
			for _, b := range bms {
				names = append(names, b.(map[string]any)["name"].(string))
			}
		}
	}
	if strings.Join(names, " ") != "new old" {
		t.Fatalf("dirty-bitmaps %v, want the newest first as QEMU lists them", names)
	}
}

// TestMirrorBackupIntoReadOnlyNodeAsQEMU: QEMU reopens nothing for a
// mirror or a backup (only commit and stream make their node writable):
// blockdev-mirror and blockdev-backup into a node added read-only are
// refused with qemu-storage-daemon 7.2's words, and the node stays
// read-only. Before, the job package's "job: mirror target … is
// read-only" reached the client.
func TestMirrorBackupIntoReadOnlyNodeAsQEMU(t *testing.T) {
	d, dir, sock := testServer(t, 1, Options{})
	addQcow2(t, d, dir, "src")
	p := filepath.Join(dir, "ro.qcow2")
	if err := d.h.Create(p, host.CreateOptions{Format: "qcow2", Size: 16 << 20}); err != nil {
		t.Fatal(err)
	}
	c := dialRaw(t, sock)
	c.negotiate()
	okReply(t, c, `{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"ro","read-only":true,"file":{"driver":"file","filename":"`+p+`"}}}`)
	wantError(t, c.do(`{"execute":"blockdev-mirror","arguments":{"job-id":"m","device":"src","target":"ro","sync":"full"}}`), GenericError,
		"Block node is read-only")
	wantError(t, c.do(`{"execute":"blockdev-backup","arguments":{"job-id":"b","device":"src","target":"ro","sync":"full"}}`), GenericError,
		"Could not create node: Block node is read-only")
	if n := d.h.Graph().NodeByName("ro"); n == nil || !n.ReadOnly() {
		t.Fatal("the refused jobs left node ro writable")
	}
}
