package format

import "strconv"

// Damaged L2 entries in a check, as QEMU 7.2's check_refcounts_l2 treats
// them (iotest 271's "Detect and repair unaligned clusters"):
//
//   - an extended-L2 entry the decoder rejects (not compressed) is
//     counted entry by entry like a standard one (damagedStandard): each
//     broken rule is a corruption with QEMU's message, and the cluster its
//     offset bits name is referenced, so a repair never frees it;
//   - a preallocated cluster at an unaligned offset (a standard zero
//     entry; an extended entry with no allocated subcluster) holds no
//     data, so a repair of all errors drops it: the entry becomes a zero
//     entry (standard: the zero flag alone; extended: no host offset, the
//     formerly zero or allocated subclusters zero) and the cluster gets
//     no reference (the repair's leak pass frees it). The checker only
//     records the new entry (L2Fix); the repairer writes it.

// L2Fix is an L2 entry a repair of all errors rewrites: entry Index of
// the L2 table at L2Off gets Entry (and Bitmap, with extended L2).
type L2Fix struct {
	L2Off, Index  int64
	Entry, Bitmap uint64
}

// damagedExtended counts an extended-L2 entry (not compressed) the decoder
// rejected: reserved bits, subclusters both allocated and zero, allocated
// subclusters without a host cluster, an unaligned or past-EOF offset.
func (c *checker) damagedExtended(e, bm uint64, l2Off, j int64, active bool) {
	cs := c.im.Geometry.ClusterSize()
	if e&L2Reserved != 0 {
		c.res.AddCorruption("found l2 entry with reserved bits set: " + strconv.FormatUint(e, 16))
	}
	off := int64(e & OffsetMask)
	if off == 0 && !c.im.Geometry.dataAtZero(e) {
		if bm&BitmapAllocMask != 0 {
			c.res.Corruptions++
			c.res.note("ERROR: Unallocated cluster has non-zero subcluster allocation map")
		}
		return
	}
	if (bm>>32)&bm != 0 {
		c.res.AddCorruption("offset=" + strconv.FormatInt(off, 16) + ": Allocated cluster has corrupted subcluster allocation bitmap")
	}
	if off&(cs-1) != 0 {
		if bm&BitmapAllocMask != 0 {
			c.res.AddCorruption("offset=" + strconv.FormatInt(off, 16) + ": Data cluster is not properly aligned; L2 entry corrupted.")
		} else if c.unalignedPrealloc(off, L2Fix{L2Off: l2Off, Index: j, Bitmap: (bm | bm<<32) & BitmapZeroMask}) {
			return
		}
	}
	c.countDamagedData(off, active)
}

// unalignedPrealloc reports a preallocated cluster at the unaligned offset
// off and, in a repair of all errors, records fix for it; it reports
// whether the entry is dropped (its cluster then gets no reference).
func (c *checker) unalignedPrealloc(off int64, fix L2Fix) bool {
	c.res.Corruptions++
	word := "ERROR"
	if c.fixErrors {
		word = "Repairing"
	}
	c.res.note(word + " offset=" + strconv.FormatInt(off, 16) + ": Preallocated cluster is not properly aligned; L2 entry corrupted.")
	if !c.fixErrors {
		return false
	}
	c.fixes = append(c.fixes, fix)
	return true
}

// countDamagedData counts the cluster at the offset bits off of a damaged
// data entry: the statistics of an allocated cluster and one reference.
func (c *checker) countDamagedData(off int64, active bool) {
	cs := c.im.Geometry.ClusterSize()
	if active {
		c.res.AllocatedClusters++
		if c.nextOf != 0 && off != c.nextOf {
			c.res.FragmentedClusters++
		}
		c.nextOf = off + cs
	}
	c.refData(off, cs) // datafile.go
}

// fixedAlready reports whether entry j of the L2 table at l2Off already
// has a recorded fix (an L2 table that several L1 tables share is walked
// once per table; QEMU's second walk reads the entry it fixed).
func (c *checker) fixedAlready(l2Off, j int64) bool {
	for i := range c.fixes {
		if c.fixes[i].L2Off == l2Off && c.fixes[i].Index == j {
			return true
		}
	}
	return false
}
