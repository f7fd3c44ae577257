package qcow2

import (
	"strconv"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
)

// CheckResult counts what a consistency check found, with the meaning of
// `qemu-img check --output=json`: a leak is a cluster whose stored refcount
// is above the number of references found (harmless space loss), a
// corruption one whose stored refcount is below it, a COPIED flag that
// disagrees with "refcount == 1" in the active tables, or a damaged entry.
type CheckResult struct {
	Corruptions int64
	Leaks       int64
	CheckErrors int64 // I/O errors while checking

	ImageEndOffset     int64 // end of the last cluster in use (stored or referenced)
	TotalClusters      int64 // guest clusters
	AllocatedClusters  int64 // guest clusters with a host cluster (active L1)
	FragmentedClusters int64
	CompressedClusters int64

	// Messages describes the first problems found (at most maxCheckMessages).
	Messages []string
}

const (
	maxCheckMessages = 64
	// maxCheckClusters bounds the per-host-cluster reference counts a check
	// keeps (4 bytes each): 2^26 clusters, 4 TiB of 64 KiB clusters.
	maxCheckClusters = 1 << 26
)

func (c *CheckResult) corrupt(msg string) {
	c.Corruptions++
	c.note("ERROR " + msg)
}

func (c *CheckResult) note(msg string) {
	if len(c.Messages) < maxCheckMessages {
		c.Messages = append(c.Messages, msg)
	}
}

// checker is the state of one Check run.
type checker struct {
	im     *Image
	res    *CheckResult
	refs   []uint32 // references found, per host cluster
	nextOf int64    // next contiguous host offset in this L2 table (fragmentation)
	rc     refblockCache

	done, total, step, next int64 // progress (Image.Progress)
}

// tick counts n units of work and reports progress every step units.
func (c *checker) tick(n int64) {
	if c.im.Progress == nil {
		return
	}
	c.done += n
	if c.done >= c.next || c.done >= c.total {
		c.next = c.done + c.step
		c.im.Progress(min(c.done, c.total), c.total)
	}
}

// Check recomputes every cluster's reference count from the image's
// metadata (header, L1 tables, L2 tables, refcount table and blocks,
// snapshot table) and compares it with the stored refcounts, like
// `qemu-img check` without repair. It reads every L2 table once. The
// image is not changed. Images with consistent persistent bitmaps are not
// supported (their tables would count as leaks).
func (im *Image) Check() (*CheckResult, error) {
	h, g := im.Header, &im.Geometry
	if h.BitmapsConsistent() {
		return nil, unsupported("autoclear_features", h.AutoclearFeatures, "checking images with persistent bitmaps is not supported")
	}
	cs := g.ClusterSize()
	nb := (im.FileSize + cs - 1) / cs
	if nb > maxCheckClusters {
		return nil, limit("file_size", uint64(im.FileSize), "image file too large to check in memory")
	}
	res := &CheckResult{TotalClusters: (g.Size + cs - 1) / cs}
	c := &checker{im: im, res: res, refs: make([]uint32, nb)}
	c.total = int64(len(im.L1)) + nb
	for i := range im.Snapshots {
		c.total += int64(im.Snapshots[i].L1Entries)
	}
	c.step = max(c.total/200, 1)
	for _, i := range im.incompleteSnapshots() {
		res.corrupt("snapshot table entry " + strconv.Itoa(i) + " is incomplete")
	}
	c.countReferences()

	// Compare, and find the end of the used part of the file.
	var highest int64 = -1
	for i := int64(0); i < nb; i++ {
		c.tick(1)
		stored, err := im.refcount(i*cs, &c.rc)
		if err != nil {
			res.CheckErrors++
			res.note("cannot read refcount of cluster " + strconv.FormatInt(i, 10) + ": " + err.Error())
			continue
		}
		found := uint64(c.refs[i])
		if stored > 0 || found > 0 {
			highest = i
		}
		switch {
		case stored < found:
			res.corrupt("cluster " + strconv.FormatInt(i, 10) + " refcount=" + strconv.FormatUint(stored, 10) + " reference=" + strconv.FormatUint(found, 10))
		case stored > found:
			res.Leaks++
			res.note("Leaked cluster " + strconv.FormatInt(i, 10) + " refcount=" + strconv.FormatUint(stored, 10) + " reference=" + strconv.FormatUint(found, 10))
		}
	}
	res.ImageEndOffset = (highest + 1) * cs

	// COPIED must equal "refcount == 1" in the active tables.
	c.checkCopied()
	return res, nil
}

