package aio

// Acceptance tests of drain.md §3.5 (U1–U10) for the io_uring completion
// source, each against the kernel ring and the uringtest fake. Where the
// catalogue needs the block layer (U8, U10), the test builds the aio-level
// equivalent and says how it maps.

import (
	"bytes"
	"errors"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ringblk/ringblk/uring"
	"github.com/ringblk/ringblk/uring/uringtest"
)

const hang = 20 * time.Second // a test step taking longer than this is a hang

// U1: inside one batch section, 32 reads take exactly one submitting
// io_uring_enter, at the outermost Unplug; outside a section every read is
// submitted at once.
func TestU1Batching(t *testing.T) {
	forEachRing(t, func(t *testing.T, e *env) {
		q, fq := e.queue(256, uringtest.Options{})
		c := e.start(Options{}, q)
		f := e.testFile(64*4096, fq)
		bufs := make([][]byte, 64)
		for i := range bufs {
			bufs[i] = make([]byte, 4096)
		}
		cnt := newCounter()
		onOwner(t, c, hang, func() {
			base := q.submits.Load()
			c.Plug()
			c.Plug() // nested: only the outermost Unplug submits
			for i := 0; i < 32; i++ {
				c.Read(f, bufs[i], int64(i)*4096, cnt, uint64(i))
			}
			c.Unplug()
			if n := q.submits.Load() - base; n != 0 {
				t.Errorf("inner Unplug submitted: %d enters, want 0", n)
			}
			c.Unplug()
			if n := q.submits.Load() - base; n != 1 {
				t.Errorf("32 plugged reads took %d submitting enters, want 1", n)
			}
			c.WaitWhile(func() bool { return cnt.n < 32 })

			base = q.submits.Load()
			for i := 32; i < 64; i++ {
				c.Read(f, bufs[i], int64(i)*4096, cnt, uint64(i))
				if n := q.submits.Load() - base; n != int64(i-31) {
					t.Errorf("unplugged read %d: %d submitting enters so far, want %d", i, n, i-31)
				}
			}
			c.WaitWhile(func() bool { return cnt.n < 64 })
		})
		for i, b := range bufs {
			if !bytes.Equal(b, pattern(make([]byte, 4096), int64(i)*4096)) {
				t.Fatalf("read %d: wrong data", i)
			}
			if cnt.byTag[uint64(i)] != 1 || cnt.errs[uint64(i)] != nil || cnt.res[uint64(i)] != 4096 {
				t.Fatalf("read %d: %d completions, res %d, err %v", i, cnt.byTag[uint64(i)], cnt.res[uint64(i)], cnt.errs[uint64(i)])
			}
		}
	})
}

// U2: 4× ring-size requests at once: none fails, all complete exactly once
// with the right data, in-flight returns to 0. On the fake, partial
// submission and ErrBusy force ops through the overflow queue, which must
// keep submission order.
func TestU2SQOverflow(t *testing.T) {
	forEachRing(t, func(t *testing.T, e *env) {
		const entries = 8
		const n = 4 * entries
		q, fq := e.queue(entries, uringtest.Options{MaxSubmit: 3, MaxDelay: 2})
		c := e.start(Options{Entries: entries}, q)
		f := e.testFile(n*512, fq)
		bufs := make([][]byte, n)
		for i := range bufs {
			bufs[i] = make([]byte, 512)
		}
		cnt := newCounter()
		var st Stats
		onOwner(t, c, hang, func() {
			if fq != nil {
				fq.InjectBusy(2)
			}
			for round := 0; round < 2; round++ { // once plugged, once not
				if round == 0 {
					c.Plug()
				}
				for i := 0; i < n; i++ {
					c.Read(f, bufs[i], int64(i)*512, cnt, uint64(round*n+i))
				}
				if round == 0 {
					c.Unplug()
				}
				c.WaitWhile(func() bool { return c.Outstanding() > 0 })
			}
			st = c.Stats()
		})
		if cnt.n != 2*n {
			t.Fatalf("%d completions, want %d", cnt.n, 2*n)
		}
		for tag, k := range cnt.byTag {
			if k != 1 || cnt.errs[tag] != nil {
				t.Fatalf("tag %d: %d completions, err %v", tag, k, cnt.errs[tag])
			}
		}
		for i, b := range bufs {
			if !bytes.Equal(b, pattern(make([]byte, 512), int64(i)*512)) {
				t.Fatalf("read %d: wrong data", i)
			}
		}
		if fq != nil {
			if st.Overflowed == 0 {
				t.Errorf("no op went through the overflow queue (stats %+v)", st)
			}
			reads := q.ops(uring.IORING_OP_READ, f)
			for i := 1; i < n; i++ { // the first round's reads, in submission order
				if reads[i].Off != reads[i-1].Off+512 {
					t.Fatalf("submission order broken at %d: offsets %d then %d", i, reads[i-1].Off, reads[i].Off)
				}
			}
		}
	})
}

