package qmp

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/host"
	"github.com/ringblk/ringblk/plugin/contract"
	"github.com/ringblk/ringblk/txn"
)

const imgSize = 4 << 20

// testDaemon starts a host with n I/O Contexts and a daemon on it; images
// go to a fresh directory under /var/tmp/qmp.
func testDaemon(t *testing.T, n int) (*Daemon, string) {
	t.Helper()
	if err := os.MkdirAll("/var/tmp/qmp", 0o755); err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("/var/tmp/qmp", "t")
	if err != nil {
		t.Fatal(err)
	}
	h, err := host.New(host.Options{Contexts: n})
	if err != nil {
		t.Fatal(err)
	}
	d := NewDaemon(h, NewRegistry())
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Errorf("daemon close: %v", err)
		}
		if err := h.Close(); err != nil {
			t.Errorf("host close: %v", err)
		}
		os.RemoveAll(dir)
	})
	return d, dir
}

// addQcow2 creates a qcow2 image and adds it as node name.
func addQcow2(t *testing.T, d *Daemon, dir, name string) string {
	t.Helper()
	p := filepath.Join(dir, name+".qcow2")
	if err := d.h.Create(p, host.CreateOptions{Format: "qcow2", Size: imgSize}); err != nil {
		t.Fatal(err)
	}
	if err := d.blockdevAdd(&AddOptions{Driver: "qcow2", NodeName: name, File: &FileRef{Driver: "file", Filename: p}}); err != nil {
		t.Fatal(err)
	}
	return p
}

// withTimeout runs fn and fails the test if it has not returned in time
// (a hang is the bug seed 002 describes).
func withTimeout(t *testing.T, what string, fn func() error) error {
	t.Helper()
	ch := make(chan error, 1)
	go func() { ch <- fn() }()
	select {
	case err := <-ch:
		return err
	case <-time.After(60 * time.Second):
		t.Fatalf("%s: hung for 60s", what)
	}
	return nil
}

func actionJSON(typ string, data any) TransactionAction {
	b, err := json.Marshal(data)
	if err != nil {
		panic(err)
	}
	return TransactionAction{Type: typ, Data: b}
}

// hashDir maps each file of dir to its SHA-256.
func hashDir(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		s := sha256.Sum256(b)
		out[e.Name()] = hex.EncodeToString(s[:])
	}
	return out
}

// graphShape describes the graph: every node with its children and the
// daemon's node table.
func graphShape(d *Daemon) string {
	var lines []string
	for _, n := range d.h.Graph().Nodes() {
		var kids []string
		for _, c := range n.Children() {
			if c.Node() != nil {
				kids = append(kids, c.Node().Name())
			}
		}
		lines = append(lines, fmt.Sprintf("%s ro=%v q=%d -> %s", n.Name(), n.ReadOnly(), n.Quiesce(), strings.Join(kids, ",")))
	}
	for _, name := range sortedKeys(d.nodes) {
		b := d.nodes[name]
		lines = append(lines, fmt.Sprintf("entry %s %s usedBy=%s root=%s", name, b.filename, b.usedBy, b.dev.Root().Name()))
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// writer keeps writing a pattern to dev until stop, from its own
// goroutine; the device's requests run on the I/O Contexts.
func writer(t *testing.T, dev *host.Device, stop <-chan struct{}, wg *sync.WaitGroup, n *atomic.Int64) {
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := bytes.Repeat([]byte{0xa5}, 4096)
		for i := int64(0); ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := dev.WriteAt(buf, (i%64)*4096); err != nil {
				t.Errorf("write during the transaction: %v", err)
				return
			}
			n.Add(1)
		}
	}()
}

