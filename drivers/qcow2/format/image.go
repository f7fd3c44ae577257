package format

import (
	"encoding/binary"
	"fmt"
	"io"
	"slices"
	"strconv"
)

// Options tune ReadImage. The zero value is a read-only open with the
// package limits.
type Options struct {
	// ReadWrite adds the checks a read-write open needs: CheckWritable
	// (corrupt and dirty bits), and that the header, L1 table and refcount
	// table have a nonzero refcount (qcow2.md §3.2 row 10: otherwise the
	// first allocation would hand out live metadata).
	ReadWrite bool
	// DeferMetadataRefcounts leaves the refcount check of ReadWrite to
	// the caller (Image.CheckMetadataRefcounts, untrusted.go): the driver
	// opens such an image and refuses its allocations instead.
	DeferMetadataRefcounts bool
	// MaxL1Bytes, MaxRefcountTableBytes and MaxSnapshotTableBytes lower the
	// package limits for callers that want a tighter memory bound. Zero or
	// values above the package limit mean the package limit.
	MaxL1Bytes            int64
	MaxRefcountTableBytes int64
	MaxSnapshotTableBytes int64
	// CheckMode is QEMU's BDRV_O_CHECK open (qemu-img check): the
	// snapshot table pointer is not checked and the table is not read;
	// Image.ReadSnapshotsForCheck reads (and can repair) it.
	CheckMode bool
}

func capOr(v, pkg int64) int64 {
	if v <= 0 || v > pkg {
		return pkg
	}
	return v
}

// Image is the validated in-memory model of an image's metadata: header,
// active L1 table, refcount table and snapshot table. L2 tables and
// refcount blocks stay in the file; Lookup, Map, Refcount and ReadAt read
// them through the io.ReaderAt on demand (test and tool helpers; the
// driver uses Map with its own cache).
//
// An Image is immutable after ReadImage and safe for concurrent readers.
type Image struct {
	Header   *Header
	Geometry Geometry
	FileSize int64
	// L1 is the active L1 table (raw entries, validated).
	L1 []uint64
	// RefcountTable is the refcount table (raw entries, validated).
	RefcountTable []uint64
	// Snapshots is the snapshot table; SnapshotTableSize its size in bytes.
	Snapshots         []Snapshot
	SnapshotTableSize int64
	// DamagedL1 and DamagedRT are the active L1 and refcount table
	// entries that failed validation (reserved bits, an unaligned
	// offset, a table or block past the end of the file). The image is
	// opened degraded, as QEMU does: everything else reads normally,
	// lookups through a damaged entry fail, Check reports the damage and
	// the driver refuses writes that would touch it (docs/design/
	// qcow2-repair.md, "Degraded open").
	DamagedL1, DamagedRT EntrySet

	r io.ReaderAt
	// Progress, when set, is called by Check as it goes with the work
	// done and the total (L1 entries walked, then clusters compared), at
	// most a few hundred times per check.
	Progress func(done, total int64)
	// CheckLog, when set, receives every message of Check as it is found
	// (qemu-img prints them all); CheckResult.Messages then stays empty.
	// Unset, Check keeps the first few in Messages.
	CheckLog func(msg string)
}

// ReadFull fills p from off, reading bytes past the end of the file as zeros
// (QEMU does the same; qcow2 files are not cluster aligned at EOF).
func ReadFull(r io.ReaderAt, p []byte, off int64) error {
	n, err := r.ReadAt(p, off)
	if err == io.EOF || (err == nil && n < len(p)) {
		clear(p[n:])
		return nil
	}
	if err != nil {
		return fmt.Errorf("qcow2: read %d bytes at %d: %w", len(p), off, err)
	}
	return nil
}

