package aio

import (
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// ReadSome on a socket waits for data, completes with what one read
// returns (a short read is not resubmitted), and with 0 at EOF.
func TestReadSomeSocket(t *testing.T) {
	e := newEnv(t, "kernel")
	c := e.start(Options{}, nil)
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.SetNonblock(fds[0], true); err != nil {
		t.Fatal(err)
	}
	f := NewFileFd(fds[0], func() error { return unix.Close(fds[0]) })
	defer f.Close()
	buf := make([]byte, 64)
	type result struct {
		res int
		err error
	}
	got := make(chan result, 1)
	read := func() {
		c.Schedule(func() {
			c.ReadSome(f, buf, DoneFunc(func(_ uint64, res int, err error) { got <- result{res, err} }), 0)
		})
	}
	read()
	select {
	case r := <-got:
		t.Fatalf("ReadSome on an empty socket completed at once: %+v", r)
	case <-time.After(20 * time.Millisecond):
	}
	if _, err := unix.Write(fds[1], []byte("hello")); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-got:
		if r.err != nil || r.res != 5 || string(buf[:5]) != "hello" {
			t.Fatalf("ReadSome after 5 bytes: res %d err %v data %q", r.res, r.err, buf[:r.res])
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ReadSome did not complete when data came")
	}
	unix.Close(fds[1])
	read()
	select {
	case r := <-got:
		if r.err != nil || r.res != 0 {
			t.Fatalf("ReadSome at EOF: res %d err %v, want 0", r.res, r.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ReadSome did not complete at EOF")
	}
}
