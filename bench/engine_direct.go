package bench

import (
	"errors"
	"fmt"
	"math/bits"
	"os"
	"runtime"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/drivers/raw"
	"github.com/ringblk/ringblk/uring"
)

// The baseline engines run a clone's loop on one goroutine locked to its
// thread (pinned like the ringblk engine's Contexts), without the block
// layer: io_uring prepares SQEs on its own ring, psync calls pread/pwrite.

// threadClone is a clone of a baseline engine.
type threadClone struct {
	w      *worker
	f      *os.File   // the first file
	fs     []*os.File // every file (several files: files.go)
	fds    []int32
	mem    []byte
	ring   *uring.Ring
	aio    *aioState  // ioengine=libaio
	iov    unix.Iovec // pvsync, pvsync2: the one I/O vector
	pos    []int64    // ioengine=sync: each file's position (-1: unknown)
	cpu    int
	engine string
	done   chan<- *worker

	// aio_poll on the bare ring: the bound and the current window of the
	// busy-poll before a wait, adapted as an aio Context's (aio
	// Options.PollTime). Zero: the clone never spins.
	pollMax, pollWindow time.Duration
}

func openJobFile(j *Job) (*os.File, error) {
	flags := os.O_RDONLY
	if j.RW.Writes() {
		flags = os.O_RDWR
	}
	if j.Direct {
		flags |= syscall.O_DIRECT
	}
	switch j.SyncIO {
	case "sync":
		flags |= syscall.O_SYNC
	case "dsync":
		flags |= syscall.O_DSYNC
	}
	// O_NOATIME as fio opens its files: reads skip the access-time check.
	// Refused (EPERM) unless we own the file: then without it, as fio.
	f, err := os.OpenFile(j.Filename, flags|unix.O_NOATIME, 0)
	if errors.Is(err, unix.EPERM) {
		f, err = os.OpenFile(j.Filename, flags, 0)
	}
	if err != nil {
		return nil, err
	}
	// fio's fadvise_hint, on each open, advisory: a failure is ignored
	// as fio ignores it (after a warning).
	if a, ok := fadviseAdvice(fadviseOf(j)); ok {
		_ = unix.Fadvise(int(f.Fd()), 0, 0, a)
	}
	return f, nil
}

// fadviseOf is the hint fadvise_hint gives a job's files.
func fadviseOf(j *Job) raw.Fadvise {
	switch j.FadviseHint {
	case "0":
		return raw.FadviseNone
	case "random":
		return raw.FadviseRandom
	case "sequential":
		return raw.FadviseSequential
	}
	if j.RW.Random() {
		return raw.FadviseRandom
	}
	return raw.FadviseSequential
}

func fadviseAdvice(h raw.Fadvise) (int, bool) {
	switch h {
	case raw.FadviseRandom:
		return unix.FADV_RANDOM, true
	case raw.FadviseSequential:
		return unix.FADV_SEQUENTIAL, true
	case raw.FadviseNormal:
		return unix.FADV_NORMAL, true
	}
	return 0, false
}