// TestQ2TransactionTwoDrivesOneIOThread is iotest 202's scenario (drain.md
// Q2, seed 002): two qcow2 drives on one IOThread, one transaction taking
// an external snapshot of both, while both take writes.
func TestQ2TransactionTwoDrivesOneIOThread(t *testing.T) {
	d, dir := testDaemon(t, 2)
	addQcow2(t, d, dir, "disk0")
	addQcow2(t, d, dir, "disk1")
	if err := d.addIOThread("iothread0"); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"disk0", "disk1"} {
		if err := d.setIOThread(&setIOThreadArgs{NodeName: n, IOThread: NullString{S: "iothread0"}}); err != nil {
			t.Fatal(err)
		}
	}
	ctx := d.h.Context(d.iothreads["iothread0"])
	if d.nodes["disk0"].dev.Root().Context() != ctx || d.nodes["disk1"].dev.Root().Context() != ctx {
		t.Fatal("drives are not on iothread0")
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var writes atomic.Int64
	writer(t, d.nodes["disk0"].dev, stop, &wg, &writes)
	writer(t, d.nodes["disk1"].dev, stop, &wg, &writes)
	time.Sleep(20 * time.Millisecond)
	err := withTimeout(t, "transaction", func() error {
		return d.Transaction(&TransactionArgs{Actions: []TransactionAction{
			actionJSON("blockdev-snapshot-sync", SnapshotSyncArgs{NodeName: "disk0", SnapshotFile: filepath.Join(dir, "snap0.qcow2"), SnapshotNodeName: "snap0"}),
			actionJSON("blockdev-snapshot-sync", SnapshotSyncArgs{NodeName: "disk1", SnapshotFile: filepath.Join(dir, "snap1.qcow2"), SnapshotNodeName: "snap1"}),
		}})
	})
	before := writes.Load()
	time.Sleep(20 * time.Millisecond)
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if writes.Load() == before {
		t.Error("no write completed after the transaction")
	}
	for i, n := range []string{"disk0", "disk1"} {
		snap := fmt.Sprintf("snap%d", i)
		root := d.nodes[n].dev.Root()
		if root.Name() != snap || root.Context() != ctx {
			t.Errorf("%s: top node %s on %v, want %s on iothread0", n, root.Name(), root.Context().Name(), snap)
		}
		if d.nodes[n].usedBy != snap || d.nodes[snap] == nil {
			t.Errorf("%s: node table %+v", n, d.nodes[n])
		}
		if root.Quiesce() != 0 || root.Child(block.RoleBacking).Node().Quiesce() != 0 {
			t.Errorf("%s: drained sections left open", n)
		}
	}
}

