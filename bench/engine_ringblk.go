package bench

import (
	"errors"
	"fmt"
	"github.com/ringblk/ringblk/uring"
	"math/bits"
	"os"
	"runtime"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/chain"
	"github.com/ringblk/ringblk/drivers/nbd"
	"github.com/ringblk/ringblk/drivers/null"
	"github.com/ringblk/ringblk/drivers/raw"
	"github.com/ringblk/ringblk/drivers/rbd"
)

// ringblkEnv is the block layer of one bench run: a main Context and a
// graph. Clones get their own IOThread Contexts.
type ringblkEnv struct {
	main *aio.Context
	g    *block.Graph
	// images are the image nodes the running group opened, one per file
	// and open mode, each with the env's reference: jobs naming the same
	// image share its node (and so one set of locks, which two opens of
	// one file in this process would not), as fio's jobs share a file.
	// They are closed after the group (releaseImages).
	images map[imageKey]*block.Node
	// writers are the files (chain.FileID) some ringblk job of the run
	// writes: every job on such a file opens it read-write.
	writers map[string]bool
	// homed are the single-Context nodes (contextBound) already moved to
	// a clone's Context; the first clone on such a node takes it.
	homed map[*block.Node]bool
}

// contextBound is a driver whose state belongs to its node's Context
// (drivers/rbd, drivers/nbd: one librbd image or connection): a request
// submitted on another Context reaches it through an inbox and its
// completion comes back through an outbox, a thread hop each way. Such a
// node belongs on the Context that submits to it, as QEMU puts a node in
// its iothread's AioContext.
type contextBound interface{ ContextBound() bool }

// libraryThreaded is a driver whose I/O is carried by threads of the
// library it calls rather than by its Context's ring (drivers/rbd:
// librbd's messenger and completion threads do most of the work; the
// Context submits and reaps). Pinning the submitting thread to one CPU
// then only stands in the way of the scheduler placing those threads
// (on two CPUs the pinned runs were RBD's slow tail: docs/design/rbd.md
// §"Where the client's threads run").
type libraryThreaded interface{ LibraryThreads() bool }

// libraryThreads reports whether every leaf of every job's node is a
// library-threaded driver (a qcow2 image in RBD counts, one with a local
// backing file does not).
func libraryThreads(rjs []*ringblkJob) bool {
	var leaves func(n *block.Node) bool
	leaves = func(n *block.Node) bool {
		kids := n.Children()
		if len(kids) == 0 {
			lt, ok := n.Driver().(libraryThreaded)
			return ok && lt.LibraryThreads()
		}
		for _, c := range kids {
			if m := c.Node(); m != nil && !leaves(m) {
				return false
			}
		}
		return true
	}
	for _, rj := range rjs {
		if rj.node == nil || !leaves(rj.node) {
			return false
		}
	}
	return len(rjs) > 0
}

// homeNodes moves the front end of each of rjs whose node is context-bound
// and not yet taken by another clone to ctx (the clone's), and returns
// the front ends it moved: stop moves them back to the main Context.
func (e *ringblkEnv) homeNodes(rjs []*ringblkJob, ctx *aio.Context) ([]*block.FrontEnd, error) {
	var moved []*block.FrontEnd
	for _, rj := range rjs {
		cb, ok := rj.node.Driver().(contextBound)
		if !ok || !cb.ContextBound() || e.homed[rj.node] {
			continue
		}
		if err := rj.fe.SetContext(ctx); err != nil {
			return moved, fmt.Errorf("moving %s to the clone's Context: %w", rj.node.Name(), err)
		}
		e.homed[rj.node] = true
		moved = append(moved, rj.fe)
	}
	return moved, nil
}

// imageKey is what makes two jobs' opens of an image the same open.
type imageKey struct {
	file, format string
	direct       bool
	shareRW      bool
	locking      string
}

