package host_test

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ringblk/ringblk/host"
	"github.com/ringblk/ringblk/internal/invariants"
)

// TestLoopIO: a host goroutine runs a Loop (Host.Drive); writes and reads
// through the Loop's queue complete inside its Wait with the data
// verified, a Wait with a timeout and nothing in flight returns false in
// time, control calls work from the Loop's goroutine and synchronous I/O
// is refused there.
func TestLoopIO(t *testing.T) {
	h := newHost(t, host.Options{})
	d, err := h.OpenDevice(image(t, h, "raw", 1<<20), host.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	err = h.Drive(func(l *host.Loop) error {
		q, err := l.Queue(d, host.QueueOptions{Depth: 8})
		if err != nil {
			return err
		}
		if q.Context() != -1 {
			t.Errorf("Loop queue Context() = %d, want -1", q.Context())
		}
		bufs := make([][]byte, 8)
		q.Plug()
		for i := range bufs {
			bufs[i] = pattern(make([]byte, 4096), i+1)
			if err := q.Write(bufs[i], int64(i)*4096, 0, uint64(i)); err != nil {
				return err
			}
		}
		q.Unplug()
		for n := 0; n < 8; {
			if !q.Wait(5 * time.Second) {
				return errors.New("no write completion in 5s")
			}
			for c, ok := q.Next(); ok; c, ok = q.Next() {
				if c.Err != nil || c.Bytes != 4096 {
					return c.Err
				}
				n++
			}
		}
		got := make([]byte, 4096)
		for i := range bufs {
			if err := q.Read(got, int64(i)*4096, 100); err != nil {
				return err
			}
			if !q.Wait(5 * time.Second) {
				return errors.New("no read completion in 5s")
			}
			c, _ := q.Next()
			if c.Err != nil || c.UserData != 100 {
				return c.Err
			}
			mustEqual(t, "read on the Loop", got, bufs[i])
		}
		start := time.Now()
		if q.Wait(30 * time.Millisecond) {
			t.Error("Wait with nothing in flight returned true")
		}
		if el := time.Since(start); el < 30*time.Millisecond || el > 2*time.Second {
			t.Errorf("Wait(30ms) took %v", el)
		}
		if g, err := d.Geometry(); err != nil || g.Size != 1<<20 {
			t.Errorf("Geometry from the Loop: %+v %v", g, err)
		}
		if _, err := d.ReadAt(got, 0); !errors.Is(err, host.ErrInContext) {
			t.Errorf("ReadAt from the Loop: %v, want ErrInContext", err)
		}
		if err := h.Close(); !errors.Is(err, host.ErrInContext) {
			t.Errorf("Host.Close from the Loop: %v, want ErrInContext", err)
		}
		// A queue left open is closed by Drive.
		return q.Read(got, 0, 7)
	})
	if err != nil {
		t.Fatal(err)
	}
	// The Loop's Context is gone; the device works on.
	got := make([]byte, 4096)
	if _, err := d.ReadAt(got, 4096); err != nil {
		t.Fatal(err)
	}
	mustEqual(t, "after the Loop", got, pattern(make([]byte, 4096), 2))
}

// TestLoopHostClose: Host.Close from another goroutine while a Loop waits
// with requests in flight closes the Loop's queue (Wait returns false,
// submissions fail with ErrClosed), waits for Drive to return and returns
// without hanging.
func TestLoopHostClose(t *testing.T) {
	h, err := host.New(host.Options{})
	if err != nil {
		t.Skip(err)
	}
	d, err := h.OpenDevice("null-co://", host.OpenOptions{Format: "null", Size: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	running := make(chan struct{})
	driveErr := make(chan error, 1)
	var fnReturned atomic.Bool
	go func() {
		driveErr <- h.Drive(func(l *host.Loop) error {
			defer fnReturned.Store(true)
			q, err := l.Queue(d, host.QueueOptions{Depth: 4})
			if err != nil {
				return err
			}
			buf := make([]byte, 512)
			close(running)
			for {
				if err := q.Read(buf, 0, 0); err != nil {
					if !isClosed(err) {
						return err
					}
					return nil
				}
				if !q.Wait(-1) {
					if err := q.Read(buf, 0, 0); !isClosed(err) {
						return errors.New("Read after a false Wait did not fail with ErrClosed")
					}
					return nil
				}
				q.Next()
			}
		})
	}()
	<-running
	time.Sleep(10 * time.Millisecond)
	closed := make(chan error, 1)
	go func() { closed <- h.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Host.Close hangs with a Loop running")
	}
	// Close waits for Drive's cleanup; Drive's caller gets its result
	// just after (the send below races Close's return, so it is not
	// asked for at once: that flaked under -race).
	if !fnReturned.Load() {
		t.Fatal("Host.Close returned before the Loop's function did")
	}
	select {
	case err := <-driveErr:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Drive did not return after Host.Close")
	}
	if err := h.Drive(func(*host.Loop) error { return nil }); !isClosed(err) {
		t.Fatalf("Drive on a closed host: %v", err)
	}
}

// TestLoopZeroAllocs: a Loop's round trip allocates nothing per request.
func TestLoopZeroAllocs(t *testing.T) {
	if raceEnabled || invariants.Enabled {
		t.Skip("allocation budgets hold for production builds (no -race, no invariants tag); make test runs them in a third pass")
	}
	h := newHost(t, host.Options{})
	d, err := h.OpenDevice(image(t, h, "raw", 1<<20), host.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	err = h.Drive(func(l *host.Loop) error {
		q, err := l.Queue(d, host.QueueOptions{Depth: 32})
		if err != nil {
			return err
		}
		bufs := make([][]byte, 32)
		for i := range bufs {
			bufs[i] = make([]byte, 4096)
		}
		round := func() {
			q.Plug()
			for i := range bufs {
				q.Read(bufs[i], int64(i)*4096, uint64(i))
			}
			q.Unplug()
			for n := 0; n < 32; {
				q.Wait(-1)
				for _, ok := q.Next(); ok; _, ok = q.Next() {
					n++
				}
			}
		}
		round()
		if a := testing.AllocsPerRun(50, round); a != 0 {
			t.Errorf("%.1f allocations per 32 requests on a Loop, want 0", a)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestEventFDCoalesced: the eventfd is written when a completion arrives
// after the host ran dry (Next found nothing), not once per batch: two
// requests completing one after the other while the host takes nothing
// leave the counter at 1; once Next has drained the queue, the next
// completion writes it again; several goroutines blocked in Wait all
// return.
func TestEventFDCoalesced(t *testing.T) {
	h := newHost(t, host.Options{})
	d := nullDevice(t, h)
	q, _ := d.Queue(host.QueueOptions{Depth: 8})
	buf := make([]byte, 512)
	settle := func(n int64) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for d.Stats().Read.Ops < uint64(n) || d.Stats().InFlight != 0 {
			if time.Now().After(deadline) {
				t.Fatal("requests do not complete")
			}
			time.Sleep(time.Millisecond)
		}
		time.Sleep(5 * time.Millisecond) // the notify BH runs after the completion
	}
	counter := func() uint64 {
		var b [8]byte
		if _, err := unix.Read(q.EventFD(), b[:]); err != nil {
			return 0 // EAGAIN: not written
		}
		return uint64(b[0]) | uint64(b[1])<<8
	}
	q.Read(buf, 0, 1)
	settle(1)
	q.Read(buf, 0, 2)
	settle(2)
	if c := counter(); c != 1 {
		t.Fatalf("eventfd counter %d after two completions the host did not take, want 1 (one write)", c)
	}
	for _, ok := q.Next(); ok; _, ok = q.Next() {
	}
	if c := counter(); c != 0 {
		t.Fatalf("eventfd counter %d with nothing new, want 0", c)
	}
	q.Read(buf, 0, 3)
	settle(3)
	if c := counter(); c != 1 {
		t.Fatalf("eventfd counter %d after a completion following an empty Next, want 1", c)
	}
	q.Next()
	var wg sync.WaitGroup
	woke := make(chan bool, 3)
	for i := 0; i < 3; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := time.Now()
			// Not woken, it sleeps its whole timeout; woken, it returns
			// well before (10 s leaves a loaded machine its stalls).
			ok := q.Wait(30 * time.Second)
			woke <- ok && time.Since(s) < 10*time.Second
		}()
	}
	time.Sleep(10 * time.Millisecond)
	q.Read(buf, 0, 4)
	wg.Wait()
	for i := 0; i < 3; i++ {
		if !<-woke {
			t.Fatal("a goroutine in Wait was not woken by a completion (it slept until its timeout)")
		}
	}
}

// TestLoopDrainedSection: another goroutine's drained section of the
// device completes while a Loop keeps reading (the Loop finishes its
// requests inside its Wait), nothing completes inside the section, and
// the Loop's reads go on after it; Device.Close from that goroutine then
// ends the Loop's queue.
func TestLoopDrainedSection(t *testing.T) {
	h := newHost(t, host.Options{})
	d, err := h.OpenDevice(image(t, h, "raw", 1<<20), host.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var completed atomic.Int64
	driveErr := make(chan error, 1)
	go func() {
		driveErr <- h.Drive(func(l *host.Loop) error {
			q, err := l.Queue(d, host.QueueOptions{Depth: 4})
			if err != nil {
				return err
			}
			buf := make([]byte, 4096)
			for i := 0; ; i++ {
				if err := q.Read(buf, int64(i%64)*4096, 0); err != nil {
					if isClosed(err) {
						return nil
					}
					return err
				}
				if !q.Wait(-1) {
					return nil // closed
				}
				if c, ok := q.Next(); ok {
					if c.Err != nil {
						return c.Err
					}
					completed.Add(1)
				}
			}
		})
	}()
	for completed.Load() < 100 {
		time.Sleep(time.Millisecond)
	}
	d.DrainedBegin()
	if n := d.FrontEnd().Root().InFlight(); n != 0 {
		t.Errorf("%d requests in flight on the node inside the drained section", n)
	}
	before := d.Stats().Read.Ops // accounted when a request completes
	time.Sleep(20 * time.Millisecond)
	if n := d.Stats().Read.Ops - before; n != 0 {
		t.Errorf("%d requests completed inside the drained section", n)
	}
	d.DrainedEnd()
	for target := completed.Load() + 100; completed.Load() < target; {
		time.Sleep(time.Millisecond)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-driveErr:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the Loop did not end after its device closed")
	}
}