func newThreadClone(w *worker, cpu int, done chan<- *worker) (*threadClone, error) {
	var fs []*os.File
	var fds []int32
	for _, fj := range w.job.fileJobs() {
		f, err := openJobFile(fj)
		if err != nil {
			for _, o := range fs {
				o.Close()
			}
			return nil, err
		}
		fs, fds = append(fs, f), append(fds, int32(f.Fd()))
	}
	f := fs[0]
	page := 4096
	per := (w.maxBlock() + page - 1) / page * page
	mem, err := unix.Mmap(-1, 0, per*len(w.units), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE|unix.MAP_POPULATE)
	if err != nil {
		for _, o := range fs {
			o.Close()
		}
		return nil, fmt.Errorf("buffers: %w", err)
	}
	if err := bindBuffers(w.job, mem); err != nil {
		unix.Munmap(mem)
		for _, o := range fs {
			o.Close()
		}
		return nil, err
	}
	bufs := make([][]byte, len(w.units))
	for i := range bufs {
		bufs[i] = mem[i*per : i*per+w.maxBlock()]
	}
	w.setBuffers(bufs)
	c := &threadClone{w: w, f: f, fs: fs, fds: fds, mem: mem, cpu: cpu, engine: w.job.IOEngine, done: done}
	switch c.engine {
	case "libaio":
		if c.aio, err = newAIOState(len(w.units)); err != nil {
			c.close()
			return nil, err
		}
	case "sync":
		c.pos = make([]int64, len(fds))
		for i := range c.pos {
			c.pos[i] = -1
		}
	}
	if c.engine == "io_uring" {
		c.pollMax = aioPollTime(w.job)
		c.pollWindow = c.pollMax
		entries := 1 << bits.Len(uint(max(w.job.IODepth, 1)-1))
		if c.ring, err = uring.New(entries, sqPollOptions(w.job)...); err != nil {
			c.close()
			return nil, err
		}
		// Registered before the owner thread binds the ring (its first
		// enter), which any thread may do.
		if w.job.RegisterFiles {
			if err = c.ring.RegisterFiles(len(fds)); err == nil {
				for i, fd := range fds {
					if err = c.ring.UpdateFile(i, int(fd)); err != nil {
						break
					}
				}
			}
		}
		if err == nil && w.job.FixedBufs {
			err = c.ring.RegisterBuffers([][]byte{mem}) // buffer index 0: every unit's buffer is a slice of it
		}
		if err != nil {
			c.close()
			return nil, err
		}
	}
	return c, nil
}

func (c *threadClone) start() {
	go func() {
		runtime.LockOSThread()
		// A thread this clone pinned, or whose io-wq workers it placed,
		// ends with the goroutine (a locked goroutine that exits takes its
		// thread along), so neither leaks into Go's thread pool.
		if c.cpu < 0 && c.w.cpuSet == nil && len(c.w.workerCPUs) == 0 {
			defer runtime.UnlockOSThread()
		}
		if c.cpu >= 0 {
			var set unix.CPUSet
			set.Set(c.cpu)
			_ = unix.SchedSetaffinity(0, &set) // best effort, like fio's cpus_allowed
		} else if c.w.cpuSet != nil {
			pinSet(c.w.cpuSet)
		}
		if c.ring == nil {
			// psync, libaio: the thread's own priority, as fio's
			// ioprio_set (native AIO takes the submitter's by default).
			setThreadPrio(c.w.prio.def)
		} else if len(c.w.workerCPUs) > 0 {
			if err := c.placeWorkers(); err != nil {
				c.w.err = err // an explicit iowq_workers=other the kernel refused
				c.w.stopIssuing = true
			}
		}
		if d := c.w.startDelay(); d > 0 {
			time.Sleep(d)
		}
		c.w.start()
		if threadStarted != nil {
			threadStarted(unix.Gettid())
		}
		switch {
		case c.ring != nil:
			c.runRing()
			c.w.ringEnters = c.ring.Enters()
			// The ring is bound to this thread: close it here, after every
			// operation was reaped.
			c.ring.Close()
			c.ring = nil
		case c.aio != nil:
			c.runAIO()
		default:
			c.runSync()
		}
		c.done <- c.w
	}()
}

// threadStarted, when set (tests), is told each baseline clone's thread
// id when its loop starts.
var threadStarted func(tid int)

// yieldEvery bounds how long a baseline clone runs without passing through
// the Go scheduler; it stays under the runtime's 10 ms hog check (see
// yieldOften).
const yieldEvery = int64(8 * time.Millisecond)

