package host_test

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/host"
	"github.com/ringblk/ringblk/internal/invariants"
)

// ioFromGoroutines writes a distinct pattern per goroutine through the
// eventfd completion mode, several goroutines sharing one queue and others
// their own, then reads every block back through io.ReaderAt.
func ioFromGoroutines(t *testing.T, format string) {
	h := newHost(t, host.Options{Contexts: 2})
	const bs, per, workers = 4096, 64, 4
	p := image(t, h, format, bs*per*workers)
	d, err := h.OpenDevice(p, host.OpenOptions{Format: format})
	if err != nil {
		t.Fatal(err)
	}
	shared, err := d.Queue(host.QueueOptions{Depth: 32, Context: 0})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errc := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			q := shared
			if w%2 == 1 {
				own, err := d.Queue(host.QueueOptions{Depth: 8, Context: -1})
				if err != nil {
					errc <- err
					return
				}
				defer own.Close()
				q = own
			}
			bufs := make([][]byte, per)
			for i := range bufs {
				bufs[i] = pattern(make([]byte, bs), w*per+i)
			}
			next, done := 0, 0
			for done < per {
				for next < per {
					err := q.Write(bufs[next], int64((w*per+next)*bs), 0, uint64(w<<32|next))
					if errors.Is(err, host.ErrQueueFull) {
						break
					}
					if err != nil {
						errc <- err
						return
					}
					next++
				}
				// The shared queue's completions are everyone's: take
				// what is there and count ours; others count theirs.
				q.Wait(10 * time.Millisecond)
				for {
					c, ok := q.Next()
					if !ok {
						break
					}
					if c.Err != nil || c.Bytes != bs {
						errc <- fmt.Errorf("completion %#x: %v, %d bytes", c.UserData, c.Err, c.Bytes)
						return
					}
					owner := int(c.UserData >> 32)
					if owner == w {
						done++
					} else {
						pending.Add(owner, 1)
					}
				}
				done += pending.Take(w)
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	got := make([]byte, bs)
	for b := 0; b < per*workers; b++ {
		if _, err := d.ReadAt(got, int64(b*bs)); err != nil {
			t.Fatal(err)
		}
		mustEqual(t, fmt.Sprintf("%s block %d", format, b), got, pattern(make([]byte, bs), b))
	}
	st := d.Stats()
	if st.Write.Ops != per*workers || st.Write.Bytes != bs*per*workers || st.Write.Errors != 0 {
		t.Errorf("write stats %+v", st.Write)
	}
	if st.Read.Ops != per*workers || st.InFlight != 0 {
		t.Errorf("read ops %d in flight %d", st.Read.Ops, st.InFlight)
	}
	var sum uint64
	for _, n := range st.Write.Latency {
		sum += n
	}
	if sum != st.Write.Ops {
		t.Errorf("latency histogram holds %d of %d writes", sum, st.Write.Ops)
	}
	if err := shared.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
}

// pending hands completions taken by one goroutine from the shared queue
// to the goroutine that submitted them.
var pending = &handoff{m: map[int]int{}}

type handoff struct {
	mu sync.Mutex
	m  map[int]int
}

func (h *handoff) Add(w, n int) { h.mu.Lock(); h.m[w] += n; h.mu.Unlock() }
func (h *handoff) Take(w int) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := h.m[w]
	delete(h.m, w)
	return n
}

func TestRawIOFromGoroutines(t *testing.T)   { ioFromGoroutines(t, "raw") }
func TestQcow2IOFromGoroutines(t *testing.T) { ioFromGoroutines(t, "qcow2") }