// ReadImage reads and validates an image's metadata. fileSize is the size
// of the file behind r. Open time is O(L1 + refcount table + snapshot
// table), never O(L2 tables), and everything allocated is bounded by the
// limits in limits.go (or the lower caps in opts) before it is allocated.
//
// Beyond ParseHeader's checks it verifies that the L1 and refcount
// tables and the bitmap directory lie inside the file (the snapshot table
// reads as zeros past EOF, and snapshot L1 fields are checked when a
// table is used, as in QEMU); that every L1 and refcount table entry is well formed and points
// inside the file; and that no two metadata structures (header cluster,
// active L1, refcount table, snapshot table, snapshot L1s, bitmap
// directory, L2 tables, refcount blocks) share a cluster.
func ReadImage(r io.ReaderAt, fileSize int64, opts Options) (*Image, error) {
	if fileSize < HeaderLengthV2 {
		return nil, Corrupt("file_size", uint64(max(fileSize, 0)), "file too small for a qcow2 header")
	}
	var prefix [HeaderPrefixLength]byte
	if err := ReadFull(r, prefix[:], 0); err != nil {
		return nil, err
	}
	cs, err := ParsePrefix(prefix[:])
	if err != nil {
		return nil, err
	}
	first := make([]byte, min(cs, fileSize)) // at most MaxClusterBits
	if err := ReadFull(r, first, 0); err != nil {
		return nil, err
	}
	h, err := parseHeader(first, opts.CheckMode)
	if err != nil {
		return nil, err
	}
	if opts.ReadWrite {
		if err := h.CheckWritable(); err != nil {
			return nil, err
		}
	}
	im := &Image{Header: h, Geometry: h.Geometry(fileSize), FileSize: fileSize, r: r}
	g := &im.Geometry

	// Active L1 table.
	l1Bytes := int64(h.L1Entries) * 8
	if l1Bytes > capOr(opts.MaxL1Bytes, MaxL1Bytes) {
		return nil, Limit("l1_size", uint64(h.L1Entries), "active L1 table larger than the configured cap")
	}
	if err := insideFile("l1_table_offset", h.L1Offset, l1Bytes, fileSize); err != nil {
		return nil, err
	}
	if im.L1, err = readTable(r, h.L1Offset, int(h.L1Entries)); err != nil {
		return nil, err
	}
	for i, e := range im.L1 {
		if _, _, err := g.DecodeL1Entry(e); err != nil {
			im.DamagedL1.add(int64(i), len(im.L1))
		}
	}

	// Refcount table.
	rtBytes := int64(h.RefcountTableClusters) << h.ClusterBits
	if rtBytes > capOr(opts.MaxRefcountTableBytes, MaxRefcountTableBytes) {
		return nil, Limit("refcount_table_clusters", uint64(h.RefcountTableClusters), "refcount table larger than the configured cap")
	}
	if err := insideFile("refcount_table_offset", h.RefcountTableOffset, rtBytes, fileSize); err != nil {
		return nil, err
	}
	if im.RefcountTable, err = readTable(r, h.RefcountTableOffset, int(rtBytes/8)); err != nil {
		return nil, err
	}
	for i, e := range im.RefcountTable {
		if _, err := g.DecodeRefcountTableEntry(e); err != nil {
			im.DamagedRT.add(int64(i), len(im.RefcountTable))
		}
	}

	// Snapshot table (not read in check mode: ReadSnapshotsForCheck).
	if h.SnapshotCount > 0 && !opts.CheckMode {
		if err := im.readSnapshots(capOr(opts.MaxSnapshotTableBytes, MaxSnapshotTableBytes)); err != nil {
			return nil, err
		}
	}
	if b := h.Bitmaps; b != nil && h.BitmapsConsistent() {
		if err := insideFile("bitmaps_ext.bitmap_directory_offset", b.DirectoryOffset, int64(b.DirectorySize), fileSize); err != nil {
			return nil, err
		}
	}
	if err := im.checkOverlaps(); err != nil {
		return nil, err
	}
	if opts.ReadWrite && !opts.DeferMetadataRefcounts {
		if err := im.checkMetadataRefcounts(); err != nil {
			return nil, err
		}
	}
	return im, nil
}

