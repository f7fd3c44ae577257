package uringtest_test

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ringblk/ringblk/uring"
	"github.com/ringblk/ringblk/uring/uringtest"
)

// fileTarget is a place the data tests write to and read back from.
type fileTarget struct {
	name     string
	open     func(t *testing.T, r *uringtest.Ring, initial []byte) int32
	contents func(t *testing.T, r *uringtest.Ring, fd int32) []byte
}

var targets = []fileTarget{
	{
		name: "mem",
		open: func(t *testing.T, r *uringtest.Ring, initial []byte) int32 { return r.AddMemFile(initial) },
		contents: func(t *testing.T, r *uringtest.Ring, fd int32) []byte {
			return r.MemFile(fd).Bytes()
		},
	},
	{
		name: "real",
		open: func(t *testing.T, r *uringtest.Ring, initial []byte) int32 {
			path := filepath.Join(t.TempDir(), "img")
			if err := os.WriteFile(path, initial, 0o600); err != nil {
				t.Fatal(err)
			}
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { f.Close() })
			return int32(f.Fd())
		},
		contents: func(t *testing.T, r *uringtest.Ring, fd int32) []byte {
			var st unix.Stat_t
			if err := unix.Fstat(int(fd), &st); err != nil {
				t.Fatal(err)
			}
			b := make([]byte, st.Size)
			if _, err := unix.Pread(int(fd), b, 0); err != nil {
				t.Fatal(err)
			}
			return b
		},
	},
}

func TestReadWriteData(t *testing.T) {
	for _, tg := range targets {
		t.Run(tg.name, func(t *testing.T) {
			r := uringtest.New(uringtest.Options{Seed: uringtest.Seed(t)})
			initial := pattern(8192, 7)
			fd := tg.open(t, r, initial)
			want := bytes.Clone(initial)

			// WRITE, then WRITEV across a 3-part iovec, growing the file.
			w1 := pattern(1000, 50)
			a, b, c := pattern(100, 60), pattern(4000, 70), pattern(1, 80)
			prep(t, r, func(s *uring.SQE) { s.PrepWrite(fd, w1, 100, 1) })
			prep(t, r, func(s *uring.SQE) { s.PrepWritev(fd, iovecs(a, b, c), 6000, 2) })
			submit(t, r, 2, -1)
			got := results(t, reapAll(r))
			wantRes(t, got, 1, 1000)
			wantRes(t, got, 2, 4101)
			copy(want[100:], w1)
			want = append(want[:6000], a...)
			want = append(want, b...)
			want = append(want, c...)
			wantBytes(t, "file after writes", tg.contents(t, r, fd), want)

			// READ and READV read it back; a READ past EOF is short.
			rd := heapBytes(2000)
			ra, rb := heapBytes(10), heapBytes(5000)
			tail := heapBytes(200)
			prep(t, r, func(s *uring.SQE) { s.PrepRead(fd, rd, 50, 3) })
			prep(t, r, func(s *uring.SQE) { s.PrepReadv(fd, iovecs(ra, rb), 5000, 4) })
			prep(t, r, func(s *uring.SQE) { s.PrepRead(fd, tail, uint64(len(want)-50), 5) })
			submit(t, r, 3, -1)
			got = results(t, reapAll(r))
			wantRes(t, got, 3, 2000)
			wantRes(t, got, 4, 5010)
			wantRes(t, got, 5, 50)
			wantBytes(t, "READ", rd, want[50:2050])
			wantBytes(t, "READV[0]", ra, want[5000:5010])
			wantBytes(t, "READV[1]", rb, want[5010:10010])
			wantBytes(t, "READ at EOF", tail[:50], want[len(want)-50:])
			if !bytes.Equal(tail[50:], make([]byte, 150)) {
				t.Error("READ at EOF wrote past the bytes it returned")
			}

			// READ_FIXED and WRITE_FIXED through a registered buffer.
			reg := uringtest.Mmap(t, 16384)
			if err := r.RegisterBuffers([][]byte{reg}); err != nil {
				t.Fatal(err)
			}
			copy(reg[4096:8192], pattern(4096, 90))
			prep(t, r, func(s *uring.SQE) { s.PrepWriteFixed(fd, reg[4096:8192], 0, 0, 6) })
			submit(t, r, 1, -1)
			prep(t, r, func(s *uring.SQE) { s.PrepReadFixed(fd, reg[12288:16384], 0, 0, 7) })
			submit(t, r, 1, -1)
			got = results(t, reapAll(r))
			wantRes(t, got, 6, 4096)
			wantRes(t, got, 7, 4096)
			wantBytes(t, "READ_FIXED", reg[12288:16384], reg[4096:8192])

			// FSYNC and FDATASYNC succeed.
			prep(t, r, func(s *uring.SQE) { s.PrepFsync(fd, false, 8) })
			prep(t, r, func(s *uring.SQE) { s.PrepFsync(fd, true, 9) })
			submit(t, r, 2, -1)
			got = results(t, reapAll(r))
			wantRes(t, got, 8, 0)
			wantRes(t, got, 9, 0)
		})
	}
}