// U3: an -EAGAIN (then an -EINTR) result is resubmitted transparently: the
// caller sees success and the read went to the ring three times.
func TestU3EagainRetry(t *testing.T) {
	forEachRing(t, func(t *testing.T, e *env) {
		q, fq := e.queue(64, uringtest.Options{})
		f := e.testFile(8192, fq)
		if fq != nil {
			fd := int32(f.Fd())
			fq.Inject(uringtest.Fault{Ops: uringtest.Ops(uring.IORING_OP_READ), Fd: fd, Nth: 1, Errno: syscall.EAGAIN})
			fq.Inject(uringtest.Fault{Ops: uringtest.Ops(uring.IORING_OP_READ), Fd: fd, Nth: 2, Errno: syscall.EINTR})
		} else {
			// The kernel cannot be told to fail; rewrite the first two read
			// results on their way out of the CQ instead.
			left := 2
			q.hook = func(cqe *uring.CQE) {
				if left > 0 && cqe.Res == 4096 {
					cqe.Res = -int32(map[int]syscall.Errno{2: syscall.EAGAIN, 1: syscall.EINTR}[left])
					left--
				}
			}
		}
		c := e.start(Options{}, q)
		buf := make([]byte, 4096)
		cnt := newCounter()
		onOwner(t, c, hang, func() {
			c.Read(f, buf, 4096, cnt, 7)
			c.WaitWhile(func() bool { return cnt.n == 0 })
		})
		if cnt.n != 1 || cnt.errs[7] != nil || cnt.res[7] != 4096 {
			t.Fatalf("completions %d, res %d, err %v; want 1, 4096, nil", cnt.n, cnt.res[7], cnt.errs[7])
		}
		if !bytes.Equal(buf, pattern(make([]byte, 4096), 4096)) {
			t.Fatal("wrong data")
		}
		if reads := q.ops(uring.IORING_OP_READ, f); len(reads) != 3 {
			t.Fatalf("read submitted %d times, want 3", len(reads))
		}
	})
}