// yieldOften calls runtime.Gosched when yieldEvery has passed since last
// (a reading of the worker clock) and returns the new reference.
//
// A clone's loop never blocks in Go: it waits in io_uring_enter (or in
// pread), so its goroutine is never switched out and its P's schedule tick
// never moves. The runtime's sysmon reads a tick unchanged for 10 ms as a
// goroutine hogging its P; catching it inside the system call, it takes
// the P away and hands it off, and having done work it goes back to
// waking every 20 µs — for as long as the loop runs. On the bare ring at
// QD 1 that was about one context switch in other threads per I/O
// (sysmon and the threads it handed the P to), on a 2-core machine the
// CPU the io-wq worker or the loop device's worker needs to complete the
// I/O. A voluntary Gosched moves the tick first: on a locked thread it
// costs a hand-off through another M, at most 125 times a second. aio's
// owner loop does the same (aio.Context.yieldOften).
func yieldOften(now, last int64) int64 {
	if now-last < yieldEvery {
		return last
	}
	runtime.Gosched()
	return now
}

// placeWorkers puts the ring's io-wq workers on the clone's worker CPUs
// (iowq_workers; see workerCPUs). It runs on the clone's locked thread,
// which it binds the ring to: the io-wq belongs to that thread.
func (c *threadClone) placeWorkers() error {
	var set unix.CPUSet
	for _, cpu := range c.w.workerCPUs {
		set.Set(cpu)
	}
	if err := c.ring.SetWorkerAffinity(&set); err != nil {
		return fmt.Errorf("iowq_workers: %w", err)
	}
	return nil
}

func (c *threadClone) runSync() {
	w := c.w
	one := make([]*unit, 1)
	var yielded int64
	for {
		now := w.now()
		w.tick(now)
		yielded = yieldOften(now, yielded)
		u := w.take()
		if !w.fill(u, now) {
			w.untake(u)
			if until, ok := w.waitUntil(); ok {
				sleepUntil(w, until)
				continue
			}
			if w.idle(now) {
				return
			}
			continue
		}
		one[0] = u
		w.submitted(one, now) // sync engines have no submission latency (noSlat)
		var n int
		var err error
		fi, off := w.files.locate(u.off)
		if u.dir == DirSync {
			fi = int(u.off) // a sync unit's off is its file
		}
		fd := int(c.fds[fi])
		switch {
		case u.dir == DirSync && w.job.Fdatasync > 0 && w.job.Fsync == 0:
			err = unix.Fdatasync(fd)
		case u.dir == DirSync:
			err = unix.Fsync(fd)
		default:
			n, err = c.syncIO(fi, fd, u.dir == DirRead, u.buf[:u.n], off)
		}
		if err == nil && n != u.n {
			err = fmt.Errorf("short %s: %d of %d bytes", dirName(int(u.dir)), n, u.n)
		}
		w.completed(u, w.now(), err)
	}
}

