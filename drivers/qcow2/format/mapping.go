package format

import "encoding/binary"

// ExtentKind says where the bytes of a guest range come from.
type ExtentKind uint8

const (
	// ExtentUnallocated: not allocated in this image. Read from the backing
	// file if there is one (zeros past its end), otherwise zeros.
	ExtentUnallocated ExtentKind = iota
	// ExtentZero: reads as zeros without consulting the backing file.
	ExtentZero
	// ExtentData: the bytes are at Extent.HostOff in the image file.
	ExtentData
	// ExtentCompressed: part of one compressed cluster; decompress the
	// cluster stored at Extent.Compressed and take the bytes at
	// GuestOff % cluster_size.
	ExtentCompressed
)

var extentKindNames = [...]string{"unallocated", "zero", "data", "compressed"}

func (k ExtentKind) String() string {
	if int(k) < len(extentKindNames) {
		return extentKindNames[k]
	}
	return "invalid"
}

// Extent is one piece of a mapped guest range.
//
// INVARIANT: Len > 0. Extents returned by one Map call are in guest order,
// contiguous and cover the requested range exactly. Adjacent extents of the
// same kind are merged when their host ranges are contiguous too (Data,
// preallocated Zero) or carry no host range (Unallocated, plain Zero);
// Compressed extents never merge.
type Extent struct {
	Kind     ExtentKind
	GuestOff int64
	Len      int64
	// HostOff is the host byte that holds GuestOff, for ExtentData, and for
	// ExtentZero when the cluster is preallocated (zero-alloc); 0 otherwise.
	HostOff int64
	// Compressed locates the compressed cluster, for ExtentCompressed.
	Compressed CompressedDescriptor
}

// L2Func returns the raw big-endian L2 table stored at host offset l2Off:
// exactly one cluster of bytes. The driver serves it from its metadata
// cache; tests read it through an io.ReaderAt. Map does not retain the
// slice past the call and never writes to it.
type L2Func func(l2Off int64) ([]byte, error)

// Map translates the guest range [off, off+length) into extents, appending
// them to dst and returning the extended slice (it allocates only when dst
// lacks capacity). l1 is the active L1 table (raw entries); every L1 and L2
// entry on the way is validated with DecodeL1Entry / DecodeL2Entry, so a
// damaged entry yields an ErrCorrupt error naming it, never a wrong mapping.
//
// The range must lie inside the virtual disk (g.Size); otherwise ErrRange.
// On error, the extents already appended stay in the returned slice.
func Map(dst []Extent, g *Geometry, l1 []uint64, l2 L2Func, off, length int64) ([]Extent, error) {
	if !g.Valid() {
		return dst, Corrupt("cluster_bits", uint64(g.ClusterBits), "invalid geometry")
	}
	if off < 0 || length < 0 || off > g.Size || length > g.Size-off {
		return dst, OutOfRange("guest_offset", uint64(off), "range outside the virtual disk")
	}
	end := off + length
	cs := g.ClusterSize()
	for off < end {
		l1i, _, _ := g.Split(off)
		if l1i >= int64(len(l1)) {
			return dst, Corrupt("l1_size", uint64(len(l1)), "guest offset beyond the L1 table")
		}
		// The part of the range this L2 table covers.
		tableEnd := min(end, (l1i+1)*g.L1Coverage())
		l2Off, _, err := g.DecodeL1Entry(l1[l1i])
		if err != nil {
			return dst, WithField(err, Indexed("l1_table", uint64(l1i)))
		}
		if l2Off == 0 {
			dst = appendExtent(dst, Extent{Kind: ExtentUnallocated, GuestOff: off, Len: tableEnd - off})
			off = tableEnd
			continue
		}
		table, err := l2(l2Off)
		if err != nil {
			return dst, err
		}
		if int64(len(table)) != cs {
			return dst, OutOfRange("l2_table_len", uint64(len(table)), "L2 table is not one cluster")
		}
		for off < tableEnd {
			_, l2i, in := g.Split(off)
			clusterEnd := min(tableEnd, off-in+cs)
			e, bitmap, _ := g.L2EntryAt(table, l2i)
			le, err := g.DecodeL2Entry(e, bitmap)
			if err != nil {
				return dst, WithField(err, "l2_table@"+HexString(uint64(l2Off))+Indexed("", uint64(l2i)))
			}
			if !g.ExtendedL2 || le.Type == Compressed {
				dst = appendExtent(dst, extentFor(le.Type, le, off, clusterEnd-off, in))
				off = clusterEnd
				continue
			}
			scs := g.SubclusterSize()
			for off < clusterEnd {
				in := off & (cs - 1)
				sc := in / scs
				scEnd := min(clusterEnd, off-in+(sc+1)*scs)
				dst = appendExtent(dst, extentFor(g.SubclusterType(le, int(sc)), le, off, scEnd-off, in))
				off = scEnd
			}
		}
	}
	return dst, nil
}

