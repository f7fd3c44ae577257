package qcow2

import (
	"errors"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
	"github.com/ringblk/ringblk/internal/invariants"
)

// Internal snapshots: create, apply (goto) and delete, with QEMU 7.2's
// on-disk results (qemu-img snapshot -c/-a/-d), so images move between
// ringblk and QEMU in both directions.
//
// Refcount model (the one qemu-img check verifies): a cluster's refcount
// is the number of paths that reach it from the active L1 table and from
// every snapshot's L1 table, an L2 table shared by k L1 tables counting k
// times for each of its data clusters. Taking a snapshot therefore adds
// one to every L2 table and every data cluster the active L1 reaches, and
// deleting one takes one away from everything its L1 reaches. COPIED must
// be set exactly where the refcount is 1 in the active tables (R7).
//
// Each operation runs in a drained section of the node, in a coroutine
// holding metaLock, and starts from clean metadata. Its flushes write the
// refcount blocks even with lazy refcounts (flushAllMetadata): the
// ordering below relies on refcounts being durable. The crash ordering
// keeps R1–R3: a snapshot's L1 copy, a new snapshot table and a new
// active L1 are written to fresh clusters, made durable with
// their refcounts, and switched in by one small header write (12 bytes at
// 60 for nb_snapshots and snapshots_offset, 12 bytes at 36 for l1_size and
// l1_table_offset, 8 bytes at 24 for size, R6); refcount decrements come
// only after the switch that removed the references is durable (R2). A
// crash therefore never leaves a refcount below its references; what it
// can leave is leaks, and, in the windows that QEMU has too (refcounts and
// COPIED flags live in different clusters), COPIED flags that disagree
// with a refcount in the harmless direction: COPIED set on a cluster that
// no durable snapshot shares yet (create), or clear on one that no longer
// is shared (delete). qemu-img check counts those as errors and
// `qemu-img check -r all` repairs them; no data is at risk.
//
//	create  flush; L1 copy → new clusters; +1 on every L2 table and data
//	        cluster of the active L1; flush (A: refcounts durable);
//	        COPIED recomputed (cleared) on the active L1/L2; flush (C, D);
//	        new snapshot table → new clusters; flush; header@60; old table
//	        freed
//	apply   flush; snapshot L1 read and checked; +1 on everything it
//	        reaches; flush; COPIED recomputed in its L2 tables (all shared
//	        now, so cleared); new active L1 (a copy, COPIED clear) → new
//	        clusters; flush; header@36 and size@24 (L1 first when the disk
//	        grows, size first when it shrinks, so the L1 always covers the
//	        size); −1 on everything the old active L1 reached and on its
//	        clusters; COPIED recomputed on the new active tables; flush
//	delete  flush; new snapshot table without the entry → new clusters;
//	        flush; header@60; old table freed; −1 on everything the
//	        snapshot's L1 reached and on its clusters; COPIED recomputed
//	        on the active tables (QEMU's second pass with addend 0); flush
//
// Differences from qemu-img 7.2, on purpose: a duplicate name is refused
// (QEMU accepts it and then finds only the first); apply writes the new
// active L1 to fresh clusters and switches it with one header write, where
// QEMU overwrites the active L1 in place.

var (
	// ErrSnapshotNotFound: no snapshot has the given ID or name.
	ErrSnapshotNotFound = errors.New("snapshot not found")
	// ErrSnapshotExists: the name or ID of a new snapshot is taken.
	ErrSnapshotExists = errors.New("snapshot already exists")
)

// SnapshotError reports a failed snapshot operation: Op is "create",
// "apply" or "delete", Snapshot the name or ID the caller gave.
type SnapshotError struct {
	Op       string
	Snapshot string
	Err      error
}

func (e *SnapshotError) Error() string {
	return "qcow2: " + e.Op + " snapshot '" + e.Snapshot + "': " + e.Err.Error()
}

// Unwrap returns the cause (ErrSnapshotNotFound, ErrSnapshotExists, a
// *block.Error, a *FormatError, …).
func (e *SnapshotError) Unwrap() error { return e.Err }

// SnapshotCreateOptions describe a new snapshot.
type SnapshotCreateOptions struct {
	// Name is the snapshot's tag (may be empty, as in QEMU; must be unique
	// and hold no NUL byte).
	Name string
	// ID is the id_str; "" picks the largest numeric ID plus one, as QEMU
	// does.
	ID string
	// Date is recorded as date_sec/date_nsec (microsecond precision, like
	// qemu-img). Zero: the current time.
	Date time.Time
}