func (c *threadClone) runRing() {
	w := c.w
	r := c.ring
	fixedFile, fixedBufs := w.job.RegisterFiles, w.job.FixedBufs
	batch := make([]*unit, 0, len(w.units))
	cqes := make([]uring.CQE, 2*len(w.units))
	// iodepth_batch_complete_max: the CQEs taken per round. fio's default
	// (the minimum, 1) takes one and refills it at once, so every submission
	// sees the full depth; the rest wait in the CQ for the next round, which
	// then needs no io_uring_enter to find them.
	reapMax := min(w.job.IODepthBatchCompleteMax, len(cqes))
	var yielded int64
	for {
		now := w.now()
		w.tick(now)
		yielded = yieldOften(now, yielded)
		batch = batch[:0]
		for {
			// A full batch goes now only if another follows it; the round's
			// last batch goes at the end of the round, with the wait when
			// nothing older is in flight.
			if len(batch) == w.job.IODepthBatch && w.canTake() {
				now = c.submit(batch) // the next batch is issued after it
				batch = batch[:0]
			}
			u := w.take()
			if u == nil {
				break
			}
			// The SQ holds iodepth entries, but an SQPOLL thread moves its
			// head only after a whole batch: the SQ can look full just
			// after that batch's CQEs were reaped. Make room (the enter
			// waits for the SQ thread) before fill takes the unit's offset
			// from the generator; an offset taken and then not issued was
			// an I/O lost (TestSQThreadPoll saw 253 of 256 under load).
			if r.Pending() >= r.SQEntries() {
				if len(batch) > 0 {
					now = c.submit(batch)
					batch = batch[:0]
				} else {
					c.makeRoom()
				}
				if r.Pending() >= r.SQEntries() {
					w.untake(u)
					break
				}
			}
			if !w.fill(u, now) {
				w.untake(u)
				break
			}
			sqe := r.GetSQE() // not nil: there is room, and only this thread takes SQEs
			fi, off := w.files.locate(u.off)
			if u.dir == DirSync {
				fi = int(u.off) // a sync unit's off is its file
			}
			fd := c.fds[fi]
			if fixedFile {
				fd = int32(fi) // the registered-file slot
			}
			switch {
			case u.dir == DirSync:
				sqe.PrepFsync(fd, w.job.Fdatasync > 0 && w.job.Fsync == 0, uint64(u.idx))
			case u.dir == DirRead && fixedBufs:
				sqe.PrepReadFixed(fd, u.buf[:u.n], uint64(off), 0, uint64(u.idx))
			case u.dir == DirRead:
				sqe.PrepRead(fd, u.buf[:u.n], uint64(off), uint64(u.idx))
			case fixedBufs:
				sqe.PrepWriteFixed(fd, u.buf[:u.n], uint64(off), 0, uint64(u.idx))
			default:
				sqe.PrepWrite(fd, u.buf[:u.n], uint64(off), uint64(u.idx))
			}
			if u.prio != 0 && u.dir != DirSync {
				sqe.IoPrio = u.prio // prio/prioclass/cmdprio: the SQE's ioprio
			}
			if fixedFile {
				sqe.SetFixedFile()
			}
			batch = append(batch, u)
		}
		rd := w.endRound(now, reapMax, len(cqes))
		if rd.idle {
			if rd.done {
				return
			}
			continue
		}
		reapMin, take, wait, paced := rd.reapMin, rd.take, rd.wait, rd.paced
		// When the round's last batch is all that is in flight (QD 1, or
		// everything completed), one enter submits it and waits
		// (liburing's io_uring_submit_and_wait; fio makes two calls,
		// commit then getevents): that wait would sleep anyway. With
		// older I/Os in flight the batch goes on its own first, as fio
		// does: the trip back to user space and the CQ check give their
		// completions (io-wq's on zram) a moment to arrive, and the owner
		// sleeps less (merged there too, it slept 0.42 times per I/O
		// against 0.29 on zram at QD 32, at more CPU per I/O;
		// docs/design/fast-devices.md §The bare ring against fio-best).
		if len(batch) > 0 && w.busy > len(batch) {
			c.submit(batch)
			batch = batch[:0]
		}
		// aio_poll: before a wait, spin on the CQ for the poll window
		// (the batch goes first, so that the kernel has it). The window
		// adapts to how long each round waited for its completions,
		// spin included, as QEMU's adaptive polling measures it: a
		// round whose completions were there, or came within the bound,
		// widens it; one that waited past the bound narrows it.
		waitFrom := int64(-1)
		if c.pollMax > 0 && !paced && reapMin > 0 {
			waitFrom = w.now()
			if c.pollWindow > 0 && r.Ready() < reapMin {
				if len(batch) > 0 {
					c.submit(batch)
					batch = batch[:0]
				}
				c.spin(reapMin)
			}
		}
		// The kernel runs the deferred task work before it would sleep,
		// so completions that finished meanwhile are posted and the call
		// returns at once; what an earlier round left in the CQ is counted
		// first, and then the enter only submits.
		if err := c.submitWait(batch, reapMin, wait); err != nil {
			// The ring failed: stop issuing and reap what is still in
			// flight before its buffers go away.
			if w.err == nil {
				w.err = err
			}
			w.stopIssuing = true
			if _, err := r.SubmitAndWait(w.busy, time.Second); err != nil {
				return
			}
		}
		if waitFrom >= 0 {
			c.adaptPoll(time.Duration(w.now() - waitFrom))
		}
		k := r.Reap(cqes[:take])
		t := w.now()
		for _, cq := range cqes[:k] {
			u := &w.units[cq.UserData]
			var err error
			if e := cq.Err(); e != nil {
				err = e
			} else if int(cq.Res) != u.n {
				err = fmt.Errorf("short %s: %d of %d bytes", dirName(int(u.dir)), cq.Res, u.n)
			}
			w.completed(u, t, err)
		}
	}
}

