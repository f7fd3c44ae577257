package uring_test

import (
	"bytes"
	"encoding/binary"
	"os"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/ringblk/ringblk/uring"
	"golang.org/x/sys/unix"
)

func TestReadWrite(t *testing.T) {
	forEachSetup(t, 8, func(t *testing.T, r *uring.Ring) {
		f := tempFile(t, 64<<10, 0)
		fd := int32(f.Fd())
		buf := mmapBuf(t, 3*4096)
		src, dst := buf[:4096], buf[4096:8192]
		pattern(src, 0x5a)

		getSQE(t, r).PrepWrite(fd, src, 4096, 1)
		if c := wait1(t, r); c.UserData != 1 || c.Res != 4096 {
			t.Fatalf("write: %s", errno(c))
		}
		check := make([]byte, 4096)
		if _, err := f.ReadAt(check, 4096); err != nil || !bytes.Equal(check, src) {
			t.Fatalf("pread after WRITE: %v, equal=%t", err, bytes.Equal(check, src))
		}

		getSQE(t, r).PrepRead(fd, dst, 4096, 2)
		if c := wait1(t, r); c.UserData != 2 || c.Res != 4096 || !bytes.Equal(dst, src) {
			t.Fatalf("read: %s, equal=%t", errno(c), bytes.Equal(dst, src))
		}

		// A read that crosses EOF is short, not an error.
		getSQE(t, r).PrepRead(fd, dst, 64<<10-100, 3)
		if c := wait1(t, r); c.Res != 100 {
			t.Fatalf("read across EOF: %s, want 100", errno(c))
		}
	})
}

func TestReadvWritev(t *testing.T) {
	r := newRing(t, 8)
	f := tempFile(t, 0, 0)
	fd := int32(f.Fd())
	mem := mmapBuf(t, 5*4096)
	a, b := mem[:4096], mem[4096:4096+1000]
	pattern(a, 1)
	pattern(b, 2)
	iov := iovecs(t, 2)
	iov[0] = uring.Iovec{Base: &a[0], Len: uint64(len(a))}
	iov[1] = uring.Iovec{Base: &b[0], Len: uint64(len(b))}
	getSQE(t, r).PrepWritev(fd, iov, 8192, 1)
	if c := wait1(t, r); c.Res != 5096 {
		t.Fatalf("writev: %s", errno(c))
	}
	want := append(append([]byte{}, a...), b...)
	got := make([]byte, len(want))
	if _, err := f.ReadAt(got, 8192); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("pread after WRITEV: %v equal=%t", err, bytes.Equal(got, want))
	}

	c1, c2 := mem[2*4096:2*4096+96], mem[3*4096:3*4096+5000-96]
	iov2 := iovecs(t, 2)
	iov2[0] = uring.Iovec{Base: &c1[0], Len: uint64(len(c1))}
	iov2[1] = uring.Iovec{Base: &c2[0], Len: uint64(len(c2))}
	getSQE(t, r).PrepReadv(fd, iov2, 8192, 2)
	if c := wait1(t, r); c.Res != 5000 {
		t.Fatalf("readv: %s", errno(c))
	}
	if !bytes.Equal(append(append([]byte{}, c1...), c2...), want[:5000]) {
		t.Fatal("READV data differs from what WRITEV wrote")
	}
}

