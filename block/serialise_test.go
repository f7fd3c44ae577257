package block_test

import (
	"fmt"
	"github.com/ringblk/ringblk/aio"
	"sync"
	"testing"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
)

// TestAlignedRequestsSkipTrackerLock: on a node that needs alignment,
// aligned reads and writes at queue depth 8 never take the serialisation
// tracker's mutex (the lock-free fast path through the node's gate), and
// the gate is empty once they completed; the first unaligned write does
// take it.
func TestAlignedRequestsSkipTrackerLock(t *testing.T) {
	e := blocktest.NewEnv(t, 0)
	mem := blocktest.NewMem(1 << 20)
	mem.Align = 4096
	n := e.Open(mem, block.Options{Name: "mem", Align: 4096})
	fe := e.FrontEnd("fe", n, block.FrontEndOptions{})
	defer n.Unref()
	defer fe.Close()

	const depth, total = 8, 2000
	b := &qdReader{q: fe.Queue(e.Main)}
	for i := 0; i < depth; i++ {
		b.bufs = append(b.bufs, make([]byte, 4096))
	}
	e.OnMain(func() {
		b.remaining = total
		for i := 0; i < depth; i++ {
			b.remaining--
			b.inflight++
			if i%2 == 0 {
				b.q.Write(b.bufs[i], int64(i)*4096, 0, b, uint64(i))
			} else {
				b.q.Read(b.bufs[i], int64(i)*4096, b, uint64(i))
			}
		}
		e.Main.WaitWhile(func() bool { return b.inflight > 0 })
	})
	if b.errs != 0 {
		t.Fatalf("%d I/O errors", b.errs)
	}
	if got := block.TrackerLocks(n); got != 0 {
		t.Errorf("%d aligned requests took the tracker mutex %d times, want 0 (aligned I/O must not lock)", total, got)
	}
	if g := block.SerialGate(n); g != 0 {
		t.Errorf("gate %#x after every request completed, want 0", g)
	}
	if _, err := n.WriteAt([]byte{1}, 5); err != nil {
		t.Fatal(err)
	}
	if got := block.TrackerLocks(n); got == 0 {
		t.Errorf("an unaligned (RMW) write did not take the tracker mutex")
	}
	if g := block.SerialGate(n); g != 0 {
		t.Errorf("gate %#x after the RMW write completed, want 0", g)
	}
	if mem.Bad != 0 {
		t.Errorf("driver saw %d misaligned requests", mem.Bad)
	}
}

// holdDriver keeps every request until release is called, and records the
// order in which requests reached it.
type holdDriver struct {
	block.DriverBase
	mu   sync.Mutex
	data []byte
	held []*block.Request
	seen []string
}

func (d *holdDriver) Length(*block.Node) (int64, error) { return int64(len(d.data)), nil }

func (d *holdDriver) take(r *block.Request) {
	d.mu.Lock()
	d.held = append(d.held, r)
	d.seen = append(d.seen, r.Op.String())
	d.mu.Unlock()
}
func (d *holdDriver) Read(r *block.Request)  { d.take(r) }
func (d *holdDriver) Write(r *block.Request) { d.take(r) }

// release completes the oldest held request (performing its data transfer).
func (d *holdDriver) release() bool {
	d.mu.Lock()
	if len(d.held) == 0 {
		d.mu.Unlock()
		return false
	}
	r := d.held[0]
	d.held = d.held[1:]
	off := r.Off
	for _, b := range r.Iov {
		if r.Op == block.OpRead {
			copy(b, d.data[off:])
		} else {
			copy(d.data[off:], b)
		}
		off += int64(len(b))
	}
	d.mu.Unlock()
	r.Complete(nil)
	return true
}

func (d *holdDriver) nheld() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.held)
}

// TestSerialisingWaitsForFastPath: an RMW write waits for an aligned write
// that passed the gate untracked and is still in flight (so the RMW reads
// the new data and does not undo it), and an aligned read submitted while
// the RMW is in flight waits behind it; the gate is empty afterwards.
func TestSerialisingWaitsForFastPath(t *testing.T) {
	e := blocktest.NewEnv(t, 0)
	d := &holdDriver{data: make([]byte, 8192)}
	n := e.Open(d, block.Options{Name: "hold", Align: 512})
	defer n.Unref()
	pool := e.G.Pool(e.Main)
	var order []string
	submit := func(op block.Op, buf []byte, off int64, name string) {
		r := pool.Get()
		r.Op, r.Off = op, off
		r.SetBuf(buf)
		n.Submit(r, &funcDone{fn: func(err error) {
			if err != nil {
				t.Errorf("%s: %v", name, err)
			}
			order = append(order, name)
		}})
	}
	aligned := make([]byte, 512)
	for i := range aligned {
		aligned[i] = 0xaa
	}
	readBuf := make([]byte, 512)
	e.OnMain(func() {
		submit(block.OpWrite, aligned, 0, "aligned-write") // fast path, held
		submit(block.OpWrite, []byte{0x55}, 10, "rmw")     // must wait for it
		submit(block.OpRead, readBuf, 0, "aligned-read")   // must wait for the RMW
		if g := block.SerialGate(n); g != 1<<32|1 {
			t.Errorf("gate %#x with one fast request and one serialising request in flight, want %#x", g, uint64(1<<32|1))
		}
		if k := d.nheld(); k != 1 {
			t.Fatalf("driver holds %d requests, want only the aligned write (%v): the RMW did not wait", k, d.seen)
		}
		for step := 0; step < 10 && len(order) < 3; step++ {
			if !d.release() {
				e.Main.WaitWhile(func() bool { return d.nheld() == 0 && len(order) < 3 })
			}
		}
	})
	want := []string{"write", "read", "write", "read"}
	if len(d.seen) != len(want) {
		t.Fatalf("driver saw %v, want %v", d.seen, want)
	}
	for i := range want {
		if d.seen[i] != want[i] {
			t.Fatalf("driver saw %v, want %v (aligned write, RMW read+write, then the aligned read)", d.seen, want)
		}
	}
	if len(order) != 3 || order[0] != "aligned-write" || order[1] != "rmw" || order[2] != "aligned-read" {
		t.Fatalf("completion order %v", order)
	}
	if d.data[10] != 0x55 || d.data[9] != 0xaa || d.data[11] != 0xaa {
		t.Errorf("bytes 9..11 = %x %x %x, want aa 55 aa: the RMW lost the aligned write", d.data[9], d.data[10], d.data[11])
	}
	if readBuf[10] != 0x55 || readBuf[0] != 0xaa {
		t.Errorf("the aligned read ran before the RMW write finished (byte 10 = %x)", readBuf[10])
	}
	if g := block.SerialGate(n); g != 0 {
		t.Errorf("gate %#x after every request completed, want 0", g)
	}
}