// insideFile checks that [off, off+n) lies inside the file. Tables are
// written whole by QEMU, so no zero-fill grace is given to them.
func insideFile(field string, off uint64, n, fileSize int64) error {
	if n == 0 {
		return nil
	}
	if off >= uint64(fileSize) || uint64(n) > uint64(fileSize)-off {
		return Corrupt(field, off, "table extends past end of file")
	}
	return nil
}

// readTable reads n big-endian u64 entries at off. REQUIRES: n bounded by
// a limit and the range inside the file.
func readTable(r io.ReaderAt, off uint64, n int) ([]uint64, error) {
	if n == 0 {
		return nil, nil
	}
	buf := make([]byte, n*8)
	if err := ReadFull(r, buf, int64(off)); err != nil {
		return nil, err
	}
	t := make([]uint64, n)
	for i := range t {
		t[i] = binary.BigEndian.Uint64(buf[i*8:])
	}
	return t, nil
}

// readSnapshots reads the snapshot table (snapshot_check.go): entry by
// entry through a bounded window, bytes past EOF as zeros (QEMU opens such
// tables), refusing extra data above MaxSnapshotExtraData and a table
// above maxBytes with QEMU's words. Snapshot L1 tables are not validated
// here (QEMU does not either): Image.Snapshot and the driver's snapshot
// operations do, when they need one.
func (im *Image) readSnapshots(maxBytes int64) error {
	h := im.Header
	sc, err := readSnapshotEntries(im.r, im.FileSize, h.SnapshotsOffset, h.SnapshotCount, maxBytes, false)
	if err != nil {
		return err
	}
	im.Snapshots, im.SnapshotTableSize = sc.snaps, sc.size
	return nil
}

// region is a cluster-aligned byte range of metadata, for overlap checks.
type region struct {
	start, end uint64
	what       string
	index      uint64
}

func (r region) name() string {
	if r.index == noIndex {
		return r.what
	}
	return Indexed(r.what, r.index)
}

const noIndex = ^uint64(0)

// checkOverlaps verifies that no two metadata structures share a cluster.
// Multi-cluster structures (header, tables) are few and checked by sorting;
// single-cluster ones (L2 tables, refcount blocks) are up to a few million,
// so they are checked against each other by sorting tagged offsets and
// against the big ones by binary search: memory stays O(L1 + refcount
// table) and no per-cluster bitmap is built.
func (im *Image) checkOverlaps() error {
	h, g := im.Header, &im.Geometry
	cs := uint64(g.ClusterSize())
	up := func(n uint64) uint64 { return (n + cs - 1) &^ (cs - 1) }
	big := []region{{0, cs, "header", noIndex}}
	add := func(off, n uint64, what string, index uint64) {
		if n > 0 {
			big = append(big, region{off &^ (cs - 1), up(off + n), what, index})
		}
	}
	add(h.L1Offset, uint64(h.L1Entries)*8, "l1_table", noIndex)
	add(h.RefcountTableOffset, uint64(h.RefcountTableClusters)*cs, "refcount_table", noIndex)
	add(h.SnapshotsOffset, uint64(im.SnapshotTableSize), "snapshot_table", noIndex)
	for i, s := range im.Snapshots {
		if im.SnapshotL1Valid(i) {
			add(s.L1Offset, uint64(s.L1Entries)*8, "snapshot_l1_table", uint64(i))
		}
	}
	if b := h.Bitmaps; b != nil && h.BitmapsConsistent() {
		add(b.DirectoryOffset, b.DirectorySize, "bitmap_directory", noIndex)
	}
	slices.SortFunc(big, func(a, b region) int {
		switch {
		case a.start < b.start:
			return -1
		case a.start > b.start:
			return 1
		}
		return 0
	})
	for i := 1; i < len(big); i++ {
		if big[i].start < big[i-1].end {
			return Corrupt(big[i].name(), big[i].start, "overlaps "+big[i-1].name())
		}
	}

	// Single clusters: tag L2 offsets with 0 and refcount blocks with 1 in
	// the (always zero) low bit.
	// Damaged entries are left out: they are never followed.
	n := 0
	for i, e := range im.L1 {
		if e&OffsetMask != 0 && !im.DamagedL1.Has(int64(i)) {
			n++
		}
	}
	for i, e := range im.RefcountTable {
		if e != 0 && !im.DamagedRT.Has(int64(i)) {
			n++
		}
	}
	singles := make([]uint64, 0, n)
	for i, e := range im.L1 {
		if off := e & OffsetMask; off != 0 && !im.DamagedL1.Has(int64(i)) {
			singles = append(singles, off)
		}
	}
	for i, e := range im.RefcountTable {
		if e != 0 && !im.DamagedRT.Has(int64(i)) {
			singles = append(singles, e|1)
		}
	}
	slices.Sort(singles)
	for i, s := range singles {
		off := s &^ 1
		if i > 0 && singles[i-1]&^1 == off {
			return Corrupt(im.singleName(singles[i-1]), off, "shares a cluster with "+im.singleName(s))
		}
		// The big region starting at or before off, if it reaches off.
		j, _ := slices.BinarySearchFunc(big, off, func(r region, t uint64) int {
			switch {
			case r.start <= t:
				return -1
			}
			return 1
		})
		if j > 0 && off < big[j-1].end {
			return Corrupt(im.singleName(s), off, "overlaps "+big[j-1].name())
		}
	}
	return nil
}

