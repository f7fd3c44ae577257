// Package quorum is QEMU's quorum driver: a node over several children
// holding the same data. A read reads every child and returns the
// content the most children agree on, if at least the vote threshold of
// them do (else EIO); a write, write-zeroes, discard or flush goes to
// every child and succeeds when at least the threshold of them succeed.
// Test and repair support, not a fast path: a read allocates a buffer per
// child.
package quorum

import (
	"bytes"
	"errors"
	"fmt"
	"syscall"

	"github.com/ringblk/ringblk/block"
)

// Driver is the quorum driver.
type Driver struct {
	block.DriverBase
	threshold int
	fifo      bool // read-pattern=fifo: read the first child only
	files     []*block.Node
	children  []*block.Child
}

// NewNode opens a quorum node over children (at least one) with vote
// threshold (1 ≤ threshold ≤ len(children)), taking over the caller's
// references on the children (dropped on failure). fifo reads the first
// child only (QEMU's read-pattern=fifo).
func NewNode(g *block.Graph, children []*block.Node, threshold int, fifo bool, nopts block.Options) (*block.Node, error) {
	if len(children) == 0 || threshold < 1 || threshold > len(children) {
		for _, c := range children {
			c.Unref()
		}
		return nil, fmt.Errorf("threshold %d is not between 1 and the number of children (%d)", threshold, len(children))
	}
	d := &Driver{threshold: threshold, fifo: fifo, files: children}
	n, err := g.Open(d, nopts)
	if err != nil {
		for _, c := range d.files {
			c.Unref()
		}
		return nil, err
	}
	return n, nil
}

func (d *Driver) Open(n *block.Node) error {
	files := d.files
	d.files = nil
	var err error
	for i, f := range files {
		if err == nil {
			var c *block.Child
			c, err = n.Graph().Attach(n, f, block.ChildSpec{Name: fmt.Sprintf("children.%d", i)})
			if err == nil {
				d.children = append(d.children, c)
			}
		}
		f.Unref()
	}
	return err
}

// Length is the children's common length; children of different lengths
// are an error.
func (d *Driver) Length(n *block.Node) (int64, error) {
	var l int64 = -1
	for _, c := range d.children {
		cl, err := c.Node().Length()
		if err != nil {
			return 0, err
		}
		if l >= 0 && cl != l {
			return 0, errors.New("quorum: the children differ in length")
		}
		l = cl
	}
	return l, nil
}

// op is one request fanned out to the children.
type op struct {
	d       *Driver
	r       *block.Request
	pending int
	bufs    [][]byte
	errs    []error
}

type childDone struct {
	o *op
	i int
}

func (c childDone) RequestDone(s *block.Request, err error) {
	o := c.o
	o.errs[c.i] = err
	o.pending--
	if o.pending == 0 {
		o.finish()
	}
}

func (d *Driver) fanOut(r *block.Request, read bool) {
	children := d.children
	if read && d.fifo {
		children = children[:1]
	}
	o := &op{d: d, r: r, pending: len(children), errs: make([]error, len(children))}
	if read {
		o.bufs = make([][]byte, len(children))
	}
	for i, c := range children {
		s := r.Sub()
		s.Op, s.Flags, s.Off, s.Len, s.Iov = r.Op, r.Flags, r.Off, r.Len, r.Iov
		if read {
			o.bufs[i] = make([]byte, r.Len)
			s.Iov = [][]byte{o.bufs[i]}
		}
		c.Submit(s, childDone{o, i})
	}
}

// finish votes: for a read, the largest group of children that read the
// same bytes wins if it reaches the threshold (fifo: the one child's
// read); for other requests, enough successes.
func (o *op) finish() {
	r := o.r
	need := o.d.threshold
	if o.bufs != nil && o.d.fifo {
		need = 1
	}
	var firstErr error
	for _, err := range o.errs {
		if err != nil && firstErr == nil {
			firstErr = err
		}
	}
	if o.bufs == nil {
		ok := 0
		for _, err := range o.errs {
			if err == nil {
				ok++
			}
		}
		if ok >= need {
			r.Complete(nil)
		} else {
			r.Complete(firstErr)
		}
		return
	}
	best, votes := -1, 0
	for i := range o.bufs {
		if o.errs[i] != nil {
			continue
		}
		v := 0
		for j := range o.bufs {
			if o.errs[j] == nil && bytes.Equal(o.bufs[i], o.bufs[j]) {
				v++
			}
		}
		if v > votes {
			best, votes = i, v
		}
	}
	if best < 0 || votes < need {
		if firstErr == nil {
			firstErr = &block.Error{Kind: block.Io, Op: r.Op, Node: r.Node().Name(), Offset: r.Off, Err: syscall.EIO}
		}
		r.Complete(firstErr)
		return
	}
	block.CopyToIov(r.Iov, 0, o.bufs[best])
	r.Complete(nil)
}

func (d *Driver) Read(r *block.Request)        { d.fanOut(r, true) }
func (d *Driver) Write(r *block.Request)       { d.fanOut(r, false) }
func (d *Driver) WriteZeroes(r *block.Request) { d.fanOut(r, false) }
func (d *Driver) Discard(r *block.Request)     { d.fanOut(r, false) }
func (d *Driver) Flush(r *block.Request)       { d.fanOut(r, false) }

// BlockStatus reports the whole range as data: the children's own maps
// may differ.
func (d *Driver) BlockStatus(r *block.Request) {
	r.Status, r.Pnum = block.StatusData|block.StatusAllocated, r.Len
	r.CompleteLater(nil)
}
