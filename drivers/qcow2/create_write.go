package qcow2

import (
	"encoding/binary"
	"errors"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// Create writes a new, empty image of size bytes to file (a writable node,
// usually a raw node over a new file): everything the file held is
// discarded. It runs synchronous requests (block's sync calls), so call it
// from a control goroutine, never from a coroutine or request callback.
// The result passes `qemu-img check`, and `qemu-img info` reports the same
// format-specific fields as for `qemu-img create` with the same options.
func Create(file *block.Node, size int64, o format.CreateOptions) error {
	h, offs, err := format.LayoutRefblocks(size, o)
	if err != nil {
		return &block.Error{Kind: kindOf(err), Op: block.OpOpen, Node: file.Name(), Err: err}
	}
	hb, err := h.MarshalBinary()
	if err != nil {
		return &block.Error{Kind: kindOf(err), Op: block.OpOpen, Node: file.Name(), Err: err}
	}
	if o.Preallocation != format.PreallocOff && h.L1Entries > 0 {
		return createPrealloc(file, h, offs, o.Preallocation)
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
			if err := format.RefcountSet(blk, h.RefcountOrder, i, 1); err != nil {
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
	case errors.Is(err, format.ErrLimit):
		return block.Overflow
	case errors.Is(err, format.ErrUnsupported):
		return block.Unsupported
	}
	return block.InvalidFormat
}

// createPrealloc writes a new image with every cluster preallocated. Only
// metadata is held in memory, one cluster at a time, besides the plan
// (two offsets per L2 table and one per refcount block).
func createPrealloc(file *block.Node, h *format.Header, offs []int64, mode format.Prealloc) error {
	g := h.Geometry(0)
	cs := g.ClusterSize()
	if g.ExternalData {
		// Only the mapping lives here; the data file was preallocated by
		// CreateWithDataFile (datafile.go).
		mode = format.PreallocMetadata
	}
	var p *format.PreallocPlan
	if mode == format.PreallocMetadata {
		var err error
		if p, err = format.PlanMetadata(h, offs); err == format.ErrTableFull {
			p = format.PlanArea(h, offs)
		} else if err != nil {
			return err
		}
	} else {
		p = format.PlanArea(h, offs)
	}
	if p.RTClusters*cs > format.MaxRefcountTableBytes {
		return format.Limit("refcount_table_clusters", uint64(p.RTClusters), "refcount table too large")
	}
	h.RefcountTableOffset = uint64(p.RTOff * cs)
	h.RefcountTableClusters = uint32(p.RTClusters)
	hb, err := h.MarshalBinary()
	if err != nil {
		return &block.Error{Kind: kindOf(err), Op: block.OpOpen, Node: file.Name(), Err: err}
	}
	if err := file.Truncate(0); err != nil && !block.IsKind(err, block.Unsupported) {
		return err
	}
	buf := make([]byte, cs)
	// Refcount table.
	rt := make([]byte, p.RTClusters*cs)
	for i, c := range p.RB {
		if c != 0 {
			putU64(rt[i*8:], uint64(c*cs))
		}
	}
	if _, err := file.WriteAt(rt, p.RTOff*cs); err != nil {
		return err
	}
	// Refcount blocks: 1 for every cluster below end but the holes.
	perBlock := g.RefcountBlockEntries()
	for b, c := range p.RB {
		if c == 0 {
			continue
		}
		clear(buf)
		for i := int64(0); i < perBlock; i++ {
			x := int64(b)*perBlock + i
			if x >= p.End {
				break
			}
			if isHole(p.Holes, x) {
				continue
			}
			if err := format.RefcountSet(buf, h.RefcountOrder, i, 1); err != nil {
				return err
			}
		}
		if _, err := file.WriteAt(buf, c*cs); err != nil {
			return err
		}
	}
	// L1 table and L2 tables. Extended L2 bitmaps stay 0: every
	// subcluster is unallocated in an allocated cluster, so reads still go
	// to the backing file (which is why qemu-img allows this combination).
	l1 := make([]byte, int64(h.L1Entries)*8)
	clusters := (int64(h.Size) + cs - 1) / cs
	per, esz := g.L2Entries(), g.L2EntrySize()
	for i := range p.L2 {
		e, err := g.EncodeL1Entry(p.L2[i]*cs, true)
		if err != nil {
			return err
		}
		putU64(l1[i*8:], e)
		clear(buf)
		k := min(per, clusters-int64(i)*per)
		for j := int64(0); j < k; j++ {
			host := (p.Data[i] + j) * cs
			if g.ExternalData { // datafile.go: a data cluster sits at its guest offset
				host = (int64(i)*per + j) * cs
			}
			le, err := g.EncodeL2Entry(format.Normal, host, true)
			if err != nil {
				return err
			}
			putU64(buf[j*esz:], le)
		}
		if _, err := file.WriteAt(buf, p.L2[i]*cs); err != nil {
			return err
		}
	}
	if _, err := file.WriteAt(l1, int64(h.L1Offset)); err != nil {
		return err
	}
	// Data: runs of host-contiguous clusters.
	if mode != format.PreallocMetadata {
		for i := 0; i < len(p.Data); {
			j := i + 1
			for j < len(p.Data) && p.Data[j] == p.Data[j-1]+per {
				j++
			}
			start := p.Data[i] * cs
			n := (min(int64(j)*per, clusters) - int64(i)*per) * cs
			if err := preallocData(file, mode, start, n); err != nil {
				return err
			}
			i = j
		}
	}
	if err := file.Truncate(p.FileLen); err != nil && !block.IsKind(err, block.Unsupported) {
		return err
	}
	if err := file.Flush(); err != nil {
		return err
	}
	// Header last, as in Create.
	clear(buf)
	copy(buf, hb)
	if _, err := file.WriteAt(buf, 0); err != nil {
		return err
	}
	return file.Flush()
}

func isHole(holes []int64, c int64) bool {
	for _, h := range holes {
		if h == c {
			return true
		}
	}
	return false
}

// preallocData allocates the data clusters at [off, off+n) in the file:
// fallocate (a write-zeroes that may not unmap) or written zeros.
func preallocData(file *block.Node, mode format.Prealloc, off, n int64) error {
	if mode == format.PreallocFalloc {
		return file.WriteZeroes(off, n, 0)
	}
	zero := make([]byte, min(n, 1<<20))
	for n > 0 {
		k := min(n, int64(len(zero)))
		if _, err := file.WriteAt(zero[:k], off); err != nil {
			return err
		}
		off += k
		n -= k
	}
	return nil
}