func newRingblkEnv(jobs []*Job) (*ringblkEnv, error) {
	m, err := aio.New(aio.Options{Name: "bench-main", Main: true, CPU: aio.NoCPU, ArenaSize: -1, Entries: 64})
	if err != nil {
		return nil, fmt.Errorf("ringblk engine: %w", err)
	}
	if err := m.Start(); err != nil {
		return nil, fmt.Errorf("ringblk engine: %w", err)
	}
	e := &ringblkEnv{main: m, g: block.NewGraph(m), images: map[imageKey]*block.Node{}, writers: map[string]bool{},
		homed: map[*block.Node]bool{}}
	for _, j := range jobs {
		if j.IOEngine == "ringblk" && j.Format != "null" && j.RW.Writes() {
			for k := 0; k < j.NumJobs; k++ {
				for _, fj := range j.cloneJob(k).fileJobs() {
					e.writers[chain.FileID(fj.Filename)] = true
				}
			}
		}
	}
	return e, nil
}

// releaseImages drops the env's references on the images of the group
// that ended (its front ends are closed), closing them. A failed close (a
// qcow2 metadata write-back, the file's own close) fails every job of
// rjobs that used the image, as fio fails a job whose file close fails.
func (e *ringblkEnv) releaseImages(rjobs []*ringblkJob) {
	for k, n := range e.images {
		err := n.Unref()
		delete(e.images, k)
		if err == nil {
			continue
		}
		for _, rj := range rjobs {
			if rj.node == n && rj.res != nil && rj.res.Err == nil {
				rj.res.Err = &closeError{file: rj.res.Job.Filename, err: err}
			}
		}
	}
}

func (e *ringblkEnv) close() error {
	e.releaseImages(nil)
	_, err := e.main.Stop()
	return err
}

// probeFormat decides the format of the image the user named: qcow2 or
// raw (chain.Probe; never used on backing files).
func probeFormat(path string) (string, error) { return chain.Probe(path) }

// ringblkJob is one job's node and front end; its clones each get a Queue.
type ringblkJob struct {
	env  *ringblkEnv
	node *block.Node
	fe   *block.FrontEnd
	res  *JobResult // the job's result, which a failed close fails
}

// lockingOf maps a job's locking= to the raw driver's mode.
func lockingOf(j *Job) raw.Locking {
	l, ok := raw.ParseLocking(j.Locking)
	if !ok {
		return raw.LockingAuto
	}
	return l
}

// openImage opens (or finds already open) the image a job names, with the
// locks "ringblk io" takes: a read-write open refuses an image another
// process holds, a read-only one an image another process writes, with
// QEMU's lock error. Only share_rw=1 or locking=off relax that.
func (e *ringblkEnv) openImage(j *Job, format, name string) (*block.Node, error) {
	// The fadvise hint is not part of the key: jobs of one group on one
	// image share its open file, and the first job's hint is the file's.
	key := imageKey{file: chain.FileID(j.Filename), format: format, direct: j.Direct, shareRW: j.ShareRW, locking: j.Locking}
	if n, ok := e.images[key]; ok {
		return n, nil
	}
	readOnly := !e.writers[key.file]
	var n *block.Node
	var err error
	switch {
	case nbd.IsURI(j.Filename):
		if format != "raw" {
			return nil, fmt.Errorf("%s: NBD exports are read as raw, not %s", j.Filename, format)
		}
		n, err = nbd.NewNode(e.g, j.Filename, readOnly, block.Options{Name: name})
	case rbd.IsName(j.Filename) && format == "raw":
		var s rbd.Spec
		if s, err = rbd.ParseName(j.Filename); err == nil {
			// direct=1 turns librbd's cache off, as for a file it
			// bypasses the page cache; buffered jobs get librbd's
			// write-back cache, as fio's rbd engine does.
			s.Cache = chain.RBDCache(cacheOf(j))
			n, err = rbd.NewNode(e.g, s, readOnly, block.Options{Name: name})
		}
	case format == "raw":
		// O_NOATIME as fio opens its files (raw.Options.NoAtime).
		opts := raw.Options{ReadOnly: readOnly, Locking: lockingOf(j), ShareRW: j.ShareRW, Fadvise: fadviseOf(j), NoAtime: true, Cache: cacheOf(j)}
		n, err = raw.NewNode(e.g, j.Filename, opts, block.Options{Name: name})
	case format == "qcow2":
		// The image and its backing chain, each backing file opened with
		// the format its overlay records (never probed), read-only.
		co := chain.Options{Format: "qcow2", ReadOnly: readOnly, Locking: lockingOf(j), Name: name, Fadvise: fadviseOf(j), NoAtime: true, Cache: cacheOf(j)}
		co.ShareRW = j.ShareRW // the top file only; backing files never share writes
		var img *chain.Image
		if img, err = chain.Open(e.g, j.Filename, co); err == nil {
			n = img.Node
		}
	default:
		return nil, fmt.Errorf("unknown format %q", format)
	}
	if err != nil {
		if errors.Is(err, raw.ErrLocked) {
			for k := range e.images {
				if k.file == key.file {
					// Our own other open of the file holds the lock.
					return nil, fmt.Errorf("%s is opened by another job of this group with other direct=, format=, share_rw= or locking= values: jobs that run together share one open of an image, so these must agree", j.Filename)
				}
			}
		}
		return nil, openErr(j.Filename, err)
	}
	e.images[key] = n
	return n, nil
}

