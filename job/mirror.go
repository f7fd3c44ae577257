package job

import (
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/bitmap"
	"github.com/ringblk/ringblk/block"
)

// MirrorSync says what a mirror copies before it tracks new writes.
type MirrorSync uint8

const (
	MirrorFull MirrorSync = iota // everything
	MirrorTop                    // what the source's top layer (or the layers above Base) holds
	MirrorNone                   // only what is written while the job runs
)

// CopyMode is QMP's copy-mode.
type CopyMode uint8

const (
	Background    CopyMode = iota // guest writes only dirty the bitmap
	WriteBlocking                 // guest writes complete once they reached source and target
)

// MirrorOptions configure a mirror (drive-mirror / blockdev-mirror).
type MirrorOptions struct {
	Options
	Source, Target *block.Node
	Sync           MirrorSync
	CopyMode       CopyMode
	// Granularity of the job's dirty bitmap (default 64 KiB).
	Granularity int64
	// MaxRequest bytes per copy request (default 1 MiB), Parallel copy
	// requests per iteration (default 8).
	MaxRequest int64
	Parallel   int
	// Base: with MirrorTop, copy what any layer above Base holds (active
	// commit); nil: the source's own layer.
	Base *block.Node
	// TargetZeroed: the target reads as zeros throughout (an image just
	// created). A MirrorFull then copies only what some layer of the
	// source's chain holds, as QEMU's mirror without zero_target (its
	// drive-mirror into a new image): the rest reads as zeros on both.
	TargetZeroed bool
	// PivotHook, if set, runs on the main Context inside the drained
	// section of the completion, after the last copy and the target's
	// flush, just before the pivot: source and target are equal and
	// still. For observers (a test, a checkpoint of the target).
	PivotHook func(source, target *block.Node)
}

// Mirror is the mirror job's driver: a dirty bitmap on the source drives
// the copy; the job becomes ready when the bitmap is clean, and complete
// pivots every parent of the source to the target inside a drained
// section in which the last dirty chunks are copied, so that the target
// equals the source at the pivot.
type Mirror struct {
	j      *Job
	g      *block.Graph
	o      MirrorOptions
	src    *block.Child
	tgt    *block.Child
	layers []*block.Child // MirrorTop: the layers whose allocation counts
	fn     *block.Node    // the filter node above the source
	f      *filter
	bm     *bitmap.Bitmap
	size   int64

	scanOff int64
	scanned bool
	cursor  int64
	locks   ranges
	bufs    [][]byte
	exts    []extent

	complete atomic.Bool
	noPivot  atomic.Bool
	pivoted  bool
	// afterPivot runs in Prepare after the pivot (commit's chain drop).
	afterPivot func() error
	typ        string
}

type extent struct {
	off, n int64
	id     uint64
}

// idleWait is how long a ready mirror with nothing to copy sleeps before
// it looks at the bitmap again.
const idleWait = 2 * time.Millisecond

// NewMirror creates a mirror job (status created; Start runs it). The
// caller keeps its references to Source and Target.
func NewMirror(m *Manager, o MirrorOptions) (*Job, *Mirror, error) {
	mi := &Mirror{g: m.g, o: o, typ: "mirror"}
	j, err := mi.setup(m)
	return j, mi, err
}