// singleName finds which table entry holds a tagged single-cluster offset,
// for the error message.
func (im *Image) singleName(tagged uint64) string {
	off := tagged &^ 1
	if tagged&1 == 0 {
		for i, e := range im.L1 {
			if e&OffsetMask == off {
				return Indexed("l1_table", uint64(i))
			}
		}
	} else {
		for i, e := range im.RefcountTable {
			if e == off {
				return Indexed("refcount_table", uint64(i))
			}
		}
	}
	return "metadata"
}

// checkMetadataRefcounts verifies that the header, the active L1 table
// and the refcount table are refcounted (qcow2.md §3.2 row 10). If they
// are not, the refcount structures cannot be trusted for allocation. It
// reads at most one refcount block per distinct block these clusters need.
func (im *Image) checkMetadataRefcounts() error {
	h, g := im.Header, &im.Geometry
	cs := g.ClusterSize()
	var cache RefblockCache
	check := func(off int64, what string) error {
		if ti, _ := g.RefcountIndex(off); im.DamagedRT.Has(ti) {
			// Not verifiable; the driver refuses any allocation or free
			// that needs this refcount block.
			return nil
		}
		rc, err := im.RefcountCached(off, &cache)
		if err != nil {
			return err
		}
		if rc == 0 {
			return Corrupt(what, uint64(off), "metadata cluster has refcount 0; refcounts cannot be trusted for writing")
		}
		return nil
	}
	if err := check(0, "header"); err != nil {
		return err
	}
	for off := int64(h.L1Offset); off < int64(h.L1Offset)+int64(h.L1Entries)*8; off += cs {
		if err := check(off, "l1_table_offset"); err != nil {
			return err
		}
	}
	for i := int64(0); i < int64(h.RefcountTableClusters); i++ {
		if err := check(int64(h.RefcountTableOffset)+i*cs, "refcount_table_offset"); err != nil {
			return err
		}
	}
	// Refcount blocks are not checked here: each one's refcount usually
	// lives in the block itself, so checking them all would read every
	// refcount block at open. The driver checks a block when it loads it.
	return nil
}

// RefblockUnalignedError is the failure to read a refcount through a
// refcount table entry whose block offset is not cluster aligned (QEMU
// reports it as an I/O error, after signalling the corruption).
type RefblockUnalignedError struct{ Index, Offset int64 }