func TestFallocate(t *testing.T) {
	for _, tg := range targets {
		t.Run(tg.name, func(t *testing.T) {
			r := uringtest.New(uringtest.Options{})
			initial := pattern(16384, 3)
			fd := tg.open(t, r, initial)
			want := bytes.Clone(initial)
			const keep = uring.FALLOC_FL_KEEP_SIZE
			prep(t, r, func(s *uring.SQE) { s.PrepFallocate(fd, uring.FALLOC_FL_PUNCH_HOLE|keep, 4096, 4096, 1) })
			prep(t, r, func(s *uring.SQE) { s.PrepFallocate(fd, uring.FALLOC_FL_ZERO_RANGE, 10000, 100, 2) })
			prep(t, r, func(s *uring.SQE) { s.PrepFallocate(fd, uring.FALLOC_FL_ZERO_RANGE, 16000, 1000, 3) }) // extends
			prep(t, r, func(s *uring.SQE) { s.PrepFallocate(fd, 0, 0, 20000, 4) })                             // extends
			prep(t, r, func(s *uring.SQE) { s.PrepFallocate(fd, keep, 0, 30000, 5) })                          // keeps size
			prep(t, r, func(s *uring.SQE) { s.PrepFallocate(fd, uring.FALLOC_FL_PUNCH_HOLE, 0, 10, 6) })       // punch needs KEEP_SIZE
			submit(t, r, 6, -1)
			got := results(t, reapAll(r))
			for ud := uint64(1); ud <= 5; ud++ {
				wantRes(t, got, ud, 0)
			}
			wantRes(t, got, 6, errno(syscall.EOPNOTSUPP))
			clear(want[4096:8192])
			clear(want[10000:10100])
			clear(want[16000:])
			want = append(want, make([]byte, 20000-len(want))...)
			wantBytes(t, "file after fallocate", tg.contents(t, r, fd), want)
		})
	}
}

func TestMemFilePunchReleasesChunks(t *testing.T) {
	f := uringtest.NewMemFile(make([]byte, 3*4096))
	if got := f.AllocatedBytes(); got != 3*4096 {
		t.Fatalf("allocated %d after creation, want %d", got, 3*4096)
	}
	r := uringtest.New(uringtest.Options{})
	fd := r.AttachFile(f)
	prep(t, r, func(s *uring.SQE) {
		s.PrepFallocate(fd, uring.FALLOC_FL_PUNCH_HOLE|uring.FALLOC_FL_KEEP_SIZE, 2000, 8192, 1)
	})
	submit(t, r, 1, -1)
	wantRes(t, results(t, reapAll(r)), 1, 0)
	if got := f.AllocatedBytes(); got != 2*4096 {
		t.Errorf("allocated %d after punching [2000, 10192), want %d (one whole chunk released)", got, 2*4096)
	}
	if f.Size() != 3*4096 {
		t.Errorf("size %d after punch, want unchanged", f.Size())
	}
}

