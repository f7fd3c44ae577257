package qcow2

import (
	"encoding/binary"
	"errors"

	"github.com/ringblk/ringblk/block"
)

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
}

// Layout computes the metadata of a new image: the header, and where the
// refcount table, the refcount blocks and the L1 table go. The layout is
// QEMU's (header, refcount table at cluster 1, refcount block at 2, L1
// at 3 for every image whose refcount structures fit in one cluster
// each), so images read the same as `qemu-img create`'s.
func Layout(size int64, o CreateOptions) (*Header, error) {
	h, _, err := layout(size, o)
	return h, err
}

// layout also returns the refcount block offsets. QEMU's order: header,
// refcount table, first refcount block, L1 table, then any further
// refcount blocks (needed when the L1 table is large) after the L1 table.
func layout(size int64, o CreateOptions) (*Header, []int64, error) {
	cs := o.ClusterSize
	if cs == 0 {
		cs = 64 << 10
	}
	bits := uint32(0)
	for int64(1)<<bits < cs {
		bits++
	}
	if int64(1)<<bits != cs || bits < MinClusterBits || bits > MaxClusterBits {
		return nil, nil, limit("cluster_size", uint64(max(cs, 0)), "cluster size must be a power of two between 512 and 2 MiB")
	}
	ver := o.Version
	if ver == 0 {
		ver = 3
	}
	if ver != 2 && ver != 3 {
		return nil, nil, unsupported("version", uint64(ver), "compat must be 0.10 or 1.1")
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
		return nil, nil, limit("refcount_bits", uint64(max(rb, 0)), "refcount width must be a power of two up to 64")
	}
	if ver == 2 && order != 4 {
		return nil, nil, unsupported("refcount_bits", uint64(rb), "version 2 images need 16-bit refcounts")
	}
	if size < 0 || size > MaxImageSize {
		return nil, nil, limit("size", uint64(max(size, 0)), "virtual size out of range")
	}
	if (o.BackingFile == "") != (o.BackingFormat == "") {
		return nil, nil, unsupported("backing_file", 0, "a backing file needs an explicit backing format, and vice versa")
	}
	if o.BackingFormat != "" && o.BackingFormat != "raw" && o.BackingFormat != "qcow2" {
		return nil, nil, unsupported("backing_format", 0, "backing format must be raw or qcow2")
	}
	l1 := L1EntriesFor(uint64(size), bits, false)
	if l1*8 > MaxL1Bytes {
		return nil, nil, limit("l1_size", l1, "image size is too large for this cluster size")
	}
	h := &Header{
		Version: uint32(ver), ClusterBits: bits, Size: uint64(size),
		L1Entries: uint32(l1), RefcountOrder: order,
		BackingFile: o.BackingFile, BackingFormat: o.BackingFormat,
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
		return nil, nil, limit("refcount_table_clusters", uint64(rtClusters), "refcount table too large")
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

// Create writes a new, empty image of size bytes to file (a writable node,
// usually a raw node over a new file): everything the file held is
// discarded. It runs synchronous requests (block's sync calls), so call it
// from a control goroutine, never from a coroutine or request callback.
// The result passes `qemu-img check`, and `qemu-img info` reports the same
// format-specific fields as for `qemu-img create` with the same options.
func Create(file *block.Node, size int64, o CreateOptions) error {
	h, offs, err := layout(size, o)
	if err != nil {
		return &block.Error{Kind: kindOf(err), Op: block.OpOpen, Node: file.Name(), Err: err}
	}
	hb, err := h.MarshalBinary()
	if err != nil {
		return &block.Error{Kind: kindOf(err), Op: block.OpOpen, Node: file.Name(), Err: err}
	}
	cs := int64(1) << h.ClusterBits
	rtClusters := int64(h.RefcountTableClusters)
	end := (2 + rtClusters) * cs
	if h.L1Entries > 0 {
		end = int64(h.L1Offset) + int64(h.L1Entries)*8
	} else {
		end = offs[0] + cs
	}
	if last := offs[len(offs)-1] + cs; len(offs) > 1 && last > end {
		end = last
	}
	used := (end + cs - 1) / cs // clusters holding metadata

	img := make([]byte, end)
	copy(img, hb)
	rt := img[cs : cs+rtClusters*cs]
	perBlock := int64(1) << (int64(h.ClusterBits) + 3 - int64(h.RefcountOrder))
	for b, off := range offs {
		binary.BigEndian.PutUint64(rt[b*8:], uint64(off))
		blk := img[off : off+cs]
		for i := int64(0); i < perBlock; i++ {
			c := int64(b)*perBlock + i
			if c >= used {
				break
			}
			if err := RefcountSet(blk, h.RefcountOrder, i, 1); err != nil {
				return err
			}
		}
	}
	if err := file.Truncate(0); err != nil && !block.IsKind(err, block.Unsupported) {
		return err
	}
	// Metadata first, header last, then a flush: a crash leaves either no
	// valid header or a complete image.
	if _, err := file.WriteAt(img[cs:], cs); err != nil {
		return err
	}
	if err := file.Flush(); err != nil {
		return err
	}
	if _, err := file.WriteAt(img[:cs], 0); err != nil {
		return err
	}
	return file.Flush()
}

func kindOf(err error) block.Kind {
	switch {
	case errors.Is(err, ErrLimit):
		return block.Overflow
	case errors.Is(err, ErrUnsupported):
		return block.Unsupported
	}
	return block.InvalidFormat
}
