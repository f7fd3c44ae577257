package block_test

import (
	"bytes"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
)

// TestAdmissionBoundsMemory submits far more requests than a Context's cap
// — from 64 coroutines on the IOThread and 8 goroutines outside it, with
// drained sections of the root in the middle — and checks that the op-slot
// table never grows past its cap, that admission never passed its limit but
// did make requests wait, and that every request completed with its data.
func TestAdmissionBoundsMemory(t *testing.T) {
	const slotCap = 64
	e := blocktest.NewEnvOpts(t, blocktest.EnvOptions{IOThreads: 1, MaxSlots: slotCap})
	io := e.IO[0]
	const blk, perWorker = 512, 24
	const coroutines, goroutines = 64, 8
	workers := coroutines + goroutines
	mem := blocktest.NewMem(int64(workers * perWorker * blk))
	mem.ViaRing = true // one ring op per admitted request
	n := e.Open(mem, block.Options{Name: "mem", Context: io})
	fe := e.FrontEnd("fe", n, block.FrontEndOptions{Context: io})
	n.Unref()

	pool := e.G.Pool(io)
	var limit int
	e.On(io, func() { limit = pool.MaxRequests() })
	if limit != slotCap/2 {
		t.Fatalf("default admission limit %d, want half the slot cap (%d)", limit, slotCap/2)
	}

	q := fe.Queue(io)
	// Worker w owns blocks [w*perWorker, (w+1)*perWorker): it writes each
	// with its own pattern, then reads it back and compares.
	// Coroutines use the IOThread's queue and yield until their request
	// completes; goroutines use the front end's synchronous calls, which
	// marshal onto the IOThread.
	var mu sync.Mutex
	var bad []string
	work := func(w int, co *aio.Co) {
		buf := make([]byte, blk)
		got := make([]byte, blk)
		writeAt, readAt := fe.WriteAt, fe.ReadAt
		if co != nil {
			rw := func(op block.Op, p []byte, off int64) (int, error) {
				d := &coDone{co: co}
				r := q.Get()
				r.Op, r.Off = op, off
				r.SetBuf(p)
				q.Submit(r, d)
				for !d.done {
					co.Yield()
				}
				return len(p), d.err
			}
			writeAt = func(p []byte, off int64) (int, error) { return rw(block.OpWrite, p, off) }
			readAt = func(p []byte, off int64) (int, error) { return rw(block.OpRead, p, off) }
		}
		for i := 0; i < perWorker; i++ {
			off := int64((w*perWorker + i) * blk)
			for j := range buf {
				buf[j] = byte(w*31 + i*7 + j)
			}
			if _, err := writeAt(buf, off); err != nil {
				mu.Lock()
				bad = append(bad, fmt.Sprintf("worker %d write %d: %v", w, i, err))
				mu.Unlock()
				return
			}
			if _, err := readAt(got, off); err != nil || !bytes.Equal(got, buf) {
				mu.Lock()
				bad = append(bad, fmt.Sprintf("worker %d read %d: err %v, data equal %t", w, i, err, bytes.Equal(got, buf)))
				mu.Unlock()
				return
			}
		}
	}

	var wg sync.WaitGroup
	var finished atomic.Int32
	io.Schedule(func() {
		for w := 0; w < coroutines; w++ {
			io.Go(func(co *aio.Co) {
				defer finished.Add(1)
				work(w, co)
			})
		}
	})
	for w := coroutines; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer finished.Add(1)
			work(w, nil)
		}()
	}
	// Drained sections of the root while requests run and wait for room,
	// until every worker has finished (at least five).
	drains, drainedMidway, sawParked := 0, 0, 0
	for drains < 5 || int(finished.Load()) < workers {
		mid := int(finished.Load()) < workers
		e.OnMain(func() {
			n.DrainedBegin()
			if k := n.InFlight(); k != 0 {
				t.Errorf("node has %d requests in flight inside a drained section", k)
			}
			// Hold the section open a moment (at most 2 ms) so that
			// workers running on other threads arrive while it is
			// drained: a section that opens and closes between two of
			// their submissions parks nothing (CI at load 2 saw 282
			// such sections in a row).
			for until := time.Now().Add(2 * time.Millisecond); fe.ParkedCount() == 0 && time.Now().Before(until); {
				runtime.Gosched()
			}
			if fe.ParkedCount() > 0 {
				sawParked++
			}
			n.DrainedEnd()
		})
		drains++
		if mid {
			drainedMidway++
		}
		if drains > 100000 {
			t.Fatal("workers did not finish (hang)")
		}
	}
	if drainedMidway == 0 || sawParked == 0 {
		t.Errorf("%d drains overlapped the workers, %d saw parked requests; want both > 0", drainedMidway, sawParked)
	}
	wg.Wait()
	for _, b := range bad {
		t.Error(b)
	}

	var st aio.Stats
	var admitted, peak, waiting int
	var waits int64
	e.On(io, func() {
		st = io.Stats()
		admitted, peak, waiting, waits = pool.AdmissionStats()
	})
	if st.SlotTable > slotCap || st.SlotsOverCap != 0 {
		t.Errorf("op-slot table %d slots (%d allocations over the cap), want at most %d", st.SlotTable, st.SlotsOverCap, slotCap)
	}
	if peak > limit || peak == 0 {
		t.Errorf("at most %d requests admitted at once, want 1..%d", peak, limit)
	}
	// The pool holds the admitted requests and those their submitters
	// have outstanding (one per worker here), nothing beyond.
	if a := pool.Allocated(); a > workers {
		t.Errorf("request pool grew to %d requests for %d workers with one request each", a, workers)
	}
	if waits == 0 {
		t.Errorf("no request waited for room: %d workers did not reach the cap", workers)
	}
	if admitted != 0 || waiting != 0 || fe.InFlight() != 0 {
		t.Errorf("after the run: %d admitted, %d waiting, %d in flight; want 0", admitted, waiting, fe.InFlight())
	}
	t.Logf("slot table %d, peak admitted %d of %d, %d requests waited for room, %d drains (%d while workers ran)", st.SlotTable, peak, limit, waits, drains, drainedMidway)
}

