package aio

import (
	"errors"
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