func TestFixedBuffers(t *testing.T) {
	r := newRing(t, 8)
	f := tempFile(t, 16<<10, 0)
	fd := int32(f.Fd())
	reg := mmapBuf(t, 4*4096)
	if err := r.RegisterBuffers([][]byte{reg[:2*4096], reg[2*4096:]}); err != nil {
		t.Fatal(err)
	}
	if err := r.RegisterBuffers([][]byte{reg}); err == nil {
		t.Error("second RegisterBuffers succeeded")
	}
	src, dst := reg[100:4196], reg[3*4096:4*4096]
	pattern(src, 9)
	getSQE(t, r).PrepWriteFixed(fd, src, 4096, 0, 1)
	if c := wait1(t, r); c.Res != 4096 {
		t.Fatalf("WRITE_FIXED: %s", errno(c))
	}
	getSQE(t, r).PrepReadFixed(fd, dst, 4096, 1, 2)
	if c := wait1(t, r); c.Res != 4096 || !bytes.Equal(dst, src) {
		t.Fatalf("READ_FIXED: %s equal=%t", errno(c), bytes.Equal(dst, src))
	}
	// A buffer outside the registered one is refused per operation.
	other := mmapBuf(t, 4096)
	getSQE(t, r).PrepReadFixed(fd, other, 0, 0, 3)
	if c := wait1(t, r); c.Res != -int32(unix.EFAULT) {
		t.Fatalf("READ_FIXED outside the registered buffer: %s, want EFAULT", errno(c))
	}
	if err := r.UnregisterBuffers(); err != nil {
		t.Fatal(err)
	}
	if err := r.RegisterBuffers(nil); err == nil {
		t.Error("RegisterBuffers(nil) succeeded")
	}
	if err := r.RegisterBuffers([][]byte{reg, {}}); err == nil {
		t.Error("RegisterBuffers with an empty buffer succeeded")
	}
}