// spin busy-polls the CQ for the current poll window until it holds n
// CQEs and reports whether they came. Ready also has the kernel post
// completions it holds as task work (DEFER_TASKRUN), so a spin sees them.
func (c *threadClone) spin(n int) bool {
	deadline := c.w.now() + int64(c.pollWindow)
	for i := 0; ; i++ {
		if c.ring.Ready() >= n {
			return true
		}
		if i&63 == 63 && c.w.now() >= deadline {
			return false
		}
	}
}

// adaptPoll adapts the poll window to a wait that lasted waited, by the
// rule of aio's Context (aio.NextPollWindow).
func (c *threadClone) adaptPoll(waited time.Duration) {
	c.pollWindow = aio.NextPollWindow(c.pollWindow, c.pollMax, waited)
}

// sleepUntil sleeps the clone's thread until t (ns of the worker clock).
func sleepUntil(w *worker, t int64) {
	if d := time.Duration(t - w.now()); d > 0 {
		time.Sleep(d)
	}
}

// submitWait hands the prepared SQEs of batch to the kernel and, in the
// same io_uring_enter, waits until the CQ holds reapMin CQEs or timeout
// passed (timeout < 0: no limit). The batch's submit time is stamped
// before the call, since the wait would otherwise count as submission
// latency. With nothing to submit and enough CQEs it does not enter.
func (c *threadClone) submitWait(batch []*unit, reapMin int, timeout time.Duration) error {
	w, r := c.w, c.ring
	waits := r.Ready() < reapMin
	if len(batch) == 0 && !waits {
		return nil
	}
	if len(batch) > 0 {
		w.enterSubmit++
		w.submitted(batch, w.now())
	}
	if waits {
		w.enterReap++
	}
	for {
		_, err := r.SubmitAndWait(reapMin, timeout)
		if err == nil {
			return nil
		}
		if !errors.Is(err, uring.ErrBusy) {
			return err
		}
		if r.Pending() == 0 || r.Ready() > 0 {
			// Submitted, or completions to reap first: the caller reaps.
			return nil
		}
	}
}

// makeRoom waits until an SQPOLL thread has consumed the SQ it left
// looking full (SubmitAndWait enters with IORING_ENTER_SQ_WAIT then).
func (c *threadClone) makeRoom() {
	for {
		_, err := c.ring.SubmitAndWait(0, 0)
		if err == nil || !errors.Is(err, uring.ErrBusy) {
			return
		}
	}
}

// submit hands the prepared SQEs of batch to the kernel (no waiting) and
// stamps their submit time.
func (c *threadClone) submit(batch []*unit) int64 {
	if len(batch) == 0 {
		return c.w.now()
	}
	for {
		c.w.enterSubmit++
		_, err := c.ring.SubmitAndWait(0, 0)
		if err == nil || !errors.Is(err, uring.ErrBusy) {
			break
		}
	}
	t := c.w.now()
	c.w.submitted(batch, t)
	return t
}

func (c *threadClone) close() {
	if c.ring != nil {
		c.ring.Close()
	}
	if c.aio != nil {
		c.aio.destroy() // waits for what is in flight, before the buffers go
	}
	if c.mem != nil {
		unix.Munmap(c.mem)
	}
	for _, f := range c.fs {
		f.Close()
	}
}