// Snapshots returns a copy of the image's snapshot table.
func (d *Driver) Snapshots() []format.Snapshot {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]format.Snapshot, len(d.mu.snaps))
	copy(out, d.mu.snaps)
	for i := range out {
		out[i].ExtraUnknown = append([]byte(nil), out[i].ExtraUnknown...)
	}
	return out
}

// FindSnapshot looks a snapshot up by ID first, then by name (QEMU's
// find_snapshot_by_id_or_name), and returns its index in Snapshots.
func (d *Driver) FindSnapshot(idOrName string) (format.Snapshot, int, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	i := findSnapshot(d.mu.snaps, idOrName)
	if i < 0 {
		return format.Snapshot{}, -1, false
	}
	return d.mu.snaps[i], i, true
}

func findSnapshot(snaps []format.Snapshot, idOrName string) int {
	for i := range snaps {
		if snaps[i].ID == idOrName {
			return i
		}
	}
	for i := range snaps {
		if snaps[i].Name == idOrName {
			return i
		}
	}
	return -1
}

// nextSnapshotID returns QEMU's choice of id_str for a new snapshot: one
// more than the largest leading decimal number of the existing IDs.
func nextSnapshotID(snaps []format.Snapshot) string {
	var top uint64
	for i := range snaps {
		id := snaps[i].ID
		n := 0
		for n < len(id) && id[n] >= '0' && id[n] <= '9' {
			n++
		}
		if v, err := strconv.ParseUint(id[:n], 10, 64); err == nil && v > top {
			top = v
		}
	}
	return strconv.FormatUint(top+1, 10)
}

// CreateSnapshot records the current disk content as a new internal
// snapshot (qemu-img snapshot -c) and returns its table entry. The node
// must be read-write; the call drains it and waits for the operation.
// Not from a coroutine.
func (d *Driver) CreateSnapshot(o SnapshotCreateOptions) (format.Snapshot, error) {
	var sn format.Snapshot
	if err := d.refuseDataFile(); err != nil { // datafile.go
		return sn, err
	}
	err := snapOf(d).runSnapshotOp("create", o.Name, func(co *aio.Co) (err error) {
		sn, err = snapOf(d).createSnapshotLocked(co, o)
		return err
	})
	return sn, err
}

// ApplySnapshot reverts the disk to snapshot idOrName (qemu-img snapshot
// -a): the active L1 table becomes a copy of the snapshot's and the
// virtual size the snapshot's disk size. The snapshot stays.
func (d *Driver) ApplySnapshot(idOrName string) error {
	return snapOf(d).runSnapshotOp("apply", idOrName, func(co *aio.Co) error {
		return snapOf(d).applySnapshotLocked(co, idOrName)
	})
}

// DeleteSnapshot removes snapshot idOrName (qemu-img snapshot -d) and
// frees what only it referenced.
func (d *Driver) DeleteSnapshot(idOrName string) error {
	return snapOf(d).runSnapshotOp("delete", idOrName, func(co *aio.Co) error {
		return snapOf(d).deleteSnapshotLocked(co, idOrName)
	})
}

// runSnapshotOp runs fn in a coroutine on the node's Context, holding
// metaLock, inside a drained section of the node, and waits for it the way
// the caller may (its own loop, the main loop, or a channel).
func (d snapshotOps) runSnapshotOp(op, what string, fn func(co *aio.Co) error) error {
	wrap := func(err error) error {
		if err == nil {
			return nil
		}
		return &SnapshotError{Op: op, Snapshot: what, Err: err}
	}
	if d.node == nil || d.mu.hdr == nil {
		return wrap(errors.New("qcow2: image is not open"))
	}
	if d.readOnly {
		return wrap(&block.Error{Kind: block.Unsupported, Op: block.OpWrite, Node: d.nodeName(),
			Err: errors.New("qcow2: image is opened read-only: " + syscall.EROFS.Error())})
	}
	n := d.node
	n.DrainedBegin()
	defer n.DrainedEnd()
	var err error
	runCoAndWait(n, func(co *aio.Co) {
		d.metaLock.lock(co)
		d.mu.Lock()
		d.mu.inSnapshotOp = true
		d.mu.Unlock()
		err = fn(co)
		for wait := waitFor(err); wait != nil; wait = waitFor(err) {
			// An allocating write still in flight (snapshotStart, before
			// anything changes): runSnapshotOp took metaLock, so it drops
			// it to wait, then runs fn again.
			d.metaLock.unlock()
			wait(co)
			d.metaLock.lock(co)
			err = fn(co)
		}
		d.mu.Lock()
		d.mu.inSnapshotOp = false
		d.mu.Unlock()
		if invariants.Enabled && err == nil {
			if cerr := d.checkCopied(co); cerr != nil {
				failInvariant(cerr)
			}
		}
		d.metaLock.unlock()
	})
	var fe *format.FormatError
	if errors.As(err, &fe) {
		err = d.formatErr(block.OpWrite, 0, err)
	}
	return wrap(err)
}