func TestMemFileSparseAndPosition(t *testing.T) {
	r := uringtest.New(uringtest.Options{})
	fd := r.AddMemFile(nil)
	far := uint64(1) << 40 // a terabyte in: sparse, costs one chunk
	w := pattern(512, 1)
	prep(t, r, func(s *uring.SQE) { s.PrepWrite(fd, w, far, 1) })
	submit(t, r, 1, -1)
	wantRes(t, results(t, reapAll(r)), 1, 512)
	f := r.MemFile(fd)
	if f.Size() != int64(far)+512 || f.AllocatedBytes() != 4096 {
		t.Errorf("size %d allocated %d", f.Size(), f.AllocatedBytes())
	}
	hole := heapBytes(100)
	hole[0] = 0xff
	prep(t, r, func(s *uring.SQE) { s.PrepRead(fd, hole, 12345678, 2) })
	submit(t, r, 1, -1)
	wantRes(t, results(t, reapAll(r)), 2, 100)
	if hole[0] != 0 {
		t.Error("a hole did not read as zeros")
	}
	prep(t, r, func(s *uring.SQE) { s.PrepWrite(fd, w, 1<<51, 3) })
	submit(t, r, 1, -1)
	wantRes(t, results(t, reapAll(r)), 3, errno(syscall.EFBIG))

	// Offset -1 uses and advances the file position.
	fd2 := r.AddMemFile(pattern(300, 9))
	p1, p2 := heapBytes(100), heapBytes(100)
	prep(t, r, func(s *uring.SQE) { s.PrepRead(fd2, p1, ^uint64(0), 4) })
	submit(t, r, 1, -1)
	prep(t, r, func(s *uring.SQE) { s.PrepRead(fd2, p2, ^uint64(0), 5) })
	submit(t, r, 1, -1)
	reapAll(r)
	wantBytes(t, "second positional read", p2, pattern(300, 9)[100:200])
}

func TestMemFileReaderWriter(t *testing.T) {
	f := uringtest.NewMemFile([]byte("hello"))
	if _, err := f.WriteAt([]byte("world"), 8); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 20)
	n, err := f.ReadAt(b, 0)
	if n != 13 || err != io.EOF || string(b[:n]) != "hello\x00\x00\x00world" {
		t.Errorf("ReadAt = %d, %v, %q", n, err, b[:n])
	}
	if err := f.Truncate(3); err != nil || string(f.Bytes()) != "hel" {
		t.Errorf("Truncate(3): %v, %q", err, f.Bytes())
	}
	if err := f.Truncate(6); err != nil || string(f.Bytes()) != "hel\x00\x00\x00" {
		t.Errorf("Truncate(6) exposed stale data: %v, %q", err, f.Bytes())
	}
}

func TestFixedFiles(t *testing.T) {
	r := uringtest.New(uringtest.Options{})
	memfd := r.AddMemFile(pattern(4096, 5))
	if err := r.UpdateFile(0, int(memfd)); !errors.Is(err, syscall.ENXIO) {
		t.Errorf("UpdateFile before RegisterFiles: %v, want ENXIO", err)
	}
	if err := r.RegisterFiles(4); err != nil {
		t.Fatal(err)
	}
	if err := r.RegisterFiles(4); !errors.Is(err, syscall.EBUSY) {
		t.Errorf("second RegisterFiles: %v, want EBUSY", err)
	}
	if err := r.UpdateFile(4, int(memfd)); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("UpdateFile out of range: %v, want EINVAL", err)
	}
	if err := r.UpdateFile(0, int(memfd)+100); !errors.Is(err, syscall.EBADF) {
		t.Errorf("UpdateFile with an unknown fd: %v, want EBADF", err)
	}
	if err := r.UpdateFile(1, int(memfd)); err != nil {
		t.Fatal(err)
	}
	tmp, err := os.CreateTemp(t.TempDir(), "f")
	if err != nil {
		t.Fatal(err)
	}
	defer tmp.Close()
	if _, err := tmp.Write(pattern(4096, 6)); err != nil {
		t.Fatal(err)
	}
	if err := r.UpdateFile(2, int(tmp.Fd())); err != nil {
		t.Fatal(err)
	}
	b1, b2, b3, b4 := heapBytes(4096), heapBytes(4096), heapBytes(10), heapBytes(10)
	prep(t, r, func(s *uring.SQE) { s.PrepRead(1, b1, 0, 1); s.SetFixedFile() })
	prep(t, r, func(s *uring.SQE) { s.PrepRead(2, b2, 0, 2); s.SetFixedFile() })
	prep(t, r, func(s *uring.SQE) { s.PrepRead(3, b3, 0, 3); s.SetFixedFile() }) // empty slot
	prep(t, r, func(s *uring.SQE) { s.PrepRead(9, b4, 0, 4); s.SetFixedFile() }) // out of range
	submit(t, r, 4, -1)
	got := results(t, reapAll(r))
	wantRes(t, got, 1, 4096)
	wantRes(t, got, 2, 4096)
	wantRes(t, got, 3, errno(syscall.EBADF))
	wantRes(t, got, 4, errno(syscall.EBADF))
	wantBytes(t, "fixed mem read", b1, pattern(4096, 5))
	wantBytes(t, "fixed real read", b2, pattern(4096, 6))

	if err := r.UpdateFile(1, -1); err != nil {
		t.Fatal(err)
	}
	prep(t, r, func(s *uring.SQE) { s.PrepRead(1, b1, 0, 5); s.SetFixedFile() })
	submit(t, r, 1, -1)
	wantRes(t, results(t, reapAll(r)), 5, errno(syscall.EBADF))
}