// TestCallbackMode: completions arrive on the callback, with the user data,
// for every operation kind, vectored ones included.
func TestCallbackMode(t *testing.T) {
	h := newHost(t, host.Options{})
	p := image(t, h, "raw", 1<<20)
	d, err := h.OpenDevice(p, host.OpenOptions{Discard: "unmap"})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var got []host.Completion
	done := make(chan struct{}, 16)
	q, err := d.Queue(host.QueueOptions{OnComplete: func(c host.Completion) {
		mu.Lock()
		got = append(got, c)
		mu.Unlock()
		done <- struct{}{}
	}})
	if err != nil {
		t.Fatal(err)
	}
	a, b := pattern(make([]byte, 512), 1), pattern(make([]byte, 1024), 2)
	wait := func(n int) {
		for i := 0; i < n; i++ {
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("no completion")
			}
		}
	}
	if err := q.Writev([][]byte{a, b}, 4096, host.FUA, 1); err != nil {
		t.Fatal(err)
	}
	wait(1)
	ra, rb := make([]byte, 512), make([]byte, 1024)
	q.Plug()
	for _, err := range []error{q.Readv([][]byte{ra, rb}, 4096, 2), q.Flush(3), q.WriteZeroes(65536, 4096, host.MayUnmap, 4), q.Discard(131072, 65536, 5)} {
		if err != nil {
			t.Fatal(err)
		}
	}
	q.Unplug()
	wait(4)
	mustEqual(t, "readv", append(ra, rb...), append(a, b...))
	mu.Lock()
	defer mu.Unlock()
	var uds []uint64
	for _, c := range got {
		if c.Err != nil {
			t.Errorf("%v (%d): %v", c.Op, c.UserData, c.Err)
		}
		uds = append(uds, c.UserData)
	}
	slices.Sort(uds)
	if !slices.Equal(uds, []uint64{1, 2, 3, 4, 5}) {
		t.Errorf("user data %v", uds)
	}
	if st := d.Stats(); st.Flush.Ops != 1 || st.Discard.Ops != 1 || st.WriteZeroes.Ops != 1 || st.Read.Bytes != 1536 {
		t.Errorf("stats: flush %d discard %d zeroes %d read bytes %d", st.Flush.Ops, st.Discard.Ops, st.WriteZeroes.Ops, st.Read.Bytes)
	}
}

