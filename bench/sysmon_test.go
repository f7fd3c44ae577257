package bench

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"runtime/debug"
	"testing"
	"time"

	"github.com/ringblk/ringblk/internal/proctest"
	"golang.org/x/sys/unix"
)

// otherSwitches sums the context switches of the process's threads except
// skip; a test skips where /proc/self/task cannot be read.
func otherSwitches(t *testing.T, skip int) int64 {
	t.Helper()
	n, err := proctest.OtherThreadSwitches(skip)
	if err != nil {
		t.Skipf("no /proc/self/task: %v", err)
	}
	return n
}

// TestRingEngineKeepsSysmonQuiet: the bare ring engine at QD 1 on O_DIRECT
// reads waits in io_uring_enter for every I/O, and its goroutine never
// blocks in Go. Without yieldOften the Go runtime's sysmon took that as a
// goroutine hogging its P, retook the P at every look and polled every
// 20 us for the whole run: 5000-12000 context switches a second in the
// process's other threads at 12-15k IOPS on this machine's disk (about
// one per I/O, on 2 cores), against about 550 with the clone passing
// through the scheduler every 8 ms. The test allows 2500 in one second.
func TestRingEngineKeepsSysmonQuiet(t *testing.T) {
	dir := benchDir(t)
	name := filepath.Join(dir, "f")
	if err := os.WriteFile(name, bytes.Repeat([]byte{1}, 8<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(name, unix.O_RDONLY|unix.O_DIRECT, 0)
	if errors.Is(err, unix.EINVAL) {
		t.Skipf("%s: the file system refuses O_DIRECT", dir)
	}
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(fd)
	defer debug.SetGCPercent(debug.SetGCPercent(-1)) // no GC workers in the window

	tids := make(chan int, 1)
	threadStarted = func(tid int) { tids <- tid }
	defer func() { threadStarted = nil }()
	j := mustParse(t, "--name=s", "--filename="+name, "--size=8m", "--rw=randread", "--bs=4k",
		"--iodepth=1", "--direct=1", "--ioengine=io_uring", "--runtime=2", "--time_based",
		"--norandommap", "--randrepeat=0").Jobs[0]
	type outcome struct {
		res *Result
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		res, err := Run(&Spec{Jobs: []*Job{j}}, RunOptions{})
		done <- outcome{res, err}
	}()
	var tid int
	select {
	case tid = <-tids:
	case o := <-done:
		t.Fatalf("the job ended before its clone started: %v", o.err)
	}
	const window = time.Second
	time.Sleep(300 * time.Millisecond) // past the start
	before := otherSwitches(t, tid)
	time.Sleep(window)
	cs := otherSwitches(t, tid) - before
	var o outcome
	select {
	case o = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("the job did not end")
	}
	if o.err != nil {
		t.Fatal(o.err)
	}
	if jr := o.res.Jobs[0]; jr.Err != nil {
		t.Fatal(jr.Err)
	}
	ios := o.res.Jobs[0].Clones[0].stats[DirRead].ios
	t.Logf("%d context switches outside the clone's thread in %v; %d reads in 2 s", cs, window, ios)
	if ios < 1000 {
		t.Fatalf("only %d O_DIRECT reads in 2 s: the clone did not wait in the ring as the test needs", ios)
	}
	if cs > 2500 {
		t.Fatalf("%d context switches in the process's other threads in %v of QD 1 ring waits, want at most 2500: sysmon is polling (the clone's P is retaken from its waits)", cs, window)
	}
}