func TestBadFd(t *testing.T) {
	r := uringtest.New(uringtest.Options{})
	b := heapBytes(8)
	prep(t, r, func(s *uring.SQE) { s.PrepRead(uringtest.MemFdBase+7, b, 0, 1) })
	prep(t, r, func(s *uring.SQE) { s.PrepRead(-5, b, 0, 2) })
	submit(t, r, 2, -1)
	got := results(t, reapAll(r))
	wantRes(t, got, 1, errno(syscall.EBADF))
	wantRes(t, got, 2, errno(syscall.EBADF))
}

func TestFixedBufferBounds(t *testing.T) {
	r := uringtest.New(uringtest.Options{})
	fd := r.AddMemFile(make([]byte, 8192))
	reg := uringtest.Mmap(t, 8192)
	if err := r.RegisterBuffers([][]byte{reg[:4096], nil}); err != nil {
		t.Fatal(err)
	}
	if err := r.RegisterBuffers([][]byte{reg}); !errors.Is(err, syscall.EBUSY) {
		t.Errorf("second RegisterBuffers: %v, want EBUSY", err)
	}
	prep(t, r, func(s *uring.SQE) { s.PrepReadFixed(fd, reg[0:4096], 0, 0, 1) })    // exactly the buffer
	prep(t, r, func(s *uring.SQE) { s.PrepReadFixed(fd, reg[2048:6144], 0, 0, 2) }) // runs past its end
	prep(t, r, func(s *uring.SQE) { s.PrepWriteFixed(fd, reg[4096:8192], 0, 0, 3) })
	prep(t, r, func(s *uring.SQE) { s.PrepReadFixed(fd, reg[0:512], 0, 1, 4) }) // sparse slot
	prep(t, r, func(s *uring.SQE) { s.PrepReadFixed(fd, reg[0:512], 0, 7, 5) }) // no such index
	submit(t, r, 5, -1)
	got := results(t, reapAll(r))
	wantRes(t, got, 1, 4096)
	for ud := uint64(2); ud <= 5; ud++ {
		wantRes(t, got, ud, errno(syscall.EFAULT))
	}
}

func TestRealPipeAndEventfdReads(t *testing.T) {
	r := uringtest.New(uringtest.Options{})
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	b := heapBytes(64)
	prep(t, r, func(s *uring.SQE) { s.PrepRead(int32(p[0]), b, 0, 1) })
	if _, err := r.SubmitAndWait(0, 0); err != nil {
		t.Fatal(err)
	}
	if r.Tick(); r.Ready() != 0 {
		t.Fatal("READ on an empty pipe completed")
	}
	if _, err := unix.Write(p[1], []byte("ping")); err != nil {
		t.Fatal(err)
	}
	submit(t, r, 1, -1)
	wantRes(t, results(t, reapAll(r)), 1, 4)
	if string(b[:4]) != "ping" {
		t.Errorf("pipe read %q", b[:4])
	}
}