// openErr words an open failure for the report: qemu-img's "Could not
// open 'FILE': cause", the cause without the block layer's context (a lock
// conflict reads as QEMU's sentence).
func openErr(path string, err error) error {
	var le *raw.LockError
	var be *chain.BackingError
	switch {
	case errors.As(err, &be):
		return fmt.Errorf("Could not open '%s': %w", path, be)
	case errors.As(err, &le):
		return fmt.Errorf("Could not open '%s': %w", path, le)
	}
	var pe *os.PathError
	if errors.As(err, &pe) {
		return fmt.Errorf("Could not open '%s': %w", path, pe.Err)
	}
	return err
}

func (e *ringblkEnv) openJob(j *Job, name string) (*ringblkJob, error) {
	format := j.Format
	if format == "" {
		var err error
		if format, err = probeFormat(j.Filename); err != nil {
			return nil, err
		}
	}
	var n *block.Node
	var err error
	if format == "null" {
		n, err = e.g.Open(null.New(j.Offset+j.Size, null.Options{}), block.Options{Name: name})
		if err != nil {
			return nil, err
		}
	} else {
		if n, err = e.openImage(j, format, name); err != nil {
			return nil, err
		}
		e.g.Control(n.Ref) // the front end's; the env keeps its own
	}
	fe := e.g.NewFrontEnd(block.FrontEndOptions{Name: name, DisableQueuing: true})
	if err := fe.Insert(n); err != nil {
		n.Unref()
		fe.Close()
		return nil, err
	}
	n.Unref() // the front end holds the node now
	return &ringblkJob{env: e, node: n, fe: fe}, nil
}

// close drains and closes the job's front end, returning what the close of
// its nodes reported (a failed metadata write-back).
func (rj *ringblkJob) close() error {
	rj.fe.Drain()
	return rj.fe.Close()
}

// ringblkClone runs one clone's I/O loop as callbacks on its own Context:
// completions (RequestDone) free units and schedule refill, a bottom half
// that issues a new batch. Nothing on that path allocates.
type ringblkClone struct {
	w          *worker
	ctx        *aio.Context
	q          *block.Queue      // the first file's queue
	qs         []*block.Queue    // a queue per file (several files: files.go)
	homed      []*block.FrontEnd // moved to ctx for the run (homeNodes)
	refillBH   *aio.BH
	scheduled  bool
	batch      []*unit
	bufs       [][]byte
	mapped     []byte // buffers when the arena is too small
	done       chan<- *worker
	startErr   error
	paceTimer  *aio.Timer  // thinktime, rate and startdelay waits
	writeFlags block.Flags // FUA with sync=
	beginFn    func()      // the start a startdelay holds back
}

// arenaLimit caps the arena a clone asks for; larger buffer sets are mmap'd.
const arenaLimit = 256 << 20