// extentFor builds the extent of one (sub)cluster piece starting at guest
// offset off, in bytes into its cluster.
func extentFor(t ClusterType, le L2Entry, off, n, in int64) Extent {
	x := Extent{GuestOff: off, Len: n}
	switch t {
	case Normal:
		x.Kind, x.HostOff = ExtentData, le.HostOff+in
	case ZeroAlloc:
		x.Kind, x.HostOff = ExtentZero, le.HostOff+in
	case ZeroPlain:
		x.Kind = ExtentZero
	case Compressed:
		x.Kind, x.Compressed = ExtentCompressed, le.Compressed
	default: // Unallocated, UnallocatedAlloc
		x.Kind = ExtentUnallocated
	}
	return x
}

// appendExtent appends x, merging it into the last extent when both are
// the same kind and contiguous in the guest and (where they have one) in
// the host.
func appendExtent(dst []Extent, x Extent) []Extent {
	if n := len(dst); n > 0 {
		last := &dst[n-1]
		if last.Kind == x.Kind && last.GuestOff+last.Len == x.GuestOff && x.Kind != ExtentCompressed {
			hostOK := (last.HostOff == 0 && x.HostOff == 0) ||
				(last.HostOff != 0 && last.HostOff+last.Len == x.HostOff)
			if hostOK {
				last.Len += x.Len
				return dst
			}
		}
	}
	return append(dst, x)
}

// WithField prefixes the field of a *FormatError with where the entry was
// found ("l1_table[3]: l1_entry"). Other errors pass through.
func WithField(err error, where string) error {
	if fe, ok := err.(*FormatError); ok {
		c := *fe
		c.Field = where + " " + fe.Field
		return &c
	}
	return err
}

func HexString(v uint64) string {
	const digits = "0123456789abcdef"
	var b [18]byte
	i := len(b)
	for {
		i--
		b[i] = digits[v&15]
		v >>= 4
		if v == 0 {
			break
		}
	}
	i--
	b[i] = 'x'
	i--
	b[i] = '0'
	return string(b[i:])
}

// OneClusterL2 returns the offset of the L2 table that maps [off, off+n)
// when that range lies inside one cluster of a standard-L2 image and Map
// would find the table through a clean L1 entry; otherwise false.
func (g *Geometry) OneClusterL2(l1 []uint64, off, n int64) (int64, bool) {
	l1i, ok := g.OneClusterIndex(off, n, len(l1))
	if !ok {
		return 0, false
	}
	return g.CleanL2Table(l1[l1i])
}

// OneClusterIndex is OneClusterL2's first step: the index of the L1 entry
// that maps [off, off+n) when that range lies inside one cluster of a
// standard-L2 image and inside an L1 table of l1Len entries. The lock-free
// read path loads the entry itself (an atomic load) and goes on with
// CleanL2Table.
func (g *Geometry) OneClusterIndex(off, n int64, l1Len int) (int64, bool) {
	cb := g.ClusterBits
	cs := int64(1) << cb
	if g.ExtendedL2 || !g.Valid() || off < 0 || n <= 0 || off&(cs-1)+n > cs || off >= g.Size || n > g.Size-off {
		return 0, false
	}
	l1i := uint64(off) >> (2*cb - 3)
	if l1i >= uint64(l1Len) {
		return 0, false
	}
	return int64(l1i), true
}

// CleanL2Table returns the L2 table offset of L1 entry e when Map would
// follow it without a question (no reserved bits, allocated, aligned,
// inside the file: DecodeL1Entry's first step); otherwise false.
func (g *Geometry) CleanL2Table(e uint64) (int64, bool) {
	l2Off, ok := g.l1Fast(e)
	return int64(l2Off), ok
}

// DataHost returns the host offset of guest offset off when its entry in
// the standard L2 table is allocated data that DecodeL2Entry would accept
// as Normal; otherwise false.
func (g *Geometry) DataHost(table []byte, off int64) (int64, bool) {
	cb := g.ClusterBits
	cs := int64(1) << cb
	if int64(len(table)) != cs {
		return 0, false
	}
	return g.DataHostEntry(binary.BigEndian.Uint64(table[g.StandardL2Index(off)*8:]), off)
}

// StandardL2Index returns the index of guest offset off's entry in its
// standard (64-bit entry) L2 table.
func (g *Geometry) StandardL2Index(off int64) int64 {
	cs := int64(1) << g.ClusterBits
	return int64(uint64(off)>>g.ClusterBits) & (cs/8 - 1)
}

// DataHostEntry is DataHost for an entry already loaded (the lock-free
// read path loads it with an atomic load): the host offset of guest offset
// off when standard L2 entry e is allocated data that DecodeL2Entry would
// accept as Normal (its first step); otherwise false.
func (g *Geometry) DataHostEntry(e uint64, off int64) (int64, bool) {
	host, ok := g.l2Fast(e)
	if !ok {
		return 0, false
	}
	return int64(host) + off&(g.ClusterSize()-1), true
}
