package block_test

import (
	"bytes"
	"errors"
	"math/rand"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
)

// TestUnalignedRMWAndSplit: unaligned reads and writes on a node that needs
// 512-byte alignment and splits at 4 KiB reach the driver aligned and
// short enough, and the data matches a flat reference.
func TestUnalignedRMWAndSplit(t *testing.T) {
	e := blocktest.NewEnv(t, 0)
	const size = 64 << 10
	mem := blocktest.NewMem(size)
	mem.Align = 512
	n := e.Open(mem, block.Options{Name: "mem", Align: 512, MaxTransfer: 4096})
	defer n.Unref()
	ref := make([]byte, size)
	rng := rand.New(rand.NewSource(1))
	for i := 0; i < 200; i++ {
		off := rng.Int63n(size - 1)
		ln := 1 + rng.Int63n(min(size-off, 10000))
		buf := make([]byte, ln)
		rng.Read(buf)
		if _, err := n.WriteAt(buf, off); err != nil {
			t.Fatalf("write %d+%d: %v", off, ln, err)
		}
		copy(ref[off:], buf)
		roff := rng.Int63n(size - 1)
		rln := 1 + rng.Int63n(min(size-roff, 10000))
		got := make([]byte, rln)
		if _, err := n.ReadAt(got, roff); err != nil {
			t.Fatalf("read: %v", err)
		}
		if !bytes.Equal(got, ref[roff:roff+rln]) {
			t.Fatalf("read %d+%d after write %d+%d: data differs", roff, rln, off, ln)
		}
	}
	if mem.Bad != 0 || mem.MaxSeen > 4096 {
		t.Fatalf("driver saw %d misaligned requests, largest %d (max 4096)", mem.Bad, mem.MaxSeen)
	}
	if n.InFlight() != 0 {
		t.Fatalf("in-flight %d", n.InFlight())
	}
}

