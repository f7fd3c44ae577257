package host_test

import (
	"sync"
	"testing"
	"time"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
	"github.com/ringblk/ringblk/host"
)

// memDevice is a device over a 1 MiB memory node, whose bytes the test
// can read directly.
func memDevice(t *testing.T, h *host.Host, o host.OpenOptions) (*host.Device, *blocktest.Mem) {
	t.Helper()
	mem := blocktest.NewMem(1 << 20)
	n, err := h.Graph().Open(mem, block.Options{Name: "mem"})
	if err != nil {
		t.Fatal(err)
	}
	d, err := h.NewDevice(n, o)
	if err != nil {
		t.Fatal(err)
	}
	return d, mem
}

// completions collects a callback-mode queue's completions.
type completions struct {
	mu  sync.Mutex
	got []host.Completion
}

func (c *completions) add(x host.Completion) { c.mu.Lock(); c.got = append(c.got, x); c.mu.Unlock() }

func (c *completions) list() []host.Completion {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]host.Completion(nil), c.got...)
}

// within runs fn and fails the test if it does not return in time; then
// it runs unblock (what the old code waited for) and waits for fn.
func within(t *testing.T, what string, d time.Duration, fn func() error, unblock func()) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- fn() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	case <-time.After(d):
		unblock()
		<-done
		t.Fatalf("%s did not return within %v", what, d)
	}
}

// TestQueueCloseInsideOwnDrainedSection: a queue closed while the host
// holds its device drained does not wait for the section's end: the
// requests the section parked complete with ErrClosed (never issued,
// outside the error policy), as QEMU fails a detached BlockBackend's
// queued requests; the section stays in force, and the device works
// after it. Close waited for the section, so a host that closes a
// virtqueue's queue while it holds the device drained deadlocked.
func TestQueueCloseInsideOwnDrainedSection(t *testing.T) {
	h := newHost(t, host.Options{})
	// ErrorIgnore would turn the cancellation into a success.
	d, mem := memDevice(t, h, host.OpenOptions{WriteError: host.ErrorIgnore})
	var c completions
	q, err := d.Queue(host.QueueOptions{Depth: 8, OnComplete: c.add})
	if err != nil {
		t.Fatal(err)
	}
	d.DrainedBegin()
	for i := 0; i < 4; i++ {
		if err := q.Write([]byte{0xaa}, int64(i), 0, uint64(i)); err != nil {
			t.Fatal(err)
		}
	}
	for d.Stats().Parked < 4 {
		time.Sleep(time.Millisecond)
	}
	within(t, "Queue.Close inside the device's drained section", 5*time.Second, q.Close, d.DrainedEnd)
	got := c.list()
	if len(got) != 4 {
		t.Fatalf("%d completions, want 4", len(got))
	}
	for i, x := range got {
		if !isClosed(x.Err) || x.UserData != uint64(i) {
			t.Fatalf("completion %d: %+v, want user data %d with ErrClosed", i, x, i)
		}
	}
	if st := d.Stats(); st.Write.Errors != 4 || st.Parked != 0 || st.InFlight != 0 {
		t.Fatalf("stats: %d write errors, %d parked, %d in flight; want 4, 0, 0", st.Write.Errors, st.Parked, st.InFlight)
	}
	if n := d.FrontEnd().Quiesce(); n == 0 {
		t.Fatal("the section ended with the queue's close")
	}
	d.DrainedEnd()
	if mem.Data[0] != 0 {
		t.Fatal("a write of the closed queue reached the image")
	}
	if _, err := d.WriteAt([]byte{1}, 0); err != nil {
		t.Fatal(err)
	}
	if mem.Data[0] != 1 {
		t.Fatal("the device does not write after the section")
	}
}

// TestLoopQueueCloseInsideDrainedSection: the same for a Loop's queue
// closed on the Loop (closeOnLoop), and for one the Loop leaves open,
// closed by Drive's return.
func TestLoopQueueCloseInsideDrainedSection(t *testing.T) {
	h := newHost(t, host.Options{})
	d, _ := memDevice(t, h, host.OpenOptions{})
	for _, explicit := range []bool{true, false} {
		d.DrainedBegin()
		var c completions
		within(t, "a Loop closing its queue inside a drained section", 5*time.Second, func() error {
			return h.Drive(func(l *host.Loop) error {
				q, err := l.Queue(d, host.QueueOptions{OnComplete: c.add})
				if err != nil {
					return err
				}
				if err := q.Read(make([]byte, 512), 0, 9); err != nil {
					return err
				}
				for d.Stats().Parked == 0 {
					l.Poll(false)
				}
				if explicit {
					return q.Close()
				}
				return nil
			})
		}, d.DrainedEnd)
		if got := c.list(); len(got) != 1 || !isClosed(got[0].Err) {
			t.Fatalf("explicit close %v: completions %+v, want the read with ErrClosed", explicit, got)
		}
		d.DrainedEnd()
	}
}

// TestDeviceCloseInsideDrainAll: a device closed while the host holds a
// DrainAllBegin section (which only Host.Close ends) returns, failing the
// requests the section parked with ErrClosed; the section goes on for the
// other devices.
func TestDeviceCloseInsideDrainAll(t *testing.T) {
	h := newHost(t, host.Options{})
	d, _ := memDevice(t, h, host.OpenOptions{})
	other := nullDevice(t, h)
	var c completions
	q, err := d.Queue(host.QueueOptions{OnComplete: c.add})
	if err != nil {
		t.Fatal(err)
	}
	h.DrainAllBegin()
	if err := q.Write(make([]byte, 512), 0, 0, 3); err != nil {
		t.Fatal(err)
	}
	for d.Stats().Parked == 0 {
		time.Sleep(time.Millisecond)
	}
	within(t, "Device.Close inside DrainAllBegin", 5*time.Second, d.Close, h.DrainAllEnd)
	if got := c.list(); len(got) != 1 || !isClosed(got[0].Err) {
		t.Fatalf("completions %+v, want the write with ErrClosed", got)
	}
	if n := other.FrontEnd().Quiesce(); n == 0 {
		t.Fatal("the other device left the section")
	}
	h.DrainAllEnd()
	if _, err := other.ReadAt(make([]byte, 512), 0); err != nil {
		t.Fatal(err)
	}
}
