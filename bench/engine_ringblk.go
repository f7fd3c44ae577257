package bench

import (
	"fmt"
	"math/bits"
	"runtime"

	"golang.org/x/sys/unix"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/chain"
	"github.com/ringblk/ringblk/drivers/null"
	"github.com/ringblk/ringblk/drivers/raw"
)

// ringblkEnv is the block layer of one bench run: a main Context and a
// graph. Clones get their own IOThread Contexts.
type ringblkEnv struct {
	main *aio.Context
	g    *block.Graph
}

func newRingblkEnv() (*ringblkEnv, error) {
	m, err := aio.New(aio.Options{Name: "bench-main", Main: true, CPU: aio.NoCPU, ArenaSize: -1, Entries: 64})
	if err != nil {
		return nil, fmt.Errorf("ringblk engine: %w", err)
	}
	if err := m.Start(); err != nil {
		return nil, fmt.Errorf("ringblk engine: %w", err)
	}
	return &ringblkEnv{main: m, g: block.NewGraph(m)}, nil
}

func (e *ringblkEnv) close() error {
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
	switch format {
	case "null":
		n, err = e.g.Open(null.New(j.Offset+j.Size, null.Options{}), block.Options{Name: name})
	case "raw":
		opts := raw.Options{ReadOnly: !j.RW.Writes(), Locking: raw.LockingOff, ShareRW: true}
		if j.Direct {
			opts.Cache = raw.CacheNone
		}
		n, err = raw.NewNode(e.g, j.Filename, opts, block.Options{Name: name})
	case "qcow2":
		// The image and its backing chain, each backing file opened with
		// the format its overlay records (never probed), read-only.
		co := chain.Options{Format: "qcow2", ReadOnly: !j.RW.Writes(), Locking: raw.LockingOff, Name: name}
		if j.Direct {
			co.Cache = raw.CacheNone
		}
		var img *chain.Image
		if img, err = chain.Open(e.g, j.Filename, co); err == nil {
			n = img.Node
		}
	default:
		return nil, fmt.Errorf("unknown format %q", format)
	}
	if err != nil {
		return nil, err
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
	w         *worker
	ctx       *aio.Context
	q         *block.Queue
	refillBH  *aio.BH
	scheduled bool
	batch     []*unit
	bufs      [][]byte
	mapped    []byte // buffers when the arena is too small
	done      chan<- *worker
	startErr  error
}

// arenaLimit caps the arena a clone asks for; larger buffer sets are mmap'd.
const arenaLimit = 256 << 20

func newRingblkClone(rj *ringblkJob, w *worker, cpu int, done chan<- *worker) (*ringblkClone, error) {
	j := w.job
	page := 4096
	per := 1 << bits.Len(uint((w.maxBlock()+page-1)/page-1)) * page
	arena := len(w.units) * per
	arena = 1 << bits.Len(uint(arena-1))
	if arena > arenaLimit {
		arena = -1
	}
	entries := 1 << bits.Len(uint(max(j.IODepth, 32)-1))
	ctx, err := aio.New(aio.Options{
		Name: fmt.Sprintf("%s.%d", j.Name, w.clone), CPU: cpu,
		Entries: min(entries, 4096), ArenaSize: arena,
	})
	if err != nil {
		return nil, err
	}
	if err := ctx.Start(); err != nil {
		return nil, err
	}
	c := &ringblkClone{w: w, ctx: ctx, q: rj.fe.Queue(ctx), done: done, batch: make([]*unit, 0, len(w.units))}
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
	w.setBuffers(c.bufs)
	return c, nil
}

// start begins the clone (from any goroutine).
func (c *ringblkClone) start() {
	c.ctx.Schedule(func() {
		c.w.start()
		c.refill()
	})
}

// RequestDone completes one unit (block.Done; on the clone's Context).
func (c *ringblkClone) RequestDone(r *block.Request, err error) {
	w := c.w
	w.completed(&w.units[r.Tag], w.now(), err)
	if !c.scheduled {
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
		c.q.Plug()
		for len(c.batch) < batchSize {
			u := w.take()
			if u == nil {
				break
			}
			if !w.fill(u, now) {
				w.untake(u)
				break
			}
			if u.dir == DirRead {
				c.q.Read(u.buf[:u.n], u.off, c, uint64(u.idx))
			} else {
				c.q.Write(u.buf[:u.n], u.off, 0, c, uint64(u.idx))
			}
			c.batch = append(c.batch, u)
		}
		c.q.Unplug()
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
	if w.busy == 0 {
		if w.idle(now) {
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
	_, err := c.ctx.Stop()
	if ferr := c.q.FrontEnd().Graph().ForgetContext(c.ctx); err == nil {
		err = ferr
	}
	if c.mapped != nil {
		unix.Munmap(c.mapped)
	}
	runtime.KeepAlive(c.bufs)
	return err
}