func newRingblkClone(rjs []*ringblkJob, w *worker, cpu int, done chan<- *worker) (*ringblkClone, error) {
	rj := rjs[0]
	j := w.job
	page := 4096
	per := 1 << bits.Len(uint((w.maxBlock()+page-1)/page-1)) * page
	arena := len(w.units) * per
	arena = 1 << bits.Len(uint(arena-1))
	if arena > arenaLimit {
		arena = -1
	}
	entries := 1 << bits.Len(uint(max(j.IODepth, 32)-1))
	var q uring.Queue
	if j.SQThreadPoll {
		// The Context takes a ring made here with the SQ polling thread
		// (it closes it at Stop).
		r, err := uring.New(min(entries, 4096), sqPollOptions(j)...)
		if err != nil {
			return nil, fmt.Errorf("sqthread_poll: %w", err)
		}
		q = r
	}
	ctx, err := aio.New(aio.Options{
		Queue: q,
		// Pinned deliberately: bench's default places one clone per
		// CPU (placement), and its figures assume it.
		Name: fmt.Sprintf("%s.%d", j.Name, w.clone), Pin: cpu >= 0, CPU: max(cpu, aio.NoCPU),
		Entries: min(entries, 4096), ArenaSize: arena, PollTime: aioPollTime(j),
		WorkerCPUs: w.workerCPUs,
	})
	if err != nil {
		return nil, err
	}
	if err := ctx.Start(); err != nil {
		return nil, err
	}
	if w.cpuSet != nil {
		ctx.Run(func() { pinSet(w.cpuSet) })
	}
	c := &ringblkClone{w: w, ctx: ctx, q: rj.fe.Queue(ctx), done: done, batch: make([]*unit, 0, len(w.units))}
	c.homed, err = rj.env.homeNodes(rjs, ctx)
	if err != nil {
		c.stop()
		return nil, err
	}
	for _, r := range rjs {
		c.qs = append(c.qs, r.fe.Queue(ctx))
	}
	if j.SyncIO != "" {
		c.writeFlags = block.FUA
	}
	c.refillBH = ctx.NewBH(c.refill)
	// Buffers: from the Context's arena (registered: READ_FIXED/WRITE_FIXED),
	// else one mmap'd region.
	ctx.Run(func() {
		if a := ctx.Arena(); a != nil {
			for range w.units {
				b, err := a.Alloc(w.maxBlock())
				if err != nil {
					c.startErr = err
					return
				}
				c.bufs = append(c.bufs, b)
			}
		}
	})
	if c.startErr != nil {
		c.stop()
		return nil, fmt.Errorf("arena: %w", c.startErr)
	}
	if c.bufs == nil {
		mem, err := unix.Mmap(-1, 0, len(w.units)*per, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE|unix.MAP_POPULATE)
		if err != nil {
			c.stop()
			return nil, fmt.Errorf("buffers: %w", err)
		}
		c.mapped = mem
		for i := range w.units {
			c.bufs = append(c.bufs, mem[i*per:i*per+w.maxBlock()])
		}
	}
	for _, b := range c.bufs {
		if err := bindBuffers(j, b); err != nil {
			c.stop()
			return nil, err
		}
	}
	if j.FixedBufs && (c.mapped != nil || !ctx.Arena().Fixed()) {
		// fixedbufs: READ_FIXED/WRITE_FIXED need the buffers in the
		// Context's registered arena.
		c.stop()
		return nil, fmt.Errorf("fixedbufs: the clone's %d buffers of %d bytes do not fit a registered arena (at most %d MiB)", len(w.units), per, arenaLimit>>20)
	}
	if j.RegisterFiles {
		// registerfiles: each image file in the Context's registered-file
		// table (aio.Context.RegisterFile), so its I/O names the slot
		// (IOSQE_FIXED_FILE). Context.Stop drops the registrations before
		// the job closes the images.
		var err error
		ctx.Run(func() {
			for _, r := range rjs {
				d, ok := r.node.Driver().(*raw.Driver)
				if !ok {
					err = fmt.Errorf("registerfiles: %s is not a raw image (the option registers raw image files only)", r.node.Name())
					return
				}
				if err = ctx.RegisterFile(d.AioFile()); err != nil {
					err = fmt.Errorf("registerfiles: %s: %w", r.node.Name(), err)
					return
				}
			}
		})
		if err != nil {
			c.stop()
			return nil, err
		}
	}
	w.setBuffers(c.bufs)
	return c, nil
}

