package host_test

// Regression tests for edges of the host API found by using it as a VMM
// host would: closes racing requests, limits, bounds, accounting.

import (
	"bytes"
	"errors"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
	"github.com/ringblk/ringblk/host"
)

// stackedDebugDevice is a device over two fault filters on a memory node
// (outer over inner over mem): the outer one holds a request, the inner
// one fails it once it is released.
func stackedDebugDevice(t *testing.T, h *host.Host, o host.OpenOptions) (*host.Device, *blocktest.Debug, *blocktest.Debug) {
	t.Helper()
	g := h.Graph()
	node, err := g.Open(blocktest.NewMem(1<<20), block.Options{Name: "mem"})
	if err != nil {
		t.Fatal(err)
	}
	var filters [2]*blocktest.Debug
	for i, name := range []string{"inner", "outer"} {
		dbg := &blocktest.Debug{}
		f, err := g.Open(dbg, block.Options{Name: name})
		if err != nil {
			t.Fatal(err)
		}
		c, err := g.Attach(f, node, block.ChildSpec{Name: "file", Role: block.RoleFiltered})
		if err != nil {
			t.Fatal(err)
		}
		dbg.Edge.Store(c)
		node.Unref()
		node, filters[i] = f, dbg
	}
	d, err := h.NewDevice(node, o)
	if err != nil {
		t.Fatal(err)
	}
	return d, filters[1], filters[0]
}

// TestCloseQueueWhileRequestFailsUnderStop: a request in flight when its
// queue starts closing, which then fails under a stop policy, completes
// with its error instead of being held: nobody can retry it on a closed
// queue, and Close (of the queue, its device, the host) waited for it
// forever. Close runs on a Loop here, so the order is fixed: Close has
// completed what was held before the request fails.
func TestCloseQueueWhileRequestFailsUnderStop(t *testing.T) {
	h := newHost(t, host.Options{})
	d, outer, inner := stackedDebugDevice(t, h, host.OpenOptions{WriteError: host.ErrorStop})
	outer.AddRule(blocktest.Rule{Op: block.OpWrite, Hold: true, Once: true})
	inner.AddRule(blocktest.Rule{Op: block.OpWrite, Err: syscall.EIO, Once: true})
	var got []host.Completion
	done := make(chan error, 1)
	go func() {
		done <- h.Drive(func(l *host.Loop) error {
			q, err := l.Queue(d, host.QueueOptions{OnComplete: func(c host.Completion) { got = append(got, c) }})
			if err != nil {
				return err
			}
			if err := q.Write(make([]byte, 4096), 0, 0, 1); err != nil {
				return err
			}
			for outer.Held() == 0 {
				l.Poll(false)
			}
			outer.Release() // runs when Close polls the Loop: the write fails then
			return q.Close()
		})
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		d.Resume() // retries the held write (the fault fired once), so Close can end
		<-done
		t.Fatal("Close of a queue hangs on a request that failed under a stop policy while it closed")
	}
	if len(got) != 1 || !errors.Is(got[0].Err, syscall.EIO) {
		t.Fatalf("completions %+v, want the write with EIO", got)
	}
	if d.Paused() {
		t.Fatal("the device is paused by a request of a closed queue, which nobody can retry")
	}
}

// TestRingEntriesLimit: a ring size above io_uring's limit is refused
// before anything proportional to it is allocated. The Contexts
// preallocated four op slots per entry first and only then let the kernel
// refuse the size, so a large value took the process's memory (1<<30 had
// it killed).
func TestRingEntriesLimit(t *testing.T) {
	for _, n := range []int{-1, host.MaxRingEntries + 1, 1 << 18} {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		h, err := host.New(host.Options{RingEntries: n})
		runtime.ReadMemStats(&after)
		if err == nil {
			h.Close()
			t.Fatalf("RingEntries %d accepted", n)
		}
		if grew := after.TotalAlloc - before.TotalAlloc; grew > 1<<20 {
			t.Fatalf("RingEntries %d: %d bytes allocated before the refusal (%v)", n, grew, err)
		}
	}
	h := newHost(t, host.Options{RingEntries: host.MaxRingEntries})
	if h.Contexts() != 1 {
		t.Fatal("no Context")
	}
}

