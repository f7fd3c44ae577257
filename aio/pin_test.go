package aio

import (
	"errors"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func ownerAffinity(t *testing.T, c *Context) unix.CPUSet {
	t.Helper()
	var set unix.CPUSet
	var err error
	c.Run(func() { err = unix.SchedGetaffinity(0, &set) })
	if err != nil {
		t.Fatal(err)
	}
	return set
}

// TestZeroOptionsDoNotPin: a Context made from the zero Options runs on
// the process's whole affinity mask (it was pinned to CPU 0 before Pin
// existed); Pin with a CPU pins to exactly that CPU; a CPU without Pin
// and Pin without a CPU are refused with a message naming the field.
func TestZeroOptionsDoNotPin(t *testing.T) {
	var proc unix.CPUSet
	if err := unix.SchedGetaffinity(0, &proc); err != nil {
		t.Fatal(err)
	}
	if proc.Count() < 2 {
		t.Skip("one CPU in the affinity mask: pinned and unpinned look the same")
	}
	c, err := New(Options{ArenaSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Skipf("no io_uring: %v", err)
	}
	got := ownerAffinity(t, c)
	c.Stop()
	if got != proc {
		t.Fatalf("zero Options: owner affinity has %d CPUs, the process %d: pinned", got.Count(), proc.Count())
	}
	last := -1
	for i := 0; i < len(proc)*64; i++ {
		if proc.IsSet(i) {
			last = i
		}
	}
	p, err := New(Options{ArenaSize: -1, Pin: true, CPU: last})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	got = ownerAffinity(t, p)
	p.Stop()
	if got.Count() != 1 || !got.IsSet(last) {
		t.Fatalf("Pin CPU %d: owner affinity has %d CPUs", last, got.Count())
	}
	if _, err := New(Options{CPU: 1}); !errors.Is(err, syscall.EINVAL) || !strings.Contains(err.Error(), "without Pin") {
		t.Fatalf("CPU without Pin: %v", err)
	}
	if _, err := New(Options{Pin: true, CPU: NoCPU}); !errors.Is(err, syscall.EINVAL) || !strings.Contains(err.Error(), "Pin without a CPU") {
		t.Fatalf("Pin without a CPU: %v", err)
	}
}

// TestAttachDetach: a Context attached to the calling goroutine runs BHs
// and ops only inside that goroutine's Poll, reports InContext there and
// not elsewhere, and Detach stops it (a later Attach is refused, Stopped
// is closed).
func TestAttachDetach(t *testing.T) {
	c, err := New(Options{ArenaSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		if err := c.Attach(); err != nil {
			done <- err
			return
		}
		ran := false
		c.Schedule(func() { ran = true })
		if ran {
			done <- errors.New("a BH ran outside Poll")
			return
		}
		for !ran {
			c.Poll(true)
		}
		if !c.InContext() {
			done <- errors.New("InContext false on the attached goroutine")
			return
		}
		outside := make(chan bool)
		go func() { outside <- c.InContext() }()
		if <-outside {
			done <- errors.New("InContext true on another goroutine")
			return
		}
		_, err := c.Detach()
		done <- err
	}()
	if err := <-done; err != nil {
		if strings.Contains(err.Error(), "ring setup") {
			t.Skip(err)
		}
		t.Fatal(err)
	}
	select {
	case <-c.Stopped():
	default:
		t.Fatal("Stopped not closed after Detach")
	}
	if err := c.Attach(); !errors.Is(err, ErrStarted) {
		t.Fatalf("second Attach: %v", err)
	}
	if _, err := New(Options{Pin: true, CPU: 0}); err != nil {
		t.Fatal(err)
	}
	p, _ := New(Options{Pin: true, CPU: 0})
	if err := p.Attach(); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("Attach of a pinned Context: %v", err)
	}
	p.Stop()
}

// TestBusy: an idle Context (its owner asleep, nothing sent) is not
// busy; while it runs a BH it is; a stopped one is not.
func TestBusy(t *testing.T) {
	c, err := New(Options{ArenaSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Skipf("no io_uring: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for c.Busy() {
		if time.Now().After(deadline) {
			t.Fatal("an idle Context stays busy")
		}
		time.Sleep(time.Millisecond)
	}
	var inBH bool
	c.Run(func() { inBH = c.Busy() })
	if !inBH {
		t.Fatal("not busy while running a BH")
	}
	c.Stop()
	if c.Busy() {
		t.Fatal("a stopped Context is busy")
	}
}

// workerCPUsOf returns the affinity of the io-wq workers of thread tid
// (named iou-wrk-<tid>), or nil when it has none.
func workerCPUsOf(t *testing.T, tid int) []unix.CPUSet {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	var out []unix.CPUSet
	for _, e := range ents {
		comm, err := os.ReadFile("/proc/self/task/" + e.Name() + "/comm")
		if err != nil || strings.TrimSpace(string(comm)) != "iou-wrk-"+strconv.Itoa(tid) {
			continue
		}
		w, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		var set unix.CPUSet
		if unix.SchedGetaffinity(w, &set) == nil {
			out = append(out, set)
		}
	}
	return out
}

// punt reads a buffered tmpfs file through c, which the kernel cannot do
// without blocking and hands to an io-wq worker, and returns the workers'
// affinities (the workers stay 5 s after their last request).
func punt(t *testing.T, c *Context, f *File) []unix.CPUSet {
	t.Helper()
	var sets []unix.CPUSet
	var rerr error
	c.Run(func() {
		buf, _ := c.Arena().Alloc(4096)
		done := false
		for i := 0; i < 64; i++ {
			c.Read(f, buf, int64(i%16)*4096, DoneFunc(func(_ uint64, _ int, err error) { done, rerr = true, err }), 0)
			c.WaitWhile(func() bool { return !done })
			done = false
		}
		sets = workerCPUsOf(t, unix.Gettid())
	})
	if rerr != nil {
		t.Fatal(rerr)
	}
	return sets
}

// TestWorkerCPUs: the io-wq workers of a pinned Context run on its
// WorkerCPUs (issue 20: left to the kernel they inherit the owner's one
// CPU and take turns with it — the first half checks that default, which
// is what held zram at 0.57x fio at QD32).
func TestWorkerCPUs(t *testing.T) {
	var proc unix.CPUSet
	if err := unix.SchedGetaffinity(0, &proc); err != nil {
		t.Fatal(err)
	}
	if proc.Count() < 2 || !proc.IsSet(0) || !proc.IsSet(1) {
		t.Skip("needs CPUs 0 and 1")
	}
	dir := "/dev/shm"
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		t.Skip("no /dev/shm (tmpfs) for reads the kernel punts")
	}
	osf, err := os.CreateTemp(dir, "aio-workers-*")
	if err != nil {
		t.Skip(err)
	}
	defer os.Remove(osf.Name())
	if _, err := osf.Write(make([]byte, 16*4096)); err != nil {
		t.Fatal(err)
	}
	f := NewFile(osf)
	defer f.Close()

	def, err := New(Options{ArenaSize: 1 << 16, Pin: true, CPU: 0})
	if err != nil {
		t.Fatal(err)
	}
	if err := def.Start(); err != nil {
		t.Skipf("no io_uring: %v", err)
	}
	sets := punt(t, def, f)
	def.Stop()
	if len(sets) == 0 {
		t.Skip("the kernel ran tmpfs reads inline: nothing goes to io-wq here")
	}
	for _, s := range sets {
		if s.Count() != 1 || !s.IsSet(0) {
			t.Logf("default: a worker of the owner pinned to CPU 0 may run on %d CPUs (kernel placement changed?)", s.Count())
		}
	}

	// Placement applies to workers made after Start: the owner must run
	// on a thread without workers from an earlier ring (Go reuses threads
	// that other tests' unpinned Contexts gave back). A pinned owner's
	// thread ends at Stop, so each try gets another thread.
	var c *Context
	for try := 0; ; try++ {
		c, err = New(Options{ArenaSize: 1 << 16, Pin: true, CPU: 0, WorkerCPUs: []int{1}})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Start(); err != nil {
			t.Fatalf("Start with WorkerCPUs [1]: %v", err)
		}
		var before []unix.CPUSet
		c.Run(func() { before = workerCPUsOf(t, unix.Gettid()) })
		if len(before) == 0 {
			break
		}
		c.Stop()
		if try == 20 {
			t.Fatal("20 owner threads in a row already had io-wq workers")
		}
	}
	sets = punt(t, c, f)
	var st Stats
	c.Run(func() { st = c.Stats() })
	c.Stop()
	if !st.WorkersPlaced {
		t.Error("Stats.WorkersPlaced is false after a Start that placed them")
	}
	if len(sets) == 0 {
		t.Fatal("no io-wq worker after punted reads")
	}
	for _, s := range sets {
		if s.Count() != 1 || !s.IsSet(1) {
			t.Fatalf("WorkerCPUs [1]: a worker may run on %d CPUs (CPU 0: %v, CPU 1: %v)", s.Count(), s.IsSet(0), s.IsSet(1))
		}
	}
	if _, err := New(Options{WorkerCPUs: []int{-1}}); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("WorkerCPUs [-1]: %v", err)
	}
	// In range but not a CPU of this machine: the kernel would read the
	// mask as empty and accept it; Start refuses it by name.
	bad, err := New(Options{ArenaSize: -1, WorkerCPUs: []int{1000}})
	if err != nil {
		t.Fatal(err)
	}
	if err := bad.Start(); !errors.Is(err, syscall.EINVAL) || !strings.Contains(err.Error(), "CPU 1000 is not one this process may run on") {
		t.Fatalf("WorkerCPUs [1000]: Start: %v", err)
	}
}