// incompleteSnapshots lists the snapshot table entries that a version 3
// image must not have: less than 16 bytes of extra data (the 64-bit VM
// state size and the disk size are mandatory from version 3 on; qemu-img
// check counts each such entry as a corruption, and -r all rewrites the
// table in the full form).
func (im *Image) incompleteSnapshots() []int {
	if im.Header.Version < 3 {
		return nil
	}
	var out []int
	for i := range im.Snapshots {
		if im.Snapshots[i].ExtraDataSize < 16 {
			out = append(out, i)
		}
	}
	return out
}

// countReferences fills c.refs with the references every host cluster
// gets from the image's metadata, and counts damaged entries in c.res.
func (c *checker) countReferences() {
	im, h, cs := c.im, c.im.Header, c.im.Geometry.ClusterSize()
	c.ref(0, cs, "header")
	c.ref(int64(h.L1Offset), int64(h.L1Entries)*8, "l1_table")
	c.ref(int64(h.RefcountTableOffset), int64(h.RefcountTableClusters)*cs, "refcount_table")
	c.ref(int64(h.SnapshotsOffset), im.SnapshotTableSize, "snapshot_table")
	c.walkL1(im.L1, true)
	for i := range im.Snapshots {
		s := &im.Snapshots[i]
		c.ref(int64(s.L1Offset), int64(s.L1Entries)*8, "snapshot_l1_table")
		snap, err := im.Snapshot(i)
		if err != nil {
			c.res.corrupt("snapshot " + strconv.Itoa(i) + ": " + err.Error())
			continue
		}
		c.walkL1(snap.L1, false)
	}
	for i, e := range im.RefcountTable {
		if e == 0 {
			continue
		}
		c.ref(int64(e), cs, "refcount_block["+strconv.Itoa(i)+"]")
	}
}

// ref adds one reference to every host cluster of [off, off+n).
func (c *checker) ref(off, n int64, what string) {
	if n <= 0 {
		return
	}
	cs := c.im.Geometry.ClusterSize()
	if off < 0 {
		c.res.corrupt(what + ": negative offset")
		return
	}
	for cl := off / cs; cl <= (off+n-1)/cs; cl++ {
		if cl >= int64(len(c.refs)) {
			c.res.corrupt(what + " at " + strconv.FormatInt(off, 10) + ": reference exceeding end of file")
			return
		}
		if c.refs[cl] < ^uint32(0) {
			c.refs[cl]++
		}
	}
}

func (c *checker) walkL1(l1 []uint64, active bool) {
	g := &c.im.Geometry
	for i, e := range l1 {
		c.tick(1)
		l2Off, _, err := g.DecodeL1Entry(e)
		if err != nil {
			c.res.corrupt(indexed("l1_table", uint64(i)) + ": " + err.Error())
			continue
		}
		if l2Off == 0 {
			continue
		}
		c.ref(l2Off, g.ClusterSize(), indexed("l1_table", uint64(i)))
		table, err := c.im.ReadL2(l2Off)
		if err != nil {
			c.res.CheckErrors++
			c.res.note("cannot read L2 table at " + strconv.FormatInt(l2Off, 10) + ": " + err.Error())
			continue
		}
		c.walkL2(table, l2Off, active)
	}
}

func (c *checker) walkL2(table []byte, l2Off int64, active bool) {
	g := &c.im.Geometry
	cs := g.ClusterSize()
	n := g.L2Entries()
	c.nextOf = 0 // QEMU counts fragmentation within each L2 table
	for j := int64(0); j < n; j++ {
		e, bm, _ := g.L2EntryAt(table, j)
		le, err := g.DecodeL2Entry(e, bm)
		if err != nil {
			c.res.corrupt("l2_table@" + hexString(uint64(l2Off)) + indexed("", uint64(j)) + ": " + err.Error())
			continue
		}
		switch le.Type {
		case Compressed:
			c.ref(le.Compressed.HostOff, le.Compressed.Size(), "compressed cluster")
			if active {
				c.res.AllocatedClusters++
				c.res.CompressedClusters++
				c.res.FragmentedClusters++
			}
		case Normal, ZeroAlloc:
			c.ref(le.HostOff, cs, "data cluster")
			if active {
				c.res.AllocatedClusters++
				if c.nextOf != 0 && le.HostOff != c.nextOf {
					c.res.FragmentedClusters++
				}
				c.nextOf = le.HostOff + cs
			}
		default:
			if g.ExtendedL2 && le.HostOff != 0 { // unallocated subclusters of a host cluster
				c.ref(le.HostOff, cs, "data cluster")
			}
		}
	}
}