// TestMixedAlignedAndRMWTwoContexts: two Contexts interleave aligned reads
// and writes (fast path while no RMW is in flight, tracked while one is)
// with unaligned one-byte writes to distinct bytes of the same block; no
// RMW loses another's byte, nothing hangs, and the gate ends empty.
func TestMixedAlignedAndRMWTwoContexts(t *testing.T) {
	e := blocktest.NewEnv(t, 1)
	mem := blocktest.NewMem(8192)
	mem.Align = 512
	n := e.Open(mem, block.Options{Name: "mem", Align: 512})
	defer n.Unref()
	fe := e.FrontEnd("fe", n, block.FrontEndOptions{AllowContextChange: true})
	defer fe.Close()
	const ops = 400
	done := make(chan struct{}, 2)
	for i, ctx := range []*aio.Context{e.Main, e.IO[0]} {
		q := fe.Queue(ctx)
		blk := make([]byte, 512)
		ctx.Schedule(func() {
			left := ops
			var d *funcDone
			d = &funcDone{fn: func(err error) {
				if err != nil {
					t.Errorf("request: %v", err)
				}
				left--
				if left == 0 {
					done <- struct{}{}
				}
			}}
			for k := 0; k < ops; k++ {
				switch k % 4 {
				case 0:
					q.Write([]byte{byte(i + 1)}, int64(i*7+k%5), 0, d, 0)
				case 1:
					q.Read(blk, 0, d, 0)
				case 2:
					q.Write(blk, 1024, 0, d, 0)
				default:
					q.Read(blk, 4096, d, 0)
				}
			}
		})
	}
	<-done
	<-done
	for i := 0; i < 2; i++ {
		for k := 0; k < 5; k++ {
			if got := mem.Data[i*7+k]; got != byte(i+1) {
				t.Fatalf("byte %d = %d, want %d: an RMW lost a concurrent write", i*7+k, got, i+1)
			}
		}
	}
	if g := block.SerialGate(n); g != 0 {
		t.Errorf("gate %#x after every request completed, want 0", g)
	}
	if mem.Bad != 0 {
		t.Errorf("driver saw %d misaligned requests", mem.Bad)
	}
}

// BenchmarkAlignedRequests: aligned 4 KiB reads at queue depth 32 through a
// front end and a null node, on a node without alignment and on one that
// needs 4096 (O_DIRECT): the second pays only the gate's two atomic adds
// (before the gate it took the tracker mutex twice per request and scanned
// the in-flight list). The ctx=2 rows run two Contexts (the main one and
// an IOThread, two cores here) on the same node, QD 32 each; ns/op is wall
// time over the requests of both.
func BenchmarkAlignedRequests(b *testing.B) {
	for _, c := range []struct{ align, ctxs int }{{1, 1}, {4096, 1}, {1, 2}, {4096, 2}} {
		b.Run(fmt.Sprintf("align=%d/ctx=%d", c.align, c.ctxs), func(b *testing.B) {
			e := blocktest.NewEnv(b, c.ctxs-1)
			n := e.Open(&blocktest.Null{Size: 1 << 20}, block.Options{Name: "null", Align: c.align})
			fe := e.FrontEnd("fe", n, block.FrontEndOptions{AllowContextChange: true})
			n.Unref()
			defer fe.Close()
			const depth = 32
			ctxs := append([]*aio.Context{e.Main}, e.IO...)
			readers := make([]*qdReader, len(ctxs))
			for k, ctx := range ctxs {
				r := &qdReader{q: fe.Queue(ctx)}
				for i := 0; i < depth; i++ {
					r.bufs = append(r.bufs, make([]byte, 4096))
				}
				readers[k] = r
			}
			run := func(r *qdReader, ctx *aio.Context, total int) {
				r.remaining = total
				for i := 0; i < depth && r.remaining > 0; i++ {
					r.remaining--
					r.inflight++
					r.q.Read(r.bufs[i], int64(i)*4096, r, uint64(i))
				}
				ctx.WaitWhile(func() bool { return r.inflight > 0 })
			}
			b.ResetTimer()
			var wg sync.WaitGroup
			for k := 1; k < len(ctxs); k++ {
				wg.Add(1)
				ctx, r := ctxs[k], readers[k]
				ctx.Schedule(func() {
					defer wg.Done()
					run(r, ctx, b.N/len(ctxs))
				})
			}
			e.OnMain(func() { run(readers[0], e.Main, b.N/len(ctxs)) })
			wg.Wait()
			b.StopTimer()
			if locks := block.TrackerLocks(n); locks != 0 {
				b.Fatalf("aligned reads took the tracker mutex %d times", locks)
			}
		})
	}
}
