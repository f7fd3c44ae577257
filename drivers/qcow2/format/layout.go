package format

// CreateOptions are the qemu-img create -o options this package supports.
// The zero value is qemu-img's default: compat=1.1, cluster_size=64k,
// refcount_bits=16, lazy_refcounts=off, preallocation=off.
type CreateOptions struct {
	ClusterSize  int64 // bytes, a power of two in 512..2 MiB; 0: 64 KiB
	Version      int   // 2 (compat=0.10) or 3 (compat=1.1); 0: 3
	RefcountBits int   // 1, 2, 4, ..., 64; 0: 16 (version 2 allows 16 only)
	// BackingFile and BackingFormat ("raw" or "qcow2") name a backing
	// file; both or neither (qemu-img 7.2 refuses -b without -F).
	BackingFile   string
	BackingFormat string
	// Preallocation is qemu-img's preallocation option (PreallocOff,
	// PreallocMetadata, PreallocFalloc or PreallocFull). With a backing
	// file it needs ExtendedL2, as in qemu-img 7.2.
	Preallocation Prealloc
	// ExtendedL2 makes 128-bit L2 entries with 32 subclusters per cluster
	// (incompatible feature bit 4). Version 3 and clusters of at least
	// 16 KiB only.
	ExtendedL2 bool
	// LazyRefcounts sets compatible feature bit 0 (version 3 only): the
	// driver may then leave refcount blocks unwritten behind the dirty bit
	// (lazy.go).
	LazyRefcounts bool
	// CompressionType is CompressionZlib (the default) or CompressionZstd
	// (version 3 only: header byte 104 and incompatible feature bit 3, as
	// qemu-img create -o compression_type=zstd writes them).
	CompressionType uint8
	// DataFile names an external data file (version 3 only; datafile.go):
	// incompatible feature bit 2 and the data file extension. DataFileRaw
	// sets autoclear bit 1 (the data file is a valid raw image).
	DataFile    string
	DataFileRaw bool
}

// Layout computes the metadata of a new image: the header, and where the
// refcount table, the refcount blocks and the L1 table go. The layout is
// QEMU's (header, refcount table at cluster 1, refcount block at 2, L1
// at 3 for every image whose refcount structures fit in one cluster
// each), so images read the same as `qemu-img create`'s.
func Layout(size int64, o CreateOptions) (*Header, error) {
	h, _, err := LayoutRefblocks(size, o)
	return h, err
}