// start begins the clone (from any goroutine).
func (c *ringblkClone) start() {
	c.ctx.Schedule(func() {
		// The pacing timer (thinktime, rate, startdelay) is made once, on
		// the owner, and re-armed with Reset: nothing per I/O.
		c.paceTimer = c.ctx.AfterFunc(time.Hour, c.paced)
		c.paceTimer.Stop()
		begin := func() {
			c.w.start()
			c.refill()
		}
		if d := c.w.startDelay(); d > 0 {
			c.beginFn = begin
			c.paceTimer.Reset(d)
			return
		}
		begin()
	})
}

// paced runs when the pacing timer fires: the delayed start, or a refill.
func (c *ringblkClone) paced() {
	if f := c.beginFn; f != nil {
		c.beginFn = nil
		f()
		return
	}
	if !c.scheduled {
		c.refill()
	}
}

// RequestDone completes one unit (block.Done; on the clone's Context).
// Once iodepth_batch_complete_max units completed since the last issue
// (fio's default: one) it refills at once, inside the completion: the new
// requests join the batch the Context submits with its next wait, and the
// depth never drops below iodepth at an issue. Between the minimum and the
// maximum, a refill BH runs after the other completions of this round.
func (c *ringblkClone) RequestDone(r *block.Request, err error) {
	w := c.w
	w.completed(&w.units[r.Tag], w.now(), err)
	if c.scheduled {
		return
	}
	switch {
	case w.doneSinceFill >= w.job.IODepthBatchCompleteMax && !w.stopIssuing:
		// Also with nothing in flight (QD 1): a BH's refill would be
		// submitted by its own Unplug (aio's U1: an unplugged section
		// submits at its end), one enter more per round than a refill
		// the next wait submits.
		c.refill()
	case w.refillDue() || w.stopIssuing:
		c.scheduled = true
		c.refillBH.Schedule()
	}
}

// refill issues I/O on every free unit: Plug/Unplug around each
// iodepth_batch_submit units, one clock read per batch (the batch's submit
// time, which is also the next batch's issue time) plus one at the start.
func (c *ringblkClone) refill() {
	c.scheduled = false
	w := c.w
	now := w.now()
	w.tick(now)
	batchSize := w.job.IODepthBatch
	// Every batch this refill issues goes to the kernel in one
	// io_uring_enter: the outer plug of the Context (ringblk's batched
	// submission). iodepth_batch_submit still bounds how many units are
	// filled and timestamped together, as in fio.
	c.ctx.Plug()
	defer c.ctx.Unplug()
	for {
		c.batch = c.batch[:0]
		for _, q := range c.qs {
			q.Plug()
		}
		for len(c.batch) < batchSize {
			u := w.take()
			if u == nil {
				break
			}
			if !w.fill(u, now) {
				w.untake(u)
				break
			}
			if u.dir == DirSync {
				c.qs[u.off].Flush(c, uint64(u.idx)) // fsync and fdatasync: the node's flush (u.off: the file)
			} else {
				// Read and Write as the Queue helpers fill them, plus the
				// I/O's priority (prio, prioclass, cmdprio).
				fi, off := w.files.locate(u.off)
				q := c.qs[fi]
				r := q.Get()
				r.Op, r.Off, r.Tag, r.Prio = block.OpRead, off, uint64(u.idx), u.prio
				if u.dir == DirWrite {
					r.Op, r.Flags = block.OpWrite, c.writeFlags
				}
				r.SetBuf(u.buf[:u.n])
				q.Submit(r, c)
			}
			c.batch = append(c.batch, u)
		}
		for _, q := range c.qs {
			q.Unplug()
		}
		if len(c.batch) == 0 {
			break
		}
		// The submit time of this batch is the issue time of the next.
		now = w.now()
		w.submitted(c.batch, now)
		if len(c.batch) < batchSize {
			break
		}
	}
	if until, ok := w.waitUntil(); ok {
		c.paceTimer.Reset(max(time.Duration(until-w.now()), time.Microsecond))
		return
	}
	if w.busy == 0 {
		if w.idle(now) {
			// Every enter of the Context's loop both submits and reaps.
			e := uint64(c.ctx.Stats().Enters)
			w.enterSubmit, w.enterReap = e, e
			c.done <- w
			return
		}
		c.scheduled = true // next phase (verify)
		c.refillBH.Schedule()
	}
}

