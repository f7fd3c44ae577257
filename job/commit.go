package job

import (
	"errors"
	"fmt"

	"github.com/ringblk/ringblk/block"
)

// CommitOptions configure a commit (block-commit): the data of Top and
// the layers under it down to Base (exclusive) is written into Base, then
// the layers go. Top may be an intermediate layer — the job copies, and
// DropIntermediate points Top's overlays at Base — or the active layer
// (no overlay above it): then the job is a mirror from Top to Base that
// becomes ready and, on complete, pivots Top's users to Base (QEMU's
// active commit). Base must be writable.
type CommitOptions struct {
	Options
	Top, Base *block.Node
	// BackingFile is the name recorded in the overlays ("" : Base's).
	BackingFile string
	// Chunk is the copy unit of an intermediate commit (default 512 KiB).
	Chunk int64
	// PivotHook: see MirrorOptions (active commit only).
	PivotHook func(source, target *block.Node)
	// KeepChain makes the job copy only, whether or not Top has an
	// overlay: no pivot, no DropIntermediate, every backing link and
	// image header stays as it is. Prepare still flushes Base. This is
	// qemu-img commit (ringblk commit), which then empties Top itself, or
	// keeps it (-d, -b).
	KeepChain bool
}

// Commit is the driver of an intermediate commit.
type Commit struct {
	j      *Job
	g      *block.Graph
	o      CommitOptions
	top    *block.Child
	base   *block.Child
	layers []*block.Child
	sizes  []int64 // of layers
	size   int64
	off    int64
	buf    []byte
}

// NewCommit creates a commit job. For an active commit the driver is a
// *Mirror (of type "commit"), else a *Commit.
func NewCommit(m *Manager, o CommitOptions) (*Job, Driver, error) {
	if o.Top == nil || o.Base == nil || o.Top == o.Base {
		return nil, nil, errors.New("job: commit needs distinct top and base nodes")
	}
	if o.Base.ReadOnly() {
		return nil, nil, fmt.Errorf("job: commit into read-only %s", o.Base.Name())
	}
	layers, err := chainBelow(m.g, o.Top, o.Base)
	if err != nil {
		return nil, nil, err
	}
	active := !o.KeepChain
	m.g.Control(func() {
		if !active {
			return
		}
		for _, p := range o.Top.Parents() {
			if p.Parent() != nil && p.Role()&block.RoleBacking != 0 {
				active = false
			}
		}
	})
	if active {
		mi := &Mirror{g: m.g, typ: "commit", o: MirrorOptions{
			Options: o.Options, Source: o.Top, Target: o.Base, Sync: MirrorTop, Base: o.Base,
			PivotHook: o.PivotHook,
		}}
		j, err := mi.setup(m)
		if err != nil {
			return nil, nil, err
		}
		return j, mi, nil
	}
	c := &Commit{g: m.g, o: o}
	if c.o.Chunk == 0 {
		c.o.Chunk = 512 << 10
	}
	if c.o.Chunk < 0 || c.o.Chunk > maxChunk {
		return nil, nil, fmt.Errorf("job: commit chunk %d is not between 1 and %d", c.o.Chunk, maxChunk)
	}
	var ts, bs int64
	m.g.Control(func() {
		if ts, err = o.Top.Length(); err == nil {
			bs, err = o.Base.Length()
		}
		c.sizes = append(c.sizes, ts)
		for _, n := range layers {
			if err == nil {
				var s int64
				s, err = n.Length()
				c.sizes = append(c.sizes, s)
			}
		}
	})
	if err != nil {
		return nil, nil, err
	}
	if bs < ts {
		return nil, nil, fmt.Errorf("job: commit base %s (%d bytes) is smaller than top %s (%d)", o.Base.Name(), bs, o.Top.Name(), ts)
	}
	c.size = ts
	j, err := m.New(o.Options, c)
	if err != nil {
		return nil, nil, err
	}
	c.j = j
	fail := func(err error) (*Job, Driver, error) {
		j.Discard()
		return nil, nil, err
	}
	if c.top, err = j.AddNode(o.Top, "top"); err != nil {
		return fail(err)
	}
	c.layers = append(c.layers, c.top)
	for i, n := range layers {
		e, err := j.AddNode(n, fmt.Sprintf("layer%d", i))
		if err != nil {
			return fail(err)
		}
		c.layers = append(c.layers, e)
	}
	if c.base, err = j.AddNode(o.Base, "base"); err != nil {
		return fail(err)
	}
	c.buf = make([]byte, c.o.Chunk)
	j.SetTotal(c.size)
	return j, c, nil
}

func (c *Commit) Type() string { return "commit" }

// Iterate copies one chunk of what the layers above Base hold. Nothing
// but this job writes those layers (the guest writes an overlay above
// Top), so no lock is needed; Base changes only where an upper layer
// decides the content, which readers of the chain never see. A range the
// layers hold as zeroes (or past the end of a shorter layer) is written
// as zeroes, unmapping where Base can.
func (c *Commit) Iterate(it *Iteration) (bool, error) {
	if c.off >= c.size {
		return true, nil
	}
	n := min(c.o.Chunk, c.size-c.off)
	st, alloc, pnum, err := statusAbove(it, c.layers, c.sizes, c.off, n)
	if err != nil {
		return false, &IOError{Op: "block-status", Off: c.off, Err: err}
	}
	if pnum <= 0 || pnum > n {
		pnum = n
	}
	switch {
	case alloc && st&block.StatusZero != 0:
		if err := it.WriteZeroes(c.base, c.off, pnum, block.MayUnmap); err != nil {
			return false, &IOError{Target: true, Op: "write", Off: c.off, Err: err}
		}
	case alloc:
		buf := c.buf[:pnum]
		if err := it.Read(c.top, buf, c.off); err != nil {
			return false, &IOError{Op: "read", Off: c.off, Err: err}
		}
		if err := it.Write(c.base, buf, c.off, 0); err != nil {
			return false, &IOError{Target: true, Op: "write", Off: c.off, Err: err}
		}
	}
	c.off += pnum
	it.Job.AddProgress(pnum)
	return c.off >= c.size, nil
}

// Prepare flushes Base and drops Top and the layers under it from the
// chain: Top's overlays now read Base (DropIntermediate, drained).
func (c *Commit) Prepare(j *Job) error {
	if err := c.base.Node().Flush(); err != nil {
		return &IOError{Target: true, Op: "flush", Err: err}
	}
	if c.o.KeepChain {
		return nil
	}
	return c.g.DropIntermediate(c.top.Node(), c.o.Base, c.o.BackingFile)
}