// U4: two consecutive short reads (1 KiB, then 2 KiB of a 16 KiB read) are
// resubmitted with the accumulated offset — the third submission starts at
// offset+3 KiB — and the buffer ends up right; a read that hits EOF is
// zero-filled and succeeds; a write that makes no progress fails with
// ENOSPC, one that makes some is resubmitted for the rest.
func TestU4ShortTransfers(t *testing.T) {
	forEachRing(t, func(t *testing.T, e *env) {
		const off = 8192
		q, fq := e.queue(64, uringtest.Options{})
		f := e.testFile(64*1024, fq)
		if fq != nil {
			fd := int32(f.Fd())
			fq.Inject(uringtest.Fault{Ops: uringtest.Ops(uring.IORING_OP_READ), Fd: fd, Nth: 1, Short: 1024})
			fq.Inject(uringtest.Fault{Ops: uringtest.Ops(uring.IORING_OP_READ), Fd: fd, Nth: 2, Short: 2048})
			fq.Inject(uringtest.Fault{Ops: uringtest.Ops(uring.IORING_OP_WRITE), Fd: fd, Nth: 1, Short: 100})
			fq.Inject(uringtest.Fault{Ops: uringtest.Ops(uring.IORING_OP_WRITE), Fd: fd, Nth: 3, Short: uringtest.ShortZero})
		} else {
			// Pretend the kernel transferred less than it did: the
			// remainder is read again and must land in the right place.
			reads, writes := 0, 0
			q.hook = func(cqe *uring.CQE) {
				switch {
				case cqe.Res == 16384 && reads == 0:
					cqe.Res, reads = 1024, 1
				case cqe.Res == 15360 && reads == 1:
					cqe.Res, reads = 2048, 2
				case cqe.Res == 512 && writes == 0:
					cqe.Res, writes = 100, 1
				case cqe.Res == 512 && writes == 1: // the second write
					cqe.Res, writes = 0, 2
				}
			}
		}
		c := e.start(Options{ArenaSize: -1}, q)
		buf := make([]byte, 16384)
		eof := make([]byte, 8192)
		for i := range eof {
			eof[i] = 0xee
		}
		w1 := bytes.Repeat([]byte{0xab}, 512)
		w2 := bytes.Repeat([]byte{0xcd}, 512)
		cnt := newCounter()
		onOwner(t, c, hang, func() {
			c.Read(f, buf, off, cnt, 1)
			c.WaitWhile(func() bool { return cnt.n < 1 })
			c.Read(f, eof, 64*1024-4096, cnt, 2) // half of it is past EOF
			c.WaitWhile(func() bool { return cnt.n < 2 })
			c.Write(f, w1, 0, cnt, 3) // short (100 bytes), then the rest
			c.WaitWhile(func() bool { return cnt.n < 3 })
			c.Write(f, w2, 4096, cnt, 4) // no progress: ENOSPC
			c.WaitWhile(func() bool { return cnt.n < 4 })
		})
		if cnt.errs[1] != nil || cnt.res[1] != 16384 || !bytes.Equal(buf, pattern(make([]byte, 16384), off)) {
			t.Fatalf("short reads: res %d err %v, data ok %v", cnt.res[1], cnt.errs[1], bytes.Equal(buf, pattern(make([]byte, 16384), off)))
		}
		reads := q.ops(uring.IORING_OP_READ, f)
		if len(reads) < 3 || reads[0].Off != off || reads[1].Off != off+1024 || reads[2].Off != off+3072 || reads[2].Len != 16384-3072 {
			t.Fatalf("resubmissions: %d reads, offsets/lens %v", len(reads), offLens(reads))
		}
		want := append(pattern(make([]byte, 4096), 64*1024-4096), make([]byte, 4096)...)
		if cnt.errs[2] != nil || cnt.res[2] != 8192 || !bytes.Equal(eof, want) {
			t.Fatalf("EOF read: res %d err %v, tail zero-filled %v", cnt.res[2], cnt.errs[2], bytes.Equal(eof, want))
		}
		if cnt.errs[3] != nil || cnt.res[3] != 512 || !bytes.Equal(e.fileBytes(f, fq, 0, 512), w1) {
			t.Fatalf("short write: res %d err %v, on disk ok %v", cnt.res[3], cnt.errs[3], bytes.Equal(e.fileBytes(f, fq, 0, 512), w1))
		}
		if !errors.Is(cnt.errs[4], syscall.ENOSPC) {
			t.Fatalf("write without progress: err %v, want ENOSPC", cnt.errs[4])
		}
	})
}

func offLens(sqes []uring.SQE) [][2]uint64 {
	var out [][2]uint64
	for _, s := range sqes {
		out = append(out, [2]uint64{s.Off, uint64(s.Len)})
	}
	return out
}