// TestTransactionDrivesOnDifferentIOThreads: same, one drive per IOThread.
func TestTransactionDrivesOnDifferentIOThreads(t *testing.T) {
	d, dir := testDaemon(t, 2)
	for i, n := range []string{"disk0", "disk1"} {
		addQcow2(t, d, dir, n)
		id := fmt.Sprintf("io%d", i)
		if err := d.addIOThread(id); err != nil {
			t.Fatal(err)
		}
		if err := d.setIOThread(&setIOThreadArgs{NodeName: n, IOThread: NullString{S: id}}); err != nil {
			t.Fatal(err)
		}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var writes atomic.Int64
	writer(t, d.nodes["disk0"].dev, stop, &wg, &writes)
	writer(t, d.nodes["disk1"].dev, stop, &wg, &writes)
	err := withTimeout(t, "transaction", func() error {
		return d.Transaction(&TransactionArgs{Actions: []TransactionAction{
			actionJSON("blockdev-snapshot-sync", SnapshotSyncArgs{Device: "disk0", SnapshotFile: filepath.Join(dir, "s0.qcow2")}),
			actionJSON("blockdev-snapshot-internal-sync", InternalSnapshotArgs{Device: "disk1", Name: "one"}),
			actionJSON("blockdev-snapshot-sync", SnapshotSyncArgs{Device: "disk1", SnapshotFile: filepath.Join(dir, "s1.qcow2")}),
		}})
	})
	close(stop)
	wg.Wait()
	// disk1 appears in two actions: refused as a whole, nothing changed.
	if err == nil || !strings.Contains(err.Error(), "one action per node") {
		t.Fatalf("error %v, want the per-node refusal", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "s0.qcow2")); !os.IsNotExist(err) {
		t.Errorf("s0.qcow2 left behind by the aborted transaction: %v", err)
	}
	stop = make(chan struct{})
	writer(t, d.nodes["disk0"].dev, stop, &wg, &writes)
	writer(t, d.nodes["disk1"].dev, stop, &wg, &writes)
	err = withTimeout(t, "transaction", func() error {
		return d.Transaction(&TransactionArgs{Actions: []TransactionAction{
			actionJSON("blockdev-snapshot-sync", SnapshotSyncArgs{Device: "disk0", SnapshotFile: filepath.Join(dir, "s0.qcow2")}),
			actionJSON("blockdev-snapshot-internal-sync", InternalSnapshotArgs{Device: "disk1", Name: "one"}),
		}})
	})
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	snaps, err := d.nodes["disk1"].dev.Snapshots()
	if err != nil || len(snaps) != 1 || snaps[0].Name != "one" {
		t.Fatalf("disk1 snapshots %v, %v", snaps, err)
	}
}

// probe is an action that records the quiesce count of a node at each of
// its steps.
type probe struct {
	d    *Daemon
	node string
	seen []int
}

func (p *probe) q() int         { return p.d.nodes[p.node].dev.Root().Quiesce() }
func (p *probe) Prepare() error { p.seen = append(p.seen, p.q()); return nil }
func (p *probe) Commit() error  { p.seen = append(p.seen, p.q()); return nil }
func (p *probe) Abort()         { p.seen = append(p.seen, p.q()) }
func (p *probe) Clean()         { p.seen = append(p.seen, p.q()) }

// TestActionDrainedFromPrepareToClean (seed 001): while a later action
// runs its prepare and commit, and while the transaction cleans up in
// reverse order, the snapshot action's node (after commit: its overlay,
// which the front ends now use) is still drained.
func TestActionDrainedFromPrepareToClean(t *testing.T) {
	d, dir := testDaemon(t, 1)
	addQcow2(t, d, dir, "disk0")
	st := &txnState{claimed: map[string]int{}}
	snap, err := d.makeAction(st, 0, actionJSON("blockdev-snapshot-sync", SnapshotSyncArgs{Device: "disk0", SnapshotFile: filepath.Join(dir, "o.qcow2")}))
	if err != nil {
		t.Fatal(err)
	}
	p := &probe{d: d, node: "disk0"}
	// Clean runs in reverse order: the probe cleans first, while the
	// snapshot action still holds its sections.
	if err := txn.Run([]txn.Action{snap, p}); err != nil {
		t.Fatal(err)
	}
	for i, q := range p.seen {
		if q == 0 {
			t.Fatalf("step %d of the probe saw the node undrained (quiesce counts %v)", i, p.seen)
		}
	}
	if q := d.nodes["disk0"].dev.Root().Quiesce(); q != 0 {
		t.Fatalf("quiesce %d after the transaction, want 0", q)
	}
}

// TestEveryActionAbortLeavesImagesAndGraph: each action type, prepared
// and then aborted by a failing action after it, leaves every image file
// byte for byte as it was, creates no file, and leaves the graph as it
// was; the devices still take writes.
func TestEveryActionAbortLeavesImagesAndGraph(t *testing.T) {
	for _, typ := range []string{"blockdev-snapshot-sync", "blockdev-snapshot", "blockdev-snapshot-internal-sync"} {
		t.Run(typ, func(t *testing.T) {
			d, dir := testDaemon(t, 1)
			p0 := addQcow2(t, d, dir, "disk0")
			if _, err := d.nodes["disk0"].dev.WriteAt(bytes.Repeat([]byte{1}, 65536), 0); err != nil {
				t.Fatal(err)
			}
			if err := d.nodes["disk0"].dev.Flush(); err != nil {
				t.Fatal(err)
			}
			var act TransactionAction
			switch typ {
			case "blockdev-snapshot-sync":
				act = actionJSON(typ, SnapshotSyncArgs{NodeName: "disk0", SnapshotFile: filepath.Join(dir, "new.qcow2"), SnapshotNodeName: "new"})
			case "blockdev-snapshot":
				ov := filepath.Join(dir, "ov.qcow2")
				if err := d.h.Create(ov, host.CreateOptions{Format: "qcow2", Size: imgSize, BackingFile: p0, BackingFormat: "qcow2"}); err != nil {
					t.Fatal(err)
				}
				if err := d.blockdevAdd(&AddOptions{Driver: "qcow2", NodeName: "ov", File: &FileRef{Driver: "file", Filename: ov}, Backing: &BackingRef{Null: true}}); err != nil {
					t.Fatal(err)
				}
				act = actionJSON(typ, SnapshotArgs{Node: "disk0", Overlay: "ov"})
			case "blockdev-snapshot-internal-sync":
				act = actionJSON(typ, InternalSnapshotArgs{Device: "disk0", Name: "sn"})
			}
			files, shape := hashDir(t, dir), graphShape(d)
			err := d.Transaction(&TransactionArgs{Actions: []TransactionAction{act, {Type: "abort"}}})
			if err == nil || !strings.Contains(err.Error(), "Transaction aborted using Abort action") {
				t.Fatalf("error %v, want the abort action's", err)
			}
			if got := hashDir(t, dir); fmt.Sprint(got) != fmt.Sprint(files) {
				t.Errorf("files changed:\nbefore %v\nafter  %v", files, got)
			}
			if got := graphShape(d); got != shape {
				t.Errorf("graph changed:\nbefore\n%s\nafter\n%s", shape, got)
			}
			if _, err := d.nodes["disk0"].dev.WriteAt([]byte{2}, 0); err != nil {
				t.Errorf("disk0 refuses writes after the abort: %v", err)
			}
			// The same action alone applies.
			if err := d.Transaction(&TransactionArgs{Actions: []TransactionAction{act}}); err != nil {
				t.Fatalf("the action alone: %v", err)
			}
			if typ != "blockdev-snapshot-internal-sync" {
				if d.nodes["disk0"].usedBy == "" {
					t.Error("the snapshot did not swap an overlay in")
				}
			}
		})
	}
}

// TestDeviceNameFollowsSnapshots: after an external snapshot, the device
// name addresses the overlay (a second snapshot by device name stacks on
// it), while the old node's own name is busy as a backing node.
func TestDeviceNameFollowsSnapshots(t *testing.T) {
	d, dir := testDaemon(t, 1)
	addQcow2(t, d, dir, "disk0")
	for i := 0; i < 2; i++ {
		err := d.Transaction(&TransactionArgs{Actions: []TransactionAction{
			actionJSON("blockdev-snapshot-sync", SnapshotSyncArgs{Device: "disk0", SnapshotFile: filepath.Join(dir, fmt.Sprintf("s%d.qcow2", i)), SnapshotNodeName: fmt.Sprintf("s%d", i)}),
		}})
		if err != nil {
			t.Fatal(err)
		}
	}
	root := d.nodes["disk0"].dev.Root()
	if root.Name() != "s1" || depth(root) != 2 {
		t.Fatalf("top %s with %d backing levels, want s1 over s0 over disk0", root.Name(), depth(root))
	}
	err := d.Transaction(&TransactionArgs{Actions: []TransactionAction{
		actionJSON("blockdev-snapshot-sync", SnapshotSyncArgs{NodeName: "s0", SnapshotFile: filepath.Join(dir, "x.qcow2")}),
	}})
	if err == nil || !strings.Contains(err.Error(), "Node 's0' is busy: node is used as backing hd of 's1'") {
		t.Fatalf("snapshot of a backing node: %v", err)
	}
}

// TestBlockIOErrorEvent: a request held by a stop policy is reported as
// QEMU's BLOCK_IO_ERROR event.
func TestBlockIOErrorEvent(t *testing.T) {
	d, _, sock := testServer(t, 1, Options{})
	c := dialRaw(t, sock)
	c.negotiate()
	d.callbacks("disk9").Stopped(contract.OpWrite, fmt.Errorf("write: %w", unix.ENOSPC))
	m := c.recvAny()
	data, _ := m["data"].(map[string]any)
	if m["event"] != "BLOCK_IO_ERROR" || data["node-name"] != "disk9" || data["operation"] != "write" || data["action"] != "stop" || data["nospace"] != true {
		t.Fatalf("event %v", m)
	}
}

// TestGroupedTransaction: completion-mode grouped, as qemu-storage-daemon
// 7.2 answers it (replies compared side by side): actions other than the
// backups and abort are refused in their prepare, with QEMU's words, an
// unknown mode is the enum error, and two incremental backups of a group
// both complete and both clear their bitmaps. (That a failing member
// cancels the others and every bitmap keeps its bits is
// job.TestGroupedBackupsFailTogether.) Before, every grouped transaction
// was refused.
func TestGroupedTransaction(t *testing.T) {
	d, dir, sock := testServer(t, 1, Options{})
	for _, n := range []string{"a", "b", "ta", "tb"} {
		addQcow2(t, d, dir, n)
	}
	c := dialRaw(t, sock)
	c.negotiate()
	wantError(t, c.do(`{"execute":"transaction","arguments":{"actions":[{"type":"block-dirty-bitmap-add","data":{"node":"a","name":"x"}}],"properties":{"completion-mode":"foo"}}}`),
		GenericError, "Parameter 'completion-mode' does not accept value 'foo'")
	wantError(t, c.do(`{"execute":"transaction","arguments":{"actions":[
		{"type":"blockdev-backup","data":{"job-id":"j","device":"a","target":"ta","sync":"full"}},
		{"type":"block-dirty-bitmap-add","data":{"node":"a","name":"x"}}],"properties":{"completion-mode":"grouped"}}}`),
		GenericError, "Action 'block-dirty-bitmap-add' does not support Transaction property completion-mode = grouped")
	if jobs := okReply(t, c, `{"execute":"query-jobs"}`).([]any); len(jobs) != 0 {
		t.Fatalf("a refused transaction left jobs: %v", jobs)
	}
	for _, n := range []string{"a", "b"} {
		okReply(t, c, `{"execute":"block-dirty-bitmap-add","arguments":{"node":"`+n+`","name":"inc"}}`)
		fill(t, d, n, 0x5a, 0, 256<<10)
	}
	okReply(t, c, `{"execute":"transaction","arguments":{"actions":[
		{"type":"blockdev-backup","data":{"job-id":"ja","device":"a","target":"ta","sync":"incremental","bitmap":"inc"}},
		{"type":"blockdev-backup","data":{"job-id":"jb","device":"b","target":"tb","sync":"incremental","bitmap":"inc"}}],
		"properties":{"completion-mode":"grouped"}}}`)
	for _, id := range []string{"ja", "jb"} {
		if ev := c.waitEvent("BLOCK_JOB_COMPLETED", id); ev["data"].(map[string]any)["error"] != nil {
			t.Fatalf("%s: %v", id, ev)
		}
	}
	for _, n := range okReply(t, c, `{"execute":"query-named-block-nodes"}`).([]any) {
		if bms, ok := n.(map[string]any)["dirty-bitmaps"].([]any); ok {
			if cnt := bms[0].(map[string]any)["count"]; cnt != 0.0 {
				t.Fatalf("%v: bitmap count %v after the group completed", n.(map[string]any)["node-name"], cnt)
			}
		}
	}
	if !bytes.Equal(readBack(t, d.nodes["ta"].dev, 0, 256<<10), bytes.Repeat([]byte{0x5a}, 256<<10)) {
		t.Fatal("target ta does not hold the backup")
	}
}