func (e *RefblockUnalignedError) Error() string {
	return "qcow2: refcount_table[" + strconv.FormatInt(e.Index, 10) + "]: refcount block offset 0x" +
		strconv.FormatInt(e.Offset, 16) + " not cluster aligned"
}

// Unwrap makes the error an ErrCorrupt.
func (e *RefblockUnalignedError) Unwrap() error { return ErrCorrupt }

// RefblockCache remembers the last refcount block read.
type RefblockCache struct {
	Off   int64
	Block []byte
}

// Refcount returns the refcount of the host cluster containing hostOff.
func (im *Image) Refcount(hostOff int64) (uint64, error) {
	var c RefblockCache
	return im.RefcountCached(hostOff, &c)
}

func (im *Image) RefcountCached(hostOff int64, c *RefblockCache) (uint64, error) {
	g := &im.Geometry
	if hostOff < 0 {
		return 0, OutOfRange("host_offset", uint64(hostOff), "negative host offset")
	}
	ti, bi := g.RefcountIndex(hostOff)
	if ti >= int64(len(im.RefcountTable)) {
		return 0, nil
	}
	// As QEMU reads it: reserved bits are ignored, an unaligned block is
	// an I/O error, a block past the end of the file reads as zeros.
	off := int64(im.RefcountTable[ti] &^ ReftableReserved)
	if off == 0 || off >= im.FileSize || off < 0 {
		return 0, nil
	}
	if !g.Aligned(uint64(off)) {
		return 0, &RefblockUnalignedError{Index: ti, Offset: off}
	}
	if c.Block == nil || c.Off != off {
		if c.Block == nil {
			c.Block = make([]byte, g.ClusterSize())
		}
		if err := ReadFull(im.r, c.Block, off); err != nil {
			c.Block = nil
			return 0, err
		}
		c.Off = off
	}
	return RefcountGet(c.Block, g.RefcountOrder, bi)
}

// Snapshot returns a read-only view of snapshot i: an Image that shares
// this one's header, refcount table and reader, with the snapshot's L1
// table (read and validated now) as its L1 and the snapshot's disk size as
// its virtual size. Map, Lookup and ReadAt on it read the snapshot's data.
func (im *Image) Snapshot(i int) (*Image, error) {
	if i < 0 || i >= len(im.Snapshots) {
		return nil, OutOfRange("snapshot_index", uint64(max(i, 0)), "no such snapshot")
	}
	s := &im.Snapshots[i]
	field := Indexed("snapshot", uint64(i))
	if err := ValidateSnapshot(s, i, &im.Geometry, 0); err != nil {
		return nil, err
	}
	size := s.DiskSize
	if s.ExtraDataSize < 16 {
		size = im.Header.Size // QEMU's rule when the entry has no disk size
	}
	if size > MaxImageSize {
		return nil, Limit(field+".disk_size", size, "virtual size above 2^61")
	}
	if need := L1EntriesFor(size, im.Header.ClusterBits, im.Geometry.ExtendedL2); uint64(s.L1Entries) < need {
		return nil, Corrupt(field+".l1_size", uint64(s.L1Entries), "snapshot L1 table too small for its disk size")
	}
	l1, err := readTable(im.r, s.L1Offset, int(s.L1Entries))
	if err != nil {
		return nil, err
	}
	v := *im
	v.Geometry.Size = int64(size)
	for j, e := range l1 {
		if _, _, err := v.Geometry.DecodeL1Entry(e); err != nil {
			return nil, WithField(err, Indexed(field+".l1_table", uint64(j)))
		}
	}
	v.L1 = l1
	v.Snapshots, v.SnapshotTableSize = nil, 0
	return &v, nil
}

// ReadL2 reads the L2 table at l2Off (one cluster; zeros past EOF).
func (im *Image) ReadL2(l2Off int64) ([]byte, error) {
	t := make([]byte, im.Geometry.ClusterSize())
	if err := ReadFull(im.r, t, l2Off); err != nil {
		return nil, err
	}
	return t, nil
}