// snapshotStart is the common prologue: no corrupt image, every
// allocating write finished, nothing dirty, and no fast-path request still
// using a mapping from before. After it, metaLock stays held without a
// break until the operation ends, so what the caller reads next is stable.
func (d snapshotOps) snapshotStart(co *aio.Co) error {
	d.mu.Lock()
	err := d.mu.corruptErr
	if err == nil {
		err = d.repairPendingLocked()
	}
	if err == nil {
		err = d.damagedLocked()
	}
	guest := (d.mu.geo.Size + d.mu.geo.ClusterSize() - 1) / d.mu.geo.ClusterSize()
	d.mu.Unlock()
	if err != nil {
		return err
	}
	if err := d.admitted(co, 0, guest); err != nil {
		return err // an *errWait: runSnapshotOp waits and runs fn again
	}
	if err := d.flushAllMetadata(co, nil); err != nil {
		return err
	}
	d.waitIOEpoch(co)
	return nil
}

func (d snapshotOps) createSnapshotLocked(co *aio.Co, o SnapshotCreateOptions) (format.Snapshot, error) {
	if strings.IndexByte(o.Name, 0) >= 0 || strings.IndexByte(o.ID, 0) >= 0 {
		return format.Snapshot{}, format.OutOfRange("snapshot.name", 0, "snapshot name or ID contains a NUL byte")
	}
	if len(o.Name) > 0xffff || len(o.ID) > 0xffff {
		return format.Snapshot{}, format.Limit("snapshot.name_size", uint64(max(len(o.Name), len(o.ID))), "snapshot name or ID longer than 65535 bytes")
	}
	if err := d.snapshotStart(co); err != nil {
		return format.Snapshot{}, err
	}
	d.mu.Lock()
	snaps := d.mu.snaps
	l1 := append([]uint64(nil), d.mu.l1...)
	size := d.mu.geo.Size
	d.mu.Unlock()
	if len(snaps) >= format.MaxSnapshots {
		return format.Snapshot{}, format.Limit("nb_snapshots", uint64(len(snaps)), "too many snapshots")
	}
	id := o.ID
	if id == "" {
		id = nextSnapshotID(snaps)
	}
	for i := range snaps {
		if snaps[i].ID == id {
			return format.Snapshot{}, errWrap(ErrSnapshotExists, "ID "+id+" is taken")
		}
		if snaps[i].Name == o.Name {
			return format.Snapshot{}, errWrap(ErrSnapshotExists, "a snapshot named '"+o.Name+"' exists (ID "+snaps[i].ID+")")
		}
	}
	date := o.Date
	if date.IsZero() {
		date = time.Now()
	}
	sn := format.Snapshot{
		L1Entries: uint32(len(l1)), ID: id, Name: o.Name,
		DateSec: uint32(date.Unix()), DateNsec: uint32(date.Nanosecond() / 1000 * 1000),
		DiskSize: uint64(size), ExtraDataSize: format.SnapshotKnownExtra,
	}
	// The new table must fit before anything changes.
	newSnaps := append(normalizedSnapshots(snaps, size), sn)
	if _, err := format.AppendSnapshotTable(nil, newSnaps); err != nil {
		return format.Snapshot{}, err
	}
	if err := d.prepareWrite(co, nil); err != nil {
		return format.Snapshot{}, err
	}

	// The snapshot's L1 table: a copy of the active one, COPIED clear
	// (the flag means nothing in an inactive table).
	cs := d.mu.geo.ClusterSize()
	if len(l1) > 0 {
		// The first free run of clusters, as QEMU's allocator places it
		// (iotests 112 and 261 name the clusters).
		off, err := d.allocFirstFit(co, (int64(len(l1))*8+cs-1)/cs) // snapshot_check.go
		if err != nil {
			return format.Snapshot{}, err
		}
		tb := make([]byte, len(l1)*8)
		for i, e := range l1 {
			putU64(tb[i*8:], e&^format.EntryCopied)
		}
		if err := d.fileWrite(co, nil, tb, off); err != nil {
			d.abortSnapshotAlloc(co, off, int64(len(tb)))
			return format.Snapshot{}, err
		}
		sn.L1Offset = uint64(off)
		newSnaps[len(newSnaps)-1].L1Offset = uint64(off)
	}

	// +1 on everything the active L1 reaches (undone if any cluster would
	// overflow or is damaged), made durable before the COPIED flags go.
	if err := d.increfAll(co, l1); err != nil {
		if !errors.Is(err, ErrRefcountOverflow) {
			d.abortSnapshotAlloc(co, int64(sn.L1Offset), int64(len(l1))*8)
		}
		// On an overflow the new L1 table stays allocated, unreferenced
		// (a leak), as QEMU 7.2 leaves it: iotest 112 checks for it.
		return format.Snapshot{}, err
	}
	if err := d.flushAllMetadata(co, nil); err != nil {
		return format.Snapshot{}, err
	}
	// R7: no COPIED flag may remain on a shared cluster once the snapshot
	// is durable.
	if err := d.fixActiveCopied(co); err != nil {
		return format.Snapshot{}, err
	}
	// In-place writes that mapped a cluster while its COPIED flag was
	// still set finish before the snapshot exists (they belong to it).
	d.waitIOEpoch(co)
	if err := d.flushAllMetadata(co, nil); err != nil {
		return format.Snapshot{}, err
	}
	if err := d.writeSnapshotTable(co, newSnaps); err != nil {
		return format.Snapshot{}, err
	}
	return sn, nil
}

