package job

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/ringblk/ringblk/block"
)

// backingDiff is the one implementation of "write into Top what reading
// it through its old backing chain gives and its new backing would not":
// stream (the new backing is Base, below the layers it copies) and the
// safe mode of rebase (the Rebase job, which is ringblk rebase and so
// qemu-img rebase). Only ranges Top does not allocate itself are looked
// at: what Top allocates reads the same over any backing file.
type backingDiff struct {
	top *block.Child // read through its old chain, written
	// above are the old chain's layers over the new backing (top's
	// backing first) when the new backing is in the old chain (stream's
	// Base, rebase's Prefix): where none allocates, old and new read the
	// same and nothing is read. inChain false: unknown, read and compare
	// everything.
	above      []*block.Child
	aboveSizes []int64 // their lengths: past the end of one the chain reads zeroes
	inChain    bool
	// compare: write only the sectors (diffSector) whose content differs
	// from the new backing's (rebase); else write every range a layer of
	// above allocates (stream: QEMU's copy of the backing data).
	compare bool
	newB    *block.Child // the new backing, nil: none (reads as zeroes)
	newSize int64
	old     []byte // chunk buffers
	cur     []byte
}

// lengths returns the lengths of nodes (main Context), or err if set.
func lengths(nodes []*block.Node, err error) ([]int64, error) {
	if err != nil {
		return nil, err
	}
	out := make([]int64, len(nodes))
	for i, n := range nodes {
		if out[i], err = n.Length(); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// diffSector is the unit in which rebase compares and writes (qemu-img
// rebase compares 512-byte sectors, so its allocation is ours).
const diffSector = 512

// step handles [off, off+n) from off on and returns how far it got
// (0 < done <= n). Errors are IOErrors with Op "block-status", "read"
// (the old chain), "read-new-backing" or "write" (Target: Top).
func (d *backingDiff) step(it *Iteration, off, n int64) (int64, error) {
	st, pnum, err := it.BlockStatus(d.top, off, n)
	if err != nil {
		return 0, &IOError{Op: "block-status", Off: off, Err: err}
	}
	if pnum <= 0 || pnum > n {
		pnum = n
	}
	if st&block.StatusAllocated != 0 {
		return pnum, nil
	}
	if d.inChain {
		// Past the end of a layer shorter than Top the old chain reads
		// zeroes whatever the new backing holds (QEMU counts it as
		// allocated): read and compare there.
		past := false
		for _, sz := range d.aboveSizes {
			if off >= sz {
				past = true
				break
			}
			pnum = min(pnum, sz-off)
		}
		if !past {
			alloc, p, err := allocatedAbove(it, d.above, off, pnum)
			if err != nil {
				return 0, &IOError{Op: "block-status", Off: off, Err: err}
			}
			pnum = min(p, pnum)
			if !alloc {
				return pnum, nil
			}
		}
	}
	old := d.old[:pnum]
	if err := it.Read(d.top, old, off); err != nil {
		return 0, &IOError{Op: "read", Off: off, Err: err}
	}
	if !d.compare {
		if err := it.Write(d.top, old, off, 0); err != nil {
			return 0, &IOError{Target: true, Op: "write", Off: off, Err: err}
		}
		return pnum, nil
	}
	cur := d.cur[:pnum]
	clear(cur)
	if d.newB != nil && off < d.newSize {
		m := min(pnum, d.newSize-off)
		if err := it.Read(d.newB, cur[:m], off); err != nil {
			return 0, &IOError{Op: "read-new-backing", Off: off, Err: err}
		}
	}
	// Write each run of differing sectors.
	for i := int64(0); i < pnum; {
		e := min(i+diffSector, pnum)
		if bytes.Equal(old[i:e], cur[i:e]) {
			i = e
			continue
		}
		j := e
		for j < pnum {
			k := min(j+diffSector, pnum)
			if bytes.Equal(old[j:k], cur[j:k]) {
				break
			}
			j = k
		}
		// A run of zeros is written as zeroes (qemu-img rebase 7.2 does:
		// a qcow2 v3 top records a zero cluster, not a data cluster).
		var err error
		if isZero(old[i:j]) {
			err = it.WriteZeroes(d.top, off+i, j-i, 0)
		} else {
			err = it.Write(d.top, old[i:j], off+i, 0)
		}
		if err != nil {
			return 0, &IOError{Target: true, Op: "write", Off: off + i, Err: err}
		}
		i = j
	}
	return pnum, nil
}

// RebaseOptions configure a Rebase: Top's guest content is kept while its
// backing file changes to NewBacking (nil: none).
type RebaseOptions struct {
	Options
	Top *block.Node
	// NewBacking is read for the new backing content; nil means no
	// backing file (zeroes). It need not be in Top's graph chain.
	NewBacking *block.Node
	// Prefix, when not nil, is a node of Top's current backing chain
	// with the same content as NewBacking (qemu-img's "prefix chain": the
	// new backing file is already in the old chain). Where no layer above
	// it allocates, old and new cannot differ and nothing is read.
	Prefix *block.Node
	// Chunk is the unit of each step (default 2 MiB, qemu-img's buffer).
	Chunk int64
}

// Rebase is the copy half of a safe rebase (qemu-img rebase without -u):
// every sector Top does not allocate whose content through the old chain
// differs from NewBacking's is written into Top; Prepare flushes Top. The
// backing link and the header's backing name stay as they are: the caller
// records the new name it was given (ringblk rebase amends the qcow2
// header afterwards, writing the file name, not a node name). Nothing
// else may write Top meanwhile (an offline image, as under qemu-img).
type Rebase struct {
	o    RebaseOptions
	d    backingDiff
	size int64
	off  int64
}

// NewRebase creates a rebase job.
func NewRebase(m *Manager, o RebaseOptions) (*Job, *Rebase, error) {
	if o.Top == nil {
		return nil, nil, errors.New("job: rebase needs a top node")
	}
	if o.Top.ReadOnly() {
		return nil, nil, fmt.Errorf("job: rebase of read-only %s", o.Top.Name())
	}
	if o.Chunk == 0 {
		o.Chunk = 2 << 20
	}
	if o.Chunk < 0 || o.Chunk > maxChunk {
		return nil, nil, fmt.Errorf("job: rebase chunk %d is not between 1 and %d", o.Chunk, maxChunk)
	}
	var above []*block.Node
	if o.Prefix != nil {
		var err error
		if above, err = chainBelow(m.g, o.Top, o.Prefix); err != nil {
			return nil, nil, err
		}
	}
	r := &Rebase{o: o}
	var err error
	m.g.Control(func() {
		if r.size, err = o.Top.Length(); err == nil && o.NewBacking != nil {
			r.d.newSize, err = o.NewBacking.Length()
		}
		r.d.aboveSizes, err = lengths(above, err)
	})
	if err != nil {
		return nil, nil, err
	}
	j, err := m.New(o.Options, r)
	if err != nil {
		return nil, nil, err
	}
	fail := func(err error) (*Job, *Rebase, error) {
		j.Discard()
		return nil, nil, err
	}
	if r.d.top, err = j.AddNode(o.Top, "top"); err != nil {
		return fail(err)
	}
	if o.NewBacking != nil {
		if r.d.newB, err = j.AddNode(o.NewBacking, "new-backing"); err != nil {
			return fail(err)
		}
	}
	for i, n := range above {
		c, err := j.AddNode(n, fmt.Sprintf("layer%d", i))
		if err != nil {
			return fail(err)
		}
		r.d.above = append(r.d.above, c)
	}
	r.d.inChain = o.Prefix != nil
	r.d.compare = true
	r.d.old = make([]byte, o.Chunk)
	r.d.cur = make([]byte, o.Chunk)
	j.SetTotal(r.size)
	return j, r, nil
}

func (r *Rebase) Type() string { return "rebase" }

func (r *Rebase) Iterate(it *Iteration) (bool, error) {
	if r.off >= r.size {
		return true, nil
	}
	n, err := r.d.step(it, r.off, min(r.o.Chunk, r.size-r.off))
	if err != nil {
		return false, err
	}
	r.off += n
	it.Job.AddProgress(n)
	return r.off >= r.size, nil
}

// Prepare makes what was written durable before the caller changes the
// backing file: the new header must never describe data not yet on disk.
func (r *Rebase) Prepare(j *Job) error {
	if err := r.d.top.Node().Flush(); err != nil {
		return &IOError{Target: true, Op: "flush", Err: err}
	}
	return nil
}

// isZero reports whether b holds only zero bytes.
func isZero(b []byte) bool {
	for len(b) >= 8 {
		if b[0]|b[1]|b[2]|b[3]|b[4]|b[5]|b[6]|b[7] != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