func (mi *Mirror) setup(m *Manager) (*Job, error) {
	o := &mi.o
	if o.Source == nil || o.Target == nil || o.Source == o.Target {
		return nil, errors.New("job: mirror needs distinct source and target nodes")
	}
	if o.Target.ReadOnly() {
		return nil, fmt.Errorf("job: mirror target %s is read-only", o.Target.Name())
	}
	if o.Granularity == 0 {
		o.Granularity = bitmap.DefaultGranularity
	}
	if o.Granularity < bitmap.MinGranularity || o.Granularity > maxChunk || o.Granularity&(o.Granularity-1) != 0 {
		return nil, fmt.Errorf("job: mirror granularity %d is not a power of two between %d and %d", o.Granularity, bitmap.MinGranularity, maxChunk)
	}
	if err := checkCopyLimits("mirror", &o.MaxRequest, &o.Parallel); err != nil {
		return nil, err
	}
	o.MaxRequest = max(o.MaxRequest/o.Granularity*o.Granularity, o.Granularity)
	var ss, ts int64
	var err error
	m.g.Control(func() {
		if ss, err = o.Source.Length(); err != nil {
			return
		}
		ts, err = o.Target.Length()
	})
	if err != nil {
		return nil, err
	}
	if ss != ts {
		return nil, fmt.Errorf("job: mirror source %s has %d bytes, target %s %d", o.Source.Name(), ss, o.Target.Name(), ts)
	}
	mi.size = ss
	var layers []*block.Node
	switch {
	case o.Sync == MirrorTop:
		if layers, err = chainAbove(m.g, o.Source, o.Base); err != nil {
			return nil, err
		}
	case o.Sync == MirrorFull && o.TargetZeroed:
		layers = wholeChain(m.g, o.Source)
	}
	j, err := m.New(o.Options, mi)
	if err != nil {
		return nil, err
	}
	mi.j = j
	fail := func(err error) (*Job, error) {
		mi.Clean(j)
		j.Discard()
		return nil, err
	}
	if mi.src, err = j.AddNode(o.Source, "source"); err != nil {
		return fail(err)
	}
	if mi.tgt, err = j.AddNode(o.Target, "target"); err != nil {
		return fail(err)
	}
	for i, n := range layers {
		if n == o.Source {
			mi.layers = append(mi.layers, mi.src)
			continue
		}
		c, err := j.AddNode(n, fmt.Sprintf("layer%d", i))
		if err != nil {
			return fail(err)
		}
		mi.layers = append(mi.layers, c)
	}
	// The dirty bitmap lives on the filter, which every guest write passes
	// (QEMU puts it on mirror_top): the bitmap and the filter go in
	// together inside a drained section of the source, so no write falls
	// between them. In write-blocking mode the filter marks only what it
	// failed to write to the target, so the bitmap does not track.
	if mi.bm, err = bitmap.New("#"+mi.typ+"-"+o.ID, mi.size, o.Granularity); err != nil {
		return fail(err)
	}
	mi.bm.SetBusy(true)
	switch o.Sync {
	case MirrorFull:
		if !o.TargetZeroed {
			mi.bm.Fill()
			mi.scanned = true
		}
	case MirrorNone:
		mi.scanned = true
	}
	if o.CopyMode == WriteBlocking {
		mi.bm.SetEnabled(false)
	}
	mi.f = &filter{drv: "mirror_top"} // active commit's too, as in QEMU
	o.Source.DrainedBegin()
	var ftgt *block.Node // the filter writes the target in write-blocking mode
	if o.CopyMode == WriteBlocking {
		ftgt = o.Target
	}
	mi.fn, err = insertFilter(m.g, o.Source, mi.f, "#"+mi.typ+"-top-"+o.ID, ftgt)
	if err == nil {
		if err = mi.fn.AttachBitmap(mi.bm); err == nil && o.CopyMode == WriteBlocking {
			mi.f.active.Store(mi)
		}
	}
	o.Source.DrainedEnd()
	if err != nil {
		return fail(err)
	}
	for i := 0; i < o.Parallel; i++ {
		mi.bufs = append(mi.bufs, make([]byte, o.MaxRequest))
	}
	j.SetTotal(mi.bm.Count())
	return j, nil
}

// maxChunk bounds a job's granularity, cluster size and request size
// (QEMU's mirror granularity limit): the job allocates Parallel buffers of
// MaxRequest bytes, so an option must not turn into gigabytes.
const (
	maxChunk    = 64 << 20
	maxParallel = 64
)

// checkCopyLimits applies the defaults (1 MiB, 8) and bounds to a job's
// request size and parallelism.
func checkCopyLimits(kind string, maxReq *int64, par *int) error {
	if *maxReq == 0 {
		*maxReq = 1 << 20
	}
	if *par == 0 {
		*par = 8
	}
	if *maxReq < 0 || *maxReq > maxChunk {
		return fmt.Errorf("job: %s request size %d is not between 1 and %d", kind, *maxReq, maxChunk)
	}
	if *par < 0 || *par > maxParallel {
		return fmt.Errorf("job: %s parallel requests %d is not between 1 and %d", kind, *par, maxParallel)
	}
	return nil
}

