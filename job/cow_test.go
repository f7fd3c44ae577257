package job_test

import (
	"sync"
	"sync/atomic"

	"github.com/ringblk/ringblk/block"
)

// cowMem is an in-memory image with a backing image, in 4 KiB clusters:
// a cluster this layer never wrote reads from the backing layer (zeroes
// without one), block status reports allocation per cluster, and the
// backing link is changed by ChangeBackingFile (as a qcow2 header would
// be rewritten). The backing layer is a driver pointer, so requests never
// read the graph's edge lists.
type cowMem struct {
	block.DriverBase
	mu          sync.Mutex
	data        []byte
	alloc       []bool
	backing     atomic.Pointer[cowMem]
	backingName string
	nameChanges int
}

const cowCluster = 4096

func newCow(size int64, backing *cowMem) *cowMem {
	d := &cowMem{data: make([]byte, size), alloc: make([]bool, size/cowCluster)}
	if backing != nil {
		d.backing.Store(backing)
	}
	return d
}

func (d *cowMem) Length(*block.Node) (int64, error) { return int64(len(d.data)), nil }

// readAt fills p from the layered view at off.
func (d *cowMem) readAt(p []byte, off int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.readLocked(p, off)
}

func (d *cowMem) readLocked(p []byte, off int64) {
	for len(p) > 0 {
		c := off / cowCluster
		n := min(int64(len(p)), (c+1)*cowCluster-off)
		switch b := d.backing.Load(); {
		case d.alloc[c]:
			copy(p[:n], d.data[off:off+n])
		case b != nil:
			b.readAt(p[:n], off)
		default:
			clear(p[:n])
		}
		p, off = p[n:], off+n
	}
}

func (d *cowMem) writeAt(p []byte, off int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for len(p) > 0 {
		c := off / cowCluster
		n := min(int64(len(p)), (c+1)*cowCluster-off)
		if !d.alloc[c] {
			d.readLocked(d.data[c*cowCluster:(c+1)*cowCluster], c*cowCluster) // copy on write
			d.alloc[c] = true
		}
		copy(d.data[off:off+n], p[:n])
		p, off = p[n:], off+n
	}
}

// view returns the whole layered content.
func (d *cowMem) view() []byte {
	p := make([]byte, len(d.data))
	d.readAt(p, 0)
	return p
}

func (d *cowMem) allocated() []bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]bool(nil), d.alloc...)
}

func (d *cowMem) Read(r *block.Request) {
	off := r.Off
	for _, b := range r.Iov {
		d.readAt(b, off)
		off += int64(len(b))
	}
	r.CompleteLater(nil)
}

func (d *cowMem) Write(r *block.Request) {
	off := r.Off
	for _, b := range r.Iov {
		d.writeAt(b, off)
		off += int64(len(b))
	}
	r.CompleteLater(nil)
}

func (d *cowMem) WriteZeroes(r *block.Request) {
	d.writeAt(make([]byte, r.Len), r.Off)
	r.CompleteLater(nil)
}

func (d *cowMem) Flush(r *block.Request) { r.CompleteLater(nil) }

func (d *cowMem) BlockStatus(r *block.Request) {
	d.mu.Lock()
	c := r.Off / cowCluster
	a := d.alloc[c]
	end := min(r.Off+r.Len, int64(len(d.data)))
	n := (c+1)*cowCluster - r.Off
	for c++; c*cowCluster < end && d.alloc[c] == a; c++ {
		n += cowCluster
	}
	d.mu.Unlock()
	r.Pnum = min(n, end-r.Off)
	switch {
	case a:
		r.Status = block.StatusData | block.StatusAllocated
	case d.backing.Load() == nil:
		r.Status = block.StatusZero
	default:
		r.Status = 0
	}
	r.CompleteLater(nil)
}

func (d *cowMem) ChangeBackingFile(n *block.Node, file string, base *block.Node) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.backingName = file
	d.nameChanges++
	if base == nil {
		d.backing.Store(nil)
	} else {
		d.backing.Store(base.Driver().(*cowMem))
	}
	return nil
}
