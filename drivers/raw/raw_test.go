package raw_test

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/raw"
)

var cacheModes = []raw.Cache{raw.CacheWriteback, raw.CacheNone, raw.CacheWritethrough}

// TestReadWriteEveryCacheMode writes and reads back through the node in each
// cache mode: aligned, vectored, unaligned in offset and length (padded and
// read-modify-written by the block layer on O_DIRECT), and from buffers at
// odd addresses (bounced by the driver). The file must hold exactly what a
// plain model says.
func TestReadWriteEveryCacheMode(t *testing.T) {
	for _, mode := range cacheModes {
		t.Run(mode.String(), func(t *testing.T) {
			e := newEnv(t, nil, 0)
			path, model := image(t, 1<<20, 1)
			n := e.node(path, raw.Options{Cache: mode})
			if mode == raw.CacheNone {
				if got := n.Options().Align; got < 512 {
					t.Fatalf("O_DIRECT node alignment %d, want the DIO alignment (>= 512)", got)
				}
			}
			write := func(off int64, data []byte) {
				t.Helper()
				if _, err := n.WriteAt(data, off); err != nil {
					t.Fatalf("write %d@%d: %v", len(data), off, err)
				}
				copy(model[off:], data)
			}
			write(0, pattern(4096, 2))
			write(65536, pattern(128<<10, 3))
			write(1000, pattern(3000, 4)) // unaligned offset and length
			write(8191, pattern(1, 5))    // one byte
			odd := pattern(4096+7, 6)[7:] // an address that is not aligned
			write(12288, odd)             // aligned range, misaligned buffer
			if err := n.Writev([][]byte{pattern(512, 7), pattern(1536, 8), pattern(2048, 9)}, 20480, 0); err != nil {
				t.Fatal(err)
			}
			copy(model[20480:], append(append(pattern(512, 7), pattern(1536, 8)...), pattern(2048, 9)...))
			if err := n.Flush(); err != nil {
				t.Fatal(err)
			}
			mustEqual(t, "file after writes", fileBytes(t, path), model)

			for _, c := range []struct{ off, n int64 }{{0, 1 << 20}, {1000, 3000}, {8191, 2}, {12288, 4096}, {65536 + 100, 50000}} {
				buf := make([]byte, c.n+3)[3:] // misaligned on purpose
				if _, err := n.ReadAt(buf, c.off); err != nil {
					t.Fatalf("read %d@%d: %v", c.n, c.off, err)
				}
				mustEqual(t, "read back", buf, model[c.off:c.off+c.n])
			}
			v := [][]byte{make([]byte, 1024), make([]byte, 3072)}
			if err := n.Readv(v, 20480); err != nil {
				t.Fatal(err)
			}
			mustEqual(t, "readv", append(v[0], v[1]...), model[20480:20480+4096])
		})
	}
}

// TestReadPastEOFZeroFills reads across the end of a file whose size is not
// a multiple of the block size: the bytes past the end read as zeroes (the
// buffer held garbage before).
func TestReadPastEOFZeroFills(t *testing.T) {
	for _, mode := range cacheModes {
		t.Run(mode.String(), func(t *testing.T) {
			e := newEnv(t, nil, 0)
			path, model := image(t, 10000, 11)
			n := e.node(path, raw.Options{Cache: mode, ReadOnly: true})
			buf := pattern(8192, 12) // garbage
			if _, err := n.ReadAt(buf, 8192); err != nil {
				t.Fatal(err)
			}
			want := make([]byte, 8192)
			copy(want, model[8192:])
			mustEqual(t, "read across EOF", buf, want)
			// Lengths are in whole sectors, as QEMU counts them.
			if size, err := n.Length(); err != nil || size != 10240 {
				t.Fatalf("length %d, %v; want 10240 (10000 rounded up to 512)", size, err)
			}
		})
	}
}

