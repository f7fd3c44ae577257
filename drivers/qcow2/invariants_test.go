package qcow2

import (
	"encoding/binary"
	"os"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
	"github.com/ringblk/ringblk/drivers/raw"
)

// invImage returns an image with two data clusters written and flushed at
// guest 0 and 4096 (4 KiB clusters; L2 table in tier 1), its driver, and
// the host offset of guest cluster 0.
func invImage(t *testing.T) (*testEnv, *Driver, int64) {
	t.Helper()
	e := newTestEnv(t)
	path, _ := l2SpreadImage(t, e, 1)
	n, d := l2OpenWith(t, e, path, DriverOptions{})
	l2MustWrite(t, n, l2Pattern(1, 8192), 0)
	if err := n.Flush(); err != nil {
		t.Fatal(err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	tab := d.l2.lookup(int64(d.mu.l1[0] & format.OffsetMask))
	if tab == nil {
		t.Fatal("L2 table not cached")
	}
	host := int64(binary.BigEndian.Uint64(tab) & format.OffsetMask)
	if host == 0 {
		t.Fatal("guest cluster 0 not allocated")
	}
	return e, d, host
}

// setRefcountLocked overwrites the in-memory refcount of cluster off (the
// test's way to corrupt the refcounts). REQUIRES: mu held.
func setRefcountLocked(t *testing.T, d *Driver, off int64, rc uint64) {
	t.Helper()
	ti, bi := d.mu.geo.RefcountIndex(off)
	rb := d.mu.rb[int64(d.mu.rt[ti])]
	if rb == nil {
		t.Fatalf("refcount block of %#x not loaded", off)
	}
	if err := format.RefcountSet(rb.buf, d.mu.geo.RefcountOrder, bi, rc); err != nil {
		t.Fatal(err)
	}
}

// TestInvariantRefcountBeforePointer: an L2 entry may be stored only when
// the cluster it names has refcount >= 1; with the refcount forced to 0
// the check fires.
func TestInvariantRefcountBeforePointer(t *testing.T) {
	_, d, host := invImage(t)
	e := uint64(host) | format.EntryCopied
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := metaOf(d).checkRefcountedLocked(e); err != nil {
		t.Fatalf("check fired on a referenced cluster: %v", err)
	}
	setRefcountLocked(t, d, host, 0)
	err := metaOf(d).checkRefcountedLocked(e)
	setRefcountLocked(t, d, host, 1)
	if err == nil || !strings.Contains(err.Error(), "refcount is 0") {
		t.Fatalf("entry naming a refcount-0 cluster: %v, want the R1 failure", err)
	}
}

// TestInvariantFreedClusterUnreferenced: a cluster whose refcount drops
// to 0 must not be named by an active L2 entry or L1 entry; freeing one
// that still is fires the check.
func TestInvariantFreedClusterUnreferenced(t *testing.T) {
	_, d, host := invImage(t)
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := metaOf(d).checkUnreferencedLocked(d.mu.geo.FileSize + 1<<20); err != nil {
		t.Fatalf("check fired on an unreferenced cluster: %v", err)
	}
	if err := metaOf(d).checkUnreferencedLocked(host); err == nil || !strings.Contains(err.Error(), "still points at it") {
		t.Fatalf("freeing a mapped data cluster: %v, want the R2 failure", err)
	}
	l2Off := int64(d.mu.l1[0] & format.OffsetMask)
	if err := metaOf(d).checkUnreferencedLocked(l2Off); err == nil || !strings.Contains(err.Error(), "L1 entry 0") {
		t.Fatalf("freeing the active L2 table: %v, want the R2 failure", err)
	}
}

// TestInvariantCopiedAfterSnapshot: after a snapshot, COPIED is clear
// wherever the refcount is 2; an entry left COPIED fires the check.
func TestInvariantCopiedAfterSnapshot(t *testing.T) {
	_, d, _ := invImage(t)
	if _, err := d.CreateSnapshot(SnapshotCreateOptions{Name: "s"}); err != nil {
		t.Fatal(err)
	}
	check := func() error {
		return snapOf(d).runSnapshotOp("check", "", func(co *aio.Co) error { return metaOf(d).checkCopied(co) })
	}
	if err := check(); err != nil {
		t.Fatalf("check fired after a correct snapshot: %v", err)
	}
	// Bring the table into tier 1 and set COPIED on entry 0 (refcount 2).
	if _, err := d.node.ReadAt(make([]byte, 4096), 0); err != nil {
		t.Fatal(err)
	}
	d.mu.Lock()
	t0 := d.l2.get(int64(d.mu.l1[0] & format.OffsetMask))
	if t0 == nil {
		d.mu.Unlock()
		t.Fatal("table not in tier 1")
	}
	old := binary.BigEndian.Uint64(t0.buf)
	t0.t.SetWord(0, old|format.EntryCopied)
	d.mu.Unlock()
	err := check()
	d.mu.Lock()
	t0.t.SetWord(0, old)
	d.mu.Unlock()
	if err == nil || !strings.Contains(err.Error(), "COPIED true") {
		t.Fatalf("a COPIED entry with refcount 2: %v, want the R7 failure", err)
	}
}

// TestInvariantFlushStageOrder: a flush stage may start only after the one
// before it, with nothing of the earlier stages dirty (R12).
func TestInvariantFlushStageOrder(t *testing.T) {
	e := newTestEnv(t)
	path, _ := l2SpreadImage(t, e, 1)
	n, d := l2OpenWith(t, e, path, DriverOptions{})
	l2MustWrite(t, n, l2Pattern(2, 4096), 0)
	if err := n.Flush(); err != nil {
		t.Fatal(err)
	}
	// Nothing dirty now but the L2 table the test marks.
	d.mu.Lock()
	tb, ok := d.l2.set.Lookup(d.l2.key(int64(d.mu.l1[0] & format.OffsetMask)))
	if !ok {
		d.mu.Unlock()
		t.Fatal("L2 table not in tier 1")
	}
	d.l2.markDirty(&d.l2.tabs[tb.Slot()])
	defer func() { d.mu.flushAt = stageIdle; tb.Unpin(); d.mu.Unlock() }()
	if err := metaOf(d).checkStageLocked(stageL2); err == nil || !strings.Contains(err.Error(), "after stage 0") {
		t.Errorf("stage C first: %v, want an order failure", err)
	}
	d.mu.flushAt = stageL2
	if err := metaOf(d).checkStageLocked(stageL1); err == nil || !strings.Contains(err.Error(), "dirty L2 tables") {
		t.Errorf("stage D with a dirty L2 table: %v, want the R3 failure", err)
	}
	d.mu.flushAt = stageRefblocks
	d.mu.cowPending = true
	err := metaOf(d).checkStageLocked(stageReftable)
	d.mu.cowPending = false
	if err == nil || !strings.Contains(err.Error(), "COW data") {
		t.Errorf("stage B with COW data unsynced: %v, want the R4 failure", err)
	}
}

// TestInvariantFailurePanics: a failed check panics with the assertion
// prefix.
func TestInvariantFailurePanics(t *testing.T) {
	defer func() {
		if r := recover(); r == nil || !strings.HasPrefix(r.(string), "assertion failed: qcow2: ") {
			t.Fatalf("recovered %v", r)
		}
	}()
	failInvariant(os.ErrInvalid)
}

// TestQcow2AfterFlushCheck: the tests' after-flush check runs (it counted
// checks), and it reports an image whose refcounts were corrupted on disk
// behind the driver.
func TestQcow2AfterFlushCheck(t *testing.T) {
	before := flushChecks.Load()
	_, d, host := invImage(t)
	if flushChecks.Load() == before {
		t.Fatal("no image was checked after the flush")
	}
	if err := checkFileAfterFlush(d); err != nil {
		t.Fatalf("a clean image fails the check: %v", err)
	}
	// Zero the on-disk refcount of the data cluster at host.
	d.mu.Lock()
	ti, bi := d.mu.geo.RefcountIndex(host)
	blockOff := int64(d.mu.rt[ti])
	order := d.mu.geo.RefcountOrder
	d.mu.Unlock()
	path := d.file.Node().Driver().(*raw.Driver).Path()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	blk := make([]byte, 4096)
	if _, err := f.ReadAt(blk, blockOff); err != nil {
		t.Fatal(err)
	}
	if err := format.RefcountSet(blk, order, bi, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(blk, blockOff); err != nil {
		t.Fatal(err)
	}
	if err := checkFileAfterFlush(d); err == nil || !strings.Contains(err.Error(), "corruptions") {
		t.Fatalf("a refcount zeroed on disk: %v, want corruptions", err)
	}
	if err := format.RefcountSet(blk, order, bi, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(blk, blockOff); err != nil {
		t.Fatal(err)
	}
}
