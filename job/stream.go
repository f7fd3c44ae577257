package job

import (
	"errors"
	"fmt"

	"github.com/ringblk/ringblk/block"
)

// chainBelow returns the nodes under top (exclusive) down to base
// (exclusive), or to the bottom of the chain when base is nil, following
// backing (or filtered) edges. Main Context.
func chainBelow(g *block.Graph, top, base *block.Node) ([]*block.Node, error) {
	var out []*block.Node
	var err error
	g.Control(func() {
		for n := top; ; {
			c := n.Child(block.RoleBacking)
			if c == nil {
				c = n.Child(block.RoleFiltered)
			}
			if c == nil || c.Node() == nil {
				if base != nil {
					err = fmt.Errorf("job: %s is not below %s in its backing chain", base.Name(), top.Name())
				}
				return
			}
			n = c.Node()
			if n == base {
				return
			}
			out = append(out, n)
		}
	})
	return out, err
}

// StreamOptions configure a stream (block-stream): the data of the
// layers between Top and Base is copied into Top, then Top's backing link
// goes to Base (DropIntermediate), or away when Base is nil.
type StreamOptions struct {
	Options
	Top  *block.Node
	Base *block.Node
	// BackingFile is the backing name recorded in Top ("" : Base's name).
	BackingFile string
	// Chunk is the copy unit (default 512 KiB).
	Chunk int64
	// Admit (nil: none) sees the nodes between Top and Base that the job
	// keeps unchanged while it runs (the chain it copies from), once the
	// job exists and before it attaches to any node; an error discards
	// the job (its status goes from created to null) and is NewStream's.
	// The daemon refuses there a node that a writable export serves, as
	// QEMU's stream job unshares write on its intermediate nodes.
	Admit func(layers []*block.Node) error
}

// Stream is the stream job's driver. A filter above Top makes guest
// writes and the job's copies of the same range take turns: the job
// checks Top's allocation while it holds the range, so a cluster the
// guest wrote is never overwritten with older backing data.
type Stream struct {
	j      *Job
	g      *block.Graph
	o      StreamOptions
	top    *block.Child
	layers []*block.Child
	fn     *block.Node
	f      *filter
	locks  ranges
	d      backingDiff // top, layers, the chunk buffer; no compare
	size   int64
	off    int64
}

// NewStream creates a stream job.
func NewStream(m *Manager, o StreamOptions) (*Job, *Stream, error) {
	s := &Stream{g: m.g, o: o}
	j, err := s.setup(m)
	return j, s, err
}

func (s *Stream) setup(m *Manager) (*Job, error) {
	o := &s.o
	if o.Top == nil {
		return nil, errors.New("job: stream needs a top node")
	}
	if o.Top.ReadOnly() {
		return nil, fmt.Errorf("job: stream into read-only %s", o.Top.Name())
	}
	if o.Chunk == 0 {
		o.Chunk = 512 << 10
	}
	if o.Chunk < 0 || o.Chunk > maxChunk {
		return nil, fmt.Errorf("job: stream chunk %d is not between 1 and %d", o.Chunk, maxChunk)
	}
	if o.Base == nil {
		if _, ok := o.Top.Driver().(block.BackingFileChanger); !ok {
			return nil, fmt.Errorf("job: %s cannot drop its backing file (its driver does not record one)", o.Top.Name())
		}
	}
	layers, err := chainBelow(m.g, o.Top, o.Base)
	if err != nil {
		return nil, err
	}
	if len(layers) == 0 {
		return nil, fmt.Errorf("job: nothing to stream into %s", o.Top.Name())
	}
	var sizes []int64
	m.g.Control(func() {
		s.size, err = o.Top.Length()
		sizes, err = lengths(layers, err)
	})
	if err != nil {
		return nil, err
	}
	j, err := m.New(o.Options, s)
	if err != nil {
		return nil, err
	}
	s.j = j
	fail := func(err error) (*Job, error) {
		s.Clean(j)
		j.Discard()
		return nil, err
	}
	if o.Admit != nil {
		if err := o.Admit(layers); err != nil {
			return fail(err)
		}
	}
	if s.top, err = j.AddNode(o.Top, "top"); err != nil {
		return fail(err)
	}
	for i, n := range layers {
		c, err := j.AddNode(n, fmt.Sprintf("layer%d", i))
		if err != nil {
			return fail(err)
		}
		s.layers = append(s.layers, c)
	}
	s.f = newLockingFilter(&s.locks)
	if s.fn, err = insertFilter(m.g, o.Top, s.f, "#stream-top-"+o.ID, nil); err != nil {
		return fail(err)
	}
	s.d = backingDiff{top: s.top, above: s.layers, aboveSizes: sizes, inChain: true, old: make([]byte, o.Chunk)}
	j.SetTotal(s.size)
	return j, nil
}

func (s *Stream) Type() string { return "stream" }

// Iterate copies one chunk: what the layers down to Base hold where Top
// does not allocate (backingDiff, without comparing), holding the range
// against guest writes.
func (s *Stream) Iterate(it *Iteration) (bool, error) {
	if s.off >= s.size {
		return true, nil
	}
	n := min(s.o.Chunk, s.size-s.off)
	id := s.locks.lock(it.Co, s.off, s.off+n)
	defer s.locks.unlock(id)
	done, err := s.d.step(it, s.off, n)
	if err != nil {
		return false, err
	}
	s.off += done
	it.Job.AddProgress(done)
	return s.off >= s.size, nil
}

// Prepare drops the backing link: to Base through DropIntermediate, or
// away entirely (the image records no backing file any more).
func (s *Stream) Prepare(j *Job) error {
	top := s.top.Node()
	if s.o.Base != nil {
		return s.g.DropIntermediate(s.layers[0].Node(), s.o.Base, s.o.BackingFile)
	}
	var err error
	top.DrainedBegin()
	s.g.Control(func() {
		c := top.Child(block.RoleBacking)
		if c == nil {
			return
		}
		if err = top.Driver().(block.BackingFileChanger).ChangeBackingFile(top, "", nil); err != nil {
			return
		}
		err = s.g.Detach(c)
	})
	top.DrainedEnd()
	return err
}

func (s *Stream) Clean(j *Job) {
	if s.fn != nil {
		j.NoteError(removeFilter(s.g, s.fn, s.o.Top))
		s.fn = nil
	}
}
