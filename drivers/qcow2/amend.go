package qcow2

import (
	"errors"
	"math/bits"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// AmendOptions are the changes of `qemu-img amend -o`. The zero value
// changes nothing; every field names one -o key.
type AmendOptions struct {
	// Version is compat: 2 (compat=0.10) or 3 (compat=1.1); 0 keeps it.
	Version int
	// LazyRefcounts is lazy_refcounts=on|off; nil keeps it.
	LazyRefcounts *bool
	// Size is the new virtual size in bytes (size=); 0 keeps it. Like
	// qemu-img amend, a smaller size shrinks the disk (shrink.go).
	Size int64
	// BackingFile and BackingFormat are backing_file= and backing_fmt=;
	// nil keeps the current value, a pointer to "" removes it. Only the
	// header changes (like `qemu-img rebase -u`): the driver keeps the
	// backing node it opened, and the new chain is used at the next open.
	BackingFile   *string
	BackingFormat *string
	// RefcountBits is refcount_bits=; 0 keeps it. Another width rebuilds
	// the refcount structures (refcount_order.go); with compat=0.10 only
	// 16 is allowed.
	RefcountBits int
	// Progress, when set, is called as a downgrade's zero expansion visits
	// each L1 entry (active, then the snapshots'), as qemu-img amend -p
	// reports it. Called under the driver's lock: it must not block.
	Progress func(done, total int64)
	// DataFile is data_file= (the recorded external data file name; ""
	// drops the name, keeping the bit), DataFileRaw data_file_raw=
	// (only clearing it is allowed); nil keeps them (datafile.go).
	DataFile    *string
	DataFileRaw *bool
}

// Amend applies o to the image of a read-write qcow2 node, with the
// semantics of `qemu-img amend -f qcow2 -o ...` in QEMU 7.2:
//
//   - compat=1.1 upgrades a version 2 image: 112-byte header, the feature
//     name table (clusters above 4 KiB, as qemu-img create writes it).
//   - compat=0.10 downgrades: refused with qemu-img's messages when the
//     image uses something version 2 cannot express (refcount_bits other
//     than 16, extended L2, an external data file, zstd compression, and
//     lazy_refcounts=on in the same command); the dirty bit is cleaned
//     first (every refcount block written), lazy refcounts and the
//     autoclear bits are dropped, and zero clusters are expanded: without
//     a backing file a plain zero cluster becomes unallocated, otherwise
//     (and for preallocated zero clusters) zeros are written to a data
//     cluster. Zero clusters in internal snapshots are expanded too (amend_zero.go).
//   - lazy_refcounts=on sets compatible bit 0 (version 3 only);
//     lazy_refcounts=off first writes every refcount block and clears a
//     dirty bit this driver set (an image still needing a repair is
//     refused: run check -r first).
//   - refcount_bits changes the refcount width after an upgrade and
//     before the size (refcount_order.go): refused when a refcount does
//     not fit the new width, or for a width other than 16 with compat=0.10.
//   - size grows or shrinks the disk through the driver's resize, after an
//     upgrade and before a downgrade, as QEMU orders them.
//   - backing_file / backing_fmt rewrite the header's backing name and
//     backing format extension (see AmendOptions.BackingFile).
//
// Every change is made under the driver's metadata lock: dirty metadata
// is written and synced, then the header cluster is rewritten as one
// write and synced (R6). A failed option check changes nothing.
//
// Call it from a control goroutine or the main Context (it waits), with
// no other requests on the node: like qemu-img amend, it expects to be
// the image's only user (a running guest would see the zero-flag
// semantics change under it).
func Amend(n *block.Node, o AmendOptions) error {
	d, ok := n.Driver().(*Driver)
	if !ok {
		return &block.Error{Kind: block.Unsupported, Op: block.OpOpen, Node: n.Name(), Err: errors.New("qcow2: amend needs a qcow2 node")}
	}
	if d.readOnly {
		return &block.Error{Kind: block.Unsupported, Op: block.OpWrite, Node: n.Name(), Err: errors.New("qcow2: amend needs a read-write node")}
	}
	// A size change (o.Size) resizes the node's dirty bitmaps too, as
	// a truncate request does; they are stored with the new size.
	defer n.ResizeBitmaps()
	return d.formatErr(block.OpWrite, 0, d.runLocked(n, func(co *aio.Co) error {
		return maintOf(d).amendLocked(co, o)
	}))
}

// runLocked runs fn in a coroutine on n's Context with the metadata lock
// held, and waits for it: from n's Context, from the main Context (both
// poll while waiting) or from any other goroutine (blocks). When fn
// returns an *errWait (a busy cluster) runLocked waits with metaLock
// released and runs fn again: what fn does before its first wait must be
// idempotent (amend: the resize and the zero-cluster expansion are).
func (d *Driver) runLocked(n *block.Node, fn func(co *aio.Co) error) error {
	ctx := n.Context()
	main := n.Graph().Main()
	var err error
	done := make(chan struct{})
	run := func() {
		ctx.Go(func(co *aio.Co) {
			d.metaLock.lock(co)
			err = fn(co)
			for wait := waitFor(err); wait != nil; wait = waitFor(err) {
				// fn met a busy cluster (an *errWait): runLocked took
				// metaLock, so it drops it to wait, then runs fn again.
				d.metaLock.unlock()
				wait(co)
				d.metaLock.lock(co)
				err = fn(co)
			}
			d.metaLock.unlock()
			close(done)
			main.Kick()
			ctx.Kick()
		})
	}
	notDone := func() bool {
		select {
		case <-done:
			return false
		default:
			return true
		}
	}
	switch {
	case ctx.InContext():
		run()
		ctx.WaitWhile(notDone)
	case main.InContext():
		ctx.Schedule(run)
		main.WaitWhile(notDone)
	default:
		ctx.Schedule(run)
		<-done
	}
	return err
}

// amendLocked checks o against the image, then applies it. REQUIRES:
// metaLock held.
func (d maintOps) amendLocked(co *aio.Co, o AmendOptions) error {
	d.mu.Lock()
	h := *d.mu.hdr
	size := d.mu.geo.Size
	d.mu.Unlock()
	ver := int(h.Version)
	if o.Version != 0 && o.Version != 2 && o.Version != 3 {
		return format.Unsupported("compat", uint64(o.Version), "Unknown compatibility level")
	}
	newVer := ver
	if o.Version != 0 {
		newVer = o.Version
	}
	lazy := h.CompatibleFeatures&format.CompatLazyRefcounts != 0
	if o.LazyRefcounts != nil {
		lazy = *o.LazyRefcounts
	}
	newOrder := h.RefcountOrder // refcount_order.go
	if o.RefcountBits != 0 && o.RefcountBits != 1<<h.RefcountOrder {
		if o.RefcountBits < 0 || o.RefcountBits > 64 || o.RefcountBits&(o.RefcountBits-1) != 0 {
			return format.Unsupported("refcount_bits", uint64(o.RefcountBits), "Refcount width must be a power of two and may not exceed 64 bits")
		}
		if newVer < 3 && o.RefcountBits != 16 {
			return format.Unsupported("refcount_bits", uint64(o.RefcountBits), "Refcount widths other than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)")
		}
		newOrder = uint32(bits.TrailingZeros(uint(o.RefcountBits)))
	}
	if newVer == 2 && lazy && o.LazyRefcounts != nil {
		return format.Unsupported("lazy_refcounts", 1, "Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)")
	}
	if err := checkDataFileAmend(&h, o, newVer); err != nil { // datafile.go
		return err
	}
	if newVer == 2 && ver == 3 {
		if newOrder != 4 {
			return format.Unsupported("refcount_bits", uint64(1)<<h.RefcountOrder, "compat=0.10 requires refcount_bits=16")
		}
		// Dirty is cleaned below; corrupt images are not opened read-write.
		if rest := h.IncompatibleFeatures &^ format.IncompatDirty; rest != 0 {
			return format.Unsupported("incompatible_features", rest, "Cannot downgrade an image with incompatible features "+format.HexString(rest)+" set")
		}
		if h.Bitmaps != nil {
			return format.Unsupported("bitmaps", 0, "Cannot downgrade an image with persistent bitmaps")
		}
	}
	bf, bfmt := h.BackingFile, h.BackingFormat
	if o.BackingFile != nil {
		bf = *o.BackingFile
		if bf == "" {
			bfmt = ""
		}
	}
	if o.BackingFormat != nil {
		bfmt = *o.BackingFormat
	}
	if bf == "" && bfmt != "" {
		return format.Unsupported("backing_fmt", 0, "backing format specified without a backing file")
	}
	if bf != "" {
		if len(bf) > format.MaxBackingNameLen {
			return format.Limit("backing_file", uint64(len(bf)), "backing file name too long")
		}
		if bfmt != "" && !recordableFormatName(bfmt) { // rebase_fmt.go
			return format.Unsupported("backing_fmt", 0, "backing format name must be a driver name (letters, digits, '-', '_')")
		}
	}
	if d.mu.lazy.needRepair {
		return errNeedsRepair
	}
	d.mu.Lock()
	derr := d.damagedLocked()
	d.mu.Unlock()
	if derr != nil {
		return derr
	}

	// Checks done; apply in QEMU's order: an upgrade first (a version 2
	// image with snapshots cannot be resized, a version 3 one can), then
	// the size, then a downgrade (whose checks see the new size).
	if newVer == 3 && ver == 2 {
		// Version 3 requires every snapshot entry to carry the 64-bit VM
		// state size and the disk size (16 bytes of extra data); version
		// 2 entries may have none, and qemu-img check calls such a v3
		// image corrupt. Like QEMU's upgrade, write the table back in the
		// full form first (still valid for version 2 if we crash before
		// the header switch).
		d.mu.Lock()
		snaps := d.mu.snaps
		d.mu.Unlock()
		short := false
		for i := range snaps {
			short = short || snaps[i].ExtraDataSize < 16
		}
		if short {
			if err := d.prepareWrite(co, nil); err != nil {
				return err
			}
			if err := d.writeSnapshotTable(co, normalizedSnapshots(snaps, d.mu.geo.Size)); err != nil {
				return err
			}
		}
		if err := d.amendHeader(co, o, bf, bfmt, 2, 3, lazy); err != nil {
			return err
		}
		ver = 3
	}
	// Long steps report to one progress figure (refcount_order.go).
	prog := &amendProgress{report: o.Progress}
	if newOrder != h.RefcountOrder {
		prog.steps++
	}
	if newVer == 2 && ver == 3 {
		prog.steps++
	}
	if newOrder != h.RefcountOrder {
		if err := d.changeRefcountOrder(co, newOrder, prog.step(1)); err != nil {
			return err
		}
	}
	if o.Size != 0 && o.Size != size {
		if err := d.truncateLocked(co, nil, (o.Size+511)&^511); err != nil {
			return err
		}
	}
	if newVer == 2 && ver == 3 {
		// A snapshot of another disk size, or a VM state too large for
		// version 2's 32-bit field, needs version 3's extra data: QEMU
		// refuses rather than count on version 2 readers honouring it.
		d.mu.Lock()
		snaps, cur := d.mu.snaps, uint64(d.mu.geo.Size)
		d.mu.Unlock()
		for _, sn := range snaps {
			if sn.VMStateSize > 0xffffffff || sn.DiskSize != cur {
				return format.Unsupported("snapshot", 0, "Internal snapshots prevent downgrade of image")
			}
		}
		// Data writes follow: R10 first (a header-only amend keeps the
		// autoclear bits, and with them any bitmaps, as QEMU does).
		if err := d.prepareWrite(co, nil); err != nil {
			return err
		}
		if err := d.expandZeroClusters(co, prog.step(prog.steps)); err != nil {
			return err
		}
	}
	return d.amendHeader(co, o, bf, bfmt, ver, newVer, lazy)
}

// amendHeader writes the amended header: backing file and format, the
// data file options, the version step from → to, the lazy refcounts bit. Everything (refcount
// blocks included) is durable before the header stops announcing a dirty
// image or lazy refcounts. REQUIRES: metaLock held.
func (d maintOps) amendHeader(co *aio.Co, o AmendOptions, bf, bfmt string, ver, newVer int, lazy bool) error {
	if err := d.flushAllMetadata(co, nil); err != nil {
		return err
	}
	d.mu.Lock()
	nh := *d.mu.hdr
	d.mu.Unlock()
	nh.BackingFile, nh.BackingFormat = bf, bfmt
	if err := applyDataFileAmend(&nh, o); err != nil { // datafile.go
		return err
	}
	switch {
	case newVer == 2 && ver == 3:
		nh.Version, nh.HeaderLength, nh.HeaderTail = 2, format.HeaderLengthV2, nil
		nh.IncompatibleFeatures, nh.CompatibleFeatures, nh.AutoclearFeatures = 0, 0, 0
		nh.CompressionType, nh.FeatureNames = 0, nil
	case newVer == 3 && ver == 2:
		nh.Version, nh.HeaderLength, nh.HeaderTail = 3, 112, make([]byte, 112-105)
		nh.RefcountOrder = 4
		if nh.ClusterSize() > 4096 {
			nh.FeatureNames = format.DefaultFeatureNames()
		}
	}
	if nh.Version >= 3 {
		nh.CompatibleFeatures &^= format.CompatLazyRefcounts
		if lazy {
			nh.CompatibleFeatures |= format.CompatLazyRefcounts
		} else {
			nh.IncompatibleFeatures &^= format.IncompatDirty
		}
	}
	if err := d.rewriteHeader(co, &nh); err != nil {
		return err
	}
	d.mu.Lock()
	d.mu.geo.ZeroFlag = nh.Version >= 3 && !nh.ExtendedL2()
	d.mu.lazy.on = nh.Version >= 3 && lazy
	if nh.IncompatibleFeatures&format.IncompatDirty == 0 {
		d.mu.lazy.dirtyOnDisk, d.mu.lazy.ownDirty = false, false
	}
	d.mu.Unlock()
	return nil
}

// rewriteHeader writes nh as the whole header cluster and syncs (R6),
// then makes it the driver's header. REQUIRES: metaLock held.
func (d maintOps) rewriteHeader(co *aio.Co, nh *format.Header) error {
	hb, err := nh.MarshalBinary()
	if err != nil {
		return err
	}
	cs := d.mu.geo.ClusterSize()
	if int64(len(hb)) > cs {
		return format.Limit("header_length", uint64(len(hb)), "header and extensions do not fit in the first cluster")
	}
	parsed, err := format.ParseHeader(hb)
	if err != nil {
		return err
	}
	buf := make([]byte, cs)
	copy(buf, hb)
	if err := d.fileWrite(co, nil, buf, 0); err != nil {
		return err
	}
	if err := d.fileSync(co, nil); err != nil {
		return err
	}
	d.mu.Lock()
	d.mu.hdr = parsed
	d.publishLocked()
	d.mu.Unlock()
	return nil
}

// expandZeroClusters removes the zero flag from every active L2 entry
// before a downgrade to version 2 (QEMU's qcow2_expand_zero_clusters):
// without a backing file a plain zero cluster becomes unallocated (which
// reads as zero too); otherwise zeros are written to a data cluster (the
// preallocated one when there is one); then the snapshots' tables
// (amend_zero.go). REQUIRES: metaLock held.
func (d maintOps) expandZeroClusters(co *aio.Co, progress func(done, total int64)) error {
	p := d.newExpandProgress(progress) // amend_zero.go
	cs := d.mu.geo.ClusterSize()
	d.mu.Lock()
	size, l1n := d.mu.geo.Size, int64(len(d.mu.l1))
	d.mu.Unlock()
	var zeros []byte
	for l1i := int64(0); l1i < l1n; l1i++ {
		d.mu.Lock()
		mapped := d.mu.l1[l1i]&format.OffsetMask != 0
		d.mu.Unlock()
		if !mapped {
			p.step()
			continue
		}
		first := l1i * d.mu.geo.L1Coverage()
		for off := first; off < min(size, first+d.mu.geo.L1Coverage()); off += cs {
			le, _, err := d.peekEntry(co, nil, off)
			if err == errMiss {
				le, err = d.entryForWrite(co, nil, off)
			}
			if err != nil {
				return err
			}
			switch {
			case le.Type == format.ZeroPlain && d.backing == nil:
				err = d.updateEntry(co, off, func(le format.L2Entry, e uint64) uint64 {
					if le.Type == format.ZeroPlain {
						return 0
					}
					return e
				})
			case le.Type == format.ZeroPlain || le.Type == format.ZeroAlloc:
				if zeros == nil {
					zeros = make([]byte, cs)
				}
				k := min(cs, size-off)
				err = d.writeCluster(co, nil, [][]byte{zeros[:k]}, off, k)
			}
			if err != nil {
				return err
			}
		}
		p.step()
	}
	return d.expandSnapshotZeros(co, p) // amend_zero.go
}

// updateEntry replaces the standard L2 entry of the cluster at off by f's
// result (no host cluster changes hands). REQUIRES: metaLock held.
func (d maintOps) updateEntry(co *aio.Co, off int64, f func(le format.L2Entry, e uint64) uint64) error {
	t, l2i, le, e, _, err := d.lockEntry(co, nil, off)
	if err != nil {
		return err
	}
	defer d.l2Unpin(t)
	defer d.mu.Unlock()
	if ne := f(le, e); ne != e {
		d.setL2EntryLocked(t, l2i, ne)
	}
	return nil
}

func getU64(b []byte) uint64 {
	var v uint64
	for i := 0; i < 8; i++ {
		v = v<<8 | uint64(b[i])
	}
	return v
}
