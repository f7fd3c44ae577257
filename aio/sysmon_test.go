package aio

import (
	"runtime/debug"
	"testing"
	"time"

	"github.com/ringblk/ringblk/internal/proctest"
)

// threadSwitches sums the context switches of the process's threads except
// skip; a test skips where /proc/self/task cannot be read.
func threadSwitches(t *testing.T, skip int) int64 {
	t.Helper()
	n, err := proctest.OtherThreadSwitches(skip)
	if err != nil {
		t.Skipf("no /proc/self/task: %v", err)
	}
	return n
}

// An owner loop that spends its time in short io_uring_enter waits does
// not keep the Go runtime's sysmon thread busy. The owner never blocks in
// Go, so without yieldOften its P's schedule tick never moved: every 10ms
// sysmon saw a goroutine hogging its P, took the P away while the owner
// sat in io_uring_enter, and went back to waking every 20us. That showed
// as 7000-13000 context switches in the process's other threads (sysmon's
// sleeps) over 500ms of 50us timer waits; with the owner passing through
// the scheduler every few milliseconds it is 170-400 (the yields'
// hand-offs and sysmon's 10ms ticks). The test allows 1000.
func TestOwnerLoopKeepsSysmonQuiet(t *testing.T) {
	e := newEnv(t, "kernel")
	defer debug.SetGCPercent(debug.SetGCPercent(-1)) // no GC workers in the window
	c := e.start(Options{}, nil)

	const window = 500 * time.Millisecond
	const period = 50 * time.Microsecond
	start, done := make(chan int64, 1), make(chan int, 1)
	c.Schedule(func() {
		start <- threadSwitches(t, int(c.tid.Load()))
		end := nanotime() + int64(window)
		ticks := 0
		var tm *Timer
		tm = c.AfterFunc(period, func() {
			ticks++
			if nanotime() >= end {
				done <- ticks
				return
			}
			tm.Reset(period)
		})
	})
	var ticks int
	before := <-start
	select {
	case ticks = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("timer chain did not finish")
	}
	cs := threadSwitches(t, int(c.tid.Load())) - before
	t.Logf("%d context switches outside the owner thread over %d owner waits in %v", cs, ticks, window)
	if ticks < 300 {
		t.Fatalf("only %d timer waits in %v: the loop did not wait as the test needs", ticks, window)
	}
	if limit := 2 * int64(window/time.Millisecond); cs > limit {
		t.Fatalf("%d context switches in the process's other threads during %v of short owner waits, want at most %d: sysmon is polling (the owner goroutine is retaken from its waits)", cs, window, limit)
	}
}
