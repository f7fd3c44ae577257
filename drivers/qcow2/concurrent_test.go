package qcow2

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

type countDone struct {
	n    int
	errs []error
}

func (c *countDone) RequestDone(_ *block.Request, err error) {
	c.n++
	if err != nil {
		c.errs = append(c.errs, err)
	}
}

// TestQcow2DriverConcurrentAllocations: many writes in flight at once to
// disjoint pieces of the same unallocated clusters (each would allocate the
// cluster on its own; R8 serialises them), mixed with reads. The result
// passes qemu-img check and matches the reference.
func TestQcow2DriverConcurrentAllocations(t *testing.T) {
	needQemu(t)
	for _, cs := range []int64{512, 4096, 65536} {
		img := filepath.Join(t.TempDir(), "x.qcow2")
		e := newTestEnv(t)
		size := int64(2 << 20)
		if err := e.create(img, size, format.CreateOptions{ClusterSize: cs}); err != nil {
			t.Fatal(err)
		}
		ref := make([]byte, size)
		n := e.mustOpen(img, false)
		rng := rand.New(rand.NewPCG(uint64(cs), 1))
		const piece = 512
		for round := 0; round < 4; round++ {
			// Pieces of 8 clusters, shuffled, all submitted before any completes.
			base := rng.Int64N(size/cs-8) * cs
			var offs []int64
			for off := base; off < base+8*cs; off += piece {
				offs = append(offs, off)
			}
			rng.Shuffle(len(offs), func(i, j int) { offs[i], offs[j] = offs[j], offs[i] })
			bufs := make([][]byte, len(offs))
			for i, off := range offs {
				bufs[i] = make([]byte, piece)
				for j := range bufs[i] {
					bufs[i][j] = byte(round*31 + i + 1)
				}
				copy(ref[off:], bufs[i])
			}
			rbuf := make([]byte, 8*cs)
			cd := &countDone{}
			e.main.Run(func() {
				pool := e.g.Pool(e.main)
				for i, off := range offs {
					r := pool.Get()
					r.Op, r.Off = block.OpWrite, off
					r.SetBuf(bufs[i])
					n.Submit(r, cd)
					if i%7 == 0 {
						r := pool.Get()
						r.Op, r.Off = block.OpRead, base
						r.SetBuf(rbuf)
						n.Submit(r, cd)
					}
				}
				want := len(offs) + (len(offs)+6)/7
				e.main.WaitWhile(func() bool { return cd.n < want })
			})
			if len(cd.errs) > 0 {
				t.Fatalf("cluster %d round %d: %v", cs, round, cd.errs[0])
			}
		}
		checkSame(t, readAll(t, n, 1<<20), ref)
		n.Unref()
		qemuCheck(t, img)
		qemuCompare(t, img, ref)
	}
}

// TestQcow2DriverIOThreads: requests from three Contexts at once (main and
// two IOThreads) on one node: allocating and in-place writes to disjoint
// pieces of shared clusters, reads, flushes. Run under -race this checks
// the driver's locking across Contexts.
func TestQcow2DriverIOThreads(t *testing.T) {
	needQemu(t)
	e := newTestEnv(t)
	ctxs := append([]*aio.Context{e.main}, startIOThreads(t, 2)...)
	img := filepath.Join(t.TempDir(), "x.qcow2")
	size := int64(4 << 20)
	if err := e.create(img, size, format.CreateOptions{ClusterSize: 4096}); err != nil {
		t.Fatal(err)
	}
	n := e.mustOpen(img, false)
	ref := make([]byte, size)
	const piece = 1024
	var wg sync.WaitGroup
	errs := make(chan error, 3)
	for ci, c := range ctxs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(ci), 9))
			for round := 0; round < 30; round++ {
				// Context ci owns the pieces with (off/piece)%3 == ci of the
				// whole disk: clusters are shared, bytes never are.
				base := rng.Int64N(size/4096-4) * 4096
				var offs []int64
				for off := base; off < base+4*4096; off += piece {
					if (off/piece)%3 == int64(ci) {
						offs = append(offs, off)
					}
				}
				bufs := make([][]byte, len(offs))
				for i := range offs {
					bufs[i] = bytes.Repeat([]byte{byte(ci*64 + round + 1)}, piece)
				}
				cd := &countDone{}
				rbuf := make([]byte, 4*4096)
				c.Run(func() {
					pool := e.g.Pool(c)
					for i, off := range offs {
						r := pool.Get()
						r.Op, r.Off = block.OpWrite, off
						r.SetBuf(bufs[i])
						n.Submit(r, cd)
					}
					r := pool.Get()
					r.Op, r.Off = block.OpRead, base
					r.SetBuf(rbuf)
					n.Submit(r, cd)
					if round%5 == 0 {
						r := pool.Get()
						r.Op = block.OpFlush
						n.Submit(r, cd)
					}
					want := len(offs) + 1
					if round%5 == 0 {
						want++
					}
					c.WaitWhile(func() bool { return cd.n < want })
				})
				if len(cd.errs) > 0 {
					errs <- cd.errs[0]
					return
				}
				mu.Lock()
				for i, off := range offs {
					copy(ref[off:], bufs[i])
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	checkSame(t, readAll(t, n, 1<<20), ref)
	n.Unref()
	qemuCheck(t, img)
	qemuCompare(t, img, ref)
}

var mu sync.Mutex

// startIOThreads starts n IOThread Contexts (io0, io1, …), stopped at the
// end of the test.
func startIOThreads(t *testing.T, n int) []*aio.Context {
	t.Helper()
	var ctxs []*aio.Context
	for i := 0; i < n; i++ {
		c, err := aio.New(aio.Options{Name: fmt.Sprintf("io%d", i), CPU: aio.NoCPU, Entries: 64})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Start(); err != nil {
			t.Skip(err)
		}
		t.Cleanup(func() { c.Stop() })
		ctxs = append(ctxs, c)
	}
	return ctxs
}

// TestQcow2DriverFreeWaitsForIO: a cluster whose pointer is gone is not
// freed (and so cannot be reused) while a request that mapped it before
// may still be doing I/O on it: applyFrees waits for the I/O epoch.
func TestQcow2DriverFreeWaitsForIO(t *testing.T) {
	needQemu(t)
	img := filepath.Join(t.TempDir(), "x.qcow2")
	e := newTestEnv(t)
	if err := e.create(img, 1<<20, format.CreateOptions{ClusterSize: 4096}); err != nil {
		t.Fatal(err)
	}
	n := e.mustOpen(img, false)
	d := n.Driver().(*Driver)
	if _, err := n.WriteAt(bytes.Repeat([]byte{1}, 4096), 0); err != nil {
		t.Fatal(err)
	}
	if err := n.Flush(); err != nil {
		t.Fatal(err)
	}
	// A "request" in flight since before the discard.
	ep := d.hold(nil)
	if err := n.Discard(0, 4096); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- n.Flush() }()
	select {
	case err := <-done:
		t.Fatalf("flush applied the free while I/O was in flight (err %v)", err)
	case <-time.After(200 * time.Millisecond):
	}
	d.mu.Lock()
	pending := d.mu.freeWaiter != nil
	d.mu.Unlock()
	if !pending {
		t.Fatal("no free is waiting for the epoch")
	}
	d.unhold(ep)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	n.Unref()
	qemuCheck(t, img)
}