// LayoutRefblocks also returns the refcount block offsets. QEMU's order: header,
// refcount table, first refcount block, L1 table, then any further
// refcount blocks (needed when the L1 table is large) after the L1 table.
func LayoutRefblocks(size int64, o CreateOptions) (*Header, []int64, error) {
	cs := o.ClusterSize
	if cs == 0 {
		cs = 64 << 10
	}
	bits := uint32(0)
	for int64(1)<<bits < cs {
		bits++
	}
	if int64(1)<<bits != cs || bits < MinClusterBits || bits > MaxClusterBits {
		return nil, nil, Limit("cluster_size", uint64(max(cs, 0)), "cluster size must be a power of two between 512 and 2 MiB")
	}
	ver := o.Version
	if ver == 0 {
		ver = 3
	}
	if ver != 2 && ver != 3 {
		return nil, nil, Unsupported("version", uint64(ver), "compat must be 0.10 or 1.1")
	}
	rb := o.RefcountBits
	if rb == 0 {
		rb = 16
	}
	order := uint32(0)
	for 1<<order < rb {
		order++
	}
	if 1<<order != rb || order > MaxRefcountOrder {
		return nil, nil, Limit("refcount_bits", uint64(max(rb, 0)), "refcount width must be a power of two up to 64")
	}
	if ver == 2 && order != 4 {
		return nil, nil, Unsupported("refcount_bits", uint64(rb), "version 2 images need 16-bit refcounts")
	}
	if size < 0 || size > MaxImageSize {
		return nil, nil, Limit("size", uint64(max(size, 0)), "virtual size out of range")
	}
	// qemu-img rounds the size up to whole sectors.
	size = (size + 511) &^ 511
	if (o.BackingFile == "") != (o.BackingFormat == "") {
		return nil, nil, Unsupported("backing_file", 0, "a backing file needs an explicit backing format, and vice versa")
	}
	if o.BackingFormat != "" && o.BackingFormat != "raw" && o.BackingFormat != "qcow2" {
		return nil, nil, Unsupported("backing_format", 0, "backing format must be raw or qcow2")
	}
	if o.ExtendedL2 && ver != 3 {
		return nil, nil, Unsupported("extended_l2", 1, "Extended L2 entries are only supported with compatibility level 1.1 and above (use version=v3 or greater)")
	}
	if o.ExtendedL2 && bits < MinClusterBitsExtendedL2 {
		return nil, nil, Unsupported("extended_l2", uint64(cs), "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes")
	}
	if o.Preallocation > PreallocFull {
		return nil, nil, Unsupported("preallocation", uint64(o.Preallocation), "preallocation must be off, metadata, falloc or full")
	}
	if o.BackingFile != "" && o.Preallocation != PreallocOff && !o.ExtendedL2 {
		return nil, nil, Unsupported("preallocation", uint64(o.Preallocation), "Backing file and preallocation can only be used at the same time if extended_l2 is on")
	}
	l1 := L1EntriesFor(uint64(size), bits, o.ExtendedL2)
	if l1*8 > MaxL1Bytes {
		return nil, nil, Limit("l1_size", l1, "image size is too large for this cluster size")
	}
	h := &Header{
		Version: uint32(ver), ClusterBits: bits, Size: uint64(size),
		L1Entries: uint32(l1), RefcountOrder: order,
		BackingFile: o.BackingFile, BackingFormat: o.BackingFormat,
	}
	if o.ExtendedL2 {
		h.IncompatibleFeatures |= IncompatExtendedL2
	}
	if o.LazyRefcounts {
		if ver != 3 {
			return nil, nil, Unsupported("lazy_refcounts", 1, "Lazy refcounts only supported with compatibility level 1.1 and above (use version=v3 or greater)")
		}
		h.CompatibleFeatures |= CompatLazyRefcounts
	}
	switch o.CompressionType {
	case CompressionZlib:
	case CompressionZstd:
		if ver != 3 {
			return nil, nil, Unsupported("compression_type", uint64(o.CompressionType), "Non-zlib compression type is only supported with compatibility level 1.1 and above (use version=v3 or greater)")
		}
		h.CompressionType = CompressionZstd
		h.IncompatibleFeatures |= IncompatCompressionType
	default:
		return nil, nil, Unsupported("compression_type", uint64(o.CompressionType), "compression type must be zlib or zstd")
	}
	if err := layoutDataFile(h, o); err != nil { // datafile.go
		return nil, nil, err
	}
	if ver == 3 {
		h.HeaderLength = 112
		h.HeaderTail = make([]byte, 112-105)
		if cs > 4096 {
			h.FeatureNames = DefaultFeatureNames()
		}
	} else {
		h.HeaderLength = HeaderLengthV2
	}
	// Fixed point: the refcount blocks must cover every metadata cluster,
	// themselves included, and the table must hold their entries.
	l1Clusters := (int64(l1)*8 + cs - 1) / cs
	perBlock := int64(1) << (int64(bits) + 3 - int64(order))
	rtClusters, blocks := int64(1), int64(1)
	for {
		total := 1 + rtClusters + blocks + l1Clusters
		nb := (total + perBlock - 1) / perBlock
		nr := max((nb*8+cs-1)/cs, 1)
		if nb == blocks && nr == rtClusters {
			break
		}
		blocks, rtClusters = nb, nr
	}
	if rtClusters*cs > MaxRefcountTableBytes {
		return nil, nil, Limit("refcount_table_clusters", uint64(rtClusters), "refcount table too large")
	}
	h.RefcountTableOffset = uint64(cs)
	h.RefcountTableClusters = uint32(rtClusters)
	offs := make([]int64, blocks)
	offs[0] = (1 + rtClusters) * cs
	for b := int64(1); b < blocks; b++ {
		offs[b] = (2 + rtClusters + l1Clusters + b - 1) * cs
	}
	if l1 > 0 {
		h.L1Offset = uint64((2 + rtClusters) * cs)
	}
	return h, offs, nil
}

