package format

import (
	"errors"
	"strconv"
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

	log func(string) // Image.CheckLog: every message, none kept
}

const (
	maxCheckMessages = 64
	// MaxCheckClusters bounds the per-host-cluster reference counts a check
	// keeps (4 bytes each): 2^26 clusters, 4 TiB of 64 KiB clusters.
	MaxCheckClusters = 1 << 26
)

func (c *CheckResult) AddCorruption(msg string) {
	c.Corruptions++
	c.note("ERROR " + msg)
}

func (c *CheckResult) note(msg string) {
	if c.log != nil {
		c.log(msg)
		return
	}
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
	rc     RefblockCache

	// fixErrors selects the words of a repair of all errors ("Repairing"
	// where QEMU says so); rebuild is set when the refcount structure
	// itself is broken (a damaged refcount table entry, a refcount block
	// not referenced exactly once).
	fixErrors bool
	rebuild   bool
	// l2Damaged counts L2 entries that could not be decoded: their
	// clusters got no reference, so a repair must not free anything.
	l2Damaged int64
	// pastEOF counts references a cluster or more past the end of the
	// file (not counted in refs).
	pastEOF   int64
	signalled bool // the unaligned-refcount-block event was reported
	// fixes are the L2 entries a repair of all errors rewrites
	// (check_l2fix.go).
	fixes []L2Fix

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
// snapshot table, persistent bitmaps) and compares it with the stored
// refcounts, like `qemu-img check` without repair. It reads every L2
// table once. The image is not changed.
func (im *Image) Check() (*CheckResult, error) {
	g := &im.Geometry
	cs := g.ClusterSize()
	nb := (im.FileSize + cs - 1) / cs
	if nb > MaxCheckClusters {
		return nil, Limit("file_size", uint64(im.FileSize), "image file too large to check in memory")
	}
	res := &CheckResult{TotalClusters: (g.Size + cs - 1) / cs, log: im.CheckLog}
	c := &checker{im: im, res: res, refs: make([]uint32, nb)}
	c.total = int64(len(im.L1)) + nb
	for i := range im.Snapshots {
		c.total += int64(im.Snapshots[i].L1Entries)
	}
	c.step = max(c.total/200, 1)
	for _, i := range im.IncompleteSnapshots() {
		res.AddCorruption("snapshot table entry " + strconv.Itoa(i) + " is incomplete")
	}
	c.countReferences()
	im.CapOverflows(res, c.refs)

	// Compare, and find the end of the used part of the file.
	var highest int64       // QEMU starts at cluster 0 too (an image whose refcounts cannot be read ends at one cluster)
	nb = int64(len(c.refs)) // a reference within a cluster past EOF may have added one
	for i := int64(0); i < nb; i++ {
		c.tick(1)
		stored, err := im.RefcountCached(i*cs, &c.rc)
		if err != nil {
			res.CheckErrors++
			res.note("Can't get refcount for cluster " + strconv.FormatInt(i, 10) + ": " + c.refcountErr(err))
			continue
		}
		found := uint64(c.refs[i])
		if stored > 0 || found > 0 {
			highest = i
		}
		switch {
		case stored < found:
			res.AddCorruption("cluster " + strconv.FormatInt(i, 10) + " refcount=" + strconv.FormatUint(stored, 10) + " reference=" + strconv.FormatUint(found, 10))
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

// IncompleteSnapshots lists the snapshot table entries that a version 3
// image must not have: less than 16 bytes of extra data (the 64-bit VM
// state size and the disk size are mandatory from version 3 on; qemu-img
// check counts each such entry as a corruption, and -r all rewrites the
// table in the full form).
func (im *Image) IncompleteSnapshots() []int {
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
// gets from the image's metadata, and counts damaged entries in c.res
// (QEMU's calculate_refcounts, in its order and with its messages).
func (c *checker) countReferences() {
	im, h, cs := c.im, c.im.Header, c.im.Geometry.ClusterSize()
	c.ref(0, cs, "header")
	c.ref(int64(h.L1Offset), int64(h.L1Entries)*8, "l1_table")
	c.walkL1(im.L1, true)
	for i := range im.Snapshots {
		s := &im.Snapshots[i]
		// QEMU's two checks of a snapshot's L1 fields: the entry is
		// counted as one corruption and its tables are not walked.
		pre := "snapshot " + s.ID + " (" + s.Name + ") "
		if s.L1Offset&uint64(cs-1) != 0 {
			c.res.AddCorruption(pre + "l1_offset=" + hexAlt(s.L1Offset) + ": L1 table is not cluster aligned; snapshot table entry corrupted")
			continue
		}
		if uint64(s.L1Entries) > MaxL1Bytes/8 {
			c.res.AddCorruption(pre + "l1_size=" + hexAlt(uint64(s.L1Entries)) + ": L1 table is too large; snapshot table entry corrupted")
			continue
		}
		c.ref(int64(s.L1Offset), int64(s.L1Entries)*8, "snapshot_l1_table")
		// The table is walked as QEMU walks it (no check of its size
		// against the disk size); one past EOF was reported by ref and
		// reads as zeros.
		if s.L1Entries == 0 || s.L1Offset >= uint64(im.FileSize) {
			continue
		}
		l1, err := readTable(im.r, s.L1Offset, int(s.L1Entries))
		if err != nil {
			c.res.CheckErrors++
			c.res.note("ERROR snapshot " + strconv.Itoa(i) + ": " + err.Error())
			continue
		}
		c.walkL1(l1, false)
	}
	c.ref(int64(h.SnapshotsOffset), im.SnapshotTableSize, "snapshot_table")
	if h.CryptMethod == CryptLUKS {
		c.ref(int64(h.CryptoOffset), int64(h.CryptoLength), "crypto_header")
	}
	c.ref(int64(h.RefcountTableOffset), int64(h.RefcountTableClusters)*cs, "refcount_table")
	c.countBitmaps()
	c.checkRefblocks()
}

// countBitmaps counts one reference for every cluster the persistent
// bitmaps own (directory, tables, data clusters), when the autoclear bit
// vouches for the extension; a directory that does not decode is a
// corruption (QEMU: "Failed to load bitmap directory"). In-use bitmaps
// count like the others: qemu-img 7.2's check does not report them.
func (c *checker) countBitmaps() {
	h := c.im.Header
	if !h.BitmapsConsistent() || c.im.r == nil {
		return
	}
	owned, err := BitmapClusters(c.im.r, h, c.im.FileSize)
	if err != nil {
		c.res.AddCorruption("bitmaps: " + err.Error())
		return
	}
	cs := c.im.Geometry.ClusterSize()
	for _, off := range owned {
		c.ref(off, cs, "bitmap")
	}
}

// References is what CountReferences found.
type References struct {
	Refs      []uint32 // references found, per host cluster
	L2Damaged int64    // L2 entries that could not be decoded (their clusters got no reference)
	Rebuild   bool     // the refcount structure itself is broken
	PastEOF   int64    // references a cluster or more past the end of the file (not in Refs)
	Fixes     []L2Fix  // L2 entries to rewrite (fixErrors only; check_l2fix.go), counted as corruptions
}

// CountReferences counts every cluster's references for a repair (the
// first step of Check), over clusters host clusters; damaged entries go
// to res as Check reports them. fixErrors selects a repair's words
// ("Repairing" where QEMU says so).
func (im *Image) CountReferences(res *CheckResult, clusters int64, fixErrors bool) References {
	if res.log == nil {
		res.log = im.CheckLog // streamed, as Check does
	}
	c := &checker{im: im, res: res, refs: make([]uint32, clusters), fixErrors: fixErrors}
	c.countReferences()
	return References{Refs: c.refs, L2Damaged: c.l2Damaged, Rebuild: c.rebuild, PastEOF: c.pastEOF, Fixes: c.fixes}
}

// checkRefblocks counts the refcount blocks' references and checks the
// refcount table entries (QEMU's check_refblocks). A damaged entry or a
// block not referenced exactly once means the structure must be rebuilt.
// A block past the end of the file is not followed (QEMU's repair grows
// the file to reach it; ours rebuilds the structure instead).
func (c *checker) checkRefblocks() {
	cs := c.im.Geometry.ClusterSize()
	for i, e := range c.im.RefcountTable {
		off := int64(e &^ ReftableReserved)
		switch {
		case e&ReftableReserved != 0:
			c.res.AddCorruption("refcount table entry " + strconv.Itoa(i) + " has reserved bits set")
			c.rebuild = true
		case off&(cs-1) != 0:
			c.res.AddCorruption("refcount block " + strconv.Itoa(i) + " is not cluster aligned; refcount table entry corrupted")
			c.rebuild = true
		case off < 0 || off/cs >= int64(len(c.refs)):
			c.res.Corruptions++
			word := "ERROR"
			if c.fixErrors {
				word = "Repairing"
				c.rebuild = true
			}
			c.res.note(word + " refcount block " + strconv.Itoa(i) + " is outside image")
		case off != 0:
			c.ref(off, cs, "refcount_block")
			if n := c.refs[off/cs]; n != 1 {
				c.res.AddCorruption("refcount block " + strconv.Itoa(i) + " refcount=" + strconv.FormatUint(uint64(n), 10))
				c.rebuild = true
			}
		}
	}
}

// refcountErr words a failed refcount read as qemu-img does, reporting
// the first unaligned refcount block as QEMU signals the corruption.
func (c *checker) refcountErr(err error) string {
	var ue *RefblockUnalignedError
	if !errors.As(err, &ue) {
		return err.Error()
	}
	if !c.signalled {
		c.signalled = true
		c.res.note(QemuCorruptEvent(ue))
	}
	return "Input/output error"
}

// QemuCorruptEvent is the line QEMU prints when a check runs into an
// unaligned refcount block.
func QemuCorruptEvent(ue *RefblockUnalignedError) string {
	return "qcow2: Image is corrupt: " + refblockUnalignedText(ue.Index, ue.Offset) +
		"; further non-fatal corruption events will be suppressed"
}

// cHex formats v as C's %#x does (0 has no prefix).
func cHex(v int64) string {
	if v == 0 {
		return "0"
	}
	return "0x" + strconv.FormatInt(v, 16)
}

// ref adds one reference to every host cluster of [off, off+n), as QEMU's
// qcow2_inc_refcounts_imrt: a range ending a cluster or more past the end
// of the file is a corruption and counts nothing (the last cluster of a
// file may be partly past EOF).
func (c *checker) ref(off, n int64, what string) {
	if n <= 0 {
		return
	}
	cs := c.im.Geometry.ClusterSize()
	if off < 0 {
		c.res.AddCorruption(what + ": negative offset")
		return
	}
	if off+n-c.im.FileSize >= cs {
		c.pastEOF++
		c.res.Corruptions++
		c.res.note("ERROR: counting reference for region exceeding the end of the file by one cluster or more: offset 0x" +
			strconv.FormatInt(off, 16) + " size 0x" + strconv.FormatInt(n, 16))
		return
	}
	for cl := off / cs; cl <= (off+n-1)/cs; cl++ {
		for cl >= int64(len(c.refs)) {
			c.refs = append(c.refs, 0)
		}
		if c.refs[cl] < ^uint32(0) {
			c.refs[cl]++
		}
	}
}

// walkL1 counts the references of an L1 table's entries and their L2
// tables (QEMU's check_refcounts_l1): reserved bits and an unaligned L2
// offset are corruptions, an L2 table past the end of the file is a
// corruption read as zeros. Unlike QEMU, an unaligned "L2 table" is not
// read: its entries would be whatever bytes lie there.
func (c *checker) walkL1(l1 []uint64, active bool) {
	g := &c.im.Geometry
	cs := g.ClusterSize()
	for i, e := range l1 {
		c.tick(1)
		if e == 0 {
			continue
		}
		if e&L1Reserved != 0 {
			c.res.AddCorruption("found L1 entry with reserved bits set: " + strconv.FormatUint(e, 16))
		}
		l2Off := int64(e & OffsetMask)
		if l2Off == 0 {
			continue
		}
		c.ref(l2Off, cs, Indexed("l1_table", uint64(i)))
		if l2Off&(cs-1) != 0 {
			c.res.AddCorruption("l2_offset=" + strconv.FormatInt(l2Off, 16) + ": Table is not cluster aligned; L1 entry corrupted")
			continue
		}
		if l2Off >= c.im.FileSize {
			continue // reads as zeros: no references
		}
		table, err := c.im.ReadL2(l2Off)
		if err != nil {
			c.res.CheckErrors++
			c.res.note("ERROR: I/O error in check_refcounts_l2: " + err.Error())
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
			if c.fixErrors && c.fixedAlready(l2Off, j) {
				continue // check_l2fix.go
			}
			if !g.ExtendedL2 && e&EntryCompressed == 0 && (g.ZeroFlag || e&EntryZero == 0) {
				c.damagedStandard(e, l2Off, j, active)
				continue
			}
			if g.ExtendedL2 && e&EntryCompressed == 0 {
				c.damagedExtended(e, bm, l2Off, j, active) // check_l2fix.go
				continue
			}
			if e&EntryCompressed != 0 && c.compressedPastEOF(e, active) {
				continue
			}
			c.res.AddCorruption("l2_table@" + HexString(uint64(l2Off)) + Indexed("", uint64(j)) + ": " + err.Error())
			c.l2Damaged++
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
			c.refData(le.HostOff, cs) // datafile.go
			if active {
				c.res.AllocatedClusters++
				if c.nextOf != 0 && le.HostOff != c.nextOf {
					c.res.FragmentedClusters++
				}
				c.nextOf = le.HostOff + cs
			}
		default:
			if g.ExtendedL2 && le.HostOff != 0 { // unallocated subclusters of a host cluster
				c.refData(le.HostOff, cs) // datafile.go
			}
		}
	}
}

// compressedPastEOF counts a compressed entry whose bytes start past the
// end of the file (a truncated copy of a compressed image) as QEMU's
// check_refcounts_l2 counts it: a compressed cluster like any other, whose
// reference ref reports as one corruption and counts nothing when it ends
// a cluster or more past EOF. A repair can go on around it (nothing in the
// file is referenced), as for a data cluster past EOF. It reports whether
// e was such an entry; any other damage stays uncountable.
func (c *checker) compressedPastEOF(e uint64, active bool) bool {
	g := &c.im.Geometry
	if e&EntryCopied != 0 || g.ExternalData {
		return false
	}
	d, err := g.DecodeCompressed(e)
	if err != nil || !g.PastEOF(uint64(d.HostOff)) {
		return false
	}
	c.ref(d.HostOff, d.Size(), "compressed cluster")
	if active {
		c.res.AllocatedClusters++
		c.res.CompressedClusters++
		c.res.FragmentedClusters++
	}
	return true
}

// damagedStandard counts a standard L2 entry the decoder rejected
// (reserved bits, an unaligned offset, a cluster past the end of the
// file, as in a truncated copy) the way QEMU's check_refcounts_l2 does: the
// cluster its offset bits name is referenced (ref reports one past EOF),
// so a repair around it never frees what it points at. An unaligned
// preallocated zero cluster is dropped by a repair of all errors
// (check_l2fix.go).
func (c *checker) damagedStandard(e uint64, l2Off, j int64, active bool) {
	cs := c.im.Geometry.ClusterSize()
	if e&L2Reserved != 0 {
		c.res.AddCorruption("found l2 entry with reserved bits set: " + strconv.FormatUint(e, 16))
	}
	off := int64(e & OffsetMask)
	if off == 0 {
		return
	}
	if off&(cs-1) != 0 {
		if e&EntryZero == 0 {
			c.res.AddCorruption("offset=" + strconv.FormatInt(off, 16) + ": Data cluster is not properly aligned; L2 entry corrupted.")
		} else if c.unalignedPrealloc(off, L2Fix{L2Off: l2Off, Index: j, Entry: EntryZero}) {
			return
		}
	}
	c.countDamagedData(off, active)
}

// CopiedChecked reports whether QEMU's check_oflag_copied looks at L2
// entry e (a normal or preallocated zero cluster, damaged or not) and the
// host offset whose refcount it compares COPIED with.
func (g *Geometry) CopiedChecked(e, bm uint64) (int64, bool) {
	if !g.ExtendedL2 {
		off := int64(e & OffsetMask)
		return off, e&EntryCompressed == 0 && off != 0
	}
	le, err := g.DecodeL2Entry(e, bm)
	if err != nil || (le.Type != Normal && le.Type != ZeroAlloc) {
		return 0, false
	}
	return le.HostOff, true
}

// checkCopied compares COPIED in the active L1 and L2 tables with the
// stored refcounts, as qemu-img check does (refcounts that cannot be read
// are skipped silently, as in QEMU).
func (c *checker) checkCopied() {
	im, g := c.im, &c.im.Geometry
	cs := g.ClusterSize()
	for i, e := range im.L1 {
		l2Off := int64(e & OffsetMask)
		if l2Off == 0 {
			continue
		}
		rc, err := im.RefcountCached(l2Off, &c.rc)
		if err != nil {
			continue
		}
		if (e&EntryCopied != 0) != (rc == 1) {
			c.res.AddCorruption("OFLAG_COPIED L2 cluster: l1_index=" + strconv.Itoa(i) + " l1_entry=" + strconv.FormatUint(e, 16) + " refcount=" + strconv.FormatUint(rc, 10))
		}
		if l2Off&(cs-1) != 0 || l2Off >= im.FileSize {
			continue // not a table we read (see walkL1)
		}
		table, err := im.ReadL2(l2Off)
		if err != nil {
			continue
		}
		for j := int64(0); j < g.L2Entries(); j++ {
			e, bm, _ := g.L2EntryAt(table, j)
			host, ok := g.CopiedChecked(e, bm)
			if !ok {
				continue
			}
			rc, err := im.RefcountCached(host, &c.rc)
			if g.ExternalData { // datafile.go: data clusters count as referenced once
				rc, err = 1, nil
			}
			if err != nil {
				continue
			}
			if (e&EntryCopied != 0) != (rc == 1) {
				c.res.AddCorruption("OFLAG_COPIED data cluster: l2_entry=" + strconv.FormatUint(e, 16) + " refcount=" + strconv.FormatUint(rc, 10))
			}
		}
	}
}

func int64ToU(v int64) uint64 { return uint64(v) }

// hexAlt is C's %#x: 0x and lower-case hex, "0" for zero.
func hexAlt(v uint64) string {
	if v == 0 {
		return "0"
	}
	return "0x" + strconv.FormatUint(v, 16)
}

// CapOverflows lowers every reference count in refs that the image's
// refcount width cannot hold to the largest one it can, and reports each
// such cluster as a corruption in qemu-img's words (QEMU stops counting
// there too, so the comparison after it sees the capped value: a repair
// cannot fix an overflow, only amend to a wider refcount_bits can).
func (im *Image) CapOverflows(res *CheckResult, refs []uint32) {
	rmax := RefcountMax(im.Geometry.RefcountOrder)
	cs := im.Geometry.ClusterSize()
	for i, n := range refs {
		if uint64(n) > rmax {
			refs[i] = uint32(rmax)
			res.Corruptions++
			res.note("ERROR: overflow cluster offset=0x" + strconv.FormatInt(int64(i)*cs, 16))
			res.note("Use qemu-img amend to increase the refcount entry width or qemu-img convert to create a clean copy if the image cannot be opened for writing")
		}
	}
}
