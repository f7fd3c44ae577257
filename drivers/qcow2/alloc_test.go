package qcow2

import (
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/ringblk/ringblk/block"
)

type flagDone struct {
	done bool
	err  error
}

func (f *flagDone) RequestDone(_ *block.Request, err error) { f.done, f.err = true, err }

// submitAllocs submits one request of op at off (over buf, unless a
// flush) on the main Context and waits for it, once to warm up and then
// under testing.AllocsPerRun: it returns the allocations per request and
// the first request error.
func submitAllocs(e *testEnv, n *block.Node, op block.Op, off int64, buf []byte) (allocs float64, err error) {
	e.main.Run(func() {
		pool := e.g.Pool(e.main)
		fd := &flagDone{}
		cond := func() bool { return !fd.done }
		run := func() {
			fd.done = false
			r := pool.Get()
			r.Op, r.Off = op, off
			if op != block.OpFlush {
				r.SetBuf(buf)
			}
			n.Submit(r, fd)
			e.main.WaitWhile(cond)
			if fd.err != nil && err == nil {
				err = fd.err
			}
		}
		run()
		allocs = testing.AllocsPerRun(200, run)
	})
	return allocs, err
}

// TestQcow2DriverHotPathAllocs: a read of cached data clusters, a read of
// unallocated clusters (no backing file), an in-place write to a COPIED
// cluster and a flush with nothing dirty allocate nothing.
func TestQcow2DriverHotPathAllocs(t *testing.T) {
	needQemu(t)
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	img := filepath.Join(t.TempDir(), "x.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", img, "4M")
	qemuIO(t, img, "write -P 0x11 0 256k")
	e := newTestEnv(t)
	n := e.mustOpen(img, false)
	defer n.Unref()
	// Warm the L2 cache, the header (R10) and the request pools.
	buf := make([]byte, 8192)
	if _, err := n.ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := n.WriteAt(buf[:4096], 4096); err != nil {
		t.Fatal(err)
	}
	if err := n.Flush(); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		op   block.Op
		off  int64
	}{
		{"read-data", block.OpRead, 60000}, // across two clusters
		{"read-unallocated", block.OpRead, 1 << 20},
		{"write-in-place", block.OpWrite, 70000},
		{"flush-clean", block.OpFlush, 0},
	}
	for _, tc := range cases {
		allocs, err := submitAllocs(e, n, tc.op, tc.off, buf)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if allocs != 0 {
			t.Errorf("%s: %v allocations per request, want 0", tc.name, allocs)
		}
	}
}

// BenchmarkQcow2DriverCachedIO: one 4 KiB request at a time through the
// block layer on cached, allocated clusters (the fast paths).
func BenchmarkQcow2DriverCachedIO(b *testing.B) {
	needQemuB(b)
	img := filepath.Join(b.TempDir(), "x.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", img, "64M").CombinedOutput(); err != nil {
		b.Fatalf("%v %s", err, out)
	}
	if out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", "write -P 1 0 32M", img).CombinedOutput(); err != nil {
		b.Fatalf("%v %s", err, out)
	}
	e := newTestEnv(b)
	n := e.mustOpen(img, false)
	defer n.Unref()
	buf := make([]byte, 4096)
	n.WriteAt(buf, 0) // header ready (R10)
	for _, op := range []block.Op{block.OpRead, block.OpWrite} {
		b.Run(op.String(), func(b *testing.B) {
			e.main.Run(func() {
				pool := e.g.Pool(e.main)
				fd := &flagDone{}
				cond := func() bool { return !fd.done }
				b.ReportAllocs()
				b.SetBytes(4096)
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					fd.done = false
					r := pool.Get()
					r.Op, r.Off = op, int64(i%8192)*4096
					r.SetBuf(buf)
					n.Submit(r, fd)
					e.main.WaitWhile(cond)
				}
			})
		})
	}
}

func needQemuB(b *testing.B) {
	for _, tool := range []string{"qemu-img", "qemu-io"} {
		if _, err := exec.LookPath(tool); err != nil {
			b.Skipf("%s not found", tool)
		}
	}
}

// TestQcow2DriverBackingReadAllocs: a cached read of unallocated clusters
// of an overlay goes to the backing node without allocating.
func TestQcow2DriverBackingReadAllocs(t *testing.T) {
	needQemu(t)
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	dir := t.TempDir()
	base := filepath.Join(dir, "base.raw")
	top := filepath.Join(dir, "top.qcow2")
	qemuImg(t, "create", "-q", "-f", "raw", base, "1M")
	qemuImg(t, "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", top, "2M")
	qemuIO(t, top, "write -P 0x11 0 64k")
	e := newTestEnv(t)
	n := e.mustOpen(top, true)
	defer n.Unref()
	buf := make([]byte, 8192)
	if _, err := n.ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	var allocs float64
	var err error
	e.main.Run(func() {
		pool := e.g.Pool(e.main)
		fd := &flagDone{}
		cond := func() bool { return !fd.done }
		run := func() {
			fd.done = false
			r := pool.Get()
			r.Op, r.Off = block.OpRead, 1<<20-4096 // across the backing end
			r.SetBuf(buf)
			n.Submit(r, fd)
			e.main.WaitWhile(cond)
			if fd.err != nil {
				err = fd.err
			}
		}
		run()
		allocs = testing.AllocsPerRun(200, run)
	})
	if err != nil {
		t.Fatal(err)
	}
	if allocs != 0 {
		t.Errorf("%v allocations per backing read, want 0", allocs)
	}
}