// TestOverlappingRMWSerialised: concurrent unaligned writes to the same
// block from two Contexts never lose each other's bytes.
func TestOverlappingRMWSerialised(t *testing.T) {
	e := blocktest.NewEnv(t, 1)
	mem := blocktest.NewMem(4096)
	n := e.Open(mem, block.Options{Name: "mem", Align: 512})
	defer n.Unref()
	fe := e.FrontEnd("fe", n, block.FrontEndOptions{AllowContextChange: true})
	defer fe.Close()
	const writes = 200
	done := make(chan struct{}, 2)
	for i, ctx := range []*aio.Context{e.Main, e.IO[0]} {
		q := fe.Queue(ctx)
		ctx.Schedule(func() {
			left := writes
			var d *funcDone
			d = &funcDone{fn: func(err error) {
				if err != nil {
					t.Errorf("write: %v", err)
				}
				left--
				if left == 0 {
					done <- struct{}{}
				}
			}}
			for k := 0; k < writes; k++ {
				// Byte i*7+k%5 of block 0: distinct bytes per writer.
				q.Write([]byte{byte(i + 1)}, int64(i*7+k%5), 0, d, 0)
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
}

// TestValidation: early errors and early successes complete through the
// callback like everything else.
func TestValidation(t *testing.T) {
	e := blocktest.NewEnv(t, 0)
	n := e.Open(blocktest.NewDriver(64<<10), block.Options{Name: "n", IgnoreDiscard: true})
	defer n.Unref()
	ro := e.Open(blocktest.NewDriver(64<<10), block.Options{Name: "ro", ReadOnly: true})
	defer ro.Unref()
	if _, err := n.ReadAt(make([]byte, 512), -2); !errors.Is(err, syscall.EIO) || !block.IsKind(err, block.OutOfBounds) {
		t.Fatalf("read at -2: %v", err)
	}
	if _, err := n.WriteAt(make([]byte, 512), 1<<62+(1<<62)-1); !errors.Is(err, syscall.EIO) {
		t.Fatalf("overflowing write: %v", err)
	}
	if err := n.Truncate(-2); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("truncate -2: %v", err)
	}
	if err := ro.Truncate(4096); !errors.Is(err, syscall.EACCES) {
		t.Fatalf("truncate read-only: %v", err)
	}
	if _, err := ro.WriteAt(make([]byte, 512), 0); !errors.Is(err, syscall.EACCES) {
		t.Fatalf("write read-only: %v", err)
	}
	if err := ro.Flush(); err != nil {
		t.Fatalf("flush read-only: %v (want early success)", err)
	}
	if err := n.Discard(0, 4096); err != nil {
		t.Fatalf("ignored discard: %v", err)
	}
	if n.InFlight() != 0 || ro.InFlight() != 0 {
		t.Fatal("in-flight after early completions")
	}
}

// TestFrontEndQueueFIFO (D15, bug classes 11–13): requests arriving while
// the front end is quiesced are parked without holding its count, resumed
// in order at drained end, each counted before it runs; a drain that
// begins again before they run waits for them.
func TestFrontEndQueueFIFO(t *testing.T) {
	e := blocktest.NewEnv(t, 0)
	mem := blocktest.NewMem(64 << 10)
	n := e.Open(mem, block.Options{Name: "n"})
	fe := e.FrontEnd("fe", n, block.FrontEndOptions{})
	n.Unref()
	defer fe.Close()
	q := fe.Queue(e.Main)
	var order []int
	var inflightWhileParked int64
	var parked int
	e.OnMain(func() {
		n.DrainedBegin()
		for i := 0; i < 5; i++ {
			i := i
			q.Write([]byte{byte(i)}, 0, 0, &funcDone{fn: func(error) { order = append(order, i) }}, 0)
		}
		inflightWhileParked = fe.InFlight()
		parked = fe.ParkedCount()
		n.DrainedEnd()
		// Resumed requests are counted before they run (D15) …
		if fe.InFlight() != 5 {
			t.Errorf("front end in-flight %d right after drained end, want 5", fe.InFlight())
		}
		// … so a drain that starts now waits until each has either run or
		// parked itself again; none slips past it to the node.
		n.DrainedBegin()
		if fe.InFlight() != 0 || fe.ParkedCount()+len(order) != 5 || mem.Ops != len(order) {
			t.Errorf("second drain: in-flight %d parked %d done %d driver ops %d", fe.InFlight(), fe.ParkedCount(), len(order), mem.Ops)
		}
		n.DrainedEnd()
		e.Main.WaitWhile(func() bool { return len(order) < 5 })
	})
	if inflightWhileParked != 0 || parked != 5 {
		t.Fatalf("while quiesced: in-flight %d parked %d, want 0/5", inflightWhileParked, parked)
	}
	for i, v := range order {
		if v != i {
			t.Fatalf("resume order %v, want FIFO", order)
		}
	}
	if mem.Data[0] != 4 {
		t.Fatalf("last write did not win: %d", mem.Data[0])
	}
}

// TestDisabledQueuingRunsWhileDrained: an internal front end's requests
// run during the drained section and the drain waits for them.
func TestDisabledQueuingRunsWhileDrained(t *testing.T) {
	e := blocktest.NewEnv(t, 0)
	n := e.Open(blocktest.NewMem(4096), block.Options{Name: "n"})
	fe := e.FrontEnd("fe", n, block.FrontEndOptions{DisableQueuing: true})
	n.Unref()
	defer fe.Close()
	n.DrainedBegin()
	if _, err := fe.WriteAt([]byte{1}, 0); err != nil {
		t.Fatal(err)
	}
	if fe.ParkedCount() != 0 {
		t.Fatal("request parked with queuing disabled")
	}
	n.DrainedEnd()
}

// TestThrottleOffWhileDrained (seed 003, bug class 15): requests waiting
// for a throttle timer run at once when the front end is drained.
func TestThrottleOffWhileDrained(t *testing.T) {
	e := blocktest.NewEnv(t, 0)
	n := e.Open(blocktest.NewMem(64<<10), block.Options{Name: "n"})
	fe := e.FrontEnd("fe", n, block.FrontEndOptions{})
	n.Unref()
	defer fe.Close()
	fe.SetThrottle(block.NewThrottleGroup("slow", block.ThrottleLimits{IOPSTotal: 1, IOPSTotalBurst: 1}, nil))
	q := fe.Queue(e.Main)
	done := 0
	var throttled int
	var took time.Duration
	e.OnMain(func() {
		for i := 0; i < 4; i++ {
			q.Write([]byte{1}, 0, 0, &funcDone{fn: func(error) { done++ }}, 0)
		}
		throttled = q.Throttled()
		start := time.Now()
		n.DrainedBegin()
		took = time.Since(start)
		n.DrainedEnd()
	})
	if throttled != 3 {
		t.Fatalf("%d requests throttled at 1 IOPS, want 3", throttled)
	}
	if done != 4 || took > 500*time.Millisecond {
		t.Fatalf("drain finished %d requests in %v: throttled requests waited for their timers", done, took)
	}
}

// TestMaxWriteZeroes: a node whose MaxWriteZeroes is set hands a
// write-zeroes request to the driver in pieces of that size, not of
// MaxTransfer (which still bounds writes): QEMU's max-pwrite-zeroes.
func TestMaxWriteZeroes(t *testing.T) {
	e := blocktest.NewEnv(t, 0)
	mem := blocktest.NewMem(1 << 20)
	n := e.Open(mem, block.Options{Name: "mem", Align: 512, MaxTransfer: 4096, MaxWriteZeroes: 256 << 10})
	defer n.Unref()
	if err := n.WriteZeroes(0, 512<<10, 0); err != nil {
		t.Fatal(err)
	}
	if mem.MaxSeen != 256<<10 || mem.Ops != 2 {
		t.Errorf("write-zeroes of 512 KiB: %d requests, largest %d; want 2 of 256 KiB", mem.Ops, mem.MaxSeen)
	}
	mem.MaxSeen, mem.Ops = 0, 0
	if _, err := n.WriteAt(make([]byte, 16<<10), 0); err != nil {
		t.Fatal(err)
	}
	if mem.MaxSeen != 4096 || mem.Ops != 4 {
		t.Errorf("write of 16 KiB: %d requests, largest %d; want 4 of 4 KiB", mem.Ops, mem.MaxSeen)
	}
}

// evMem is a Mem that records the debug events raised on its node.
type evMem struct {
	*blocktest.Mem
	mu  sync.Mutex
	evs []string
}

func (m *evMem) DebugEvent(ev block.DebugEvent) {
	m.mu.Lock()
	m.evs = append(m.evs, ev.String())
	m.mu.Unlock()
}

// TestRMWDebugEvents: a write the node read-modify-writes for its
// alignment raises QEMU's pwritev_rmw_* events on the node (iotest 077
// breaks on them when blkdebug is the node with the alignment): head
// and tail events for the ends inside an aligned block, before the read,
// the after_ events after it; an aligned write raises none.
func TestRMWDebugEvents(t *testing.T) {
	e := blocktest.NewEnv(t, 0)
	mem := &evMem{Mem: blocktest.NewMem(64 << 10)}
	n := e.Open(mem, block.Options{Name: "mem", Align: 4096})
	defer n.Unref()
	for _, c := range []struct {
		off, len int64
		want     string
	}{
		{0x1200, 0x200, "pwritev_rmw_head pwritev_rmw_tail pwritev_rmw_after_head pwritev_rmw_after_tail"},
		{0x2000, 0x200, "pwritev_rmw_tail pwritev_rmw_after_tail"},
		{0x3e00, 0x200, "pwritev_rmw_head pwritev_rmw_after_head"},
		{0x4000, 0x1000, ""},
	} {
		mem.mu.Lock()
		mem.evs = nil
		mem.mu.Unlock()
		if _, err := n.WriteAt(make([]byte, c.len), c.off); err != nil {
			t.Fatal(err)
		}
		mem.mu.Lock()
		got := strings.Join(mem.evs, " ")
		mem.mu.Unlock()
		if got != c.want {
			t.Errorf("write %#x+%#x: events %q, want %q", c.off, c.len, got, c.want)
		}
	}
}