// chainAbove returns top and the nodes below it down to base (exclusive)
// through backing (or filtered) edges; base nil: top alone. Main Context.
func chainAbove(g *block.Graph, top, base *block.Node) ([]*block.Node, error) {
	var out []*block.Node
	var err error
	g.Control(func() {
		out = []*block.Node{top}
		if base == nil {
			return
		}
		for n := top; ; {
			c := n.Child(block.RoleBacking)
			if c == nil {
				c = n.Child(block.RoleFiltered)
			}
			if c == nil || c.Node() == nil {
				err = fmt.Errorf("job: %s is not below %s in its backing chain", base.Name(), top.Name())
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

// wholeChain is top and every node of its backing chain (filters
// followed), top first.
func wholeChain(g *block.Graph, top *block.Node) []*block.Node {
	var out []*block.Node
	g.Control(func() {
		for n := top; n != nil; {
			out = append(out, n)
			c := n.Child(block.RoleBacking)
			if c == nil {
				c = n.Child(block.RoleFiltered)
			}
			if c == nil {
				return
			}
			n = c.Node()
		}
	})
	return out
}

func (mi *Mirror) Type() string { return mi.typ }

// Bitmap returns the job's dirty bitmap (on the filter above the source).
func (mi *Mirror) Bitmap() *bitmap.Bitmap { return mi.bm }

// Pivoted reports whether complete switched the source's parents to the
// target.
func (mi *Mirror) Pivoted() bool { return mi.pivoted }

func (mi *Mirror) Complete(*Job) error { mi.complete.Store(true); return nil }

func (mi *Mirror) Cancel(_ *Job, force bool) bool {
	if force {
		return true
	}
	mi.noPivot.Store(true)
	mi.complete.Store(true)
	return false
}

func (mi *Mirror) Iterate(it *Iteration) (bool, error) {
	j := it.Job
	if !mi.scanned {
		return false, mi.scan(it)
	}
	if n := mi.pick(); n > 0 {
		var sum int64
		for i, e := range mi.exts {
			it.SubmitRead(mi.src, mi.bufs[i][:e.n], e.off)
			sum += e.n
		}
		if err, off, _ := it.Wait(); err != nil {
			mi.release(true)
			return false, &IOError{Op: "read", Off: off, Err: err}
		}
		for i, e := range mi.exts {
			it.SubmitWrite(mi.tgt, mi.bufs[i][:e.n], e.off, 0)
		}
		if err, off, _ := it.Wait(); err != nil {
			mi.release(true)
			return false, &IOError{Target: true, Op: "write", Off: off, Err: err}
		}
		mi.release(false)
		j.AddProgress(sum)
	}
	dirty := mi.bm.Count()
	cur, _ := j.Progress()
	j.SetTotal(cur + dirty)
	if dirty == 0 && !j.IsReady() {
		j.SetReady()
	}
	// Once complete was asked for, at most one iteration's worth of dirty
	// data may be left: Prepare copies it with the source drained (a guest
	// that dirties faster than the copy would otherwise keep the job from
	// ever finishing, and the drained section stays short).
	if mi.complete.Load() && j.IsReady() && dirty <= int64(mi.o.Parallel)*mi.o.MaxRequest {
		return true, nil
	}
	if dirty == 0 {
		it.SleepNext(idleWait)
	}
	return false, nil
}

// scan marks what the layers above Base hold, 64 MiB per iteration.
func (mi *Mirror) scan(it *Iteration) error {
	end := min(mi.scanOff+64<<20, mi.size)
	for mi.scanOff < end {
		alloc, pnum, err := allocatedAbove(it, mi.layers, mi.scanOff, end-mi.scanOff)
		if err != nil {
			return &IOError{Op: "block-status", Off: mi.scanOff, Err: err}
		}
		if alloc {
			mi.bm.SetRange(mi.scanOff, pnum)
		}
		mi.scanOff += pnum
	}
	if mi.scanOff >= mi.size {
		mi.scanned = true
	}
	cur, _ := it.Job.Progress()
	it.Job.SetTotal(cur + mi.bm.Count())
	return nil
}

// allocatedAbove reports whether [off, off+pnum) is allocated in any of
// layers (top first); pnum > 0 is how far the answer holds.
func allocatedAbove(it *Iteration, layers []*block.Child, off, n int64) (bool, int64, error) {
	_, alloc, pnum, err := statusAbove(it, layers, nil, off, n)
	return alloc, pnum, err
}

// statusAbove is the status of [off, off+pnum) over layers (top first):
// that of the first layer allocating it (alloc true), with QEMU's rule
// for a layer shorter than the one above it when sizes (each layer's
// length) is given: past its end the range reads as zeroes, allocated
// (block.StepAbove). pnum > 0 is how far the answer holds.
func statusAbove(it *Iteration, layers []*block.Child, sizes []int64, off, n int64) (st block.Status, alloc bool, pnum int64, err error) {
	pnum = n
	for i, c := range layers {
		if sizes != nil && i > 0 && off >= sizes[i] {
			return block.StatusZero | block.StatusAllocated, true, pnum, nil
		}
		s, p, err := it.BlockStatus(c, off, pnum)
		if err != nil {
			return 0, false, 0, err
		}
		if p <= 0 || p > pnum {
			p = pnum // a driver that reports nothing: treat the range alike
		}
		if s&block.StatusAllocated != 0 {
			return s, true, p, nil
		}
		pnum = min(pnum, p)
	}
	return 0, false, pnum, nil
}

// pick takes up to Parallel dirty extents from the cursor on (wrapping
// once), locks each against write-blocking guest writes and clears its
// bits: a guest write that completes from now on dirties it again.
func (mi *Mirror) pick() int {
	mi.exts = mi.exts[:0]
	off, wrapped := mi.cursor, false
	for len(mi.exts) < mi.o.Parallel {
		s, n, ok := mi.bm.NextExtent(off, mi.o.MaxRequest)
		if ok && wrapped && s >= mi.cursor {
			ok = false
		}
		if !ok {
			if wrapped || mi.cursor == 0 {
				break
			}
			wrapped, off = true, 0
			continue
		}
		off = s + n
		id, locked := mi.locks.tryLock(s, s+n)
		if !locked {
			continue
		}
		mi.bm.ResetRange(s, n)
		mi.exts = append(mi.exts, extent{s, n, id})
	}
	if k := len(mi.exts); k > 0 {
		last := mi.exts[k-1]
		mi.cursor = last.off + last.n
		if mi.cursor >= mi.size {
			mi.cursor = 0
		}
	}
	return len(mi.exts)
}

func (mi *Mirror) release(failed bool) {
	for _, e := range mi.exts {
		if failed {
			mi.bm.SetRange(e.off, e.n)
		}
		mi.locks.unlock(e.id)
	}
	mi.exts = mi.exts[:0]
}

// activeWrite is a guest write in write-blocking mode, in a coroutine of
// the request's Context: it holds the chunks it touches against the
// background copy, writes the source, then the target (through tgt, the
// filter's own edge: see filter), and clears the chunks it touches. The
// bitmap does not track in this mode: a failed target write marks the
// range for the background copy (the guest write still succeeds).
func (mi *Mirror) activeWrite(co *aio.Co, c, tgt *block.Child, r *block.Request) error {
	g := mi.o.Granularity
	lo, hi := r.Off&^(g-1), min((r.Off+r.Len+g-1)&^(g-1), mi.size)
	id := mi.locks.lock(co, lo, max(hi, lo+1))
	defer mi.locks.unlock(id)
	if err := coForward(co, c, r); err != nil {
		mi.bm.SetRange(r.Off, r.Len) // the source may have changed in part
		return err
	}
	w := &coWait{co: co}
	s := r.Sub()
	s.Op, s.Flags, s.Off, s.Len, s.Iov = r.Op, r.Flags, r.Off, r.Len, r.Iov
	tgt.Submit(s, w)
	if w.wait() != nil {
		mi.bm.SetRange(r.Off, r.Len)
	}
	return nil
}

// Prepare finishes the copy with the source drained — nothing in flight,
// no guest write can arrive — and pivots unless the job was soft
// cancelled. The target then equals the source.
func (mi *Mirror) Prepare(j *Job) error {
	src := mi.src.Node()
	src.DrainedBegin()
	defer src.DrainedEnd()
	mi.f.active.Store(nil)
	if err := syncDirty(mi.bm, src, mi.tgt.Node(), mi.o.MaxRequest); err != nil {
		return err
	}
	if err := mi.tgt.Node().Flush(); err != nil {
		return &IOError{Target: true, Op: "flush", Err: err}
	}
	if mi.o.PivotHook != nil {
		mi.o.PivotHook(src, mi.tgt.Node())
	}
	if mi.noPivot.Load() {
		return nil
	}
	if err := removeFilter(mi.g, mi.fn, mi.tgt.Node()); err != nil {
		return err
	}
	mi.fn = nil
	mi.pivoted = true
	if mi.afterPivot != nil {
		return mi.afterPivot()
	}
	return nil
}

// syncDirty copies every dirty extent of bm from src to dst with
// synchronous requests (main Context, inside a drained section).
func syncDirty(bm *bitmap.Bitmap, src, dst *block.Node, maxReq int64) error {
	buf := make([]byte, maxReq)
	var err error
	bm.Extents(func(off, n int64) bool {
		for o := off; o < off+n; o += maxReq {
			k := min(maxReq, off+n-o)
			if _, err = src.ReadAt(buf[:k], o); err != nil {
				err = &IOError{Op: "read", Off: o, Err: err}
				return false
			}
			if _, err = dst.WriteAt(buf[:k], o); err != nil {
				err = &IOError{Target: true, Op: "write", Off: o, Err: err}
				return false
			}
		}
		bm.ResetRange(off, n)
		return true
	})
	return err
}

// Clean removes the filter (pointing its parents back at the source
// unless the pivot moved them) and the job's bitmap.
func (mi *Mirror) Clean(j *Job) {
	if mi.fn != nil {
		mi.f.active.Store(nil)
		j.NoteError(removeFilter(mi.g, mi.fn, mi.o.Source))
		mi.fn = nil
	}
	if mi.bm != nil {
		mi.bm.SetBusy(false) // it went with the filter node
	}
}