// stop ends the clone's Context (after it finished) and makes the graph
// forget it, so a run of many groups does not keep every clone's pool and
// queue.
func (c *ringblkClone) stop() error {
	var err error
	for _, fe := range c.homed {
		if e := fe.SetContext(fe.Graph().Main()); e != nil && err == nil {
			err = fmt.Errorf("moving %s back to the main Context: %w", fe.Name(), e)
		}
	}
	c.homed = nil
	if _, e := c.ctx.Stop(); err == nil {
		err = e
	}
	if ferr := c.q.FrontEnd().Graph().ForgetContext(c.ctx); err == nil {
		err = ferr
	}
	if c.mapped != nil {
		unix.Munmap(c.mapped)
	}
	runtime.KeepAlive(c.bufs)
	return err
}

// closeError is a job's image that failed to close (a metadata
// write-back that could not be written), worded as fio words its errors:
// the file and the errno's text, the block layer's context left to
// errors.As.
type closeError struct {
	file string
	err  error
}

func (e *closeError) Error() string {
	cause := e.err.Error()
	var errno syscall.Errno
	if errors.As(e.err, &errno) {
		cause = errnoText(int(errno))
	}
	return fmt.Sprintf("error closing file %s: %s", e.file, cause)
}

func (e *closeError) Unwrap() error { return e.err }

// cacheOf is the cache mode of j's image: direct=1 is cache=none
// (O_DIRECT for a file, librbd's cache off for RBD), buffered is
// writeback.
func cacheOf(j *Job) raw.Cache {
	if j.Direct {
		return raw.CacheNone
	}
	return raw.CacheWriteback
}

// AIOPollAuto is aio_poll=auto, the default: see aioPollTime.
const AIOPollAuto time.Duration = -1

// autoPollTime is the poll window aio_poll=auto gives a clone at depths 2
// to 16.
const autoPollTime = 20 * time.Microsecond

// aioPollTime is the busy-poll bound before a wait for j: the ringblk
// engine's clone Context's (aio Options.PollTime) and the io_uring engine's
// clone loop's (threadClone.spin). aio_poll=auto spins up to autoPollTime
// at iodepth 2 to 16 and not at all otherwise. At those depths the next
// completion is often a few microseconds away, and a short spin catches it
// without the sleep and wake-up (on the loop device at depth 8: 191–205k
// IOPS at 3.6–3.8 µs of CPU per I/O against 148–155k at 3.4–3.6 without,
// fio 187–202k at 3.9–4.1; the bare ring with fio's best options 202–221k
// against 120–158k without, fio 152–165k). At depth 1 the one I/O may need
// the clone's own CPU (an io-wq worker placed there by iowq_workers=auto,
// the loop device's worker woken beside it): spinning delayed it (zram
// 135k → 76k IOPS). Past 16 the wait gathers a batch of completions worth
// more than the wake-up it saves (loop device at depth 128: 407k → 335k).
// With sqthread_poll a kernel thread already polls the SQ: auto adds no
// second spinner. docs/design/fast-devices.md §"SQPOLL and busy-polling:
// decisions".
func aioPollTime(j *Job) time.Duration {
	if j.AIOPoll != AIOPollAuto {
		return j.AIOPoll
	}
	if j.IODepth >= 2 && j.IODepth <= 16 && !j.SQThreadPoll {
		return autoPollTime
	}
	return 0
}