// checkCopied compares COPIED in the active L1 and L2 tables with the
// stored refcounts, as qemu-img check does.
func (c *checker) checkCopied() {
	im, g := c.im, &c.im.Geometry
	for i, e := range im.L1 {
		l2Off, copied, err := g.DecodeL1Entry(e)
		if err != nil || l2Off == 0 {
			continue
		}
		rc, err := im.refcount(l2Off, &c.rc)
		if err != nil {
			c.res.CheckErrors++
			continue
		}
		if copied != (rc == 1) {
			c.res.corrupt("OFLAG_COPIED L2 cluster: l1_index=" + strconv.Itoa(i) + " l1_entry=" + strconv.FormatUint(e, 16) + " refcount=" + strconv.FormatUint(rc, 10))
		}
		table, err := im.ReadL2(l2Off)
		if err != nil {
			continue
		}
		for j := int64(0); j < g.L2Entries(); j++ {
			e, bm, _ := g.L2EntryAt(table, j)
			le, err := g.DecodeL2Entry(e, bm)
			if err != nil || (le.Type != Normal && le.Type != ZeroAlloc) {
				continue
			}
			rc, err := im.refcount(le.HostOff, &c.rc)
			if err != nil {
				c.res.CheckErrors++
				continue
			}
			if le.Copied != (rc == 1) {
				c.res.corrupt("OFLAG_COPIED data cluster: l2_entry=" + strconv.FormatUint(e, 16) + " refcount=" + strconv.FormatUint(rc, 10))
			}
		}
	}
}

func int64ToU(v int64) uint64 { return uint64(v) }

// Check runs Image.Check on the open image (block.Checker): dirty metadata
// is written back first (read-write nodes), then the metadata is read and
// checked through the file child in a coroutine, under metaLock so no
// allocation runs meanwhile. A repair mode runs a repair instead
// (repair.go). Messages go to DriverOptions.CheckLog.
func (d *Driver) Check(r *block.Request) {
	r.Context().Go(func(co *aio.Co) {
		d.metaLock.lock(co)
		var err error
		if r.CheckMode() != 0 {
			err = d.repair(co, r)
		} else {
			err = d.checkLocked(co, r)
		}
		d.metaLock.unlock()
		r.CompleteLater(d.formatErr(r.Op, 0, err))
	})
}

func (d *Driver) checkLocked(co *aio.Co, r *block.Request) error {
	if !d.readOnly {
		if err := d.flushAllMetadata(co, r); err != nil {
			return err
		}
	}
	size, err := d.file.Node().Length()
	if err != nil {
		return err
	}
	im, err := ReadImage(coReader{d, co, r}, size, Options{})
	if err != nil {
		return err
	}
	res, err := im.Check()
	if err != nil {
		return err
	}
	for _, m := range res.Messages {
		d.checkLog(m)
	}
	out := r.CheckResult()
	*out = block.CheckResult{
		Corruptions: int(res.Corruptions), Leaks: int(res.Leaks), CheckErrors: int(res.CheckErrors),
		ImageEndOffset: res.ImageEndOffset, AllocatedClusters: res.AllocatedClusters,
		TotalClusters: res.TotalClusters, FragmentedClusters: res.FragmentedClusters,
		CompressedClusters: res.CompressedClusters,
	}
	return nil
}

// coReader reads the image file from a coroutine (for ReadImage and Check).
type coReader struct {
	d  *Driver
	co *aio.Co
	r  *block.Request
}

func (c coReader) ReadAt(p []byte, off int64) (int, error) {
	if err := c.d.fileRead(c.co, c.r, p, off); err != nil {
		return 0, err
	}
	return len(p), nil
}