// errWrap returns an error whose text is msg and which Is sentinel.
func errWrap(sentinel error, msg string) error {
	return &wrapped{msg: sentinel.Error() + ": " + msg, err: sentinel}
}

type wrapped struct {
	msg string
	err error
}

func (w *wrapped) Error() string { return w.msg }
func (w *wrapped) Unwrap() error { return w.err }

// abortSnapshotAlloc gives back clusters allocated for a table that was
// never linked (a leak at worst if that fails).
func (d snapshotOps) abortSnapshotAlloc(co *aio.Co, off, n int64) {
	if off == 0 || n <= 0 {
		return
	}
	d.mu.Lock()
	d.mu.pendingFrees = append(d.mu.pendingFrees, hostFree{off, n})
	d.mu.Unlock()
	d.flushAllMetadata(co, nil)
}

// normalizedSnapshots returns a copy of snaps in the form QEMU 7.2 writes
// them back: at least 24 bytes of extra data, a missing disk size taken as
// the current size, a missing icount as -1, and the 32-bit VM state size
// zero when the state does not fit.
func normalizedSnapshots(snaps []format.Snapshot, size int64) []format.Snapshot {
	out := make([]format.Snapshot, len(snaps), len(snaps)+1)
	copy(out, snaps)
	for i := range out {
		s := &out[i]
		if s.ExtraDataSize < 16 {
			s.DiskSize = uint64(size)
		}
		if s.ExtraDataSize < 24 {
			s.Icount = ^uint64(0)
		}
		if s.ExtraDataSize < format.SnapshotKnownExtra {
			s.ExtraDataSize = format.SnapshotKnownExtra
		}
		s.VMStateSize32 = 0
		if s.VMStateSize <= 0xffffffff {
			s.VMStateSize32 = uint32(s.VMStateSize)
		}
	}
	return out
}

// writeSnapshotTable writes snaps as the new snapshot table: new clusters,
// written and durable with their refcounts (R1, R3), then one 12-byte
// header write of nb_snapshots and snapshots_offset (R6), then the old
// table's clusters freed (R2). An empty table is offset 0, as in QEMU.
func (d snapshotOps) writeSnapshotTable(co *aio.Co, snaps []format.Snapshot) error {
	tb, err := format.AppendSnapshotTable(nil, snaps)
	if err != nil {
		return err
	}
	cs := d.mu.geo.ClusterSize()
	var off int64
	if len(snaps) > 0 {
		if off, err = d.allocFirstFit(co, (int64(len(tb))+cs-1)/cs); err != nil {
			return err
		}
		if err := d.fileWrite(co, nil, tb, off); err != nil {
			d.abortSnapshotAlloc(co, off, int64(len(tb)))
			return err
		}
	}
	if err := d.flushAllMetadata(co, nil); err != nil {
		return err
	}
	if err := d.fileSync(co, nil); err != nil {
		return err
	}
	var hb [12]byte
	n := uint32(len(snaps))
	hb[0], hb[1], hb[2], hb[3] = byte(n>>24), byte(n>>16), byte(n>>8), byte(n)
	putU64(hb[4:], uint64(off))
	if err := d.fileWrite(co, nil, hb[:], 60); err != nil {
		return err
	}
	if err := d.fileSync(co, nil); err != nil {
		return err
	}
	d.mu.Lock()
	oldOff, oldSz := int64(d.mu.hdr.SnapshotsOffset), d.mu.snapSz
	d.mu.hdr.SnapshotCount, d.mu.hdr.SnapshotsOffset = n, uint64(off)
	d.mu.snaps, d.mu.snapSz = snaps, int64(len(tb))
	d.publishLocked()
	if oldSz > 0 && oldOff != 0 {
		d.mu.pendingFrees = append(d.mu.pendingFrees, hostFree{oldOff, oldSz})
	}
	d.mu.Unlock()
	if err := d.flushAllMetadata(co, nil); err != nil {
		return &oldTableFreeError{err} // the new table is in place (snapfree.go)
	}
	return nil
}

