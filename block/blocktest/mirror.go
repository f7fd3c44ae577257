package blocktest

import (
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
)

// Mirror is a mirror-like test job (drain.md I22): a Job with two edges,
// one to a filter node above the source (the copy reads through it) and
// one to the target. Each iteration of its run loop, on the job's
// Context, copies one Chunk: a read through the filter edge, then a write
// of the same bytes at the same offset through the target edge, then Sleep
// (the Job's field; 0 for none) while still busy, then the loop's pause
// point. The chunks are copied round robin for as long as the
// job runs (like a mirror that keeps the target in sync), so a job can be
// moved, paused and cancelled at any time. Pausing, resuming and following
// its nodes between Contexts are the Job's.
type Mirror struct {
	*Job
	Source *block.Child // job edge to the filter above the source
	Target *block.Child // job edge to the target
	Chunk  int64

	size int64
	buf  []byte // one chunk; only the running iteration uses it
	off  int64  // next chunk (job's Context while busy)
	read mirrorRead
	wr   mirrorWrite

	// Copies counts chunks written to the target; IOErrors failed reads
	// or writes (each one also ends that iteration).
	Copies   atomic.Int64
	IOErrors atomic.Int64

	mu     sync.Mutex
	copied map[int64]bool // chunk offsets successfully copied
	lastIO error
}

// NewMirror creates (but does not start) a mirror job on ctx copying from
// filter to target in chunks of chunk bytes, over the smaller of the two
// lengths. It takes a reference on both nodes through its edges.
func NewMirror(g *block.Graph, ctx *aio.Context, filter, target *block.Node, chunk int64) (*Mirror, error) {
	if chunk <= 0 {
		return nil, fmt.Errorf("blocktest: mirror chunk %d", chunk)
	}
	var size int64
	var err error
	g.Control(func() {
		var fl, tl int64
		if fl, err = filter.Length(); err != nil {
			return
		}
		if tl, err = target.Length(); err != nil {
			return
		}
		size = min(fl, tl) / chunk * chunk
	})
	if err != nil {
		return nil, err
	}
	if size == 0 {
		return nil, fmt.Errorf("blocktest: mirror of %d bytes in %d-byte chunks", size, chunk)
	}
	m := &Mirror{Job: NewJob(g, ctx), Chunk: chunk, size: size, buf: make([]byte, chunk), copied: map[int64]bool{}}
	m.read.m, m.wr.m = m, m
	m.Work = m.work
	if m.Source, err = m.AddNode(filter, "source"); err != nil {
		return nil, err
	}
	if m.Target, err = m.AddNode(target, "target"); err != nil {
		return nil, err
	}
	return m, nil
}

// Size returns the number of bytes the mirror covers.
func (m *Mirror) Size() int64 { return m.size }

// Copied returns the offsets of the chunks copied so far, each once.
func (m *Mirror) Copied() []int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]int64, 0, len(m.copied))
	for off := range m.copied {
		out = append(out, off)
	}
	return out
}

// LastIOError returns the last failed read or write, if any.
func (m *Mirror) LastIOError() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.lastIO
}

// work is one iteration: read the chunk through the filter edge; the
// read's completion writes it through the target edge; the write's
// completion records the chunk and continues the loop.
type mirrorRead struct {
	m    *Mirror
	next func()
}

type mirrorWrite struct {
	m    *Mirror
	next func()
}

func (m *Mirror) work(ctx *aio.Context, next func()) {
	m.read.next, m.wr.next = next, next
	r := m.g.Pool(ctx).Get()
	r.Op = block.OpRead
	r.Off = m.off
	r.SetBuf(m.buf)
	m.Source.Submit(r, &m.read)
}

func (m *Mirror) ioFailed(err error, next func()) {
	m.IOErrors.Add(1)
	m.mu.Lock()
	m.lastIO = err
	m.mu.Unlock()
	next()
}

func (m *Mirror) checkContext(r *block.Request) {
	if ctx := m.Context(); r.Context() != ctx || !ctx.InContext() {
		m.WrongContext.Add(1)
	}
}

func (d *mirrorRead) RequestDone(r *block.Request, err error) {
	m := d.m
	m.checkContext(r)
	if err != nil {
		m.ioFailed(err, d.next)
		return
	}
	w := r.Pool().Get()
	w.Op = block.OpWrite
	w.Off = r.Off
	w.SetBuf(m.buf)
	m.Target.Submit(w, &m.wr)
}

func (d *mirrorWrite) RequestDone(r *block.Request, err error) {
	m := d.m
	m.checkContext(r)
	if err != nil {
		m.ioFailed(err, d.next)
		return
	}
	m.mu.Lock()
	m.copied[r.Off] = true
	m.mu.Unlock()
	m.Copies.Add(1)
	m.off = (r.Off + m.Chunk) % m.size
	if m.Sleep > 0 {
		// Rate limit: the job stays busy while it waits, so a drain must
		// wait for the pause point, not only for the requests.
		r.Context().AfterFunc(m.Sleep, d.next)
		return
	}
	d.next()
}