// U5: a completion delivered during the submit call itself (the fake and
// the kernel both complete a NOP inline in io_uring_enter) does not run the
// callback inside the issuing call, runs it exactly once, and a coroutine
// waiting for it is resumed exactly once.
func TestU5SynchronousCompletion(t *testing.T) {
	forEachRing(t, func(t *testing.T, e *env) {
		q, _ := e.queue(64, uringtest.Options{})
		c := e.start(Options{}, q)
		cnt := newCounter()
		var resumes, after int
		onOwner(t, c, hang, func() {
			c.Nop(cnt, 1)
			if q.Ready() == 0 {
				t.Errorf("NOP did not complete inline; the test needs it to")
			}
			if cnt.n != 0 {
				t.Errorf("Done ran inside the issuing call")
			}
			c.WaitWhile(func() bool { return cnt.n == 0 })

			done := false
			c.Go(func(co *Co) {
				c.Nop(DoneFunc(func(uint64, int, error) { done = true; co.Wake() }), 2)
				for !done {
					resumes++
					co.Yield()
				}
				after++
			})
			c.WaitWhile(func() bool { return after == 0 })
			for i := 0; i < 10; i++ {
				c.Poll(false)
			}
		})
		if cnt.n != 1 || resumes != 1 || after != 1 {
			t.Fatalf("Done ran %d times, coroutine parked %d times and finished %d times; want 1, 1, 1", cnt.n, resumes, after)
		}
	})
}

// U6: a completion callback that performs a synchronous read on the same
// loop returns, both when the awaited CQE was reaped in the same batch and
// when it lands in the CQ during the nested wait.
func TestU6NestedWaitInCompletion(t *testing.T) {
	forEachRing(t, func(t *testing.T, e *env) {
		q, fq := e.queue(64, uringtest.Options{})
		c := e.start(Options{}, q)
		f := e.testFile(3*4096, fq)
		a, b, cbuf := make([]byte, 4096), make([]byte, 4096), make([]byte, 4096)
		var aDone, bDone, cDone, nested bool
		onOwner(t, c, hang, func() {
			dB := DoneFunc(func(uint64, int, error) { bDone = true })
			dC := DoneFunc(func(uint64, int, error) { cDone = true })
			dA := DoneFunc(func(uint64, int, error) {
				c.WaitWhile(func() bool { return !bDone }) // B completed in the same batch
				c.Read(f, cbuf, 8192, dC, 3)               // C completes during the nested wait
				c.WaitWhile(func() bool { return !cDone })
				nested = true
				aDone = true
			})
			c.Plug()
			c.Read(f, a, 0, dA, 1)
			c.Read(f, b, 4096, dB, 2)
			c.Unplug()
			c.WaitWhile(func() bool { return !aDone })
		})
		if !nested || !bytes.Equal(cbuf, pattern(make([]byte, 4096), 8192)) || !bytes.Equal(b, pattern(make([]byte, 4096), 4096)) {
			t.Fatalf("nested waits: returned %v, data ok %v %v", nested,
				bytes.Equal(b, pattern(make([]byte, 4096), 4096)), bytes.Equal(cbuf, pattern(make([]byte, 4096), 8192)))
		}
	})
}

// U7: waiting inside a batch section for requests prepared in it (the
// aio-level shape of "drain from within the section's owner") completes,
// because every blocking wait submits what is prepared first; the section
// stays open.
func TestU7WaitInsidePlugFlushes(t *testing.T) {
	forEachRing(t, func(t *testing.T, e *env) {
		q, fq := e.queue(64, uringtest.Options{})
		c := e.start(Options{}, q)
		f := e.testFile(16*4096, fq)
		cnt := newCounter()
		depth := -1
		onOwner(t, c, hang, func() {
			c.Plug()
			for i := 0; i < 16; i++ {
				c.Read(f, make([]byte, 4096), int64(i)*4096, cnt, uint64(i))
			}
			c.WaitWhile(func() bool { return cnt.n < 16 })
			depth = c.Plugged()
			c.Unplug()
		})
		if cnt.n != 16 || depth != 1 {
			t.Fatalf("%d of 16 completed, plug depth %d after the wait (want 16, 1)", cnt.n, depth)
		}
	})
}