// TestNodeAlignmentIsEnforced: an O_DIRECT driver refuses a node whose
// alignment is below the file's DIO alignment, since unaligned requests
// would reach the kernel and fail.
func TestNodeAlignmentIsEnforced(t *testing.T) {
	e := newEnv(t, nil, 0)
	path, _ := image(t, 1<<16, 1)
	d, err := raw.Open(path, raw.Options{Cache: raw.CacheNone})
	if err != nil {
		t.Fatal(err)
	}
	if d.RequestAlign() < 512 || d.MemAlign() < 1 {
		t.Fatalf("DIO alignment %d/%d", d.RequestAlign(), d.MemAlign())
	}
	if _, err := e.g.Open(d, block.Options{Align: 1}); err == nil {
		t.Fatal("node with Align 1 on an O_DIRECT file was accepted")
	} else if !block.IsKind(err, block.Unsupported) {
		t.Fatalf("error %v, want kind unsupported", err)
	}
	if err := d.Release(); err != nil {
		t.Fatal(err)
	}
	bd, err := raw.Open(path, raw.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer bd.Release()
	if bd.RequestAlign() != 1 {
		t.Fatalf("buffered request alignment %d, want 1", bd.RequestAlign())
	}
}

// TestReadOnly: a read-only image refuses writes in the block layer, a
// read-only file cannot back a writable node, and opening a file without
// write permission for writing names the path.
func TestReadOnly(t *testing.T) {
	e := newEnv(t, nil, 0)
	path, model := image(t, 8192, 3)
	n := e.node(path, raw.Options{ReadOnly: true})
	if !n.ReadOnly() {
		t.Fatal("node is writable")
	}
	if _, err := n.WriteAt(make([]byte, 512), 0); !errors.Is(err, syscall.EACCES) {
		t.Fatalf("write on a read-only node: %v, want EACCES", err)
	}
	mustEqual(t, "file", fileBytes(t, path), model)

	d, err := raw.Open(path, raw.Options{ReadOnly: true, Locking: raw.LockingOff})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.g.Open(d, block.Options{}); !errors.Is(err, syscall.EROFS) {
		t.Fatalf("read-only driver under a writable node: %v, want EROFS", err)
	}
	d.Release()

	if os.Geteuid() != 0 {
		ro := filepath.Join(filepath.Dir(path), "ro.raw")
		os.WriteFile(ro, make([]byte, 512), 0o444)
		_, err := raw.Open(ro, raw.Options{})
		if !errors.Is(err, syscall.EACCES) || !block.IsKind(err, block.Io) {
			t.Fatalf("open of a read-only file for writing: %v", err)
		}
	}
	_, err = raw.Open(filepath.Join(filepath.Dir(path), "missing"), raw.Options{})
	var be *block.Error
	if !errors.As(err, &be) || be.Op != block.OpOpen || !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("open of a missing file: %v", err)
	}
}

// TestMultiContext: two IOThreads write disjoint halves of one node at the
// same time (a node is multiqueue: each request runs on its submitter's
// ring), then each reads the other's half.
func TestMultiContext(t *testing.T) {
	e := newEnv(t, nil, 2)
	path, model := image(t, 2<<20, 5)
	n := e.node(path, raw.Options{Cache: raw.CacheNone})
	fe := e.g.NewFrontEnd(block.FrontEndOptions{Name: "fe"})
	if err := fe.Insert(n); err != nil {
		t.Fatal(err)
	}
	defer fe.Close()
	half := int64(1 << 20)
	done := make(chan error, 2)
	for i, c := range e.io {
		q := fe.Queue(c)
		base := int64(i) * half
		data := pattern(int(half), uint64(100+i))
		copy(model[base:], data)
		a := c // capture
		go func() {
			var err error
			a.Run(func() {
				arena := a.Arena()
				cnt := &counter{}
				bufs := make([][]byte, 16)
				for j := range bufs {
					bufs[j], _ = arena.Alloc(65536)
				}
				for k := 0; k < 16; k++ {
					copy(bufs[k], data[k*65536:(k+1)*65536])
					q.Write(bufs[k], base+int64(k)*65536, 0, cnt, uint64(k))
				}
				a.WaitWhile(func() bool { return cnt.n < 16 })
				for _, e := range cnt.errs {
					err = e
				}
				for j := range bufs {
					arena.Free(bufs[j])
				}
			})
			done <- err
		}()
	}
	for range e.io {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	got := make([]byte, 2<<20)
	if _, err := n.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	mustEqual(t, "both halves", got, model)
}