// TestQueueFullAndClosed: a queue refuses beyond its depth and after
// Close, with the contract's errors.
func TestQueueFullAndClosed(t *testing.T) {
	h := newHost(t, host.Options{})
	d := nullDevice(t, h)
	q, _ := d.Queue(host.QueueOptions{Depth: 2})
	buf := make([]byte, 512)
	q.Plug() // nothing reaches the Context: the slots stay taken
	if q.Read(buf, 0, 1) != nil || q.Read(buf, 0, 2) != nil {
		t.Fatal("two reads refused on a depth-2 queue")
	}
	if err := q.Read(buf, 0, 3); !errors.Is(err, host.ErrQueueFull) {
		t.Fatalf("third read: %v, want ErrQueueFull", err)
	}
	q.Unplug()
	for n := 0; n < 2; {
		if !q.Wait(10 * time.Second) {
			t.Fatal("no completion signalled")
		}
		for _, ok := q.Next(); ok; _, ok = q.Next() {
			n++
		}
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	if err := q.Read(buf, 0, 4); !isClosed(err) {
		t.Fatalf("read after close: %v", err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Queue(host.QueueOptions{}); !isClosed(err) {
		t.Fatalf("queue on a closed device: %v", err)
	}
}

// TestDrainedSectionWithIORunning: while goroutines keep submitting, a
// drained section ends with nothing in flight and nothing completing
// until it ends; the device callbacks run; I/O continues afterwards.
func TestDrainedSectionWithIORunning(t *testing.T) {
	h := newHost(t, host.Options{Contexts: 2})
	p := image(t, h, "raw", 1<<20)
	var begins, ends atomic.Int32
	d, err := h.OpenDevice(p, host.OpenOptions{Callbacks: host.DeviceCallbacks{
		DrainedBegin: func() { begins.Add(1) }, DrainedEnd: func() { ends.Add(1) },
	}})
	if err != nil {
		t.Fatal(err)
	}
	var completed atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 2; w++ {
		q, err := d.Queue(host.QueueOptions{Depth: 16, Context: w, OnComplete: func(c host.Completion) {
			if c.Err == nil {
				completed.Add(1)
			}
		}})
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 4096)
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if err := q.Read(buf, int64(i%256)*4096, 0); err != nil {
					runtime_Gosched()
				}
			}
		}()
	}
	for completed.Load() < 100 {
		time.Sleep(time.Millisecond)
	}
	for round := 0; round < 3; round++ {
		d.DrainedBegin()
		// The node's count, not the front end's: a submitter on another
		// Context holds a front-end count for the instant before it parks.
		if n := d.FrontEnd().Root().InFlight(); n != 0 {
			t.Fatalf("round %d: %d requests in flight on the node inside the drained section", round, n)
		}
		before := completed.Load()
		time.Sleep(20 * time.Millisecond)
		if after := completed.Load(); after != before {
			t.Fatalf("round %d: %d requests completed inside the drained section", round, after-before)
		}
		d.DrainedEnd()
		for target := completed.Load() + 50; completed.Load() < target; {
			time.Sleep(time.Millisecond)
		}
	}
	close(stop)
	wg.Wait()
	if begins.Load() != 3 || ends.Load() != 3 {
		t.Errorf("device callbacks: %d begins, %d ends, want 3 each", begins.Load(), ends.Load())
	}
	// The same with a drain of everything, and a subtree drain.
	h.DrainAllBegin()
	h.DrainAllEnd()
	d.SubtreeDrainedBegin()
	d.SubtreeDrainedEnd()
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestErrorPolicy: writes to a read-only image fail; under werror=ignore
// they complete as successes; under stop the request is held, the I/O
// status set and Stopped called, Resume retries it, and Close fails it;
// report reports. (Reads past the end are not errors: they read zeroes.)
func TestErrorPolicy(t *testing.T) {
	h := newHost(t, host.Options{})
	p := image(t, h, "raw", 1<<20)
	buf := make([]byte, 4096)

	d, err := h.OpenDevice(p, host.OpenOptions{ReadOnly: true, Name: "report"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.WriteAt(buf, 0); err == nil {
		t.Fatal("write to a read-only image succeeded under report")
	}
	if st := d.Stats(); st.Write.Errors != 1 {
		t.Errorf("write errors %d, want 1", st.Write.Errors)
	}
	d.Close()

	d, err = h.OpenDevice(p, host.OpenOptions{ReadOnly: true, WriteError: host.ErrorIgnore, Name: "ignore"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.WriteAt(buf, 0); err != nil {
		t.Fatalf("failed write under ignore: %v", err)
	}
	d.Close()

	stopped := make(chan error, 4)
	d, err = h.OpenDevice(p, host.OpenOptions{ReadOnly: true, WriteError: host.ErrorStop, Name: "stop",
		Callbacks: host.DeviceCallbacks{Stopped: func(op host.Op, err error) { stopped <- err }}})
	if err != nil {
		t.Fatal(err)
	}
	q, _ := d.Queue(host.QueueOptions{})
	if err := q.Write(buf, 0, 0, 7); err != nil {
		t.Fatal(err)
	}
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("Stopped not called")
	}
	if st, err := d.IOStatus(); st != host.IOStatus(1) || err == nil {
		t.Fatalf("I/O status %v (%v), want failed", st, err)
	}
	if st := d.Stats(); st.Held != 1 || st.InFlight != 0 {
		t.Fatalf("held %d in flight %d, want 1 and 0", st.Held, st.InFlight)
	}
	if _, ok := q.Next(); ok {
		t.Fatal("a held request completed")
	}
	d.Resume() // fails again: held again
	<-stopped
	if st := d.Stats(); st.Held != 1 || st.Write.Errors != 2 {
		t.Fatalf("after resume: held %d errors %d, want 1 and 2", st.Held, st.Write.Errors)
	}
	d.ResetIOStatus()
	if st, _ := d.IOStatus(); st != 0 {
		t.Fatalf("status after reset %v", st)
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	if st := d.Stats(); st.Held != 0 {
		t.Fatalf("held %d after close", st.Held)
	}
	d.Close()
}

// TestStopOnNoSpace: an error other than ENOSPC is reported, not held,
// under ErrorStopOnNoSpace.
func TestStopOnNoSpace(t *testing.T) {
	h := newHost(t, host.Options{})
	p := image(t, h, "raw", 1<<20)
	d, err := h.OpenDevice(p, host.OpenOptions{ReadOnly: true, WriteError: host.ErrorStopOnNoSpace})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.WriteAt(make([]byte, 512), 0); err == nil || errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("write to read-only image: %v, want a reported error", err)
	}
	if st, _ := d.IOStatus(); st != 0 {
		t.Fatalf("I/O status %v after a non-ENOSPC error", st)
	}
}

// TestGeometryResizeStatus: size, alignment and limits; resize with its
// callback; block status of written and unwritten ranges.
func TestGeometryResizeStatus(t *testing.T) {
	h := newHost(t, host.Options{})
	p := image(t, h, "qcow2", 1<<20)
	resized := make(chan int64, 1)
	d, err := h.OpenDevice(p, host.OpenOptions{Callbacks: host.DeviceCallbacks{Resized: func(n int64) { resized <- n }}})
	if err != nil {
		t.Fatal(err)
	}
	g, err := d.Geometry()
	if err != nil {
		t.Fatal(err)
	}
	if g.Size != 1<<20 || g.Format != "qcow2" || g.LogicalBlockSize < 512 || g.RequestAlignment < 1 || g.MaxIov < 1 || g.ReadOnly {
		t.Fatalf("geometry %+v", g)
	}
	if _, err := d.WriteAt(pattern(make([]byte, 65536), 3), 0); err != nil {
		t.Fatal(err)
	}
	st, n, err := d.BlockStatus(0, 1<<20)
	if err != nil || st&host.BlockStatus(1) == 0 || n != 65536 {
		t.Fatalf("status of written cluster: %v %d %v", st, n, err)
	}
	st, _, err = d.BlockStatus(65536, 65536)
	if err != nil || st&host.BlockStatus(1) != 0 {
		t.Fatalf("status of unwritten cluster: %v %v", st, err)
	}
	if err := d.Resize(2 << 20); err != nil {
		t.Fatal(err)
	}
	if got := <-resized; got != 2<<20 {
		t.Fatalf("Resized(%d)", got)
	}
	if g, _ := d.Geometry(); g.Size != 2<<20 {
		t.Fatalf("size after resize %d", g.Size)
	}
	// Inside a drained section (a device model reconfiguring): no wait
	// for the section itself.
	d.DrainedBegin()
	err = d.Resize(3 << 20)
	d.DrainedEnd()
	if err != nil || <-resized != 3<<20 {
		t.Fatalf("resize inside a drained section: %v", err)
	}
}

// TestInternalSnapshots: create, list, apply and delete on qcow2; a raw
// device says it cannot.
func TestInternalSnapshots(t *testing.T) {
	h := newHost(t, host.Options{})
	p := image(t, h, "qcow2", 1<<20)
	d, err := h.OpenDevice(p, host.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	a, b := pattern(make([]byte, 4096), 1), pattern(make([]byte, 4096), 2)
	d.WriteAt(a, 0)
	if err := d.CreateSnapshot("s1"); err != nil {
		t.Fatal(err)
	}
	d.WriteAt(b, 0)
	list, err := d.Snapshots()
	if err != nil || len(list) != 1 || list[0].Name != "s1" {
		t.Fatalf("snapshots %v %v", list, err)
	}
	if err := d.ApplySnapshot("s1"); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4096)
	d.ReadAt(got, 0)
	mustEqual(t, "after apply", got, a)
	if err := d.DeleteSnapshot("s1"); err != nil {
		t.Fatal(err)
	}
	r, err := h.OpenDevice(image(t, h, "raw", 1<<20), host.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.CreateSnapshot("x"); !errors.Is(err, host.ErrUnsupported) {
		t.Fatalf("raw snapshot: %v", err)
	}
}

// TestInactivate: writes fail while inactive and work again after
// Activate.
func TestInactivate(t *testing.T) {
	h := newHost(t, host.Options{})
	d, err := h.OpenDevice(image(t, h, "qcow2", 1<<20), host.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Inactivate(); err != nil {
		t.Fatal(err)
	}
	if _, err := d.WriteAt(make([]byte, 512), 0); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("write while inactive: %v, want EPERM", err)
	}
	if err := d.Activate(); err != nil {
		t.Fatal(err)
	}
	if _, err := d.WriteAt(make([]byte, 512), 0); err != nil {
		t.Fatal(err)
	}
}

// TestInactivateWritesBack: a qcow2 device written and then inactivated
// (a migration handover) has its data and metadata in the file: it closes
// without error (nothing left to write on an inactive image) and another
// open reads the data.
func TestInactivateWritesBack(t *testing.T) {
	h := newHost(t, host.Options{})
	p := image(t, h, "qcow2", 1<<20)
	d, err := h.OpenDevice(p, host.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	data := pattern(make([]byte, 4096), 9)
	if _, err := d.WriteAt(data, 65536); err != nil {
		t.Fatal(err)
	}
	if err := d.Inactivate(); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatalf("close of the inactive device: %v", err)
	}
	r, err := h.OpenDevice(p, host.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	got := make([]byte, 4096)
	if _, err := r.ReadAt(got, 65536); err != nil {
		t.Fatal(err)
	}
	mustEqual(t, "data written before the handover", got, data)
}

// TestThrottle: an IOPS limit slows a burst down to it.
func TestThrottle(t *testing.T) {
	h := newHost(t, host.Options{})
	d := nullDevice(t, h)
	if err := d.SetThrottle("", host.ThrottleLimits{IOPSTotal: 200, IOPSTotalBurst: 1}); err != nil {
		t.Fatal(err)
	}
	q, _ := d.Queue(host.QueueOptions{Depth: 64})
	buf := make([]byte, 512)
	start := time.Now()
	for i := 0; i < 40; i++ {
		if err := q.Read(buf, 0, uint64(i)); err != nil {
			t.Fatal(err)
		}
	}
	for n := 0; n < 40; {
		q.Wait(time.Second)
		for _, ok := q.Next(); ok; _, ok = q.Next() {
			n++
		}
	}
	if el := time.Since(start); el < 150*time.Millisecond {
		t.Fatalf("40 reads at 200 IOPS took %v", el)
	}
	// Limits off: 200 reads (a second at the old limit) are fast.
	d.SetThrottle("", host.ThrottleLimits{})
	start = time.Now()
	for n, sent := 0, 0; n < 200; {
		for sent < 200 && q.Read(buf, 0, uint64(sent)) == nil {
			sent++
		}
		q.Wait(time.Second)
		for _, ok := q.Next(); ok; _, ok = q.Next() {
			n++
		}
	}
	if el := time.Since(start); el > 500*time.Millisecond {
		t.Errorf("200 unthrottled reads took %v", el)
	}
}

// TestCPUSets: a Context runs on the CPU set it was given; without one it
// is not pinned; a CPU out of range is refused.
func TestCPUSets(t *testing.T) {
	var all unix.CPUSet
	if err := unix.SchedGetaffinity(0, &all); err != nil {
		t.Fatal(err)
	}
	var cpus []int
	for c := 0; c < 1024; c++ {
		if all.IsSet(c) {
			cpus = append(cpus, c)
		}
	}
	h := newHost(t, host.Options{Contexts: 2, CPUSets: [][]int{cpus[:1]}})
	got, err := h.CPUSet(0)
	if err != nil || !slices.Equal(got, cpus[:1]) {
		t.Fatalf("Context 0 runs on %v (%v), want %v", got, err, cpus[:1])
	}
	got, err = h.CPUSet(1)
	if err != nil || !slices.Equal(got, cpus) {
		t.Fatalf("unpinned Context 1 runs on %v, want %v", got, cpus)
	}
	if _, err := host.New(host.Options{CPUSets: [][]int{{5000}}}); err == nil {
		t.Fatal("CPU 5000 accepted")
	}
}

// TestWorkerCPUs: HostOptions.WorkerCPUs reach every I/O Context (its
// ring's io-wq workers are placed there); a set aio or the kernel refuses
// fails New with the Context named, after stopping what was started.
func TestWorkerCPUs(t *testing.T) {
	var all unix.CPUSet
	if err := unix.SchedGetaffinity(0, &all); err != nil {
		t.Fatal(err)
	}
	if !all.IsSet(0) || !all.IsSet(1) {
		t.Skip("needs CPUs 0 and 1")
	}
	h := newHost(t, host.Options{Contexts: 2, CPUSets: [][]int{{0}, {0}}, WorkerCPUs: []int{1}})
	for i := 0; i < h.Contexts(); i++ {
		c := h.Context(i)
		var placed bool
		c.Run(func() { placed = c.Stats().WorkersPlaced })
		if !placed {
			t.Fatalf("Context %d: io-wq workers not placed on CPU 1", i)
		}
	}
	// Refused by aio (out of range) and by the kernel (CPU 1000 is not in
	// this machine's cpuset): a clear error, and the Contexts already
	// started are stopped (this panicked on the nil Host before).
	for _, bad := range [][]int{{-1}, {1000}} {
		_, err := host.New(host.Options{Contexts: 2, WorkerCPUs: bad})
		if err == nil || !strings.Contains(err.Error(), "Context 0") {
			t.Fatalf("WorkerCPUs %v: %v", bad, err)
		}
	}
}

// TestCloseInAnyOrder: a host closes with devices and queues open and
// requests in flight; a device closes with its queues open; closing twice
// is fine; a device closed inside a drained section does not hang.
func TestCloseInAnyOrder(t *testing.T) {
	h, err := host.New(host.Options{Contexts: 2})
	if err != nil {
		t.Skipf("host: %v", err)
	}
	p := filepath_(t)
	if err := h.Create(p, host.CreateOptions{Format: "qcow2", Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	d, err := h.OpenDevice(p, host.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	q, _ := d.Queue(host.QueueOptions{})
	for i := 0; i < 32; i++ {
		q.Write(make([]byte, 4096), int64(i)*4096, 0, 0)
	}
	d2, err := h.OpenDevice("null-co://", host.OpenOptions{Format: "null", Size: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	d2.Queue(host.QueueOptions{})
	d2.DrainedBegin()
	h.DrainAllBegin()
	done := make(chan error)
	go func() { done <- h.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("host close hangs")
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := h.OpenDevice(p, host.OpenOptions{}); !isClosed(err) {
		t.Fatalf("open on a closed host: %v", err)
	}
}

// TestOpenErrors: a missing file, a bad option and an image another open
// holds are refused with errors naming them.
func TestOpenErrors(t *testing.T) {
	h := newHost(t, host.Options{})
	if _, err := h.OpenDevice("/nonexistent/disk.img", host.OpenOptions{Format: "raw"}); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	p := image(t, h, "raw", 1<<20)
	if _, err := h.OpenDevice(p, host.OpenOptions{Cache: "bogus"}); err == nil {
		t.Error("cache=bogus accepted")
	}
	d, err := h.OpenDevice(p, host.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := h.OpenDevice(p, host.OpenOptions{}); err == nil {
		t.Error("a second read-write open of a held image succeeded")
	}
	// Creating over an image in use is refused, and leaves it untouched.
	d.WriteAt(pattern(make([]byte, 512), 7), 0)
	for _, f := range []string{"raw", "qcow2"} {
		if err := h.Create(p, host.CreateOptions{Format: f, Size: 4096}); err == nil {
			t.Errorf("create %s over a held image succeeded", f)
		}
	}
	got := make([]byte, 512)
	d.ReadAt(got, 0)
	mustEqual(t, "held image after refused creates", got, pattern(make([]byte, 512), 7))
	if g, _ := d.Geometry(); g.Size != 1<<20 {
		t.Errorf("held image resized to %d by a refused create", g.Size)
	}
	if err := h.Create(p+".x", host.CreateOptions{Format: "vmdk", Size: 1}); err == nil {
		t.Error("vmdk created")
	}
}

// TestOverlayCreate: a qcow2 overlay over a raw base reads the base's
// data through the backing chain.
func TestOverlayCreate(t *testing.T) {
	h := newHost(t, host.Options{})
	base := image(t, h, "raw", 1<<20)
	b, err := h.OpenDevice(base, host.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	data := pattern(make([]byte, 8192), 9)
	b.WriteAt(data, 8192)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	top := base + ".top.qcow2"
	if err := h.Create(top, host.CreateOptions{Format: "qcow2", BackingFile: base, BackingFormat: "raw"}); err != nil {
		t.Fatal(err)
	}
	d, err := h.OpenDevice(top, host.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 8192)
	d.ReadAt(got, 8192)
	mustEqual(t, "through the backing file", got, data)
	if g, _ := d.Geometry(); g.Size != 1<<20 {
		t.Errorf("overlay size %d", g.Size)
	}
}

// TestQueueZeroAllocs: the eventfd-mode round trip — submit from a host
// goroutine, wait, take the completion — allocates nothing per request.
func TestQueueZeroAllocs(t *testing.T) {
	if raceEnabled || invariants.Enabled {
		t.Skip("allocation budgets hold for production builds (no -race, no invariants tag); make test runs them in a third pass")
	}
	h := newHost(t, host.Options{})
	d, err := h.OpenDevice(image(t, h, "raw", 1<<20), host.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	q, _ := d.Queue(host.QueueOptions{Depth: 32})
	bufs := make([][]byte, 32)
	for i := range bufs {
		bufs[i] = make([]byte, 4096)
	}
	iov := [][]byte{bufs[0][:2048], bufs[1][:2048]}
	round := func() {
		q.Plug()
		for i := 0; i < 31; i++ {
			if err := q.Read(bufs[i], int64(i)*4096, uint64(i)); err != nil {
				t.Fatal(err)
			}
		}
		q.Readv(iov, 0, 31)
		q.Unplug()
		for n := 0; n < 32; {
			q.Wait(-1)
			for c, ok := q.Next(); ok; c, ok = q.Next() {
				if c.Err != nil {
					t.Fatal(c.Err)
				}
				n++
			}
		}
	}
	round() // warm the pools
	if a := testing.AllocsPerRun(50, round); a != 0 {
		t.Fatalf("%.1f allocations per 32 requests, want 0", a)
	}
	var cbDone atomic.Int64
	cq, _ := d.Queue(host.QueueOptions{Depth: 32, OnComplete: func(host.Completion) { cbDone.Add(1) }})
	cround := func() {
		start := cbDone.Load()
		for i := 0; i < 32; i++ {
			cq.Write(bufs[i], int64(i)*4096, 0, uint64(i))
		}
		for cbDone.Load() < start+32 {
			runtime_Gosched()
		}
	}
	cround()
	if a := testing.AllocsPerRun(50, cround); a != 0 {
		t.Fatalf("callback mode: %.1f allocations per 32 requests, want 0", a)
	}
}

// TestLiveSnapshot: while a goroutine keeps reading, the device switches
// to a qcow2 overlay over its raw image; later writes land in the overlay,
// the old image keeps the content of the snapshot instant, and the device
// is now qcow2 (internal snapshots work).
func TestLiveSnapshot(t *testing.T) {
	h := newHost(t, host.Options{Contexts: 2})
	base := image(t, h, "raw", 1<<20)
	d, err := h.OpenDevice(base, host.OpenOptions{Format: "raw"})
	if err != nil {
		t.Fatal(err)
	}
	a, b := pattern(make([]byte, 4096), 1), pattern(make([]byte, 4096), 2)
	d.WriteAt(a, 0)
	var failed atomic.Int64
	var done atomic.Int64
	q, _ := d.Queue(host.QueueOptions{Depth: 8, OnComplete: func(c host.Completion) {
		if c.Err != nil {
			failed.Add(1)
		}
		done.Add(1)
	}})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 4096)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if q.Read(buf, 0, 0) != nil {
				runtime_Gosched()
			}
		}
	}()
	for done.Load() < 50 {
		time.Sleep(time.Millisecond)
	}
	top := base + ".top.qcow2"
	if err := d.LiveSnapshot(top); err != nil {
		t.Fatal(err)
	}
	for target := done.Load() + 50; done.Load() < target; {
		time.Sleep(time.Millisecond)
	}
	close(stop)
	wg.Wait()
	if n := failed.Load(); n != 0 {
		t.Fatalf("%d reads failed around the snapshot", n)
	}
	if _, err := d.WriteAt(b, 4096); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4096)
	d.ReadAt(got, 0)
	mustEqual(t, "snapshot content through the overlay", got, a)
	d.ReadAt(got, 4096)
	mustEqual(t, "new write", got, b)
	if g, _ := d.Geometry(); g.Format != "qcow2" || g.Size != 1<<20 {
		t.Fatalf("geometry after the snapshot %+v", g)
	}
	if err := d.CreateSnapshot("internal"); err != nil {
		t.Fatalf("internal snapshot on the overlay: %v", err)
	}
	backing := d.FrontEnd().Root().Child(block.RoleBacking).Node()
	if _, err := backing.WriteAt(b, 0); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("write to the old image: %v, want EPERM (read-only)", err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	old, err := h.OpenDevice(base, host.OpenOptions{Format: "raw", ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	old.ReadAt(got, 4096)
	mustEqual(t, "old image after the snapshot", got, make([]byte, 4096))
	old.ReadAt(got, 0)
	mustEqual(t, "old image before the snapshot", got, a)
	r, err := h.OpenDevice(image(t, h, "qcow2", 1<<20), host.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.LiveSnapshot(top + "2"); err == nil {
		t.Fatal("live snapshot of a read-only device")
	}
}

// TestUseAfterClose: every method of a closed host, device and queue
// returns ErrClosed (or does nothing) instead of panicking on a stopped
// Context.
func TestUseAfterClose(t *testing.T) {
	h, err := host.New(host.Options{Contexts: 1})
	if err != nil {
		t.Skipf("host: %v", err)
	}
	p := filepath_(t)
	if err := h.Create(p, host.CreateOptions{Format: "qcow2", Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	d, err := h.OpenDevice(p, host.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	q, _ := d.Queue(host.QueueOptions{})
	d.ReadAt(make([]byte, 512), 0) // creates the synchronous queue
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 512)
	checks := map[string]error{
		"queue read":     q.Read(buf, 0, 0),
		"queue close":    q.Close(),
		"new queue":      func() error { _, err := d.Queue(host.QueueOptions{}); return err }(),
		"read at":        func() error { _, err := d.ReadAt(buf, 0); return err }(),
		"geometry":       func() error { _, err := d.Geometry(); return err }(),
		"resize":         d.Resize(2 << 20),
		"block status":   func() error { _, _, err := d.BlockStatus(0, 512); return err }(),
		"set context":    d.SetContext(0),
		"snapshot":       d.CreateSnapshot("x"),
		"live snapshot":  d.LiveSnapshot(p + ".top"),
		"inactivate":     d.Inactivate(),
		"open":           func() error { _, err := h.OpenDevice(p, host.OpenOptions{}); return err }(),
		"create":         h.Create(p+".2", host.CreateOptions{Format: "raw", Size: 512}),
		"cpu set":        func() error { _, err := h.CPUSet(0); return err }(),
		"device close":   d.Close(),
		"host close":     h.Close(),
		"queue close(2)": q.Close(),
	}
	for what, err := range checks {
		switch what {
		case "queue close", "device close", "host close", "queue close(2)":
			if err != nil {
				t.Errorf("%s after close: %v, want nil", what, err)
			}
		default:
			if !isClosed(err) {
				t.Errorf("%s after close: %v, want ErrClosed", what, err)
			}
		}
	}
	d.DrainedBegin()
	d.DrainedEnd()
	h.DrainAllBegin()
	h.DrainAllEnd()
	d.Resume()
	_ = d.Stats()
}

// TestPollTime: with busy-polling on, I/O still completes and Wait
// still times out when nothing comes.
func TestPollTime(t *testing.T) {
	h := newHost(t, host.Options{PollTime: 50 * time.Microsecond})
	d := nullDevice(t, h)
	q, _ := d.Queue(host.QueueOptions{})
	start := time.Now()
	if q.Wait(2 * time.Millisecond) {
		t.Fatal("Wait reported completions on an idle queue")
	}
	if time.Since(start) < time.Millisecond {
		t.Fatal("Wait returned before its timeout")
	}
	for i := 0; i < 100; i++ {
		q.Read(make([]byte, 512), 0, uint64(i))
		if !q.Wait(5 * time.Second) {
			t.Fatal("no completion")
		}
		if c, ok := q.Next(); !ok || c.UserData != uint64(i) {
			t.Fatalf("completion %d: %+v %v", i, c, ok)
		}
	}
	if _, err := host.New(host.Options{PollTime: -1}); err == nil {
		t.Fatal("negative PollTime accepted")
	}
}

// TestCloseWakesWait: a goroutine blocked in Wait without a timeout
// returns when the queue (here: the whole host) is closed.
func TestCloseWakesWait(t *testing.T) {
	h, err := host.New(host.Options{})
	if err != nil {
		t.Skipf("host: %v", err)
	}
	d := nullDevice(t, h)
	q, _ := d.Queue(host.QueueOptions{})
	woke := make(chan bool)
	go func() { woke <- q.Wait(-1) }()
	time.Sleep(20 * time.Millisecond)
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case ok := <-woke:
		if ok {
			t.Fatal("Wait reported completions on a closed idle queue")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Wait still blocked after the host closed")
	}
	if q.Wait(0) {
		t.Fatal("Wait on a closed queue")
	}
}

// TestConcurrentClose: device and host closes racing each other (and
// submitters) all return, without touching stopped Contexts.
func TestConcurrentClose(t *testing.T) {
	for round := 0; round < 5; round++ {
		h, err := host.New(host.Options{Contexts: 2})
		if err != nil {
			t.Skipf("host: %v", err)
		}
		var devs []*host.Device
		for i := 0; i < 3; i++ {
			d, err := h.OpenDevice("null-co://", host.OpenOptions{Format: "null", Size: 1 << 20})
			if err != nil {
				t.Fatal(err)
			}
			devs = append(devs, d)
		}
		var wg sync.WaitGroup
		for _, d := range devs {
			q, _ := d.Queue(host.QueueOptions{Context: -1})
			wg.Add(3)
			go func() {
				defer wg.Done()
				buf := make([]byte, 512)
				for q.Read(buf, 0, 0) == nil || true {
					if _, err := d.ReadAt(buf, 0); err != nil {
						return
					}
					for _, ok := q.Next(); ok; _, ok = q.Next() {
					}
				}
			}()
			go func() { defer wg.Done(); d.Close() }()
			go func() { defer wg.Done(); q.Close() }()
		}
		wg.Add(2)
		go func() { defer wg.Done(); h.Close() }()
		go func() { defer wg.Done(); h.Close() }()
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Fatal("concurrent closes hang")
		}
	}
}
