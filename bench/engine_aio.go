package bench

import (
	"fmt"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The libaio engine: Linux native AIO (io_setup, io_submit, io_getevents),
// as fio's libaio engine drives it, without libaio itself (the three system
// calls are all fio uses of it). A clone owns one AIO context of iodepth
// events; its units' control blocks live in one array for the clone's
// life, so a request allocates nothing. Without O_DIRECT (direct=1) the
// kernel does the I/O inside io_submit, as for fio.

// iocb is the kernel's struct iocb (linux/aio_abi.h), little-endian.
type iocb struct {
	data      uint64
	key       uint32
	rwFlags   uint32
	opcode    uint16
	reqprio   int16
	fildes    uint32
	buf       uint64
	nbytes    uint64
	offset    int64
	reserved2 uint64
	flags     uint32
	resfd     uint32
}

// ioEvent is the kernel's struct io_event.
type ioEvent struct {
	data uint64
	obj  uint64
	res  int64
	res2 int64
}

const (
	iocbCmdPread  = 0
	iocbCmdPwrite = 1
	iocbCmdFsync  = 2
	iocbCmdFdsync = 3
	iocbFlagPrio  = 1 << 1 // IOCB_FLAG_IOPRIO: reqprio is the I/O's priority
)

// aioState is a libaio clone's context and control blocks.
type aioState struct {
	ctx    uintptr
	cbs    []iocb  // one per unit, indexed by unit
	ptrs   []*iocb // the batch being submitted
	events []ioEvent
}

func newAIOState(depth int) (*aioState, error) {
	a := &aioState{cbs: make([]iocb, depth), ptrs: make([]*iocb, depth), events: make([]ioEvent, depth)}
	if _, _, e := unix.Syscall(unix.SYS_IO_SETUP, uintptr(depth), uintptr(unsafe.Pointer(&a.ctx)), 0); e != 0 {
		if e == unix.EAGAIN {
			return nil, fmt.Errorf("io_setup(%d): %w (the system's AIO limit, /proc/sys/fs/aio-max-nr)", depth, e)
		}
		return nil, fmt.Errorf("io_setup(%d): %w", depth, e)
	}
	return a, nil
}

func (a *aioState) destroy() {
	if a.ctx != 0 {
		unix.Syscall(unix.SYS_IO_DESTROY, a.ctx, 0, 0)
		a.ctx = 0
	}
}

// prep fills the control block of u.
func (c *threadClone) prepIocb(u *unit) *iocb {
	w := c.w
	cb := &c.aio.cbs[u.idx]
	*cb = iocb{data: uint64(u.idx)}
	fi, off := w.files.locate(u.off)
	switch u.dir {
	case DirSync:
		cb.fildes = uint32(c.fds[int(u.off)]) // a sync unit's off is its file
		cb.opcode = iocbCmdFsync
		if w.job.Fdatasync > 0 && w.job.Fsync == 0 {
			cb.opcode = iocbCmdFdsync
		}
		return cb
	case DirRead:
		cb.opcode = iocbCmdPread
	default:
		cb.opcode = iocbCmdPwrite
	}
	cb.fildes = uint32(c.fds[fi])
	cb.buf = uint64(uintptr(unsafe.Pointer(&u.buf[0])))
	cb.nbytes = uint64(u.n)
	cb.offset = off
	if u.prio != 0 {
		cb.flags |= iocbFlagPrio
		cb.reqprio = int16(u.prio)
	}
	return cb
}

// aioSubmit hands batch to the kernel and stamps its submit time. Units
// the kernel refused complete with its error.
func (c *threadClone) aioSubmit(batch []*unit) {
	if len(batch) == 0 {
		return
	}
	w, a := c.w, c.aio
	for i, u := range batch {
		a.ptrs[i] = &a.cbs[u.idx]
	}
	w.enterSubmit++
	t := w.now()
	w.submitted(batch, t)
	done := 0
	for done < len(batch) {
		n, _, e := unix.Syscall(unix.SYS_IO_SUBMIT, a.ctx, uintptr(len(batch)-done), uintptr(unsafe.Pointer(&a.ptrs[done])))
		switch {
		case e == unix.EINTR || e == unix.EAGAIN && done < len(batch) && w.busy > len(batch)-done:
			// Interrupted, or out of resources while older I/O is in
			// flight: the next reap makes room.
			if e == unix.EAGAIN {
				c.aioReap(1, len(a.events), -1)
			}
			continue
		case e != 0:
			err := fmt.Errorf("io_submit: %w", e)
			for _, u := range batch[done:] {
				w.completed(u, w.now(), err)
			}
			return
		}
		done += int(n)
	}
}

// aioReap waits until min completions arrived (or timeout passed, < 0:
// none), takes at most max and completes their units; it returns how
// many it completed.
func (c *threadClone) aioReap(min, max int, timeout time.Duration) int {
	w, a := c.w, c.aio
	var ts unix.Timespec
	tsp := uintptr(0)
	if timeout >= 0 {
		ts = unix.NsecToTimespec(int64(timeout))
		tsp = uintptr(unsafe.Pointer(&ts))
	}
	if min > 0 {
		w.enterReap++
	}
	for {
		n, _, e := unix.Syscall6(unix.SYS_IO_GETEVENTS, a.ctx, uintptr(min), uintptr(max),
			uintptr(unsafe.Pointer(&a.events[0])), tsp, 0)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			// The context failed: what is in flight cannot be reaped.
			if w.err == nil {
				w.err = fmt.Errorf("io_getevents: %w", e)
			}
			w.stopIssuing = true
			return 0
		}
		t := w.now()
		for _, ev := range a.events[:n] {
			u := &w.units[ev.data]
			var err error
			switch {
			case ev.res < 0:
				err = syscall.Errno(-ev.res)
			case int(ev.res) != u.n:
				err = fmt.Errorf("short %s: %d of %d bytes", dirName(int(u.dir)), ev.res, u.n)
			}
			w.completed(u, t, err)
		}
		return int(n)
	}
}

// runAIO is a libaio clone's loop: fio's with its libaio engine: fill and
// submit in batches of iodepth_batch_submit, then wait for
// iodepth_batch_complete_min completions and take at most
// iodepth_batch_complete_max.
func (c *threadClone) runAIO() {
	w, a := c.w, c.aio
	defer a.destroy()
	batch := make([]*unit, 0, len(w.units))
	reapMax := min(w.job.IODepthBatchCompleteMax, len(a.events))
	var yielded int64
	for {
		now := w.now()
		w.tick(now)
		yielded = yieldOften(now, yielded)
		batch = batch[:0]
		for {
			if len(batch) == w.job.IODepthBatch && w.canTake() {
				c.aioSubmit(batch)
				batch = batch[:0]
				now = w.now()
			}
			u := w.take()
			if u == nil {
				break
			}
			if !w.fill(u, now) {
				w.untake(u)
				break
			}
			c.prepIocb(u)
			batch = append(batch, u)
		}
		c.aioSubmit(batch)
		r := w.endRound(now, reapMax, len(a.events))
		if r.idle {
			if r.done {
				return
			}
			continue
		}
		if c.aioReap(r.reapMin, r.take, r.wait) == 0 && w.err != nil && w.stopIssuing && w.busy > 0 {
			return // the context failed with I/O in flight
		}
	}
}
