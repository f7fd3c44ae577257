package qcow2

import (
	"errors"
	"io"
	"slices"
	"strconv"
	"syscall"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// Repair: `qemu-img check -r leaks|all` on an open read-write image.
//
// A repair recomputes every cluster's references from the metadata (the
// checker of check.go), compares them with the stored refcounts and then,
// as the mode allows:
//
//   - leaks (stored > references, FixLeaks): the stored refcount is lowered
//     to the reference count; clusters that reach 0 are free again. The
//     file is not truncated (QEMU 7.2 does not either).
//   - errors (0 < stored < references, FixErrors): the refcount is raised.
//   - a referenced cluster with refcount 0, or a refcount block that is not
//     referenced exactly once, cannot be fixed in place: with FixErrors the
//     whole refcount structure is rebuilt from the references into clusters
//     nothing references (QEMU's placement, so the resulting layout is
//     qemu-img's), the header is switched to the new table, and the old
//     structures, now leaked, are freed by a second comparison. Without
//     FixErrors the repair fails ("need to rebuild refcount structures").
//   - COPIED flags in the active L1 and L2 tables that disagree with
//     "refcount == 1" are set or cleared (FixErrors, or FixLeaks when
//     nothing else is left wrong).
//
// A repair that leaves no corruption clears the dirty and corrupt bits.
//
// Crash safety: every write goes to a refcount block, an L1 entry, an L2
// table's COPIED bits, or a cluster nothing references; refcount blocks are
// synced before the COPIED fixes that rely on them, and a rebuilt table
// and its blocks are synced before the one 12-byte header write that
// switches to them (R3). Leak fixes only lower refcounts of clusters that
// nothing references. A crash part-way leaves leaks or the old structure,
// never a referenced cluster with refcount 0 that was not already one.
//
// A reference count the refcount width cannot hold is reported as
// qemu-img reports it and counted at the width's maximum (QEMU stops
// there), so nothing about that cluster is repaired: amend to a wider
// refcount_bits first.
//
// Damaged L1 and refcount table entries are counted as QEMU counts them
// (checker.walkL1, checkRefblocks): what qemu-img repairs around them is
// repaired, the damage itself stays (a damaged refcount table entry goes
// away with the rebuild it forces); an unaligned preallocated cluster is
// dropped (repair_l2fix.go). Not repaired (the repair refuses and
// changes nothing): compressed L2 entries the decoder rejects
// and images whose persistent bitmap directory does not decode (a good
// one's clusters are counted as references). The file is never grown to reach a
// bogus offset. Freed clusters are not discarded in the
// file (QEMU punches them; the difference is only allocated file space).

// RepairResult is what a repair found and fixed. The embedded CheckResult
// counts what is still wrong after the repair pass (qemu-img then runs a
// plain check to report the final state).
type RepairResult struct {
	format.CheckResult
	LeaksFixed       int64
	CorruptionsFixed int64
}

// repairFile is the image file as a repair sees it.
type repairFile interface {
	io.ReaderAt
	WriteAt(p []byte, off int64) (int, error)
	Sync() error
	Size() (int64, error)
}

// ErrNeedRebuild is the failure of a leaks-only repair that found a
// referenced cluster with refcount 0 (QEMU: EIO): only a repair of all
// errors can rebuild the refcount structure.
var ErrNeedRebuild = &format.FormatError{Field: "refcount", Reason: "need to rebuild refcount structures (repair all errors)", Err: format.ErrCorrupt}

// repairer is the state of one repair run.
type repairer struct {
	f         repairFile
	fixLeaks  bool
	fixErrors bool
	log       func(string)
	res       RepairResult

	im *format.Image
	// cur is the last clean refcount block read; dirty holds the blocks
	// the repair changed (written back by flushRefblocks).
	cur     format.RefblockCache
	dirty   map[int64][]byte
	l2Fixed []int64 // L2 tables rewritten with fixed COPIED flags

	// checkSnapshots makes the first scan count incomplete snapshot
	// table entries (incompleteSnapshots) as corruptions; the caller
	// (Driver.repair) rewrites the table after the refcount repair, as
	// QEMU's qcow2_check_fix_snapshot_table does, and settles the counts.
	checkSnapshots bool
	snapIncomplete int64
	snapTruncated  int64 // entries whose extra data was cut (readSnapshots)
	scanned        bool
	signalled      bool // the unaligned-refcount-block event was logged
	pastEOF        int64
}

func newRepairer(f repairFile, mode block.CheckMode, log func(string)) *repairer {
	if log == nil {
		log = func(string) {}
	}
	return &repairer{f: f, fixLeaks: mode&block.CheckFixLeaks != 0, fixErrors: mode&block.CheckFixErrors != 0,
		log: log, dirty: make(map[int64][]byte)}
}

func (r *repairer) logf(parts ...string) {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	b := make([]byte, 0, n)
	for _, p := range parts {
		b = append(b, p...)
	}
	r.log(string(b))
}

func decInt(v int64) string   { return strconv.FormatInt(v, 10) }
func decUint(v uint64) string { return strconv.FormatUint(v, 10) }

// scan reads the image afresh and counts references. It returns the
// references, the number of damaged entries the repair cannot fix, and
// whether a refcount block is referenced other than once (a rebuild).
func (r *repairer) scan() (refs []uint32, damaged int64, rebuild bool, err error) {
	size, err := r.f.Size()
	if err != nil {
		return nil, 0, false, err
	}
	im, err := format.ReadImage(r.f, size, format.Options{CheckMode: r.checkSnapshots})
	if err != nil {
		return nil, 0, false, err
	}
	if r.checkSnapshots {
		if err := r.readSnapshots(im); err != nil {
			return nil, 0, false, err
		}
	}
	h, g := im.Header, &im.Geometry
	if h.BitmapsConsistent() {
		// Their clusters count as references (Image.CountReferences)
		// only if the directory decodes; otherwise a repair would free
		// clusters the extension still names.
		if _, err := format.BitmapClusters(r.f, h, size); err != nil {
			return nil, 0, false, format.Unsupported("autoclear_features", h.AutoclearFeatures, "repairing an image whose bitmap directory is damaged is not supported: "+err.Error())
		}
	}
	cs := g.ClusterSize()
	nb := (size + cs - 1) / cs
	if nb > format.MaxCheckClusters {
		return nil, 0, false, format.Limit("file_size", uint64(size), "image file too large to check in memory")
	}
	r.im = im
	r.cur = format.RefblockCache{}
	clear(r.dirty)
	if r.checkSnapshots && !r.scanned {
		word := "ERROR"
		if r.fixErrors {
			word = "Repairing"
		}
		for _, i := range im.IncompleteSnapshots() {
			r.logf(word, " snapshot table entry ", strconv.Itoa(i), " is incomplete")
			r.snapIncomplete++
		}
		r.res.Corruptions += r.snapIncomplete
	}
	r.scanned = true
	res := &format.CheckResult{TotalClusters: (g.Size + cs - 1) / cs}
	im.CheckLog = r.log // every message as it is found, as qemu-img
	c := im.CountReferences(res, nb, r.fixErrors)
	damaged = c.L2Damaged
	rebuild = c.Rebuild
	r.pastEOF = c.PastEOF
	im.CapOverflows(res, c.Refs)
	for _, m := range res.Messages {
		r.log(m)
	}
	if err := r.applyL2Fixes(c.Fixes); err != nil { // repair_l2fix.go
		return nil, 0, false, err
	}
	res.Corruptions -= int64(len(c.Fixes))
	r.res.CorruptionsFixed += int64(len(c.Fixes))
	r.res.Corruptions += res.Corruptions
	r.res.CheckErrors += res.CheckErrors
	r.res.TotalClusters = res.TotalClusters
	r.res.AllocatedClusters = res.AllocatedClusters
	r.res.FragmentedClusters = res.FragmentedClusters
	r.res.CompressedClusters = res.CompressedClusters
	return c.Refs, damaged, rebuild, nil
}

// refcount returns the stored refcount of cluster idx, as changed so far.
func (r *repairer) refcount(idx int64) (uint64, error) {
	g := &r.im.Geometry
	ti, bi := g.RefcountIndex(idx * g.ClusterSize())
	if ti >= int64(len(r.im.RefcountTable)) {
		return 0, nil
	}
	off := int64(r.im.RefcountTable[ti])
	if off == 0 {
		return 0, nil
	}
	if b := r.dirty[off]; b != nil {
		return format.RefcountGet(b, g.RefcountOrder, bi)
	}
	return r.im.RefcountCached(idx*g.ClusterSize(), &r.cur)
}

// setRefcount changes cluster idx's refcount in memory; flushRefblocks
// writes it. REQUIRES: a refcount block covers idx (its refcount is > 0).
func (r *repairer) setRefcount(idx int64, v uint64) error {
	g := &r.im.Geometry
	ti, bi := g.RefcountIndex(idx * g.ClusterSize())
	if ti >= int64(len(r.im.RefcountTable)) || r.im.RefcountTable[ti] == 0 {
		return format.Corrupt("refcount", uint64(idx), "no refcount block for the cluster")
	}
	off := int64(r.im.RefcountTable[ti])
	b := r.dirty[off]
	if b == nil {
		b = make([]byte, g.ClusterSize())
		if err := format.ReadFull(r.f, b, off); err != nil {
			return err
		}
		r.dirty[off] = b
		if r.cur.Off == off {
			r.cur.Block = nil
		}
	}
	return format.RefcountSet(b, g.RefcountOrder, bi, v)
}

// flushRefblocks writes the changed refcount blocks and syncs.
func (r *repairer) flushRefblocks() error {
	if len(r.dirty) == 0 {
		return nil
	}
	offs := make([]int64, 0, len(r.dirty))
	for off := range r.dirty {
		offs = append(offs, off)
	}
	slices.Sort(offs)
	for _, off := range offs {
		if _, err := r.f.WriteAt(r.dirty[off], off); err != nil {
			return err
		}
	}
	if err := r.f.Sync(); err != nil {
		return err
	}
	clear(r.dirty)
	return nil
}

// compare compares stored refcounts with refs, printing what differs in
// qemu-img's words and fixing what the flags allow. It returns the last
// cluster in use and whether a rebuild is needed (a referenced cluster
// with refcount 0).
func (r *repairer) compare(refs []uint32, fixLeaks, fixErrors bool) (highest int64, rebuild bool) {
	for i := int64(0); i < int64(len(refs)); i++ {
		stored, err := r.refcount(i)
		if err != nil {
			msg := err.Error()
			var ue *format.RefblockUnalignedError
			if errors.As(err, &ue) {
				if !r.signalled {
					r.signalled = true
					r.log(format.QemuCorruptEvent(ue))
				}
				msg = "Input/output error"
			}
			r.logf("Can't get refcount for cluster ", decInt(i), ": ", msg)
			r.res.CheckErrors++
			continue
		}
		found := uint64(refs[i])
		if stored > 0 || found > 0 {
			highest = i
		}
		if stored == found {
			continue
		}
		var fixed *int64
		switch {
		case stored == 0:
			rebuild = true
		case stored > found && fixLeaks:
			fixed = &r.res.LeaksFixed
		case stored < found && fixErrors:
			fixed = &r.res.CorruptionsFixed
		}
		what := "Leaked"
		switch {
		case fixed != nil:
			what = "Repairing"
		case stored < found:
			what = "ERROR"
		}
		r.logf(what, " cluster ", decInt(i), " refcount=", decUint(stored), " reference=", decUint(found))
		if fixed != nil {
			if err := r.setRefcount(i, found); err == nil {
				*fixed++
				continue
			}
		}
		if stored < found {
			r.res.Corruptions++
		} else {
			r.res.Leaks++
		}
	}
	return highest, rebuild
}

// run is the whole repair (qcow2_check_refcounts with a fix mode, then
// the COPIED check, then marking the image clean).
func (r *repairer) run() error {
	refs, damaged, rebuild, err := r.scan()
	if err != nil {
		r.res.CheckErrors++
		return err
	}
	if damaged > 0 {
		r.res.CheckErrors++
		return format.Corrupt("image", uint64(damaged), "damaged L2 entries found (see the messages); their clusters cannot be counted, so nothing is repaired")
	}
	cs := r.im.Geometry.ClusterSize()
	pre := r.res
	highest, rb := r.compare(refs, false, false)
	rebuild = rebuild || rb

	if rebuild && r.fixErrors && r.pastEOF > 0 {
		// A rebuilt structure goes into clusters nothing references,
		// which may be past the end of the file, where these damaged
		// references point: the entries would then name live metadata.
		r.res.CheckErrors++
		return format.Corrupt("image", uint64(r.pastEOF), "references past the end of the file (see the messages): not rebuilding the refcount structure where they point")
	}
	switch {
	case rebuild && r.fixErrors:
		old := r.res
		r.log("Rebuilding refcount structure")
		if err := r.rebuild(refs); err != nil {
			r.res.CheckErrors++
			return err
		}
		// The snapshot table entries are still wrong: the table is
		// rewritten after the refcount repair (Driver.repair), which
		// counts them as fixed then.
		r.res.Corruptions, r.res.Leaks = r.snapIncomplete+r.snapTruncated, 0
		// References again, through the new table: the old structures
		// are leaks now.
		refs, damaged, rebuild, err = r.scan()
		if err != nil {
			r.res.CheckErrors++
			return err
		}
		if damaged > 0 || rebuild {
			r.res.CheckErrors++
			return format.Corrupt("refcount_table", 0, "rebuilt refcount structure is still broken")
		}
		fresh := int64(0)
		if r.fixLeaks {
			saved := r.res
			r.res = RepairResult{}
			var again bool
			highest, again = r.compare(refs, true, false)
			if again {
				r.log("ERROR rebuilt refcount structure is still broken")
			}
			fresh = r.res.Leaks
			r.res = saved
		}
		if r.res.Corruptions < old.Corruptions {
			r.res.CorruptionsFixed += old.Corruptions - r.res.Corruptions
		}
		if r.res.Leaks < old.Leaks {
			r.res.LeaksFixed += old.Leaks - r.res.Leaks
		}
		r.res.Leaks += fresh
	case r.fixLeaks || r.fixErrors:
		if rebuild {
			r.log("ERROR need to rebuild refcount structures")
			r.res.CheckErrors++
			return ErrNeedRebuild
		}
		if r.res.Leaks > 0 || r.res.Corruptions > 0 {
			r.res = pre
			highest, _ = r.compare(refs, r.fixLeaks, r.fixErrors)
		}
	}
	if err := r.flushRefblocks(); err != nil {
		r.res.CheckErrors++
		return err
	}
	if err := r.fixCopied(); err != nil {
		r.res.CheckErrors++
		return err
	}
	r.res.ImageEndOffset = (highest + 1) * cs
	if (r.fixLeaks || r.fixErrors) && r.res.CheckErrors == 0 && r.res.Corruptions == 0 {
		return r.markClean()
	}
	return nil
}

// snapshotsPending reports whether the snapshot table still needs the
// rewrite that a repair of all errors does (see checkSnapshots).
func (r *repairer) snapshotsPending() bool {
	return r.fixErrors && r.snapIncomplete+r.snapTruncated > 0
}

// readSnapshots reads the snapshot table of im (read in check mode) as
// QEMU's check does: in a repair of all errors, overhanging entries are
// dropped (the header's count is lowered at once, leaking their
// clusters, which the refcount repair frees) and entries with too much
// extra data are cut (the table is rewritten after the refcount repair).
// The first scan reports and counts; later ones read the same form.
func (r *repairer) readSnapshots(im *format.Image) error {
	sc, err := im.ReadSnapshotsForCheck(r.fixErrors)
	if err != nil {
		return err
	}
	if r.scanned {
		return nil
	}
	for _, m := range sc.Messages {
		r.log(m)
	}
	if sc.Overhanging > 0 {
		var b [4]byte
		n := uint32(len(im.Snapshots))
		b[0], b[1], b[2], b[3] = byte(n>>24), byte(n>>16), byte(n>>8), byte(n)
		if _, err := r.f.WriteAt(b[:], 60); err != nil {
			return err
		}
		if err := r.f.Sync(); err != nil {
			return err
		}
		r.res.CorruptionsFixed += int64(sc.Overhanging)
	}
	r.snapTruncated = sc.Truncated
	r.res.Corruptions += sc.Truncated
	return nil
}

// fixCopied compares COPIED in the active L1 and L2 tables with the
// refcounts (as repaired) and fixes it when allowed (QEMU's
// check_oflag_copied).
func (r *repairer) fixCopied() error {
	repair := r.fixErrors || (r.fixLeaks && r.res.CheckErrors == 0 && r.res.Corruptions == 0 && r.res.Leaks == 0)
	word := "ERROR"
	if repair {
		word = "Repairing"
	}
	im, g := r.im, &r.im.Geometry
	cs := g.ClusterSize()
	wrote := false
	var table []byte
	for i, e := range im.L1 {
		// As QEMU: the offset bits of the entry, whatever else is wrong
		// with it (reserved bits, an unaligned or past-EOF table).
		l2Off := int64(e & format.OffsetMask)
		if l2Off == 0 {
			continue
		}
		rc, err := r.refcount(l2Off / cs)
		if err != nil {
			continue
		}
		if (e&format.EntryCopied != 0) != (rc == 1) {
			r.res.Corruptions++
			r.logf(word, " OFLAG_COPIED L2 cluster: l1_index=", strconv.Itoa(i), " l1_entry=", strconv.FormatUint(e, 16), " refcount=", decUint(rc))
			if repair {
				ne := e &^ format.EntryCopied
				if rc == 1 {
					ne |= format.EntryCopied
				}
				var b [8]byte
				putU64(b[:], ne)
				if _, err := r.f.WriteAt(b[:], int64(im.Header.L1Offset)+int64(i)*8); err != nil {
					return err
				}
				wrote = true
				r.res.Corruptions--
				r.res.CorruptionsFixed++
			}
		}
		if l2Off&(cs-1) != 0 || l2Off >= im.FileSize {
			continue // not a table we read or write (checker.walkL1)
		}
		if table == nil {
			table = make([]byte, cs)
		}
		if err := format.ReadFull(r.f, table, l2Off); err != nil {
			r.logf("ERROR: Could not read L2 table: ", err.Error())
			return err
		}
		fixed := int64(0)
		esz := g.L2EntrySize()
		for j := int64(0); j < g.L2Entries(); j++ {
			e, bm, _ := g.L2EntryAt(table, j)
			host, ok := g.CopiedChecked(e, bm)
			if !ok {
				continue
			}
			rc, err := r.refcount(host / cs)
			if g.ExternalData { // datafile.go: data clusters count as referenced once
				rc, err = 1, nil
			}
			if err != nil {
				continue
			}
			if (e&format.EntryCopied != 0) == (rc == 1) {
				continue
			}
			r.res.Corruptions++
			r.logf(word, " OFLAG_COPIED data cluster: l2_entry=", strconv.FormatUint(e, 16), " refcount=", decUint(rc))
			if repair {
				putU64(table[j*esz:], e^copiedFlag)
				fixed++
			}
		}
		if fixed > 0 {
			if _, err := r.f.WriteAt(table, l2Off); err != nil {
				r.logf("ERROR: Could not write L2 table: ", err.Error())
				return err
			}
			wrote = true
			r.l2Fixed = append(r.l2Fixed, l2Off)
			r.res.Corruptions -= fixed
			r.res.CorruptionsFixed += fixed
		}
	}
	if wrote {
		return r.f.Sync()
	}
	return nil
}

// copiedFlag is bit 63 of L1 and L2 entries.
const copiedFlag = uint64(1) << 63

// markClean clears the dirty and corrupt bits (an 8-byte header write of
// the incompatible features, R6) after everything above is durable.
func (r *repairer) markClean() error {
	h := r.im.Header
	bits := h.IncompatibleFeatures & (format.IncompatDirty | format.IncompatCorrupt)
	if h.Version < 3 || bits == 0 {
		return nil
	}
	var b [8]byte
	putU64(b[:], h.IncompatibleFeatures&^bits)
	if _, err := r.f.WriteAt(b[:], 72); err != nil {
		return err
	}
	if err := r.f.Sync(); err != nil {
		return err
	}
	h.IncompatibleFeatures &^= bits
	return nil
}

// rebuild writes a new refcount structure describing refs (the
// references of every cluster) into clusters that nothing references, and
// switches the header to it. The placement is QEMU 7.2's
// (rebuild_refcount_structure): each refcount block goes to the first
// free cluster at or after the start of the range it describes, the table
// to the first run of free clusters long enough for it, and when placing
// the table grows it the table is placed again (the abandoned places are
// leaks for the second comparison to free).
func (r *repairer) rebuild(refs []uint32) error {
	g := &r.im.Geometry
	cs := g.ClusterSize()
	per := g.RefcountBlockEntries()
	order := g.RefcountOrder
	var rt []uint64
	buf := make([]byte, cs)

	// alloc marks n contiguous free clusters used, searching from *from.
	alloc := func(n int64, from *int64) int64 {
		cl, run, first := *from, int64(0), true
		for ; cl < int64(len(refs)) && run < n; cl++ {
			if refs[cl] == 0 {
				run++
				if first {
					*from, first = cl, false
				}
			} else {
				run = 0
			}
		}
		if run < n {
			refs = append(refs, make([]uint32, cl+n-run-int64(len(refs)))...)
		}
		cl -= run
		for i := int64(0); i < n; i++ {
			refs[cl+i] = 1
		}
		return cl
	}
	// writeBlocks writes the refcount block of every range of
	// [first, end) that holds a used cluster, placing missing blocks. It
	// reports whether the table had to grow.
	writeBlocks := func(first, end int64) (bool, error) {
		grown := false
		from := int64(0)
		for cl := first; cl < end; cl++ {
			if cl >= int64(len(refs)) || refs[cl] == 0 {
				continue
			}
			bi := cl / per
			start := bi * per
			if bi >= int64(len(rt)) || rt[bi] == 0 {
				from = max(from, start)
				b := alloc(1, &from)
				if b >= end {
					end = b + 1 // that block's own refcount must be written too
				}
				if bi >= int64(len(rt)) {
					n := ((bi+1)*8 + cs - 1) / cs * cs / 8
					if n*8 > format.MaxRefcountTableBytes {
						return false, format.Limit("refcount_table_clusters", uint64(n*8/cs), "rebuilt refcount table would exceed its limit")
					}
					rt = append(rt, make([]uint64, n-int64(len(rt)))...)
					grown = true
				}
				rt[bi] = uint64(b * cs)
			}
			clear(buf)
			for j := int64(0); j < per && start+j < int64(len(refs)); j++ {
				if v := refs[start+j]; v != 0 {
					if err := format.RefcountSet(buf, order, j, uint64(v)); err != nil {
						return false, err
					}
				}
			}
			if _, err := r.f.WriteAt(buf, int64(rt[bi])); err != nil {
				return false, err
			}
			cl = start + per - 1
		}
		return grown, nil
	}

	if _, err := writeBlocks(0, int64(len(refs))); err != nil {
		return err
	}
	if len(rt) == 0 {
		return format.Corrupt("refcount_table", 0, "nothing to describe in a rebuilt refcount table")
	}
	var tableOff, tableClusters int64
	for {
		tableClusters = (int64(len(rt))*8 + cs - 1) / cs
		from := int64(0)
		tableOff = alloc(tableClusters, &from)
		grown, err := writeBlocks(tableOff, tableOff+tableClusters)
		if err != nil {
			return err
		}
		if !grown {
			break
		}
	}
	tb := make([]byte, int64(len(rt))*8)
	for i, e := range rt {
		putU64(tb[i*8:], e)
	}
	if _, err := r.f.WriteAt(tb, tableOff*cs); err != nil {
		return err
	}
	if err := r.f.Sync(); err != nil {
		return err
	}
	var hb [12]byte
	putU64(hb[:], uint64(tableOff*cs))
	hb[8], hb[9], hb[10], hb[11] = byte(tableClusters>>24), byte(tableClusters>>16), byte(tableClusters>>8), byte(tableClusters)
	if _, err := r.f.WriteAt(hb[:], 48); err != nil {
		return err
	}
	return r.f.Sync()
}

// Driver side.

// coFile is the driver's file child as a repairFile, used from a
// coroutine.
type coFile struct{ coReader }

func (f coFile) WriteAt(p []byte, off int64) (int, error) {
	if err := f.d.fileWrite(f.co, f.r, p, off); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (f coFile) Sync() error { return f.d.fileSync(f.co, f.r) }

func (f coFile) Size() (int64, error) { return f.d.file.Node().Length() }

// nodeFile is a file node as a repairFile, used synchronously at open.
type nodeFile struct{ n *block.Node }

func (f nodeFile) ReadAt(p []byte, off int64) (int, error)  { return f.n.ReadAt(p, off) }
func (f nodeFile) WriteAt(p []byte, off int64) (int, error) { return f.n.WriteAt(p, off) }
func (f nodeFile) Sync() error                              { return f.n.Flush() }
func (f nodeFile) Size() (int64, error)                     { return f.n.Length() }

func (d maintOps) checkLog(msg string) {
	if d.opts.CheckLog != nil {
		d.opts.CheckLog(msg)
	}
}

// repair runs a repair (r.CheckMode() != 0) on the open image.
// REQUIRES: metaLock held. No guest I/O may run meanwhile (the caller
// drains the node); allocating writes in flight make it fail as busy.
func (d maintOps) repair(co *aio.Co, r *block.Request) error {
	if d.readOnly {
		return &block.Error{Kind: block.Unsupported, Op: r.Op, Node: d.nodeName(), Err: syscall.EACCES}
	}
	d.mu.Lock()
	busy := len(d.mu.inflight) > 0
	cerr := d.mu.corruptErr
	dirty := d.l2.dirty > 0 || len(d.mu.dirtyRT) > 0 || len(d.mu.dirtyL1) > 0 || len(d.mu.pendingFrees) > 0 || d.anyDirtyRefblockLocked()
	d.mu.Unlock()
	if busy {
		return &block.Error{Kind: block.Io, Op: r.Op, Node: d.nodeName(), Err: syscall.EBUSY}
	}
	if cerr == nil {
		if err := d.flushAllMetadata(co, r); err != nil {
			return err
		}
		if err := d.clearUnknownAutoclear(co, r); err != nil {
			return err
		}
	} else if dirty {
		return errors.Join(cerr, errors.New("qcow2: cannot repair an image with unwritten metadata after an overlap check fired; close and repair it offline"))
	}
	rp := newRepairer(coFile{coReader{d.Driver, co, r}}, r.CheckMode(), d.checkLog)
	rp.checkSnapshots = true
	rerr := rp.run()
	lerr := d.reloadMetadata(co, r, rp.l2Fixed)
	res := &rp.res
	if rerr == nil && lerr == nil && rp.snapshotsPending() {
		// The refcounts are right now, so allocating is safe: write the
		// snapshot table back in the full form (QEMU 7.2 does this after
		// the refcount repair too), then mark the image clean if that
		// was all that was wrong.
		d.mu.Lock()
		snaps, size := d.mu.snaps, d.mu.geo.Size
		d.mu.Unlock()
		if err := d.writeSnapshotTable(co, normalizedSnapshots(snaps, size)); err != nil {
			res.CheckErrors++
			d.checkLog("ERROR failed to update the snapshot table: " + err.Error())
			rerr = err
		} else {
			res.Corruptions -= rp.snapIncomplete + rp.snapTruncated
			res.CorruptionsFixed += rp.snapIncomplete + rp.snapTruncated
			if res.CheckErrors == 0 && res.Corruptions == 0 {
				rerr = rp.markClean()
			}
			lerr = d.reloadMetadata(co, r, nil)
		}
	}
	*r.CheckResult() = block.CheckResult{
		Corruptions: int(res.Corruptions), Leaks: int(res.Leaks), CheckErrors: int(res.CheckErrors),
		CorruptionsFixed: int(res.CorruptionsFixed), LeaksFixed: int(res.LeaksFixed),
		ImageEndOffset: res.ImageEndOffset, AllocatedClusters: res.AllocatedClusters,
		TotalClusters: res.TotalClusters, FragmentedClusters: res.FragmentedClusters,
		CompressedClusters: res.CompressedClusters,
	}
	d.mu.Lock()
	if lerr != nil {
		// The in-memory metadata no longer matches the file.
		if d.mu.corruptErr == nil {
			d.setCorruptLocked(lerr)
		}
	} else if rerr == nil && res.CheckErrors == 0 && res.Corruptions == 0 {
		d.setCorruptLocked(nil)
		d.mu.lazy.needRepair = false
	}
	d.mu.Unlock()
	if rerr != nil {
		return rerr
	}
	return lerr
}

// reloadMetadata re-reads the header, L1 and refcount tables after a
// repair changed them in the file, and forgets cached refcount blocks and
// the L2 tables the repair rewrote. REQUIRES: metaLock held, nothing
// dirty in memory.
func (d maintOps) reloadMetadata(co *aio.Co, r *block.Request, l2Fixed []int64) error {
	size, err := d.file.Node().Length()
	if err != nil {
		return err
	}
	im, err := format.ReadImage(coReader{d.Driver, co, r}, size, d.imageOptions(format.Options{}))
	if err != nil {
		return err
	}
	untrusted, err := d.untrustedOf(im) // untrusted.go: a rebuild clears it
	if err != nil {
		return err
	}
	d.checkModeSnapshots(im) // snapshot_check.go
	d.mu.Lock()
	defer d.mu.Unlock()
	d.mu.untrusted = untrusted
	d.mu.hdr, d.mu.l1, d.mu.rt = im.Header, im.L1, im.RefcountTable
	fs := max(d.mu.geo.FileSize, im.Geometry.FileSize)
	d.mu.geo = im.Geometry
	d.mu.geo.FileSize = fs
	d.mu.snaps, d.mu.snapSz = im.Snapshots, im.SnapshotTableSize
	d.setDamage(im)
	d.mu.rb = make(map[int64]*refBlock)
	d.resetMetaClusters()
	d.publishLocked()
	for _, off := range l2Fixed {
		d.l2.drop(off)
	}
	d.mu.freeIdx = 0
	d.mu.lazy.dirtyOnDisk = d.mu.hdr.IncompatibleFeatures&format.IncompatDirty != 0
	return nil
}

// openRepair runs at a read-write open, before the metadata is read: an
// image with the dirty bit (lazy refcounts, not closed cleanly) gets a
// full repair first, as QEMU does. With DriverOptions.CheckOpen a dirty
// or corrupt image is opened as it is instead, and refuses writes until a
// repair succeeds. It reports whether ReadImage must skip its read-write
// checks.
func (d maintOps) openRepair(file *block.Node) (relaxed bool, err error) {
	var b [80]byte
	if _, err := file.ReadAt(b[:], 0); err != nil && !errors.Is(err, io.EOF) {
		return false, nil // ReadImage reports it
	}
	if hdrU32(b[0:]) != format.Magic || hdrU32(b[4:]) < 3 {
		return false, nil
	}
	incompat := hdrU64(b[72:])
	if incompat&(format.IncompatDirty|format.IncompatCorrupt) == 0 {
		return false, nil
	}
	if d.opts.CheckOpen {
		d.mu.lazy.needRepair = true
		return true, nil
	}
	if incompat&format.IncompatCorrupt != 0 || incompat&^format.IncompatKnown != 0 {
		return false, nil // refused by ReadImage with the right message
	}
	logf := d.checkLog
	if d.opts.RepairLog != nil {
		logf = d.opts.RepairLog
	}
	rp := newRepairer(nodeFile{file}, block.CheckFixLeaks|block.CheckFixErrors, logf)
	err = rp.run()
	if err == nil && (rp.res.CheckErrors > 0 || rp.res.Corruptions > 0) {
		err = format.Corrupt("incompatible_features", incompat, "repair left "+decInt(rp.res.Corruptions)+" corruptions")
	}
	if err != nil {
		return false, d.openErr(block.Corrupt, errors.Join(errors.New("qcow2: could not repair dirty image"), err))
	}
	return false, nil
}

func hdrU32(b []byte) uint32 {
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}
func hdrU64(b []byte) uint64 { return uint64(hdrU32(b))<<32 | uint64(hdrU32(b[4:])) }
