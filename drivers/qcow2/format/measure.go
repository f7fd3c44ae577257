package format

// qemu-img measure's arithmetic for qcow2 targets: how large a file an
// image of a given virtual size and creation options needs when every
// cluster is allocated. The data a source really uses is the caller's
// part (it walks the source's block status).

// DefaultClusterSize is qemu-img's cluster_size default.
const DefaultClusterSize = 64 << 10

// EffectiveClusterSize is o's cluster size with the default applied.
func (o *CreateOptions) EffectiveClusterSize() int64 {
	if o.ClusterSize == 0 {
		return DefaultClusterSize
	}
	return o.ClusterSize
}

// measureL2EntrySize is the L2 entry size of an image made with o.
func (o *CreateOptions) measureL2EntrySize() int64 {
	if o.ExtendedL2 {
		return 16
	}
	return 8
}

func roundUp(v, to int64) int64 { return (v + to - 1) / to * to }

// MeasureCheckSize refuses a virtual size whose L1 table would pass
// MaxL1Bytes with o's cluster size, with qemu-img measure's words.
func MeasureCheckSize(size int64, o CreateOptions) error {
	cs, l2e := o.EffectiveClusterSize(), o.measureL2EntrySize()
	virtual := roundUp(size, cs)
	l2Tables := (virtual/cs + cs/l2e - 1) / (cs / l2e)
	if l2Tables*8 > MaxL1Bytes {
		return optErr("size", "The image size is too large (try using a larger cluster size)")
	}
	return nil
}

// MeasureFullyAllocated is the file size of a fully allocated image of
// size bytes made with o: the header cluster, L2 tables, the L1 table,
// the refcount structures (which count themselves) and the data, each
// rounded as QEMU's qcow2_calc_prealloc_size rounds it.
func MeasureFullyAllocated(size int64, o CreateOptions) int64 {
	cs, l2e := o.EffectiveClusterSize(), o.measureL2EntrySize()
	rb := o.RefcountBits
	if rb == 0 {
		rb = 16
	}
	order := int64(0)
	for int64(1)<<order < int64(rb) {
		order++
	}
	aligned := roundUp(size, cs)
	meta := cs
	nl2e := roundUp(aligned/cs, cs/l2e)
	meta += nl2e * l2e
	nl1e := roundUp(nl2e*l2e/cs, cs/8)
	meta += nl1e * 8
	meta += refcountMetadataSize((meta+aligned)/cs, cs, order)
	return meta + aligned
}

// refcountMetadataSize finds the fixed point of refcount blocks and table
// clusters needed to count clusters host clusters and themselves.
func refcountMetadataSize(clusters, cs, refcountOrder int64) int64 {
	perTable := cs / 8
	perBlock := cs * 8 / (int64(1) << refcountOrder)
	var table, blocks, n, last int64
	for {
		last = n
		blocks = (clusters + table + blocks + perBlock - 1) / perBlock
		table = (blocks + perTable - 1) / perTable
		n = clusters + blocks + table
		if n == last {
			break
		}
	}
	return (blocks + table) * cs
}