// U8 (aio level): a "node" is moved between two IOThread Contexts 100 times
// while a front-end goroutine submits reads continuously. The block layer's
// pieces are modelled directly: admission counts the request in-flight
// before looking at the node's Context and parks it while the node is
// quiesced (front-end queuing); the switch, on the main Context, quiesces,
// waits in WaitWhile for in-flight to reach zero (woken by Kick from each
// completion), changes the Context and resumes the parked requests. No
// request may be lost, each must run on the ring of the Context the node
// had when it was admitted, and none may reach the old ring after a switch.
func TestU8LoopSwitch(t *testing.T) {
	forEachRing(t, func(t *testing.T, e *env) {
		checkLeak := leakCheck(t)
		main := e.start(Options{Name: "main", Main: true}, nil)
		q1, f1q := e.queue(64, uringtest.Options{MaxDelay: 2, Reorder: true})
		q2, f2q := e.queue(64, uringtest.Options{MaxDelay: 2, Reorder: true})
		io := []*Context{e.start(Options{Name: "io1"}, q1), e.start(Options{Name: "io2"}, q2)}
		files := []*File{e.testFile(1<<20, f1q), nil}
		if e.kind == "fake" {
			files[1] = NewFileFd(int(f2q.AttachFile(f1q.MemFile(int32(files[0].Fd())))), nil)
		} else {
			files[1] = files[0]
		}

		type node struct {
			cur      atomic.Int32 // index into io
			epoch    atomic.Int64 // bumped by each switch
			inflight atomic.Int64
			quiesced atomic.Bool
			mu       sync.Mutex
			parked   []func()
		}
		var nd node
		var issued, completed, wrongRing, afterSwitch atomic.Int64
		var submit func(id int64)
		submit = func(id int64) {
			nd.inflight.Add(1)
			if nd.quiesced.Load() {
				nd.mu.Lock()
				if nd.quiesced.Load() {
					nd.parked = append(nd.parked, func() { submit(id) })
					nd.mu.Unlock()
					nd.inflight.Add(-1)
					main.Kick()
					return
				}
				nd.mu.Unlock()
			}
			idx, ep := nd.cur.Load(), nd.epoch.Load()
			ctx := io[idx]
			ctx.Schedule(func() {
				buf := make([]byte, 512)
				ctx.Read(files[idx], buf, (id%2048)*512, DoneFunc(func(_ uint64, res int, err error) {
					if !ctx.InContext() || nd.cur.Load() != idx {
						wrongRing.Add(1)
					}
					if nd.epoch.Load() != ep {
						afterSwitch.Add(1) // completed after the node moved away
					}
					if err != nil || res != 512 || !bytes.Equal(buf, pattern(make([]byte, 512), (id%2048)*512)) {
						wrongRing.Add(1)
					}
					completed.Add(1)
					nd.inflight.Add(-1)
					main.Kick()
				}), uint64(id))
			})
		}

		stop := make(chan struct{})
		genDone := make(chan struct{})
		go func() { // the front end: closed-loop, bounded in-flight
			defer close(genDone)
			for id := int64(0); ; id++ {
				select {
				case <-stop:
					return
				default:
				}
				for issued.Load()-completed.Load() > 64 {
					time.Sleep(10 * time.Microsecond)
				}
				issued.Add(1)
				submit(id)
			}
		}()

		const switches = 100
		onOwner(t, main, hang, func() {
			for s := 0; s < switches; s++ {
				nd.quiesced.Store(true)
				main.WaitWhile(func() bool { return nd.inflight.Load() > 0 })
				nd.epoch.Add(1)
				nd.cur.Store(1 - nd.cur.Load())
				nd.mu.Lock()
				nd.quiesced.Store(false)
				parked := nd.parked
				nd.parked = nil
				nd.mu.Unlock()
				for _, p := range parked {
					p()
				}
				// Let some load run on the new Context before the next move
				// (every completion Kicks main).
				target := completed.Load() + 5
				main.WaitWhile(func() bool { return completed.Load() < target })
			}
		})
		close(stop)
		<-genDone
		onOwner(t, main, hang, func() {
			main.WaitWhile(func() bool { return nd.inflight.Load() > 0 || completed.Load() < issued.Load() })
		})
		if completed.Load() != issued.Load() || wrongRing.Load() != 0 || afterSwitch.Load() != 0 {
			t.Fatalf("issued %d, completed %d, on the wrong ring or with bad data %d, completed after a switch %d",
				issued.Load(), completed.Load(), wrongRing.Load(), afterSwitch.Load())
		}
		if issued.Load() < switches {
			t.Fatalf("only %d requests during %d switches: no load", issued.Load(), switches)
		}
		for _, c := range append(io, main) {
			if rep, err := c.Stop(); err != nil || rep.Leaked() {
				t.Fatalf("Stop(%s): %v %+v", c.name, err, rep)
			}
		}
		checkLeak()
	})
}