// readSnapshotL1 reads and checks snapshot sn's L1 table: every entry
// decodes, and no L2 table it names is one of the image's other metadata
// (header, L1 tables, refcount structures, snapshot table), since apply
// rewrites COPIED flags in those tables.
func (d snapshotOps) readSnapshotL1(co *aio.Co, sn *format.Snapshot, i int) ([]uint64, error) {
	d.mu.Lock()
	err := format.ValidateSnapshot(sn, i, &d.mu.geo, 0)
	d.mu.Unlock()
	if err != nil {
		return nil, err
	}
	n := int(sn.L1Entries)
	if n == 0 {
		return nil, nil
	}
	buf := make([]byte, n*8)
	if err := d.fileRead(co, nil, buf, int64(sn.L1Offset)); err != nil {
		return nil, err
	}
	field := format.Indexed("snapshot", uint64(i)) + ".l1_table"
	l1 := make([]uint64, n)
	d.mu.Lock()
	defer d.mu.Unlock()
	for j := range l1 {
		e := uint64(buf[j*8])<<56 | uint64(buf[j*8+1])<<48 | uint64(buf[j*8+2])<<40 | uint64(buf[j*8+3])<<32 |
			uint64(buf[j*8+4])<<24 | uint64(buf[j*8+5])<<16 | uint64(buf[j*8+6])<<8 | uint64(buf[j*8+7])
		l2Off, _, err := d.mu.geo.DecodeL1Entry(e)
		if err != nil {
			return nil, format.WithField(err, format.Indexed(field, uint64(j)))
		}
		if l2Off != 0 && d.isOtherMetadataLocked(l2Off) {
			return nil, format.Corrupt(format.Indexed(field, uint64(j)), uint64(l2Off), "snapshot L2 table overlaps other metadata")
		}
		l1[j] = e
	}
	return l1, nil
}

// isOtherMetadataLocked reports whether cluster off holds metadata that is
// not an L2 table. REQUIRES: mu held.
func (d snapshotOps) isOtherMetadataLocked(off int64) bool {
	cs := d.mu.geo.ClusterSize()
	h := d.mu.hdr
	in := func(start, n int64) bool {
		if n <= 0 {
			return false
		}
		s := start &^ (cs - 1)
		return off >= s && off < start+n
	}
	if off < cs || in(int64(h.L1Offset), int64(len(d.mu.l1))*8) ||
		in(int64(h.RefcountTableOffset), int64(h.RefcountTableClusters)*cs) ||
		in(int64(h.SnapshotsOffset), d.mu.snapSz) || in(int64(h.CryptoOffset), int64(h.CryptoLength)) {
		return true
	}
	for i := range d.mu.snaps {
		if in(snapL1Range(&d.mu.snaps[i], &d.mu.geo)) {
			return true
		}
	}
	for _, e := range d.mu.rt {
		if int64(e) == off {
			return true
		}
	}
	return false
}