// Lookup returns the decoded L2 entry of the guest cluster containing
// guestOff (Type Unallocated when its L2 table is not allocated).
func (im *Image) Lookup(guestOff int64) (L2Entry, error) {
	g := &im.Geometry
	if guestOff < 0 || guestOff >= g.Size {
		return L2Entry{}, OutOfRange("guest_offset", uint64(guestOff), "outside the virtual disk")
	}
	l1i, l2i, _ := g.Split(guestOff)
	if l1i >= int64(len(im.L1)) {
		return L2Entry{}, Corrupt("l1_size", uint64(len(im.L1)), "guest offset beyond the L1 table")
	}
	l2Off, _, err := g.DecodeL1Entry(im.L1[l1i])
	if err != nil || l2Off == 0 {
		return L2Entry{}, err
	}
	t, err := im.ReadL2(l2Off)
	if err != nil {
		return L2Entry{}, err
	}
	e, bm, _ := g.L2EntryAt(t, l2i)
	return g.DecodeL2Entry(e, bm)
}

// Map maps a guest range like the package-level Map, reading each L2 table
// through the io.ReaderAt (the last one is reused).
func (im *Image) Map(dst []Extent, off, length int64) ([]Extent, error) {
	var lastOff int64
	var last []byte
	return Map(dst, &im.Geometry, im.L1, func(l2Off int64) ([]byte, error) {
		if last != nil && lastOff == l2Off {
			return last, nil
		}
		t, err := im.ReadL2(l2Off)
		if err != nil {
			return nil, err
		}
		last, lastOff = t, l2Off
		return t, nil
	}, off, length)
}

// ReadAt reads guest data: it maps [off, off+len(p)) and reads each extent,
// decompressing compressed clusters (zlib only). Unallocated ranges come
// from backing (reads past its end are zeros), or are zeros when backing is
// nil. It is a reference reader for tests and tools, not the driver's path.
func (im *Image) ReadAt(p []byte, off int64, backing io.ReaderAt) (int, error) {
	g := &im.Geometry
	if off < 0 || off > g.Size {
		return 0, OutOfRange("guest_offset", uint64(off), "outside the virtual disk")
	}
	n := min(int64(len(p)), g.Size-off)
	exts, err := im.Map(nil, off, n)
	if err != nil {
		return 0, err
	}
	var cluster []byte
	for _, x := range exts {
		dst := p[x.GuestOff-off : x.GuestOff-off+x.Len]
		switch x.Kind {
		case ExtentZero:
			clear(dst)
		case ExtentUnallocated:
			if backing == nil {
				clear(dst)
			} else if err := ReadFull(backing, dst, x.GuestOff); err != nil {
				return 0, err
			}
		case ExtentData:
			if err := ReadFull(im.r, dst, x.HostOff); err != nil {
				return 0, err
			}
		case ExtentCompressed:
			if cluster == nil {
				cluster = make([]byte, g.ClusterSize())
			}
			src := make([]byte, x.Compressed.Size())
			if err := ReadFull(im.r, src, x.Compressed.HostOff); err != nil {
				return 0, err
			}
			if err := DecompressCluster(cluster, src, im.Header.CompressionType); err != nil {
				return 0, err
			}
			in := x.GuestOff & (g.ClusterSize() - 1)
			copy(dst, cluster[in:])
		}
	}
	if n < int64(len(p)) {
		return int(n), io.EOF
	}
	return int(n), nil
}

// EntrySet is a set of table indices (the damaged entries of a table): a
// bitmap as long as the table, allocated only when the first index is
// added, so an undamaged image pays nothing and a damaged one at most one
// bit per entry.
type EntrySet struct {
	bits []uint64
	n    int
}

func (s *EntrySet) add(i int64, tableLen int) {
	if s.bits == nil {
		s.bits = make([]uint64, (tableLen+63)/64)
	}
	if !s.Has(i) {
		s.bits[i/64] |= 1 << (i % 64)
		s.n++
	}
}

