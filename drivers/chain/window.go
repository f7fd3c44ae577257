package chain

// The raw format's offset and size options: a node that shows a window of
// its file child (QEMU's raw driver with offset=/size=, test 171).

import (
	"errors"
	"fmt"

	"github.com/ringblk/ringblk/block"
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

func (w *window) Read(r *block.Request)        { w.forward(r) }
func (w *window) Write(r *block.Request)       { w.forward(r) }
func (w *window) Flush(r *block.Request)       { w.forward(r) }
func (w *window) Discard(r *block.Request)     { w.forward(r) }
func (w *window) WriteZeroes(r *block.Request) { w.forward(r) }
func (w *window) BlockStatus(r *block.Request) { w.forward(r) }

// openWindow opens a window node over file (whose reference it takes).
func openWindow(b *SpecBuilder, file *block.Node, name string, off, size int64) (*block.Node, error) {
	if off < 0 || size < -1 {
		file.Unref()
		return nil, errors.New("offset and size must not be negative")
	}
	w := &window{pending: file, off: off, size: size}
	n, err := b.G.Open(w, block.Options{Name: name, ReadOnly: b.O.ReadOnly})
	if err != nil {
		w.release()
		return nil, err
	}
	return n, nil
}