func (d snapshotOps) applySnapshotLocked(co *aio.Co, idOrName string) error {
	if err := d.snapshotStart(co); err != nil {
		return err
	}
	d.mu.Lock()
	i := findSnapshot(d.mu.snaps, idOrName)
	var sn format.Snapshot
	if i >= 0 {
		sn = d.mu.snaps[i]
	}
	oldSize := d.mu.geo.Size
	cb, ext := d.mu.geo.ClusterBits, d.mu.geo.ExtendedL2
	v2 := d.mu.hdr.Version < 3
	d.mu.Unlock()
	if i < 0 {
		return ErrSnapshotNotFound
	}
	field := format.Indexed("snapshot", uint64(i))
	newSize := uint64(oldSize)
	if sn.ExtraDataSize >= 16 {
		newSize = sn.DiskSize
	}
	switch {
	case newSize > format.MaxImageSize:
		return format.Limit(field+".disk_size", newSize, "virtual size above 2^61")
	case newSize%512 != 0:
		return format.Corrupt(field+".disk_size", newSize, "disk size not a multiple of 512")
	case uint64(sn.L1Entries) < format.L1EntriesFor(newSize, cb, ext):
		return format.Corrupt(field+".l1_size", uint64(sn.L1Entries), "snapshot L1 table too small for its disk size")
	case v2 && newSize != uint64(oldSize):
		// QEMU applies by resizing, which it refuses for version 2
		// images with snapshots (an entry may lack its disk size).
		return format.Unsupported(field+".disk_size", newSize, "Can't resize a v2 image which has snapshots") // QEMU's words
	}
	snapL1, err := d.readSnapshotL1(co, &sn, i)
	if err != nil {
		return err
	}
	if err := d.prepareWrite(co, nil); err != nil {
		return err
	}

	// +1 on everything the snapshot reaches, durable first (R1).
	if err := d.increfAll(co, snapL1); err != nil {
		return err
	}
	if err := d.flushAllMetadata(co, nil); err != nil {
		return err
	}
	// The snapshot's L2 tables are about to become active: give them
	// COPIED flags that match the refcounts (all shared now, so clear).
	if err := d.fixCopied(co, snapL1, false); err != nil {
		return err
	}
	if err := d.flushAllMetadata(co, nil); err != nil {
		return err
	}

	// The new active L1: fresh clusters, then the switch (R3, R6).
	cs := d.mu.geo.ClusterSize()
	newLen := int64(len(snapL1))
	off, err := d.allocContiguous(co, max((newLen*8+cs-1)/cs, 1))
	if err != nil {
		return err
	}
	tb := make([]byte, max(newLen*8, 8))
	for j, e := range snapL1 {
		putU64(tb[j*8:], e)
	}
	if err := d.fileWrite(co, nil, tb, off); err != nil {
		d.abortSnapshotAlloc(co, off, int64(len(tb)))
		return err
	}
	if err := d.flushAllMetadata(co, nil); err != nil {
		return err
	}
	if err := d.fileSync(co, nil); err != nil {
		return err
	}
	writeSize := func() error {
		if newSize == uint64(oldSize) {
			return nil
		}
		var b [8]byte
		putU64(b[:], newSize)
		if err := d.fileWrite(co, nil, b[:], 24); err != nil {
			return err
		}
		return d.fileSync(co, nil)
	}
	// The L1 table must cover the size in every state in between.
	if newSize < uint64(oldSize) {
		if err := writeSize(); err != nil {
			return err
		}
	}
	var hb [12]byte
	hb[0], hb[1], hb[2], hb[3] = byte(newLen>>24), byte(newLen>>16), byte(newLen>>8), byte(newLen)
	putU64(hb[4:], uint64(off))
	if err := d.fileWrite(co, nil, hb[:], 36); err != nil {
		return err
	}
	if err := d.fileSync(co, nil); err != nil {
		return err
	}
	if newSize > uint64(oldSize) {
		if err := writeSize(); err != nil {
			return err
		}
	}

	d.mu.Lock()
	oldL1, oldL1Off := d.mu.l1, int64(d.mu.hdr.L1Offset)
	d.mu.l1 = snapL1
	if d.mu.l1 == nil {
		d.mu.l1 = []uint64{}
	}
	d.resetMetaClusters() // the old active tables out, the new ones in
	clear(d.mu.dirtyL1)
	d.mu.hdr.L1Offset, d.mu.hdr.L1Entries = uint64(off), uint32(newLen)
	d.mu.hdr.Size, d.mu.geo.Size = newSize, int64(newSize)
	d.mu.zcache.buf = nil
	d.publishLocked()
	d.mu.Unlock()

	// R2: the old active tables are unreachable and durable so.
	if err := d.decrefAll(co, oldL1); err != nil {
		return err
	}
	if len(oldL1) > 0 {
		if err := d.decrefRange(co, oldL1Off, int64(len(oldL1))*8); err != nil {
			return err
		}
	}
	if err := d.fixActiveCopied(co); err != nil {
		return err
	}
	return d.flushAllMetadata(co, nil)
}

