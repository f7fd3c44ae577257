package chain

// The raw format's offset and size options: a node that shows a window of
// its file child (QEMU's raw driver with offset=/size=, test 171). The
// same node is the raw format over a blkdebug filter, where it raises the
// debug events QEMU's raw format raises on its file (read_aio before a
// read, write_aio before a write): without a raw node above it, the
// filter never saw them and rules on those events never fired.

import (
	"errors"
	"fmt"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/nbd"
)

// window serves [off, off+size) of its file child as a whole image
// (size -1: to the end of the file). Every request is forwarded with its
// offset moved; the block layer's range check keeps requests inside.
type window struct {
	block.DriverBase
	pending *block.Node // the file until Open attaches it
	file    *block.Child
	off     int64
	size    int64
	// dbg is the file's driver when it takes debug events (blkdebug):
	// reads and writes raise read_aio and write_aio on it first, as
	// QEMU's raw_co_preadv and raw_co_pwritev do. Write-zeroes, discard
	// and flush raise none there either.
	dbg block.DebugEventer
}

func (w *window) Open(n *block.Node) error {
	file := w.pending
	w.pending = nil
	c, err := n.Graph().Attach(n, file, block.ChildSpec{Name: "file", Role: block.RoleFile | block.RolePrimary})
	file.Unref() // Attach took its own reference
	if err != nil {
		return err
	}
	w.file = c
	w.dbg = block.DebugEventerOf(file)
	flen, err := file.Length()
	if err != nil {
		return err
	}
	switch {
	case w.off > flen:
		return fmt.Errorf("The offset (%d) is larger than the actual size of the containing file (%d)", w.off, flen)
	case w.size >= 0 && w.off+w.size > flen:
		return fmt.Errorf("The sum of offset (%d) and size (%d) has to be smaller or equal to the  actual size of the containing file (%d)", w.off, w.size, flen)
	}
	return nil
}

// release drops the file of a window that was never opened.
func (w *window) release() {
	if w.pending != nil {
		w.pending.Unref()
		w.pending = nil
	}
}

func (w *window) Length(n *block.Node) (int64, error) {
	if w.size >= 0 {
		return w.size, nil
	}
	l, err := w.file.Node().Length()
	if err != nil {
		return 0, err
	}
	return l - w.off, nil
}

func (w *window) forward(r *block.Request) {
	s := r.Sub()
	s.Op, s.Flags, s.Off, s.Len, s.Iov = r.Op, r.Flags, r.Off+w.off, r.Len, r.Iov
	w.file.Submit(s, windowDone{})
}

type windowDone struct{}

func (windowDone) RequestDone(s *block.Request, err error) {
	r := s.Parent
	r.Status, r.Pnum = s.Status, s.Pnum
	r.Complete(err)
}

func (w *window) Read(r *block.Request) {
	if w.dbg != nil {
		w.dbg.DebugEvent(block.DbgReadAIO)
	}
	w.forward(r)
}

func (w *window) Write(r *block.Request) {
	if w.dbg != nil {
		w.dbg.DebugEvent(block.DbgWriteAIO)
	}
	w.forward(r)
}

func (w *window) Flush(r *block.Request)       { w.forward(r) }
func (w *window) Discard(r *block.Request)     { w.forward(r) }
func (w *window) WriteZeroes(r *block.Request) { w.forward(r) }
func (w *window) BlockStatus(r *block.Request) { w.forward(r) }

// openWindow opens a window node over file (whose reference it takes).
func openWindow(b *SpecBuilder, file *block.Node, name string, off, size int64) (*block.Node, error) {
	return openWindowIn(b.G, file, name, b.O.ReadOnly, off, size)
}

// rawOver is the raw format over file. Over a node that takes debug
// events (a blkdebug filter) it is a node of its own, which raises them
// as QEMU's raw format does, and over an NBD client node too, so that a
// daemon's raw node over an nbd node is a node of its own as in QEMU
// (libvirt adds the two and names both); over any other node ringblk's
// raw format is that node itself.
func rawOver(g *block.Graph, file *block.Node, name string, readOnly bool) (*block.Node, error) {
	if _, isNBD := file.Driver().(*nbd.Driver); block.DebugEventerOf(file) == nil && !isNBD {
		return file, nil
	}
	return openWindowIn(g, file, name, readOnly, 0, -1)
}

func openWindowIn(g *block.Graph, file *block.Node, name string, readOnly bool, off, size int64) (*block.Node, error) {
	if off < 0 || size < -1 {
		file.Unref()
		return nil, errors.New("offset and size must not be negative")
	}
	w := &window{pending: file, off: off, size: size}
	n, err := g.Open(w, block.Options{Name: name, ReadOnly: readOnly})
	if err != nil {
		w.release()
		return nil, err
	}
	return n, nil
}

// FormatDriver names the node's driver as QEMU does: it is the raw format.
func (w *window) FormatDriver() string { return "raw" }