// TestThrottleLimitsChecked: limits the buckets cannot honour are refused
// and change nothing. A negative, NaN or tiny rate was taken, and every
// request of the device then waited forever, re-armed every microsecond.
// Valid limits still apply, and a closed device refuses with ErrClosed.
func TestThrottleLimitsChecked(t *testing.T) {
	h := newHost(t, host.Options{})
	d := nullDevice(t, h)
	for _, l := range []host.ThrottleLimits{
		{IOPSTotal: -1}, {BPSRead: math.NaN()}, {IOPSWrite: math.Inf(1)}, {BPSTotal: 2e15},
		{IOPSTotal: 1e-300}, {IOPSRead: 0.5}, {IOPSTotal: 10, IOPSTotalBurst: -5}, {BPSWriteBurst: math.NaN()},
	} {
		for _, group := range []string{"", "g"} {
			if err := d.SetThrottle(group, l); err == nil {
				t.Errorf("SetThrottle(%q, %+v) accepted", group, l)
			}
		}
	}
	// Nothing was applied: I/O runs unthrottled.
	buf := make([]byte, 512)
	for i := 0; i < 100; i++ {
		if _, err := d.ReadAt(buf, 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.SetThrottle("", host.ThrottleLimits{IOPSTotal: 1, BPSTotal: host.MaxThrottleValue}); err != nil {
		t.Fatal(err)
	}
	if err := d.SetThrottle("", host.ThrottleLimits{}); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.SetThrottle("", host.ThrottleLimits{IOPSTotal: 5}); !isClosed(err) {
		t.Fatalf("SetThrottle after Close: %v, want ErrClosed", err)
	}
}

// TestStatsInsideDrainedSection: requests submitted inside a drained
// section wait before the driver until it ends, so Stats counts them as
// parked, not in flight. They were reported in flight, which contradicts
// the section's promise (nothing in flight) to a host checking it before,
// say, a migration's handover.
func TestStatsInsideDrainedSection(t *testing.T) {
	h := newHost(t, host.Options{})
	d := nullDevice(t, h)
	q, err := d.Queue(host.QueueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, section := range []struct {
		name       string
		begin, end func()
	}{
		{"device", d.DrainedBegin, d.DrainedEnd},
		{"subtree", d.SubtreeDrainedBegin, d.SubtreeDrainedEnd},
		{"all", h.DrainAllBegin, h.DrainAllEnd},
	} {
		section.begin()
		buf := make([]byte, 512)
		for i := 0; i < 3; i++ {
			if err := q.Write(buf, 0, 0, uint64(i)); err != nil {
				t.Fatal(err)
			}
		}
		for d.FrontEnd().ParkedCount() != 3 {
			runtime.Gosched()
		}
		if st := d.Stats(); st.InFlight != 0 || st.Parked != 3 {
			t.Errorf("%s section: in flight %d, parked %d; want 0 and 3", section.name, st.InFlight, st.Parked)
		}
		section.end()
		for n := 0; n < 3; {
			if !q.Wait(10 * time.Second) {
				t.Fatalf("%s section: no completion after its end", section.name)
			}
			for c, ok := q.Next(); ok; c, ok = q.Next() {
				if c.Err != nil {
					t.Fatal(c.Err)
				}
				n++
			}
		}
		if st := d.Stats(); st.InFlight != 0 || st.Parked != 0 {
			t.Errorf("%s section ended: in flight %d, parked %d; want 0 and 0", section.name, st.InFlight, st.Parked)
		}
	}
}

// TestWritePastEndRefused: a write or write-zeroes reaching past the end
// of the device fails with EIO and leaves the image's size alone, as
// QEMU's BlockBackend answers it, whatever the format. A raw image grew
// instead (and its device with it), while qcow2 refused. After Resize
// the new end is the bound, shrunk or grown.
func TestWritePastEndRefused(t *testing.T) {
	h := newHost(t, host.Options{})
	for _, format := range []string{"raw", "qcow2"} {
		d, err := h.OpenDevice(image(t, h, format, 1<<20), host.OpenOptions{})
		if err != nil {
			t.Fatal(err)
		}
		q, err := d.Queue(host.QueueOptions{})
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 8192)
		for _, submit := range []func() error{
			func() error { return q.Write(buf, 1<<20, 0, 1) },
			func() error { return q.Write(buf, 1<<20-4096, 0, 2) }, // straddles the end
			func() error { return q.WriteZeroes(1<<20-4096, 1<<20, 0, 3) },
		} {
			if err := submit(); err != nil {
				t.Fatal(err)
			}
			if !q.Wait(10 * time.Second) {
				t.Fatal("no completion")
			}
			if c, _ := q.Next(); !errors.Is(c.Err, syscall.EIO) {
				t.Errorf("%s: %v %d past the end: %v, want EIO", format, c.Op, c.UserData, c.Err)
			}
		}
		if _, err := d.WriteAt(buf, 1<<20); !errors.Is(err, syscall.EIO) {
			t.Errorf("%s: WriteAt past the end: %v, want EIO", format, err)
		}
		if g, err := d.Geometry(); err != nil || g.Size != 1<<20 {
			t.Fatalf("%s: size %d after writes past the end (%v)", format, g.Size, err)
		}
		if _, err := d.WriteAt(buf, 1<<20-8192); err != nil {
			t.Fatalf("%s: the last bytes: %v", format, err)
		}
		if err := d.Resize(2 << 20); err != nil {
			t.Fatal(err)
		}
		if _, err := d.WriteAt(buf, 1<<20); err != nil {
			t.Fatalf("%s: write in the grown part: %v", format, err)
		}
		if err := d.Resize(1 << 20); err != nil {
			t.Fatal(err)
		}
		if _, err := d.WriteAt(buf, 1<<20); !errors.Is(err, syscall.EIO) {
			t.Errorf("%s: write past the end after a shrink: %v, want EIO", format, err)
		}
		if st := d.Stats(); st.Write.Errors != 4 || st.WriteZeroes.Errors != 1 {
			t.Errorf("%s: write errors %d, write-zeroes errors %d; want 4 and 1", format, st.Write.Errors, st.WriteZeroes.Errors)
		}
		if err := d.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestScheduleAfterQueueClose: Unplug after Close (a burst that another
// goroutine's Close ends, or q.Plug with a deferred Unplug) and a Resume
// that races a queue's Close schedule the queue's bottom halves from a
// host goroutine after Close has detached it. Close deleted them, and
// scheduling a deleted bottom half is a programmer error: the assertion
// failed under -tags invariants (as make test runs), and without it the
// dead BH went onto the Context's run queue.
func TestScheduleAfterQueueClose(t *testing.T) {
	h := newHost(t, host.Options{})
	d := nullDevice(t, h)
	q, err := d.Queue(host.QueueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	q.Plug()
	if err := q.Write(make([]byte, 512), 0, 0, 1); err != nil {
		t.Fatal(err)
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	q.Unplug()
	if err := q.Write(make([]byte, 512), 0, 0, 2); !isClosed(err) {
		t.Fatalf("write after Close: %v", err)
	}
	// Resume takes the device's queues, then schedules each: close one
	// in between, from the Stopped callback's point of view a race.
	var qs []*host.Queue
	for i := 0; i < 8; i++ {
		q, err := d.Queue(host.QueueOptions{})
		if err != nil {
			t.Fatal(err)
		}
		qs = append(qs, q)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, q := range qs {
			q.Close()
		}
	}()
	for i := 0; i < 100; i++ {
		d.Resume()
	}
	<-done
	if _, err := d.ReadAt(make([]byte, 512), 0); err != nil {
		t.Fatal(err)
	}
}

// TestContextIndexChecked: -1 is the one negative Context index the API
// names (round robin for a queue, the main Context for SetContext); other
// negative ones are refused like indexes past the last Context. They were
// taken as -1, hiding a host's arithmetic mistake.
func TestContextIndexChecked(t *testing.T) {
	h := newHost(t, host.Options{Contexts: 2})
	d := nullDevice(t, h)
	for _, i := range []int{-2, -7, 2} {
		if q, err := d.Queue(host.QueueOptions{Context: i}); err == nil {
			q.Close()
			t.Errorf("a queue on Context %d", i)
		}
		if err := d.SetContext(i); err == nil {
			t.Errorf("SetContext(%d) accepted", i)
		}
	}
	for _, i := range []int{-1, 0, 1} {
		q, err := d.Queue(host.QueueOptions{Context: i})
		if err != nil {
			t.Fatalf("queue on Context %d: %v", i, err)
		}
		q.Close()
		if err := d.SetContext(i); err != nil {
			t.Fatalf("SetContext(%d): %v", i, err)
		}
	}
}

// TestCloseFlushes: Device.Close flushes the image before closing it, as
// QEMU's bdrv_close does, and returns the flush's error: a raw image's
// writes in the page cache were never synced at close, so a write-back
// failure (EIO, ENOSPC on thin storage) went unreported and Close said
// nil. cache=unsafe skips the flush, as it skips every flush.
func TestCloseFlushes(t *testing.T) {
	h := newHost(t, host.Options{})
	for _, cache := range []string{"", "unsafe"} {
		fc := &flushCounter{Null: blocktest.Null{Size: 1 << 20}}
		n, err := h.Graph().Open(fc, block.Options{Name: "fc"})
		if err != nil {
			t.Fatal(err)
		}
		d, err := h.NewDevice(n, host.OpenOptions{Cache: cache})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := d.WriteAt(make([]byte, 512), 0); err != nil {
			t.Fatal(err)
		}
		if err := d.Close(); err != nil {
			t.Fatal(err)
		}
		want := int64(1)
		if cache == "unsafe" {
			want = 0
		}
		if got := fc.n.Load(); got != want {
			t.Errorf("cache %q: %d flushes at close, want %d", cache, got, want)
		}
	}
	d, dbg, _ := debugDevice(t, h, host.OpenOptions{})
	if _, err := d.WriteAt(make([]byte, 512), 0); err != nil {
		t.Fatal(err)
	}
	dbg.AddRule(blocktest.Rule{Op: block.OpFlush, Err: syscall.EIO})
	if err := d.Close(); !errors.Is(err, syscall.EIO) {
		t.Fatalf("close with a failing flush: %v, want EIO", err)
	}
}

// TestCloseThrottledDevice: closing a throttled device does not wait for
// its limits: the requests waiting for the throttle are sent at once, as
// a drain sends them. Close closed the queues first, each waiting for its
// requests at the throttled rate (16 requests at 1 IOPS: 15 s), and only
// then removed the throttle.
func TestCloseThrottledDevice(t *testing.T) {
	h := newHost(t, host.Options{})
	d := nullDevice(t, h)
	if err := d.SetThrottle("", host.ThrottleLimits{IOPSTotal: 1}); err != nil {
		t.Fatal(err)
	}
	var completed atomic.Int32
	q, err := d.Queue(host.QueueOptions{Depth: 16, OnComplete: func(c host.Completion) {
		if c.Err == nil {
			completed.Add(1)
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 512)
	for i := 0; i < 16; i++ {
		if err := q.Read(buf, 0, uint64(i)); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan error, 1)
	go func() { done <- d.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		<-done
		t.Fatal("Close of a device throttled to 1 IOPS waited for its 16 requests at that rate")
	}
	if n := completed.Load(); n != 16 {
		t.Fatalf("%d of 16 requests completed", n)
	}
}

// TestFailedCreateLeavesNoFile: a qcow2 create that fails (an option the
// format refuses) removes the file it created; an existing file it was
// asked to overwrite stays as it was. An empty file was left behind.
func TestFailedCreateLeavesNoFile(t *testing.T) {
	h := newHost(t, host.Options{})
	dir := t.TempDir()
	p := filepath.Join(dir, "new.qcow2")
	for _, o := range []host.CreateOptions{
		{Format: "qcow2", Size: 1 << 20, ClusterSize: 1000},
		{Format: "qcow2", Size: 1 << 62},
	} {
		if err := h.Create(p, o); err == nil {
			t.Fatalf("create %+v succeeded", o)
		}
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("create %+v failed and left %s behind (%v)", o, p, err)
		}
	}
	old := image(t, h, "raw", 1<<20)
	want := bytes.Repeat([]byte{9}, 4096)
	if err := os.WriteFile(old, want, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := h.Create(old, host.CreateOptions{Format: "qcow2", Size: 1 << 20, ClusterSize: 1000}); err == nil {
		t.Fatal("create with cluster size 1000 succeeded")
	}
	got, err := os.ReadFile(old)
	if err != nil {
		t.Fatalf("the existing file: %v", err)
	}
	mustEqual(t, "the existing file", got, want)
}

// nullDevice opens a 1 MiB null-co device on h.
func nullDevice(t *testing.T, h *host.Host) *host.Device {
	t.Helper()
	d, err := h.OpenDevice("null-co://", host.OpenOptions{Format: "null", Size: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestContextsLimit: a Context count above host.MaxContexts (or
// negative) is refused before anything proportional to it is allocated,
// with an error that names the option. Any count was taken: New
// allocated a CPU set per Context first (128 bytes each) and then started
// a thread with a ring per Context until the memory or Go's thread limit
// ran out.
func TestContextsLimit(t *testing.T) {
	max := host.MaxContexts()
	if max < 64 || max < 8*runtime.NumCPU() {
		t.Fatalf("MaxContexts %d: below 64 or 8 per CPU", max)
	}
	for _, n := range []int{-1, max + 1, 1 << 40} {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		h, err := host.New(host.Options{Contexts: n})
		runtime.ReadMemStats(&after)
		if err == nil {
			h.Close()
			t.Fatalf("Contexts %d accepted", n)
		}
		if !strings.Contains(err.Error(), "Contexts") {
			t.Errorf("Contexts %d: the error does not name the option: %v", n, err)
		}
		if grew := after.TotalAlloc - before.TotalAlloc; grew > 1<<20 {
			t.Fatalf("Contexts %d: %d bytes allocated before the refusal (%v)", n, grew, err)
		}
	}
	h := newHost(t, host.Options{Contexts: 3})
	if h.Contexts() != 3 {
		t.Fatalf("%d Contexts, want 3", h.Contexts())
	}
}

// TestSetErrorPolicyAfterClose: a closed device refuses a new error
// policy with ErrClosed, as its other setters (SetThrottle, SetContext)
// do; an unknown policy is still refused as such. It returned nil and
// stored the policy on a device that would never run a request again.
func TestSetErrorPolicyAfterClose(t *testing.T) {
	h := newHost(t, host.Options{})
	d := nullDevice(t, h)
	if err := d.SetErrorPolicy(host.ErrorStop, host.ErrorIgnore); err != nil {
		t.Fatalf("open device: %v", err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.SetErrorPolicy(host.ErrorReport, host.ErrorReport); !isClosed(err) {
		t.Fatalf("SetErrorPolicy after Close: %v, want ErrClosed", err)
	}
	if err := d.SetErrorPolicy(host.ErrorPolicy(99), host.ErrorReport); err == nil || isClosed(err) {
		t.Fatalf("unknown policy after Close: %v, want the unknown-policy error", err)
	}
	if err := d.SetThrottle("", host.ThrottleLimits{IOPSTotal: 10}); !isClosed(err) {
		t.Fatalf("SetThrottle after Close: %v, want ErrClosed", err)
	}
}

// TestRunLoopNil: RunLoop and Drive with a nil function, and a Loop's
// NewQueue with a nil device, return errors. RunLoop(nil) panicked on the
// Loop's locked thread with a nil function call; NewQueue with a typed
// nil *Device dereferenced it.
func TestRunLoopNil(t *testing.T) {
	h := newHost(t, host.Options{})
	if err := h.RunLoop(nil); err == nil || !strings.Contains(err.Error(), "nil") {
		t.Fatalf("RunLoop(nil): %v", err)
	}
	if err := h.Drive(nil); err == nil || !strings.Contains(err.Error(), "nil") {
		t.Fatalf("Drive(nil): %v", err)
	}
	err := h.Drive(func(l *host.Loop) error {
		var d *host.Device
		if q, err := l.NewQueue(d, host.QueueOptions{}); err == nil {
			q.Close()
			return errors.New("NewQueue with a nil *Device accepted")
		}
		if q, err := l.NewQueue(nil, host.QueueOptions{}); err == nil {
			q.Close()
			return errors.New("NewQueue with a nil Device accepted")
		}
		if q, err := l.Queue(nil, host.QueueOptions{}); err == nil {
			q.Close()
			return errors.New("Queue with a nil device accepted")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