// sqPollOptions are the ring options of sqthread_poll and
// sqthread_poll_cpu (none without).
func sqPollOptions(j *Job) []uring.Option {
	if !j.SQThreadPoll {
		return nil
	}
	o := []uring.Option{uring.WithSQPoll(0)}
	if j.SQThreadPollCPU >= 0 {
		o = append(o, uring.WithSQPollCPU(j.SQThreadPollCPU))
	}
	return o
}

// round is what a queued engine's round does once filled (endRound).
type round struct {
	idle, done    bool          // nothing in flight (done: the clone finished)
	paced         bool          // a rate or thinktime holds the next I/O
	wait          time.Duration // the reap's time limit (-1: none)
	reapMin, take int           // completions to wait for, and to take at most
}

// endRound is the part of a queued engine's round (io_uring, libaio)
// after filling: with nothing in flight it sleeps until a paced I/O is due
// or ends the run; otherwise it says how to reap. Like fio's loop, a round
// takes at most iodepth_batch_complete_max (reapMax) and issues again;
// once nothing more will be issued, the rest (up to all, the engine's
// capacity) drains in one reap, as fio waits for all in flight at the end.
// A paced round wakes for the paced I/O even if nothing completes.
func (w *worker) endRound(now int64, reapMax, all int) round {
	until, paced := w.waitUntil()
	if w.busy == 0 { // nothing in flight, so nothing was prepared
		if paced {
			sleepUntil(w, until)
			return round{idle: true}
		}
		return round{idle: true, done: w.idle(now)}
	}
	r := round{paced: paced, wait: -1, reapMin: w.reapMin(), take: reapMax}
	if paced {
		r.wait = max(time.Duration(until-w.now()), time.Microsecond)
	}
	if w.stopIssuing && !paced {
		r.reapMin, r.take = w.busy, all
	}
	return r
}

// syncIO reads or writes buf at off of file fi (descriptor fd) with the
// system calls of the clone's sync engine: pread/pwrite (psync), lseek as
// needed and read/write (sync), preadv/pwritev (pvsync), preadv2/pwritev2
// (pvsync2), as fio's engines of those names.
func (c *threadClone) syncIO(fi, fd int, read bool, buf []byte, off int64) (int, error) {
	switch c.engine {
	case "sync":
		if c.pos[fi] != off {
			if _, err := unix.Seek(fd, off, 0); err != nil {
				c.pos[fi] = -1
				return 0, err
			}
		}
		var n int
		var err error
		if read {
			n, err = unix.Read(fd, buf)
		} else {
			n, err = unix.Write(fd, buf)
		}
		c.pos[fi] = -1
		if err == nil {
			c.pos[fi] = off + int64(n)
		}
		return n, err
	case "pvsync", "pvsync2":
		c.iov.Base = &buf[0]
		c.iov.SetLen(len(buf))
		nr := uintptr(unix.SYS_PREADV)
		if !read {
			nr = unix.SYS_PWRITEV
		}
		if c.engine == "pvsync2" {
			nr = unix.SYS_PREADV2
			if !read {
				nr = unix.SYS_PWRITEV2
			}
		}
		// 64-bit: the offset is the low word, the high word 0; flags 0.
		n, _, e := unix.Syscall6(nr, uintptr(fd), uintptr(unsafe.Pointer(&c.iov)), 1, uintptr(off), 0, 0)
		c.iov.Base = nil
		if e != 0 {
			return 0, e
		}
		return int(n), nil
	}
	if read {
		return unix.Pread(fd, buf, off)
	}
	return unix.Pwrite(fd, buf, off)
}

// syncEngine reports whether engine does one I/O per system call, at
// depth 1 (fio's sync engines).
func syncEngine(engine string) bool {
	switch engine {
	case "psync", "sync", "pvsync", "pvsync2":
		return true
	}
	return false
}