// coDone wakes a coroutine when its request completes.
type coDone struct {
	co   *aio.Co
	done bool
	err  error
}

func (d *coDone) RequestDone(_ *block.Request, err error) {
	d.done, d.err = true, err
	d.co.Wake()
}

// TestAdmissionWaitZeroAllocs: requests that wait for room (queue depth 32
// against an admission limit of 4) allocate nothing once the pool is warm.
func TestAdmissionWaitZeroAllocs(t *testing.T) {
	skipAllocBudget(t)
	e := blocktest.NewEnv(t, 0)
	mem := blocktest.NewMem(1 << 20)
	mem.ViaRing = true
	n := e.Open(mem, block.Options{Name: "mem"})
	fe := e.FrontEnd("fe", n, block.FrontEndOptions{})
	n.Unref()

	const depth, total = 32, 5000
	b := &qdReader{q: fe.Queue(e.Main)}
	for i := 0; i < depth; i++ {
		b.bufs = append(b.bufs, make([]byte, 4096))
	}
	run := func() {
		b.remaining = total
		for i := 0; i < depth; i++ {
			b.remaining--
			b.inflight++
			b.q.Read(b.bufs[i], int64(i)*4096, b, uint64(i))
		}
		e.Main.WaitWhile(func() bool { return b.inflight > 0 })
	}
	pool := e.G.Pool(e.Main)
	var perRun float64
	var peak int
	var waits int64
	e.OnMain(func() {
		pool.SetMaxRequests(4)
		run()
		perRun = testing.AllocsPerRun(5, run)
		_, peak, _, waits = pool.AdmissionStats()
	})
	if b.errs != 0 {
		t.Fatalf("%d read errors", b.errs)
	}
	if peak > 4 || waits == 0 {
		t.Fatalf("peak admitted %d (limit 4), %d waits: the limit did not bind", peak, waits)
	}
	// The WaitWhile closure is the only allocation a run may make.
	if perRun > 2 {
		t.Errorf("%.0f allocations for %d reads that waited for room", perRun, total)
	}
}

// TestAdmissionNestedSyncRead: a completion callback that reads
// synchronously through the same front end (U6's shape) at an admission
// limit of one does not wait for its own admission: the finished request
// leaves the admitted set before its callback runs.
func TestAdmissionNestedSyncRead(t *testing.T) {
	e := blocktest.NewEnv(t, 0)
	mem := blocktest.NewMem(1 << 20)
	mem.ViaRing = true
	copy(mem.Data[4096:], "nested")
	n := e.Open(mem, block.Options{Name: "mem"})
	fe := e.FrontEnd("fe", n, block.FrontEndOptions{})
	n.Unref()
	q := fe.Queue(e.Main)

	finished := make(chan error, 1)
	go e.OnMain(func() {
		e.G.Pool(e.Main).SetMaxRequests(1)
		var nestedErr error
		got := make([]byte, 6)
		done := false
		q.Read(make([]byte, 512), 0, doneFn(func(_ *block.Request, err error) {
			_, nestedErr = fe.ReadAt(got, 4096)
			done = true
		}), 0)
		e.Main.WaitWhile(func() bool { return !done })
		if nestedErr == nil && string(got) != "nested" {
			nestedErr = fmt.Errorf("nested read got %q", got)
		}
		finished <- nestedErr
	})
	select {
	case err := <-finished:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a synchronous read from a completion callback waited for its own admission (hang)")
	}
}
