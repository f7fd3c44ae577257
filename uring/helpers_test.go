package uring_test

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/ringblk/ringblk/uring"
	"golang.org/x/sys/unix"
)

// newRing sets up a ring for t on a thread locked to the test goroutine (the
// ring binds to it at the first enter) and closes it when t ends. It skips t
// when the host refuses io_uring (seccomp, kernel.io_uring_disabled, an old
// kernel): liburing's skip habit, with the reason in the message.
func newRing(t testing.TB, entries int, opts ...uring.Option) *uring.Ring {
	t.Helper()
	runtime.LockOSThread()
	r, err := uring.New(entries, opts...)
	if err != nil {
		runtime.UnlockOSThread()
		if errors.Is(err, uring.ErrUnavailable) {
			t.Skipf("skipping: io_uring is unavailable here: %v", err)
		}
		t.Fatalf("uring.New(%d): %v", entries, err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		runtime.UnlockOSThread()
	})
	return r
}

// setups are the ring configurations the core tests run against: what New
// picks on this kernel, what a 5.19–6.0 kernel would give, and the plain
// ring of 5.10–5.17.
var setups = []struct {
	name string
	opts []uring.Option
}{
	{"best", nil},
	{"coop", []uring.Option{uring.WithoutSetupFlags(uring.IORING_SETUP_SINGLE_ISSUER)}},
	{"plain", []uring.Option{
		uring.WithoutSetupFlags(uring.IORING_SETUP_SINGLE_ISSUER | uring.IORING_SETUP_COOP_TASKRUN |
			uring.IORING_SETUP_TASKRUN_FLAG | uring.IORING_SETUP_SUBMIT_ALL),
		uring.WithoutRegisteredRing(),
	}},
}

// forEachSetup runs fn as a subtest per ring configuration.
func forEachSetup(t *testing.T, entries int, fn func(t *testing.T, r *uring.Ring)) {
	for _, s := range setups {
		t.Run(s.name, func(t *testing.T) {
			fn(t, newRing(t, entries, s.opts...))
		})
	}
}

// waitCQEs submits what is pending and collects exactly n CQEs, failing t if
// they do not arrive within 5 s.
func waitCQEs(t testing.TB, r *uring.Ring, n int) []uring.CQE {
	t.Helper()
	got := make([]uring.CQE, 0, n)
	buf := make([]uring.CQE, n+1)
	deadline := time.Now().Add(5 * time.Second)
	for len(got) < n {
		if time.Now().After(deadline) {
			t.Fatalf("got %d of %d CQEs after 5s: %+v", len(got), n, got)
		}
		if _, err := r.SubmitAndWait(n-len(got), 100*time.Millisecond); err != nil {
			t.Fatalf("SubmitAndWait: %v", err)
		}
		k := r.Reap(buf)
		got = append(got, buf[:k]...)
	}
	if len(got) > n {
		t.Fatalf("got %d CQEs, want %d: %+v", len(got), n, got)
	}
	return got
}

// wait1 submits and returns the single next CQE.
func wait1(t testing.TB, r *uring.Ring) uring.CQE {
	t.Helper()
	return waitCQEs(t, r, 1)[0]
}

// getSQE returns an SQE or fails t.
func getSQE(t testing.TB, r *uring.Ring) *uring.SQE {
	t.Helper()
	sqe := r.GetSQE()
	if sqe == nil {
		t.Fatal("GetSQE: SQ full")
	}
	return sqe
}

// mmapBuf returns size bytes of anonymous, page-aligned memory outside the
// Go heap, as kernel-visible buffers must be.
func mmapBuf(t testing.TB, size int) []byte {
	t.Helper()
	b, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		t.Fatalf("mmap %d: %v", size, err)
	}
	t.Cleanup(func() { unix.Munmap(b) })
	return b
}

// iovecs carves n Iovecs out of mmap'd memory, so the array the kernel reads
// is never on a goroutine stack.
func iovecs(t testing.TB, n int) []uring.Iovec {
	t.Helper()
	mem := mmapBuf(t, 4096)
	// SAFETY: mem is page-aligned and 4096 bytes, room for 256 Iovecs; it
	// stays mapped until the test ends.
	return unsafe.Slice((*uring.Iovec)(unsafe.Pointer(&mem[0])), n)
}

// tempFile creates a file of size bytes, every byte fill, under /tmp (ext4
// here; never /dev/shm, where O_DIRECT and inline completion differ).
func tempFile(t testing.TB, size int, fill byte) *os.File {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "uring-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	f, err := os.Create(dir + "/data")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if size > 0 {
		b := make([]byte, size)
		for i := range b {
			b[i] = fill
		}
		if _, err := f.WriteAt(b, 0); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// pattern fills b with a byte sequence that depends on seed and position.
func pattern(b []byte, seed byte) {
	for i := range b {
		b[i] = byte(i*7) ^ seed
	}
}

// kernelAtLeast reports whether the running kernel is major.minor or newer.
func kernelAtLeast(t testing.TB, major, minor int) bool {
	t.Helper()
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	rel := unix.ByteSliceToString(u.Release[:])
	var maj, min int
	parts := strings.SplitN(rel, ".", 3)
	if len(parts) < 2 {
		t.Fatalf("cannot parse kernel release %q", rel)
	}
	maj, _ = strconv.Atoi(parts[0])
	min, _ = strconv.Atoi(strings.TrimFunc(parts[1], func(r rune) bool { return r < '0' || r > '9' }))
	return maj > major || (maj == major && min >= minor)
}

// errno is the CQE result as an errno, for messages.
func errno(c uring.CQE) string {
	if c.Res >= 0 {
		return fmt.Sprintf("res=%d", c.Res)
	}
	return fmt.Sprintf("res=%d (%v)", c.Res, c.Err())
}

// lockAndRun runs fn on the calling goroutine locked to its OS thread.
func lockAndRun(fn func()) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	fn()
}
