// Package compress is QEMU's compress filter driver: a node over a
// format node that can write compressed clusters (qcow2), which turns
// every write into a compressed write. The node's request alignment and
// transfer limit are the cluster size, so the block layer hands it whole
// clusters, one at a time: a write that does not cover whole clusters
// is read-modify-written to them first (the rest of a cluster is read
// from the image). Reads, write-zeroes, discards, flushes and block
// status pass through unchanged.
package compress

import (
	"errors"
	"fmt"
	"syscall"

	"github.com/ringblk/ringblk/block"
)

// ErrNotSupported is NewNode's refusal of an image whose driver cannot
// write compressed clusters.
var ErrNotSupported = errors.New("compression is not supported for the underlying format")

// Driver is the compress filter.
type Driver struct {
	block.DriverBase
	child *block.Child
	file  *block.Node // until Open attaches it
}

// NewNode opens a compress filter over image, whose clusters are
// clusterSize bytes (a power of two), taking over the caller's reference
// on image (dropped on failure). nopts.Align and MaxTransfer are set to
// the cluster size.
func NewNode(g *block.Graph, image *block.Node, clusterSize int64, nopts block.Options) (*block.Node, error) {
	if _, ok := image.Driver().(block.CompressedWriter); !ok {
		image.Unref()
		return nil, ErrNotSupported
	}
	if clusterSize <= 0 || clusterSize&(clusterSize-1) != 0 || clusterSize > 1<<30 {
		image.Unref()
		return nil, fmt.Errorf("compress: cluster size %d is not a power of two up to 1 GiB", clusterSize)
	}
	nopts.Align = int(clusterSize)
	nopts.MaxTransfer = clusterSize
	d := &Driver{file: image}
	n, err := g.Open(d, nopts)
	if err != nil {
		if d.file != nil {
			d.file.Unref()
		}
		return nil, err
	}
	return n, nil
}

func (d *Driver) Open(n *block.Node) error {
	f := d.file
	d.file = nil
	c, err := n.Graph().Attach(n, f, block.ChildSpec{Name: "file", Role: block.RoleFiltered | block.RolePrimary})
	f.Unref()
	if err != nil {
		return err
	}
	d.child = c
	return nil
}

func (d *Driver) Length(n *block.Node) (int64, error) {
	if d.child == nil || d.child.Node() == nil {
		return 0, errors.New("compress: no image")
	}
	return d.child.Node().Length()
}

// forward sends r to the image as op.
func (d *Driver) forward(r *block.Request, op block.Op) {
	c := d.child
	if c == nil || c.Node() == nil {
		r.CompleteLater(&block.Error{Kind: block.Io, Op: r.Op, Node: r.Node().Name(), Offset: r.Off, Err: syscall.ENOMEDIUM})
		return
	}
	s := r.Sub()
	s.Op, s.Flags, s.Off, s.Len, s.Iov = op, r.Flags, r.Off, r.Len, r.Iov
	c.Submit(s, fwdDone{})
}

type fwdDone struct{}

func (fwdDone) RequestDone(s *block.Request, err error) {
	r := s.Parent
	r.Status, r.Pnum = s.Status, s.Pnum
	r.Complete(err)
}

func (d *Driver) Read(r *block.Request) { d.forward(r, block.OpRead) }

// Write writes r's clusters compressed.
func (d *Driver) Write(r *block.Request) { d.forward(r, block.OpWriteCompressed) }

// WriteCompressed passes a compressed write on as it is.
func (d *Driver) WriteCompressed(r *block.Request) { d.forward(r, block.OpWriteCompressed) }

func (d *Driver) WriteZeroes(r *block.Request) { d.forward(r, block.OpWriteZeroes) }
func (d *Driver) Discard(r *block.Request)     { d.forward(r, block.OpDiscard) }
func (d *Driver) Flush(r *block.Request)       { d.forward(r, block.OpFlush) }
func (d *Driver) BlockStatus(r *block.Request) { d.forward(r, block.OpBlockStatus) }
