package qcow2

import (
	"errors"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// TruncatePrealloc grows the disk of qcow2 node n to size bytes with
// preallocation (qemu-img resize --preallocation=metadata|falloc|full):
// the growth of Truncate, then every cluster of the new area (from the
// cluster holding the old end) that has no host cluster gets one, as
// QEMU 7.2's resize does, so later guest writes there neither allocate
// metadata nor (falloc, full) grow the file's blocks:
//
//   - an unallocated cluster becomes a data cluster over fresh zeros; the
//     partial cluster at the old end, when a backing file shows through
//     its head, gets real zeros written past the old end instead (a
//     copy-on-write keeps the head);
//   - a plain zero cluster (Truncate hid a longer backing file with it)
//     becomes a preallocated zero cluster;
//   - metadata: the file is extended over the new data clusters (sparse);
//     falloc: they are fallocated; full: zeros are written.
//
// A data cluster the allocator finds below the old end of the file (freed
// space) is zeroed on the file before it is mapped: a preallocated cluster
// must read as zeros. Shrinking with preallocation is refused, as in
// QEMU; PreallocOff is Truncate. Extended-L2 images: prealloc_extl2.go.
// Call it like Amend: from a control goroutine or the main Context, with
// no other requests on the node.
func TruncatePrealloc(n *block.Node, size int64, mode format.Prealloc) error {
	if mode == format.PreallocOff {
		return n.Truncate(size)
	}
	d, ok := n.Driver().(*Driver)
	if !ok {
		return &block.Error{Kind: block.Unsupported, Op: block.OpTruncate, Node: n.Name(), Err: errors.New("qcow2: preallocated resize needs a qcow2 node")}
	}
	if d.readOnly {
		return &block.Error{Kind: block.Unsupported, Op: block.OpTruncate, Node: n.Name(), Err: errors.New("qcow2: resize needs a read-write node")}
	}
	d.mu.Lock()
	old := d.mu.geo.Size
	d.mu.Unlock()
	// The node's dirty bitmaps follow the length, as after a truncate
	// request (block.Node.ResizeBitmaps; a no-op when nothing changed).
	defer n.ResizeBitmaps()
	return d.formatErr(block.OpTruncate, size, d.runLocked(n, func(co *aio.Co) error {
		switch {
		case size < old:
			return format.Unsupported("preallocation", uint64(mode), "Preallocation can't be used for shrinking an image")
		case d.mu.hdr.IncompatibleFeatures&format.IncompatDataFile != 0:
			return format.Unsupported("data_file", 1, "preallocation on resize of an image with an external data file is not supported")
		}
		// truncateLocked is idempotent (a rerun after an *errWait finds
		// the size done); preallocGrow skips clusters already mapped.
		hide := d.backing != nil && d.backingSize > old // truncateLocked zeroes [old, size)
		if err := maintOf(d).truncateLocked(co, nil, size); err != nil {
			return err
		}
		if d.mu.geo.ExtendedL2 {
			return maintOf(d).preallocGrowExtL2(co, old, size, mode, hide) // prealloc_extl2.go
		}
		return maintOf(d).preallocGrow(co, old, size, mode)
	}))
}

// preallocGrow maps every cluster of [old rounded down, size) without a
// host cluster (see TruncatePrealloc). REQUIRES: metaLock held.
func (d maintOps) preallocGrow(co *aio.Co, old, size int64, mode format.Prealloc) error {
	cs := d.mu.geo.ClusterSize()
	fileLen, err := d.file.Node().Length()
	if err != nil {
		return err
	}
	fresh := (fileLen + cs - 1) &^ (cs - 1) // clusters from here on were never written
	var data []int64
	for off := old &^ (cs - 1); off < size; off += cs {
		t, l2i, le, _, _, err := d.lockEntry(co, nil, off)
		if err != nil {
			return err // an *errWait included: runLocked reruns
		}
		nt, need := format.Normal, le.Type == format.Unallocated
		if le.Type == format.ZeroPlain {
			nt, need = format.ZeroAlloc, true
		}
		d.mu.Unlock()
		if !need {
			d.l2Unpin(t)
			if off < old && mode != format.PreallocMetadata && (le.Type == format.Normal || le.Type == format.ZeroAlloc) {
				// The cluster holding the old end is mapped already: back
				// its host bytes past the old end too, which then read as
				// zeros. QEMU moves this cluster into the preallocated
				// area, copying only the head, so its guest reads zeros
				// past the old end as well (a longer backing file was
				// hidden with real zeros by truncateLocked).
				if err := d.backRange(co, le.HostOff+old-off, off+cs-old, mode); err != nil {
					return err
				}
			}
			continue
		}
		if off < old && le.Type == format.Unallocated && d.backing != nil {
			// The backing file shows through the head: write zeros from
			// the old end on (the write copies the head, R4).
			d.l2Unpin(t)
			k := min(off+cs, size) - old
			if err := d.writeCluster(co, nil, [][]byte{make([]byte, k)}, old, k); err != nil {
				return err
			}
			continue
		}
		h, err := d.allocCluster(co)
		if err == nil && h < fresh {
			err = d.childIO(co, nil, d.file, block.OpWriteZeroes, h, nil, cs)
		}
		if err != nil {
			d.l2Unpin(t)
			return err
		}
		d.mu.Lock()
		e, err := d.mu.geo.EncodeL2Entry(nt, h, true)
		if err == nil {
			d.setL2EntryLocked(t, l2i, e)
		}
		d.mu.Unlock()
		d.l2Unpin(t)
		if err != nil {
			return err
		}
		data = append(data, h)
	}
	if err := d.backData(co, data, mode); err != nil {
		return err
	}
	return d.flushMetadata(co, nil)
}

// backData gives the new data clusters their file space: metadata
// extends the file over them, falloc fallocates and full writes zeros, one
// request per host-contiguous run. Before flushMetadata makes the entries
// durable, so no entry ever points past the end of the file.
func (d maintOps) backData(co *aio.Co, data []int64, mode format.Prealloc) error {
	if len(data) == 0 {
		return nil
	}
	cs := d.mu.geo.ClusterSize()
	end := int64(0)
	for i := 0; i < len(data); {
		j := i + 1
		for j < len(data) && data[j] == data[j-1]+cs {
			j++
		}
		off, n := data[i], int64(j-i)*cs
		end = max(end, off+n)
		if err := d.backRange(co, off, n, mode); err != nil {
			return err
		}
		i = j
	}
	fileLen, err := d.file.Node().Length()
	if err != nil {
		return err
	}
	if end > fileLen {
		return d.childIO(co, nil, d.file, block.OpTruncate, end, nil, 0)
	}
	return nil
}

// backRange gives host bytes [off, off+n) of the file blocks: falloc
// fallocates them (a write-zeroes that may not unmap), full writes zeros,
// metadata does nothing. The bytes read as zeros afterwards.
func (d maintOps) backRange(co *aio.Co, off, n int64, mode format.Prealloc) error {
	switch mode {
	case format.PreallocFalloc:
		return d.childIO(co, nil, d.file, block.OpWriteZeroes, off, nil, n)
	case format.PreallocFull:
		zeros := make([]byte, min(n, 1<<20))
		for k := int64(0); k < n; k += int64(len(zeros)) {
			m := min(n-k, int64(len(zeros)))
			if err := d.fileWrite(co, nil, zeros[:m], off+k); err != nil {
				return err
			}
		}
	}
	return nil
}