// Prealloc is qemu-img's preallocation mode for a new image.
type Prealloc uint8

const (
	// PreallocOff allocates nothing: every cluster is unallocated.
	PreallocOff Prealloc = iota
	// PreallocMetadata allocates every L2 table and data cluster and maps
	// them (refcounts set, data not written), and sets the file length.
	PreallocMetadata
	// PreallocFalloc is PreallocMetadata plus an fallocate of the data.
	PreallocFalloc
	// PreallocFull is PreallocMetadata with the data written as zeros.
	PreallocFull
)

var preallocNames = [...]string{"off", "metadata", "falloc", "full"}

func (p Prealloc) String() string {
	if int(p) < len(preallocNames) {
		return preallocNames[p]
	}
	return "invalid"
}

// ParsePrealloc parses qemu-img's preallocation values.
func ParsePrealloc(s string) (Prealloc, bool) {
	for i, n := range preallocNames {
		if s == n {
			return Prealloc(i), true
		}
	}
	return 0, false
}

// PreallocPlan is where a preallocated image puts its clusters. Offsets
// are cluster indexes. Every cluster below end has refcount 1 except the
// holes (clusters freed while the layout was built).
type PreallocPlan struct {
	L2    []int64 // per L1 index: the L2 table
	Data  []int64 // per L1 index: the first data cluster of the table's contiguous run
	RB    []int64 // per refcount table index: the refcount block (0: none)
	Holes []int64
	End   int64 // clusters in use (the last one included)
	// RTOff and RTClusters move when the refcount area (falloc, full)
	// replaces the table.
	RTOff, RTClusters int64
	// FileLen is the file length QEMU leaves.
	FileLen int64
}

// ErrTableFull stops the metadata-mode simulation when QEMU would grow
// the refcount table (a path whose placement we do not reproduce).
var ErrTableFull = Limit("refcount_table_clusters", 0, "preallocation outgrows the refcount table")

// initialClusters is the number of clusters the image written by Create
// without preallocation occupies (the file is not cluster aligned at its
// end; QEMU rounds it up before allocating after it).
func initialClusters(h *Header, offs []int64) int64 {
	cs := int64(1) << h.ClusterBits
	end := offs[0] + cs
	if h.L1Entries > 0 {
		end = max(end, int64(h.L1Offset)+int64(h.L1Entries)*8)
	}
	if last := offs[len(offs)-1] + cs; last > end {
		end = last
	}
	return (end + cs - 1) / cs
}

