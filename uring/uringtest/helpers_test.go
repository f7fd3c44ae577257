package uringtest_test

import (
	"bytes"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/ringblk/ringblk/uring"
	"github.com/ringblk/ringblk/uring/uringtest"
)

// heapBytes returns n bytes on the Go heap: a variable-size make in a
// function that is not inlined cannot be stack-allocated, and buffers
// handed to a ring must never live on a Go stack.
//
//go:noinline
func heapBytes(n int) []byte { return make([]byte, n) }

//go:noinline
func heapIovecs(n int) []uring.Iovec { return make([]uring.Iovec, n) }

//go:noinline
func heapTimespec(d time.Duration) *uring.Timespec {
	return &uring.Timespec{Sec: int64(d / time.Second), Nsec: int64(d % time.Second)}
}

// iovecs describes bufs as an iovec array on the heap.
func iovecs(bufs ...[]byte) []uring.Iovec {
	iov := heapIovecs(len(bufs))
	for i, b := range bufs {
		iov[i] = uring.Iovec{Base: &b[0], Len: uint64(len(b))}
	}
	return iov
}

// pattern returns n deterministic non-zero bytes derived from tag.
func pattern(n int, tag byte) []byte {
	b := heapBytes(n)
	for i := range b {
		b[i] = tag + byte(i%251) + 1
		if b[i] == 0 {
			b[i] = 1
		}
	}
	return b
}

// prep gets an SQE, failing the test if the SQ is full, and lets fn fill it.
func prep(t testing.TB, r *uringtest.Ring, fn func(*uring.SQE)) {
	t.Helper()
	s := r.GetSQE()
	if s == nil {
		t.Fatalf("GetSQE: SQ full with %d pending", r.Pending())
	}
	fn(s)
}

// submit submits everything pending and fails the test on error.
func submit(t testing.TB, r *uringtest.Ring, minComplete int, timeout time.Duration) int {
	t.Helper()
	n, err := r.SubmitAndWait(minComplete, timeout)
	if err != nil {
		t.Fatalf("SubmitAndWait(%d, %v): %v", minComplete, timeout, err)
	}
	return n
}

// reapAll reaps every CQE the ring has (CQ and backlog).
func reapAll(r *uringtest.Ring) []uring.CQE {
	var out []uring.CQE
	dst := make([]uring.CQE, 3) // small on purpose: exercises repeated reaps
	for {
		n := r.Reap(dst)
		if n == 0 {
			return out
		}
		out = append(out, dst[:n]...)
	}
}

// results maps user_data to result, failing on duplicates.
func results(t testing.TB, cqes []uring.CQE) map[uint64]int32 {
	t.Helper()
	m := make(map[uint64]int32, len(cqes))
	for _, c := range cqes {
		if _, dup := m[c.UserData]; dup {
			t.Fatalf("duplicate CQE for user_data %d", c.UserData)
		}
		m[c.UserData] = c.Res
	}
	return m
}

// wantRes checks the result of one user_data.
func wantRes(t testing.TB, got map[uint64]int32, ud uint64, want int32) {
	t.Helper()
	res, ok := got[ud]
	switch {
	case !ok:
		t.Errorf("user_data %d: no CQE, want res %s", ud, resString(want))
	case res != want:
		t.Errorf("user_data %d: res %s, want %s", ud, resString(res), resString(want))
	}
}

func resString(res int32) string {
	if res < 0 {
		return fmt.Sprintf("%d (%v)", res, syscall.Errno(-res))
	}
	return fmt.Sprint(res)
}

func errno(e syscall.Errno) int32 { return -int32(e) }

func wantBytes(t testing.TB, what string, got, want []byte) {
	t.Helper()
	if !bytes.Equal(got, want) {
		i := 0
		for i < len(got) && i < len(want) && got[i] == want[i] {
			i++
		}
		t.Errorf("%s: differs at byte %d (len got %d, want %d)", what, i, len(got), len(want))
	}
}

func userDatas(cqes []uring.CQE) []uint64 {
	uds := make([]uint64, len(cqes))
	for i, c := range cqes {
		uds[i] = c.UserData
	}
	return uds
}
