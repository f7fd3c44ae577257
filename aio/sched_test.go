package aio

import (
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

func threadPolicy(t *testing.T) uint32 {
	t.Helper()
	attr, err := unix.SchedGetAttr(0, 0)
	if err != nil {
		t.Fatal(err)
	}
	return attr.Policy
}

// TestBatchOwnerThread: with Options.Batch the owner thread runs under
// SCHED_BATCH (so a wake-up of the loop does not preempt the task that
// woke it); without it, under the normal policy; and a thread that
// Detach gives back has its normal policy again.
func TestBatchOwnerThread(t *testing.T) {
	if threadPolicy(t) != unix.SCHED_NORMAL {
		t.Skip("the test runs under a non-normal policy (chrt): Batch leaves such threads alone")
	}
	for _, batch := range []bool{false, true} {
		c, err := New(Options{ArenaSize: -1, Batch: batch})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Start(); err != nil {
			t.Skipf("no io_uring: %v", err)
		}
		var got uint32
		c.Run(func() { got = threadPolicy(t) })
		c.Stop()
		want := uint32(unix.SCHED_NORMAL)
		if batch {
			want = unix.SCHED_BATCH
		}
		if got != want {
			t.Errorf("Batch %v: owner thread policy %d, want %d", batch, got, want)
		}
	}

	// Attach/Detach on a thread this test keeps locked: the policy is
	// SCHED_BATCH while attached and normal again after Detach.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	c, err := New(Options{ArenaSize: -1, Batch: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Attach(); err != nil {
		t.Skipf("no io_uring: %v", err)
	}
	during := threadPolicy(t)
	if _, err := c.Detach(); err != nil {
		t.Fatal(err)
	}
	after := threadPolicy(t)
	if during != unix.SCHED_BATCH || after != unix.SCHED_NORMAL {
		t.Fatalf("attached thread: policy %d while attached (want %d), %d after Detach (want %d)",
			during, unix.SCHED_BATCH, after, unix.SCHED_NORMAL)
	}
}