// U9: a CQ far smaller than a burst of completions overflows (into the
// kernel's NODROP backlog, or the fake's); every completion is still
// delivered exactly once.
func TestU9CQOverflow(t *testing.T) {
	forEachRing(t, func(t *testing.T, e *env) {
		const n = 200
		q, fq := e.queue(16, uringtest.Options{CQEntries: 16}, uring.WithCQEntries(16))
		c := e.start(Options{Entries: 16}, q)
		cnt := newCounter()
		overflowed := 0
		onOwner(t, c, hang, func() {
			c.Plug()
			for i := 0; i < n; i++ {
				c.Nop(cnt, uint64(i))
			}
			c.Unplug()
			c.WaitWhile(func() bool { return cnt.n < n })
			if fq != nil {
				overflowed = fq.Stats().Overflowed // the fake belongs to the owner
			}
		})
		if cnt.n != n || len(cnt.byTag) != n {
			t.Fatalf("%d completions of %d distinct tags, want %d", cnt.n, len(cnt.byTag), n)
		}
		if fq != nil && overflowed == 0 {
			t.Fatal("the CQ never overflowed; the test did not test anything")
		}
	})
}

// U10 (aio level): 256 reads outstanding on an IOThread Context at once;
// the main Context waits with WaitWhile(outstanding > 0), which polls only
// main's own loop and is woken by the Kick each completion issues after its
// decrement. It returns only after every CQE was reaped and every callback
// ran (the block layer's "drain returns with inFlight == 0").
func TestU10MainWaitsForIOThreadOps(t *testing.T) {
	forEachRing(t, func(t *testing.T, e *env) {
		const n = 256
		main := e.start(Options{Name: "main", Main: true}, nil)
		q, fq := e.queue(128, uringtest.Options{MaxDelay: 8, Reorder: true})
		io := e.start(Options{Name: "io"}, q)
		f := e.testFile(n*4096, fq)
		var outstanding atomic.Int64
		ran := make([]atomic.Int32, n)
		var maxOut int
		var waited bool
		var ioLeft int
		started := false
		work := func() {
			io.Plug()
			for i := 0; i < n; i++ {
				io.Read(f, make([]byte, 4096), int64(i)*4096, DoneFunc(func(tag uint64, res int, err error) {
					if err == nil && res == 4096 {
						ran[tag].Add(1)
					}
					outstanding.Add(-1)
					main.Kick()
				}), uint64(i))
			}
			maxOut = io.Outstanding()
			io.Unplug()
		}
		onOwner(t, main, hang, func() {
			outstanding.Store(n)
			waited = io.WaitWhile(func() bool {
				busy := outstanding.Load() > 0
				if !started { // start the I/O only once main is registered as a waiter
					started = true
					io.Schedule(work)
				}
				return busy
			})
		})
		onOwner(t, io, hang, func() { ioLeft = io.Outstanding() })
		for i := range ran {
			if ran[i].Load() != 1 {
				t.Fatalf("op %d completed %d times", i, ran[i].Load())
			}
		}
		if !waited || maxOut != n || ioLeft != 0 {
			t.Fatalf("main waited %v, max outstanding %d (want %d), left %d", waited, maxOut, n, ioLeft)
		}
	})
}
