package host

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/plugin/contract"
)

// Loop is an I/O Context run by a host goroutine (Host.Drive): its ring
// is set up on that goroutine's thread, and requests of the Loop's queues
// are submitted and completed there, inside the host's own calls to
// Queue.Wait. There is no cross-thread wake-up per batch, as in
// `ringblk bench`, where the Context's own loop submits.
//
// A Loop's queues are used from the goroutine Drive runs fn on: their
// Wait runs the Loop (Next never does). Work other goroutines have for the
// Loop — a drain, a Close, a Context move of the device — waits until fn
// polls again (it is as QEMU's main loop: nothing runs on it while its
// thread does other things). From fn, the host's synchronous calls
// (ReadAt, Close, Drain…) return ErrInContext, as from a completion
// callback; Geometry, Stats and the other control calls work and keep
// the Loop running while they wait.
type Loop struct {
	h   *Host
	ctx *aio.Context

	mu     sync.Mutex
	queues []*Queue
}

// Drive runs fn on the calling goroutine, locked to its OS thread, as the
// owner of a new I/O Context (a Loop): the polled completion mode. When
// fn returns, the Loop's queues still open are closed (their requests
// complete first) and the Context stops. It returns fn's error joined with
// those of the cleanup. Host.Close waits for running Drive calls to
// return; fn sees its queues refuse submissions (ErrClosed) and Wait
// return false once they are closed.
func (h *Host) Drive(fn func(l *Loop) error) (err error) {
	if fn == nil {
		return errors.New("ringblk: Drive: no function to run (nil)")
	}
	if h.inContext() {
		return ErrInContext
	}
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return ErrClosed
	}
	h.drives.Add(1)
	h.mu.Unlock()
	defer h.drives.Done()
	ctx, err := aio.New(aio.Options{Name: "ringblk-loop", Main: true, CPU: aio.NoCPU,
		Entries: h.ringEntries, ArenaSize: -1})
	if err != nil {
		return fmt.Errorf("ringblk: Loop: %w", err)
	}
	if err := ctx.Attach(); err != nil {
		return fmt.Errorf("ringblk: Loop: %w", err)
	}
	l := &Loop{h: h, ctx: ctx}
	h.addLoop(ctx)
	defer func() {
		var errs []error
		l.mu.Lock()
		qs := append([]*Queue(nil), l.queues...)
		l.mu.Unlock()
		for _, q := range qs {
			if cerr := q.Close(); cerr != nil {
				errs = append(errs, cerr)
			}
		}
		if ferr := h.g.ForgetContext(ctx); ferr != nil {
			errs = append(errs, ferr)
		}
		h.removeLoop(ctx)
		if _, serr := ctx.Detach(); serr != nil {
			errs = append(errs, fmt.Errorf("ringblk: stop Loop: %w", serr))
		}
		err = errors.Join(append([]error{err}, errs...)...)
	}()
	return fn(l)
}

var _ contract.Loop = (*Loop)(nil)

// RunLoop is Drive for contract.Host.
func (h *Host) RunLoop(fn func(contract.Loop) error) error {
	if fn == nil {
		return errors.New("ringblk: RunLoop: no function to run (nil)")
	}
	return h.Drive(func(l *Loop) error { return fn(l) })
}

// NewQueue creates a queue of d on the Loop (contract.Loop).
func (l *Loop) NewQueue(d contract.Device, o QueueOptions) (contract.Queue, error) {
	hd, ok := d.(*Device)
	if !ok || hd == nil {
		return nil, errors.New("ringblk: Loop.NewQueue: not a device of this host")
	}
	q, err := l.Queue(hd, o)
	if err != nil {
		return nil, err
	}
	return q, nil
}

// Queue creates a queue of d on the Loop. Its completions go to Next
// (OnComplete, if set, runs inside Wait).
func (l *Loop) Queue(d *Device, o QueueOptions) (*Queue, error) {
	if !l.ctx.InContext() {
		return nil, errors.New("ringblk: Loop.Queue from another goroutine than the one Drive runs")
	}
	if d == nil {
		return nil, errors.New("ringblk: Loop.Queue: no device (nil)")
	}
	if d.h != l.h {
		return nil, errors.New("ringblk: Loop.Queue: the device belongs to another host")
	}
	if d.isClosed() {
		return nil, ErrClosed
	}
	q, err := d.newQueue(l.ctx, -1, o, l)
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	l.queues = append(l.queues, q)
	l.mu.Unlock()
	return q, nil
}

// Poll runs one iteration of the Loop, blocking until something happened
// if block is set: for a host that waits on several queues of the Loop
// at once. From the goroutine Drive runs only.
func (l *Loop) Poll(block bool) bool {
	if !l.ctx.InContext() {
		return false
	}
	return l.ctx.Poll(block)
}

func (l *Loop) forget(q *Queue) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, x := range l.queues {
		if x == q {
			l.queues = append(l.queues[:i], l.queues[i+1:]...)
			return
		}
	}
}

// waitLoop is Wait on the Loop's own goroutine: it runs the Loop until a
// completion is ready, the queue closes or the timeout passes.
func (q *Queue) waitLoop(timeout time.Duration) bool {
	if q.done.ready() {
		return true
	}
	if timeout == 0 {
		q.ctx.Poll(false)
		return q.done.ready()
	}
	var end int64
	if timeout > 0 {
		end = nanotime() + int64(timeout)
		// One timer per queue, re-armed: it only ends a blocking poll.
		if q.timer == nil {
			q.timer = q.ctx.AfterFunc(timeout, func() {})
		} else {
			q.timer.Reset(timeout)
		}
		defer q.timer.Stop()
	}
	for !q.done.ready() {
		if q.closed.Load() {
			return false
		}
		if end != 0 && nanotime() >= end {
			return false
		}
		q.ctx.Poll(true)
	}
	return true
}

// closeOnLoop is Close on the Loop's own goroutine: it runs the Loop
// until the queue's requests have completed.
func (q *Queue) closeOnLoop() error {
	if q.closed.Swap(true) {
		// Another goroutine's Close waits for the requests, which need
		// this Loop to run.
		for {
			select {
			case <-q.closing:
				return nil
			default:
				q.ctx.Poll(false)
				time.Sleep(20 * time.Microsecond)
			}
		}
	}
	defer close(q.closing)
	q.failHeld()
	// runSubmit on a closed queue issues what was submitted and fails
	// what a drained section parked (Close); once more before each wait,
	// so a request parked by a section that began meanwhile fails too.
	for q.runSubmit(); q.submitted.Load() != q.completed.Load(); q.runSubmit() {
		q.ctx.Poll(true)
	}
	q.release()
	// Wake goroutines of other threads blocked in Wait, and close the
	// eventfd only once they have left it.
	for q.waiters.Load() > 0 {
		unix.Write(q.efd, q.one[:])
		time.Sleep(50 * time.Microsecond)
	}
	return unix.Close(q.efd)
}