// PlanMetadata reproduces QEMU 7.2's metadata preallocation (the loop of
// cluster allocations that preallocate_co makes): table by table, the L2
// table goes to the first free cluster and the table's data clusters right
// after it; a refcount block that is missing when a refcount is set goes
// to the next free cluster (self-describing when it falls in the range it
// covers). QEMU's allocator is first-fit and nothing is freed, so the next
// free cluster is always the end.
func PlanMetadata(h *Header, offs []int64) (*PreallocPlan, error) {
	g := h.Geometry(0)
	cs := g.ClusterSize()
	perBlock := g.RefcountBlockEntries()
	tableEntries := int64(h.RefcountTableClusters) * cs / 8
	p := &PreallocPlan{RTOff: int64(h.RefcountTableOffset) / cs, RTClusters: int64(h.RefcountTableClusters)}
	p.RB = make([]int64, len(offs), tableEntries)
	for i, o := range offs {
		p.RB[i] = o / cs
	}
	next := initialClusters(h, offs)
	var ensure func(c int64) error
	ensure = func(c int64) error {
		b := c / perBlock
		if b >= tableEntries {
			return ErrTableFull
		}
		for int64(len(p.RB)) <= b {
			p.RB = append(p.RB, 0)
		}
		if p.RB[b] != 0 {
			return nil
		}
		x := next
		next++
		p.RB[b] = x
		if x/perBlock != b {
			return ensure(x)
		}
		return nil
	}
	alloc := func(n int64) (int64, error) {
		start := next
		next += n
		for c := start; c < start+n; c = (c/perBlock + 1) * perBlock {
			if err := ensure(c); err != nil {
				return 0, err
			}
		}
		return start, nil
	}
	clusters := (int64(h.Size) + cs - 1) / cs
	per := g.L2Entries()
	n := int64(h.L1Entries)
	p.L2 = make([]int64, n)
	p.Data = make([]int64, n)
	var dataEnd int64
	for i := int64(0); i < n; i++ {
		var err error
		if p.L2[i], err = alloc(1); err != nil {
			return nil, err
		}
		k := min(per, clusters-i*per)
		if g.ExternalData { // datafile.go: no data clusters in this file
			k = 0
		}
		if p.Data[i], err = alloc(k); err != nil {
			return nil, err
		}
		// QEMU extends the file to the end of the last data cluster.
		dataEnd = (p.Data[i] + k) * cs
	}
	p.End = next
	last := dataEnd
	for _, c := range p.RB {
		last = max(last, (c+1)*cs)
	}
	for _, c := range p.L2 {
		last = max(last, (c+1)*cs)
	}
	p.FileLen = max(last, int64(h.L1Offset)+int64(h.L1Entries)*8)
	return p, nil
}

// PlanArea reproduces QEMU 7.2's falloc/full preallocation: a refcount
// area after the current end of the file (refcount blocks for every index
// that lacks one, then a new refcount table sized exactly), the data
// clusters contiguous after it, the old refcount table freed, and the L2
// tables allocated first-fit (into the old table's clusters first, then
// after the data). It is also the fallback for metadata mode when QEMU's
// path would grow the refcount table.
func PlanArea(h *Header, offs []int64) *PreallocPlan {
	g := h.Geometry(0)
	cs := g.ClusterSize()
	perBlock := g.RefcountBlockEntries()
	perTableCluster := cs / 8
	start := initialClusters(h, offs)
	clusters := (int64(h.Size) + cs - 1) / cs
	n := int64(h.L1Entries)
	// qcow2_refcount_metadata_size's fixed point, without the generous
	// increase.
	total := start + clusters + n
	var blocks, table, last, cnt int64
	for {
		blocks = (total + table + blocks + perBlock - 1) / perBlock
		table = (blocks + perTableCluster - 1) / perTableCluster
		cnt = total + blocks + table
		if cnt == last {
			break
		}
		last = cnt
	}
	p := &PreallocPlan{}
	p.RB = make([]int64, max(blocks, int64(len(offs))))
	for i, o := range offs {
		p.RB[i] = o / cs
	}
	next := start
	for i := range p.RB {
		if p.RB[i] == 0 {
			p.RB[i] = next
			next++
		}
	}
	oldRT, oldRTClusters := int64(h.RefcountTableOffset)/cs, int64(h.RefcountTableClusters)
	p.RTOff, p.RTClusters = next, max(table, oldRTClusters)
	next += p.RTClusters
	dataStart := next
	next += clusters
	p.L2 = make([]int64, n)
	p.Data = make([]int64, n)
	per := g.L2Entries()
	free := oldRTClusters // old table clusters not yet reused
	for i := int64(0); i < n; i++ {
		p.Data[i] = dataStart + i*per
		if i < free {
			p.L2[i] = oldRT + i
		} else {
			p.L2[i] = next
			next++
		}
	}
	for i := n; i < free; i++ {
		p.Holes = append(p.Holes, oldRT+i)
	}
	p.End = next
	p.FileLen = next * cs
	return p
}