func (d snapshotOps) deleteSnapshotLocked(co *aio.Co, idOrName string) error {
	if err := d.snapshotStart(co); err != nil {
		return err
	}
	d.mu.Lock()
	i := findSnapshot(d.mu.snaps, idOrName)
	var sn format.Snapshot
	snaps := d.mu.snaps
	size := d.mu.geo.Size
	d.mu.Unlock()
	if i < 0 {
		return ErrSnapshotNotFound
	}
	sn = snaps[i]
	snapL1, err := d.readSnapshotL1(co, &sn, i)
	if err != nil {
		return err
	}
	if err := d.prepareWrite(co, nil); err != nil {
		return err
	}
	rest := normalizedSnapshots(snaps, size)
	rest = append(rest[:i], rest[i+1:]...)
	if err := d.writeSnapshotTable(co, rest); err != nil {
		return asSnapshotFree(err)
	}
	// R2: the entry's removal is durable; now its references go.
	if err := d.decrefAll(co, snapL1); err != nil {
		return &SnapshotFreeError{Err: err}
	}
	if len(snapL1) > 0 {
		if err := d.decrefRange(co, int64(sn.L1Offset), int64(len(snapL1))*8); err != nil {
			return &SnapshotFreeError{Err: err}
		}
	}
	if err := d.fixActiveCopied(co); err != nil {
		return err
	}
	return d.flushAllMetadata(co, nil)
}

// errStopWalk ends walkRefs early without an error.
var errStopWalk = errors.New("stop")

// walkRefs calls fn for every host cluster the L1 table l1 reaches, in a
// fixed order: the data, zero-alloc and compressed clusters each L2 table
// names (a compressed range spanning two clusters gives two calls), then
// the table itself. REQUIRES: metaLock held (the tables do not change meanwhile).
func (d snapshotOps) walkRefs(co *aio.Co, l1 []uint64, fn func(off int64) error) error {
	cs := d.mu.geo.ClusterSize()
	var buf []byte
	for i, e := range l1 {
		l2Off, _, err := d.mu.geo.DecodeL1Entry(e)
		if err != nil {
			return format.WithField(err, format.Indexed("l1_table", uint64(i)))
		}
		if l2Off == 0 {
			continue
		}
		if buf, err = d.copyL2(co, l2Off, buf); err != nil {
			return err
		}
		for j := int64(0); j < d.mu.geo.L2Entries(); j++ {
			e, bm, _ := d.mu.geo.L2EntryAt(buf, j)
			le, err := d.mu.geo.DecodeL2Entry(e, bm)
			if err != nil {
				return format.WithField(err, "l2_table@"+format.HexString(uint64(l2Off))+format.Indexed("", uint64(j)))
			}
			var off, n int64
			switch le.Type {
			case format.Normal, format.ZeroAlloc:
				off, n = le.HostOff, cs
			case format.Compressed:
				off, n = le.Compressed.HostOff, le.Compressed.Size()
			default:
				continue
			}
			for c := off &^ (cs - 1); c < off+n; c += cs {
				if err := fn(c); err != nil {
					return err
				}
			}
		}
		if err := fn(l2Off); err != nil {
			return err
		}
	}
	return nil
}

// copyL2 copies the L2 table at off into dst (brought in through the
// cache).
func (d snapshotOps) copyL2(co *aio.Co, off int64, dst []byte) ([]byte, error) {
	t, err := d.l2Acquire(co, nil, off)
	if err != nil {
		return dst, err
	}
	d.mu.Lock()
	dst = append(dst[:0], t.buf...)
	d.mu.Unlock()
	d.l2Release(t)
	return dst, nil
}

// increfAll adds one reference to every cluster l1 reaches. On failure
// (a refcount that would overflow, a damaged entry, an I/O error) the
// increments made so far are taken back, in memory, before anything was
// written. REQUIRES: metaLock held, refcount blocks clean.
func (d snapshotOps) increfAll(co *aio.Co, l1 []uint64) error {
	var done int64
	err := d.walkRefs(co, l1, func(off int64) error {
		if err := d.incref(co, off); err != nil {
			return err
		}
		done++
		return nil
	})
	if err == nil {
		return nil
	}
	left := done
	undo := d.walkRefs(co, l1, func(off int64) error {
		if left == 0 {
			return errStopWalk
		}
		left--
		return d.decref(co, off)
	})
	if undo != nil && undo != errStopWalk {
		return errors.Join(err, undo)
	}
	return err
}

// decrefAll removes one reference from every cluster l1 reaches.
// REQUIRES: metaLock held; the references are gone durably (R2).
func (d snapshotOps) decrefAll(co *aio.Co, l1 []uint64) error {
	d.waitIOEpoch(co)
	return d.walkRefs(co, l1, func(off int64) error { return d.decref(co, off) })
}

// decrefRange removes one reference from every cluster of [off, off+n).
func (d snapshotOps) decrefRange(co *aio.Co, off, n int64) error {
	cs := d.mu.geo.ClusterSize()
	for c := off &^ (cs - 1); c < off+n; c += cs {
		if err := d.decref(co, c); err != nil {
			return err
		}
	}
	return nil
}

