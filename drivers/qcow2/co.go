package qcow2

import (
	"sync"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
)

// Slow paths (L2 misses, compressed clusters, backing reads, allocation,
// flush) run as coroutines of the request's Context: they issue child
// requests one after another and park between them (style: "qcow2 as
// mapping then I/O"; aio/doc.go). The hot paths (cached reads, in-place
// writes) never start a coroutine.

// coWait is the Done of one child request a coroutine waits for.
type coWait struct {
	co   *aio.Co
	done bool
	err  error
}

func (w *coWait) RequestDone(_ *block.Request, err error) {
	w.err, w.done = err, true
	w.co.Wake()
}

// childIO runs one request on child c and parks co until it completes.
// parent, if not nil, is the guest request the I/O is for (it becomes the
// child request's Parent, so the I/O is counted under it).
func (d *Driver) childIO(co *aio.Co, parent *block.Request, c *block.Child, op block.Op, off int64, iov [][]byte, length int64) error {
	var r *block.Request
	if parent != nil {
		r = parent.Sub()
	} else {
		r = d.node.Graph().Pool(co.Context()).Get()
	}
	r.Op, r.Off, r.Iov, r.Len = op, off, iov, length
	w := &coWait{co: co}
	c.Submit(r, w)
	for !w.done {
		co.Yield()
	}
	if w.err != nil && c == d.file && (op == block.OpWrite || op == block.OpWriteZeroes || op == block.OpFlush) {
		d.noteFailedWrite() // close_report.go
	}
	return w.err
}

// fileRead reads len(buf) bytes of the image file at off.
func (d *Driver) fileRead(co *aio.Co, parent *block.Request, buf []byte, off int64) error {
	return d.childIO(co, parent, d.file, block.OpRead, off, [][]byte{buf}, int64(len(buf)))
}

// fileWrite writes buf to the image file at off.
func (d *Driver) fileWrite(co *aio.Co, parent *block.Request, buf []byte, off int64) error {
	return d.childIO(co, parent, d.file, block.OpWrite, off, [][]byte{buf}, int64(len(buf)))
}

// fileSync makes every completed write to the image file durable.
func (d *Driver) fileSync(co *aio.Co, parent *block.Request) error {
	if err := d.dataSync(co, parent); err != nil { // datafile.go: data before metadata (R4)
		return err
	}
	if err := d.childIO(co, parent, d.file, block.OpFlush, 0, nil, 0); err != nil {
		return err
	}
	d.noteSynced() // close_report.go
	return nil
}

// coMutex is a mutex for coroutines: a contended lock parks the coroutine
// instead of blocking its Context's thread. FIFO.
type coMutex struct {
	mu      sync.Mutex
	locked  bool
	waiters []*coLockWaiter
}

type coLockWaiter struct {
	co      *aio.Co
	granted bool
}

func (m *coMutex) lock(co *aio.Co) {
	m.mu.Lock()
	if !m.locked {
		m.locked = true
		m.mu.Unlock()
		return
	}
	w := &coLockWaiter{co: co}
	m.waiters = append(m.waiters, w)
	m.mu.Unlock()
	for {
		m.mu.Lock()
		g := w.granted
		m.mu.Unlock()
		if g {
			return
		}
		co.Yield()
	}
}

func (m *coMutex) unlock() {
	m.mu.Lock()
	if len(m.waiters) == 0 {
		m.locked = false
		m.mu.Unlock()
		return
	}
	w := m.waiters[0]
	m.waiters[0] = nil
	m.waiters = m.waiters[1:]
	w.granted = true // the lock passes straight to w
	m.mu.Unlock()
	w.co.Wake()
}

// iovSlice returns the window [skip, skip+n) of iov, appending the pieces
// to dst (no allocation when dst has room).
func iovSlice(dst [][]byte, iov [][]byte, skip, n int64) [][]byte {
	for _, b := range iov {
		if n == 0 {
			break
		}
		if skip >= int64(len(b)) {
			skip -= int64(len(b))
			continue
		}
		piece := b[skip:]
		skip = 0
		if int64(len(piece)) > n {
			piece = piece[:n]
		}
		dst = append(dst, piece)
		n -= int64(len(piece))
	}
	return dst
}

// iovZero clears [skip, skip+n) of iov.
func iovZero(iov [][]byte, skip, n int64) {
	for _, b := range iov {
		if n == 0 {
			return
		}
		if skip >= int64(len(b)) {
			skip -= int64(len(b))
			continue
		}
		piece := b[skip:]
		skip = 0
		if int64(len(piece)) > n {
			piece = piece[:n]
		}
		clear(piece)
		n -= int64(len(piece))
	}
}