func TestFsyncAndFdatasync(t *testing.T) {
	r := newRing(t, 8)
	f := tempFile(t, 8192, 1)
	fd := int32(f.Fd())
	getSQE(t, r).PrepFsync(fd, false, 1)
	getSQE(t, r).PrepFsync(fd, true, 2)
	for _, c := range waitCQEs(t, r, 2) {
		if c.Res != 0 {
			t.Errorf("fsync user_data %d: %s", c.UserData, errno(c))
		}
	}
	ro, err := os.Open(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	getSQE(t, r).PrepFsync(int32(ro.Fd()), true, 3)
	if c := wait1(t, r); c.Res != 0 {
		t.Fatalf("fdatasync of a read-only fd: %s", errno(c))
	}
}

func TestFallocate(t *testing.T) {
	r := newRing(t, 8)
	const size = 64 << 10
	f := tempFile(t, size, 0xab)
	fd := int32(f.Fd())
	getSQE(t, r).PrepFallocate(fd, uring.FALLOC_FL_PUNCH_HOLE|uring.FALLOC_FL_KEEP_SIZE, 8192, 4096, 1)
	getSQE(t, r).PrepFallocate(fd, uring.FALLOC_FL_ZERO_RANGE, 20000, 10000, 2)
	for _, c := range waitCQEs(t, r, 2) {
		if c.Res == -int32(unix.EOPNOTSUPP) {
			t.Skipf("skipping: the filesystem under /tmp does not support this fallocate mode (user_data %d)", c.UserData)
		}
		if c.Res != 0 {
			t.Fatalf("fallocate user_data %d: %s", c.UserData, errno(c))
		}
	}
	got := make([]byte, size)
	if _, err := f.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	for i, v := range got {
		zero := (i >= 8192 && i < 12288) || (i >= 20000 && i < 30000)
		if zero && v != 0 || !zero && v != 0xab {
			t.Fatalf("byte %d = %#x after punch hole [8192,12288) and zero range [20000,30000)", i, v)
		}
	}
	if st, _ := f.Stat(); st.Size() != size {
		t.Fatalf("size %d after KEEP_SIZE operations, want %d", st.Size(), size)
	}
	getSQE(t, r).PrepFallocate(fd, 0, size, size, 3)
	if c := wait1(t, r); c.Res != 0 {
		t.Fatalf("fallocate extend: %s", errno(c))
	}
	if st, _ := f.Stat(); st.Size() != 2*size {
		t.Fatalf("size %d after extending fallocate, want %d", st.Size(), 2*size)
	}
}

func TestPollAddOnPipe(t *testing.T) {
	forEachSetup(t, 8, func(t *testing.T, r *uring.Ring) {
		wfd := blockedPoll(t, r, 7)
		if _, err := r.SubmitAndWait(1, 20*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		var c [1]uring.CQE
		if k := r.Reap(c[:]); k != 0 {
			t.Fatalf("poll completed on an empty pipe: %+v", c[0])
		}
		if _, err := unix.Write(wfd, []byte("x")); err != nil {
			t.Fatal(err)
		}
		if got := wait1(t, r); got.UserData != 7 || got.Res&unix.POLLIN == 0 {
			t.Fatalf("poll CQE %+v", got)
		}
	})
}

func TestEventfdRead(t *testing.T) {
	r := newRing(t, 8)
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(efd)
	mem := mmapBuf(t, 4096)
	// SAFETY: mem is at least 8 bytes and mapped until the test ends.
	word := (*[8]byte)(unsafe.Pointer(&mem[0]))
	getSQE(t, r).PrepEventfdRead(int32(efd), word, 5)
	if _, err := r.SubmitAndWait(1, 10*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if r.Ready() != 0 {
		t.Fatal("eventfd read completed before anything was written")
	}
	var v [8]byte
	binary.LittleEndian.PutUint64(v[:], 7)
	if _, err := unix.Write(efd, v[:]); err != nil {
		t.Fatal(err)
	}
	if c := wait1(t, r); c.UserData != 5 || c.Res != 8 || binary.LittleEndian.Uint64(word[:]) != 7 {
		t.Fatalf("eventfd read: %s value %d", errno(c), binary.LittleEndian.Uint64(word[:]))
	}
}

// timespec returns a Timespec in mmap'd memory (the kernel reads it when it
// consumes the SQE, so it must not be on a goroutine stack).
func timespec(t *testing.T, d time.Duration) *uring.Timespec {
	mem := mmapBuf(t, 4096)
	// SAFETY: mem is page-aligned, 4096 bytes, mapped until the test ends.
	ts := (*uring.Timespec)(unsafe.Pointer(&mem[0]))
	ts.Sec, ts.Nsec = int64(d/time.Second), int64(d%time.Second)
	return ts
}

func TestTimeoutOp(t *testing.T) {
	r := newRing(t, 8)
	start := time.Now()
	getSQE(t, r).PrepTimeout(timespec(t, 20*time.Millisecond), 0, 0, 1)
	c := wait1(t, r)
	if d := time.Since(start); c.Res != -int32(unix.ETIME) || d < 19*time.Millisecond {
		t.Fatalf("timeout: %s after %v", errno(c), d)
	}
	// With a count, the timeout completes (res 0) once that many other
	// CQEs were posted, long before its time.
	getSQE(t, r).PrepTimeout(timespec(t, 10*time.Second), 1, 0, 2)
	getSQE(t, r).PrepNop(3)
	start = time.Now()
	got := waitCQEs(t, r, 2)
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("count timeout took %v", d)
	}
	for _, c := range got {
		if c.Res != 0 {
			t.Errorf("user_data %d: %s", c.UserData, errno(c))
		}
	}
}

func TestAsyncCancel(t *testing.T) {
	r := newRing(t, 8)
	blockedPoll(t, r, 1)
	if _, err := r.SubmitAndWait(0, 0); err != nil {
		t.Fatal(err)
	}
	getSQE(t, r).PrepCancel(1, 2)
	got := map[uint64]int32{}
	for _, c := range waitCQEs(t, r, 2) {
		got[c.UserData] = c.Res
	}
	if got[1] != -int32(unix.ECANCELED) || got[2] != 0 {
		t.Fatalf("cancel: poll %d (want -ECANCELED), cancel %d (want 0)", got[1], got[2])
	}
	getSQE(t, r).PrepCancel(99, 3)
	if c := wait1(t, r); c.Res != -int32(unix.ENOENT) {
		t.Fatalf("cancel of an unknown request: %s, want ENOENT", errno(c))
	}
}

func TestLinkChain(t *testing.T) {
	r := newRing(t, 8)
	f := tempFile(t, 0, 0)
	fd := int32(f.Fd())
	mem := mmapBuf(t, 2*4096)
	src, dst := mem[:4096], mem[4096:]
	pattern(src, 3)
	w := getSQE(t, r)
	w.PrepWrite(fd, src, 0, 1)
	w.SetLink()
	s := getSQE(t, r)
	s.PrepFsync(fd, true, 2)
	s.SetLink()
	getSQE(t, r).PrepRead(fd, dst, 0, 3)
	got := waitCQEs(t, r, 3)
	for i, want := range []int32{4096, 0, 4096} {
		if got[i].UserData != uint64(i+1) || got[i].Res != want {
			t.Fatalf("link CQE %d: %+v, want user_data %d res %d", i, got[i], i+1, want)
		}
	}
	if !bytes.Equal(dst, src) {
		t.Fatal("linked read did not see the linked write")
	}

	// A failed link member cancels the rest of the chain.
	bad := getSQE(t, r)
	bad.PrepRead(1<<20, dst, 0, 4) // no such fd
	bad.SetLink()
	getSQE(t, r).PrepNop(5)
	got = waitCQEs(t, r, 2)
	if got[0].UserData != 4 || got[0].Res != -int32(unix.EBADF) || got[1].UserData != 5 || got[1].Res != -int32(unix.ECANCELED) {
		t.Fatalf("broken chain: %+v", got)
	}
}

func TestDrainFlag(t *testing.T) {
	r := newRing(t, 8)
	wfd := blockedPoll(t, r, 1)
	nop := getSQE(t, r)
	nop.PrepNop(2)
	nop.SetDrain()
	if _, err := r.SubmitAndWait(1, 30*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if r.Ready() != 0 {
		t.Fatal("drained NOP completed before the earlier poll")
	}
	unix.Write(wfd, []byte{1})
	got := waitCQEs(t, r, 2)
	if got[0].UserData != 1 || got[1].UserData != 2 || got[1].Res != 0 {
		t.Fatalf("drain order: %+v", got)
	}
}

func TestBadFdGivesEBADF(t *testing.T) {
	r := newRing(t, 8)
	f := tempFile(t, 4096, 1)
	dup, err := unix.Dup(int(f.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(dup)
	buf := mmapBuf(t, 4096)
	getSQE(t, r).PrepRead(int32(dup), buf, 0, 1) // closed just now
	getSQE(t, r).PrepWrite(1<<20, buf, 0, 2)     // never opened
	getSQE(t, r).PrepFsync(-1, false, 3)
	for _, c := range waitCQEs(t, r, 3) {
		if c.Res != -int32(unix.EBADF) {
			t.Errorf("user_data %d: %s, want EBADF", c.UserData, errno(c))
		}
		if c.Err() != syscall.EBADF {
			t.Errorf("CQE.Err = %v", c.Err())
		}
	}
}

// TestODirectMisalignedGivesEINVAL: O_DIRECT on ext4 needs the buffer, the
// length and the offset aligned to the logical block size; misaligned
// requests fail with -EINVAL in their CQE, and the ring carries on.
func TestODirectMisalignedGivesEINVAL(t *testing.T) {
	r := newRing(t, 8)
	f := tempFile(t, 64<<10, 0x11)
	var st unix.Statfs_t
	if err := unix.Statfs(f.Name(), &st); err != nil {
		t.Fatal(err)
	}
	if st.Type == unix.TMPFS_MAGIC {
		t.Skip("skipping: /tmp is tmpfs, which has no O_DIRECT")
	}
	d, err := os.OpenFile(f.Name(), os.O_RDWR|syscall.O_DIRECT, 0)
	if err != nil {
		t.Skipf("skipping: O_DIRECT open failed: %v", err)
	}
	defer d.Close()
	fd := int32(d.Fd())
	buf := mmapBuf(t, 3*4096)
	getSQE(t, r).PrepRead(fd, buf[:4096], 4096, 1) // aligned: the control
	getSQE(t, r).PrepRead(fd, buf[1:4097], 0, 2)   // misaligned address
	getSQE(t, r).PrepRead(fd, buf[:100], 0, 3)     // misaligned length
	getSQE(t, r).PrepRead(fd, buf[4096:8192], 1, 4)
	got := map[uint64]int32{}
	for _, c := range waitCQEs(t, r, 4) {
		got[c.UserData] = c.Res
	}
	if got[1] != 4096 || buf[0] != 0x11 {
		t.Fatalf("aligned O_DIRECT read: res %d first byte %#x", got[1], buf[0])
	}
	for ud := uint64(2); ud <= 4; ud++ {
		if got[ud] != -int32(unix.EINVAL) {
			t.Errorf("misaligned O_DIRECT read %d: res %d, want -EINVAL", ud, got[ud])
		}
	}
}