// incref adds one to the refcount of the cluster at off, which must be in
// use (refcount ≥ 1) and below the refcount maximum.
func (d metaIO) incref(co *aio.Co, off int64) error {
	cs := d.mu.geo.ClusterSize()
	rb, _, bi, err := d.refcountBlock(co, off/cs)
	if err == errNoSpace {
		return format.Corrupt("refcount", uint64(off), "referenced cluster lies beyond the refcount table")
	}
	if err != nil {
		return err
	}
	if rb == nil {
		return format.Corrupt("refcount", uint64(off), "referenced cluster has no refcount block")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	order := d.mu.geo.RefcountOrder
	rc, err := format.RefcountGet(rb.buf, order, bi)
	if err != nil {
		return err
	}
	if rc == 0 {
		return format.Corrupt("refcount", uint64(off), "referenced cluster has refcount 0")
	}
	if rc >= format.RefcountMax(order) {
		return &overflowError{format.Limit("refcount", rc, "cluster refcount would overflow (refcount_bits "+strconv.Itoa(int(d.mu.geo.RefcountBits()))+")")} // refcount_overflow.go
	}
	if err := format.RefcountSet(rb.buf, order, bi, rc+1); err != nil {
		return err
	}
	rb.dirty = true
	return nil
}

// refcountOf returns the in-memory refcount of the cluster at off.
func (d metaIO) refcountOf(co *aio.Co, off int64) (uint64, error) {
	cs := d.mu.geo.ClusterSize()
	rb, _, bi, err := d.refcountBlock(co, off/cs)
	if err == errNoSpace || (err == nil && rb == nil) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return format.RefcountGet(rb.buf, d.mu.geo.RefcountOrder, bi)
}

// fixActiveCopied sets COPIED exactly where the refcount is 1 in the
// active L1 table and its L2 tables (R7).
func (d snapshotOps) fixActiveCopied(co *aio.Co) error {
	d.mu.Lock()
	l1 := d.mu.l1
	d.mu.Unlock()
	return d.fixCopied(co, l1, true)
}

// fixCopied sets COPIED exactly where the in-memory refcount is 1 in the
// entries of l1 (queued for stage D when l1 is the active table) and in
// the L2 tables they name. Changed L2 tables are dirty in the cache (stage C);
// dirty tables are written back when they fill 7/8 of the cache.
// REQUIRES: metaLock held; for an inactive l1, its tables are checked by
// readSnapshotL1.
func (d snapshotOps) fixCopied(co *aio.Co, l1 []uint64, active bool) error {
	for i := range l1 {
		d.mu.Lock()
		e := l1[i]
		d.mu.Unlock()
		l2Off, copied, err := d.mu.geo.DecodeL1Entry(e)
		if err != nil {
			return format.WithField(err, format.Indexed("l1_table", uint64(i)))
		}
		if l2Off == 0 {
			continue
		}
		rc, err := d.refcountOf(co, l2Off)
		if err != nil {
			return err
		}
		if want := rc == 1; want != copied {
			d.mu.Lock()
			storeL1(l1, int64(i), e&^format.EntryCopied|copiedBit(want))
			if active {
				d.mu.dirtyL1[int64(i)] = true
			}
			d.mu.Unlock()
		}
		if err := d.fixL2Copied(co, l2Off); err != nil {
			return err
		}
		if d.needFlush() {
			if err := d.flushAllMetadata(co, nil); err != nil {
				return err
			}
		}
	}
	return nil
}

func copiedBit(b bool) uint64 {
	if b {
		return format.EntryCopied
	}
	return 0
}

// fixL2Copied recomputes COPIED in every data and zero-alloc entry of the
// L2 table at l2Off.
func (d snapshotOps) fixL2Copied(co *aio.Co, l2Off int64) error {
	t, err := d.l2Acquire(co, nil, l2Off)
	if err != nil {
		return err
	}
	defer d.l2Release(t)
	for j := int64(0); j < d.mu.geo.L2Entries(); j++ {
		d.mu.Lock()
		e, bm, _ := d.mu.geo.L2EntryAt(t.buf, j)
		d.mu.Unlock()
		le, err := d.mu.geo.DecodeL2Entry(e, bm)
		if err != nil {
			return format.WithField(err, "l2_table@"+format.HexString(uint64(l2Off))+format.Indexed("", uint64(j)))
		}
		if le.Type != format.Normal && le.Type != format.ZeroAlloc {
			continue
		}
		rc, err := d.refcountOf(co, le.HostOff)
		if err != nil {
			return err
		}
		if want := rc == 1; want != le.Copied {
			d.mu.Lock()
			d.setL2EntryLocked(t, j, e&^format.EntryCopied|copiedBit(want))
			d.mu.Unlock()
		}
	}
	return nil
}
