package aio

import (
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Completion paths are re-entrant: a callback that waits (a nested
// WaitWhile) for a sibling whose callback is queued behind it in the same
// batch must see that sibling run. A hang crashes the test binary with a
// message instead of stalling the suite.

func hangCrash(t *testing.T, done <-chan struct{}, what string) {
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		msg := t.Name() + ": " + what + " did not finish within 5s (hang)"
		go panic(msg)
		select {}
	}
}

// TestTimerCallbackWaitsForSibling: a timer callback that waits (a nested
// WaitWhile) for the timer expiring right behind it in the same batch: the
// nested poll must run that timer (completion paths are re-entrant).
func TestTimerCallbackWaitsForSibling(t *testing.T) {
	forEachRing(t, func(t *testing.T, e *env) {
		c := e.start(Options{}, nil)
		done := make(chan struct{})
		c.Schedule(func() {
			second := false
			c.AfterFunc(time.Millisecond, func() {
				c.WaitWhile(func() bool { return !second })
				close(done)
			})
			c.AfterFunc(time.Millisecond, func() { second = true })
			// Both expire before the loop looks again: one batch.
			for t0 := time.Now(); time.Since(t0) < 3*time.Millisecond; {
			}
		})
		hangCrash(t, done, "a timer callback waiting for its sibling")
	})
}

// TestFDHandlerWaitsForSibling: the same for fd handlers fired together.
func TestFDHandlerWaitsForSibling(t *testing.T) {
	forEachRing(t, func(t *testing.T, e *env) {
		c := e.start(Options{}, nil)
		var pa, pb [2]int
		for _, p := range []*[2]int{&pa, &pb} {
			if err := unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
				t.Fatal(err)
			}
			defer unix.Close(p[0])
			defer unix.Close(p[1])
		}
		read := func(fd int) {
			var b [8]byte
			unix.Read(fd, b[:])
		}
		done := make(chan struct{})
		var ha, hb *FDHandler
		c.Schedule(func() {
			second := false
			ha = c.SetFDHandler(pa[0], unix.POLLIN, func(uint32) {
				read(pa[0])
				c.WaitWhile(func() bool { return !second })
				ha.Remove()
				close(done)
			}, false)
			hb = c.SetFDHandler(pb[0], unix.POLLIN, func(uint32) {
				read(pb[0])
				second = true
				hb.Remove()
			}, false)
			// Both readable before the polls are submitted: one batch.
			unix.Write(pa[1], []byte{1})
			unix.Write(pb[1], []byte{1})
		})
		hangCrash(t, done, "an fd handler waiting for its sibling")
	})
}
