package host_test

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ringblk/ringblk/host"
)

// TestCloseWaitsForDrainedBegin: Device.Close ends the drained sections
// begun through the device, but not one whose DrainedBegin still waits
// for the node to quiesce: it waits for that begin, then ends the
// section. Host.Close and DrainAllBegin alike. The count went up before the begin, so Close ended the section
// while its begin was still draining (the device model got DrainedEnd
// before DrainedBegin had returned, and the begin then found its node
// not quiesced: an assertion under -tags invariants). The begin is held
// here by the device's DrainedPoll callback reporting work.
func TestCloseWaitsForDrainedBegin(t *testing.T) {
	for _, all := range []bool{false, true} {
		closeDuringBegin(t, all)
	}
}

// closeDuringBegin closes the device (all: the host) while a drained
// section of it (all: of everything) is beginning.
func closeDuringBegin(t *testing.T, all bool) {
	h, err := host.New(host.Options{})
	if err != nil {
		t.Skipf("host: %v", err)
	}
	defer h.Close()
	var busy, began, endedEarly atomic.Bool
	busy.Store(true)
	polled := make(chan struct{}, 1)
	ended := make(chan struct{}, 1)
	d, err := h.OpenDevice("null-co://", host.OpenOptions{Format: "null", Size: 1 << 20, Callbacks: host.DeviceCallbacks{
		DrainedPoll: func() bool {
			select {
			case polled <- struct{}{}:
			default:
			}
			return busy.Load()
		},
		DrainedEnd: func() {
			if !began.Load() {
				endedEarly.Store(true)
			}
			select {
			case ended <- struct{}{}:
			default:
			}
		},
	}})
	if err != nil {
		t.Fatal(err)
	}
	n := d.FrontEnd().Root()
	beginDone := make(chan int, 1)
	go func() {
		if all {
			h.DrainAllBegin()
		} else {
			d.DrainedBegin()
		}
		began.Store(true)
		beginDone <- n.Quiesce()
	}()
	<-polled // the begin waits for the device model
	closeDone := make(chan error, 1)
	go func() {
		if all {
			closeDone <- h.Close()
		} else {
			closeDone <- d.Close()
		}
	}()
	// Close must not end the section now; before, it did at once. The
	// bound only limits how long the test looks for that wrong callback.
	select {
	case <-ended:
	case <-time.After(200 * time.Millisecond):
	}
	busy.Store(false)
	h.Graph().Control(func() {}) // wake the main Context: the drain looks again
	what := "device"
	if all {
		what = "host"
	}
	if q := <-beginDone; q <= 0 {
		t.Errorf("%s: the begin returned with its node's quiesce count at %d", what, q)
	}
	select {
	case err := <-closeDone:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: Close hangs", what)
	}
	if endedEarly.Load() {
		t.Fatalf("%s: Close ended the drained section while its begin was still draining", what)
	}
}

// TestDrainedPollGoesFalse: a drain waiting for the device model's
// DrainedPoll ends once the callback stops reporting work, although
// nothing else happens: the model's work ends on its own goroutines,
// which cannot wake the drain's Context. The drain slept until some other
// event woke that Context, here forever.
func TestDrainedPollGoesFalse(t *testing.T) {
	h := newHost(t, host.Options{})
	var busy atomic.Bool
	busy.Store(true)
	polled := make(chan struct{}, 1)
	d, err := h.OpenDevice("null-co://", host.OpenOptions{Format: "null", Size: 1 << 20, Callbacks: host.DeviceCallbacks{
		DrainedPoll: func() bool {
			select {
			case polled <- struct{}{}:
			default:
			}
			return busy.Load()
		},
	}})
	if err != nil {
		t.Fatal(err)
	}
	for _, section := range []struct {
		name       string
		begin, end func()
	}{
		{"device", d.DrainedBegin, d.DrainedEnd},
		{"all", h.DrainAllBegin, h.DrainAllEnd},
	} {
		busy.Store(true)
		done := make(chan struct{})
		go func() { section.begin(); close(done) }()
		<-polled
		busy.Store(false)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			h.Graph().Control(func() {}) // wake it, to end the test
			<-done
			t.Fatalf("%s: the drain still waits 10 s after DrainedPoll went false", section.name)
		}
		section.end()
	}
}

// TestCloseWaitsForOpen: Host.Close waits for calls under way (here an
// open, held after the host admitted it) before it stops the Contexts;
// the open then finds the host closed, closes what it opened and returns
// ErrClosed. Close stopped the Contexts under it, and the open's next
// control step ran on a stopped main Context: the assertion 'Run on
// Context ringblk-main that is not running' under -tags invariants, found
// by opens racing a close.
func TestCloseWaitsForOpen(t *testing.T) {
	h, err := host.New(host.Options{})
	if err != nil {
		t.Skipf("host: %v", err)
	}
	p := image(t, h, "qcow2", 1<<20)
	held, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	host.SetEnterHook(func() { once.Do(func() { close(held); <-release }) })
	defer host.SetEnterHook(nil)
	opened := make(chan error, 1)
	go func() {
		d, err := h.OpenDevice(p, host.OpenOptions{})
		if err == nil {
			err = errors.New("a device opened on a closed host")
			d.Close()
		}
		opened <- err
	}()
	<-held
	closed := make(chan error, 1)
	go func() { closed <- h.Close() }()
	// Close must wait for the open; the bound only limits how long the
	// test gives a wrong Close to finish first.
	select {
	case err := <-closed:
		close(release)
		t.Fatalf("Close returned (%v) with an open under way", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(release)
	if err := <-opened; !isClosed(err) {
		t.Fatalf("the open under way: %v, want ErrClosed", err)
	}
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
}
