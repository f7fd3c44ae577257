package uringtest_test

import (
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ringblk/ringblk/uring"
	"github.com/ringblk/ringblk/uring/uringtest"
)

// TestSynctestBubble: with MemFiles only, waits run on a synctest bubble's
// fake clock, so an hour-long TIMEOUT and wait take no real time.
func TestSynctestBubble(t *testing.T) {
	realStart := time.Now()
	synctest.Test(t, func(t *testing.T) {
		r := uringtest.New(uringtest.Options{})
		ts := heapTimespec(time.Hour)
		prep(t, r, func(s *uring.SQE) { s.PrepTimeout(ts, 0, 0, 1) })
		start := time.Now()
		submit(t, r, 1, -1)
		if el := time.Since(start); el != time.Hour {
			t.Errorf("bubble time advanced %v, want exactly 1h", el)
		}
		wantRes(t, results(t, reapAll(r)), 1, errno(syscall.ETIME))

		r.Hold(func(*uring.SQE) bool { return true })
		prep(t, r, func(s *uring.SQE) { s.PrepNop(2) })
		start = time.Now()
		submit(t, r, 1, 30*time.Minute)
		if el := time.Since(start); el != 30*time.Minute {
			t.Errorf("bounded wait took %v of bubble time, want 30m", el)
		}
	})
	if el := time.Since(realStart); el > 5*time.Second {
		t.Errorf("bubble took %v of real time", el)
	}
}