// Has reports whether i is in the set.
func (s *EntrySet) Has(i int64) bool {
	return s.n > 0 && i >= 0 && i/64 < int64(len(s.bits)) && s.bits[i/64]&(1<<(i%64)) != 0
}

// Len is the number of indices in the set.
func (s *EntrySet) Len() int { return s.n }

// First returns the smallest index in the set, or -1.
func (s *EntrySet) First() int64 {
	for w, b := range s.bits {
		if b != 0 {
			for j := int64(0); j < 64; j++ {
				if b&(1<<j) != 0 {
					return int64(w)*64 + j
				}
			}
		}
	}
	return -1
}

// L1Damage returns why active L1 entry i is damaged (nil if it is not).
func (im *Image) L1Damage(i int64) error {
	if !im.DamagedL1.Has(i) {
		return nil
	}
	_, _, err := im.Geometry.DecodeL1Entry(im.L1[i])
	if err == nil {
		err = Corrupt("l1_entry", im.L1[i], "damaged")
	}
	return WithField(err, Indexed("l1_table", uint64(i)))
}

// RTDamage returns why refcount table entry i is damaged (nil if it is
// not).
func (im *Image) RTDamage(i int64) error {
	if !im.DamagedRT.Has(i) {
		return nil
	}
	_, err := im.Geometry.DecodeRefcountTableEntry(im.RefcountTable[i])
	if err == nil {
		err = Corrupt("refcount_table_entry", im.RefcountTable[i], "damaged")
	}
	return WithField(err, Indexed("refcount_table", uint64(i)))
}

// UnallocatedAllocRun looks at the start of the guest range [off, off+n)
// for QEMU's UNALLOCATED_ALLOC subclusters: with extended L2, unallocated
// subclusters of a cluster that has a host offset. They read from the
// backing file (or as zeros), but QEMU's block status reports their host
// offset, so qemu-img map prints it. ok says whether the range starts
// with such subclusters; cnt is how many bytes from off are of that kind
// (contiguous in the host, host being the first one's offset) or,
// without ok, of any other kind. Images without extended L2: (0, n,
// false). A damaged entry is an error.
func (im *Image) UnallocatedAllocRun(off, n int64) (host, cnt int64, ok bool, err error) {
	g := &im.Geometry
	if !g.ExtendedL2 || n <= 0 {
		return 0, n, false, nil
	}
	end := min(off+n, g.Size)
	scs := g.SubclusterSize()
	var table []byte
	tableOff := int64(-1)
	first := true
	pos := off
	for pos < end {
		l1i, l2i, in := g.Split(pos)
		le := L2Entry{Type: Unallocated}
		if l1i < int64(len(im.L1)) {
			l2Off, _, err := g.DecodeL1Entry(im.L1[l1i])
			if err != nil {
				return 0, 0, false, err
			}
			if l2Off == 0 {
				// A whole table's reach without a host cluster.
				if !first && ok {
					break
				}
				first = false
				pos = min(end, (l1i+1)*g.L1Coverage())
				continue
			}
			if l2Off != tableOff {
				if table, err = im.ReadL2(l2Off); err != nil {
					return 0, 0, false, err
				}
				tableOff = l2Off
			}
			e, bm, _ := g.L2EntryAt(table, l2i)
			if le, err = g.DecodeL2Entry(e, bm); err != nil {
				return 0, 0, false, err
			}
		}
		sc := in / scs
		ua := g.SubclusterType(le, int(sc)) == UnallocatedAlloc
		if first {
			first, ok = false, ua
			if ua {
				host = le.HostOff + in
			}
		}
		if ua != ok || (ua && le.HostOff+in != host+(pos-off)) {
			break
		}
		pos = min(end, pos-in+(sc+1)*scs)
	}
	if !ok {
		host = 0
	}
	return host, pos - off, ok, nil
}
