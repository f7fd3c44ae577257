package qcow2

import (
	"bytes"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/cache"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// burstDone counts completions and keeps the first error.
type burstDone struct {
	n   int
	err error
}

func (c *burstDone) RequestDone(r *block.Request, err error) {
	c.n++
	if err != nil && c.err == nil {
		c.err = fmt.Errorf("read at %d+%d: %w", r.Off, r.Len, err)
	}
}

// TestQcow2BatchedReads: reads submitted in bursts under one Plug (the
// batch path: queued, prefetched and mapped at the Unplug) return exactly
// the bytes qemu-img reads, for data, zero, unallocated, backing-file,
// compressed and cluster-crossing ranges, in bursts larger than one batch,
// with a cold L2 cache (misses inside a batch) and a warm one; a wait for
// them nested inside the plugged section does not hang; and a warm burst
// allocates nothing.
func TestQcow2BatchedReads(t *testing.T) {
	needQemu(t)
	for _, o := range []string{
		"cluster_size=4096", // first: the allocation check below uses it
		"cluster_size=512",
		"cluster_size=65536,compat=0.10",
		"cluster_size=2097152",
		"cluster_size=65536,extended_l2=on",
	} {
		t.Run(o, func(t *testing.T) { testBatchedReads(t, o, o == "cluster_size=4096") })
	}
}

func testBatchedReads(t *testing.T, opts string, checkAllocs bool) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base.raw")
	img := filepath.Join(dir, "top.qcow2")
	want := filepath.Join(dir, "want.raw")
	const size = 8 << 20
	// Random bytes everywhere, so a read of the wrong place shows: the
	// backing file, and the top image's own data (converted from another
	// random file), then holes punched back to the backing file, zeroes,
	// compressed clusters and a discard over it.
	rnd := rand.New(rand.NewSource(2))
	for _, f := range []string{base, filepath.Join(dir, "data.raw")} {
		b := make([]byte, size)
		rnd.Read(b)
		if err := os.WriteFile(f, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	qemuImg(t, "convert", "-q", "-f", "raw", "-O", "qcow2", "-o", opts, filepath.Join(dir, "data.raw"), img)
	qemuImg(t, "rebase", "-u", "-b", base, "-F", "raw", img)
	cmds := []string{"discard 1M 1M", "write -z 2M 256k", "discard 3M 64k", "discard 5M 4k"}
	if !strings.Contains(opts, "2097152") && !strings.Contains(opts, "compat=0.10") {
		// Compressed clusters need unallocated ones to land in: with
		// 2 MiB clusters the discards above leave none whole, and a
		// version 2 image over a backing file cannot unallocate them.
		cmds = append(cmds, "write -c -P 0x33 3M 64k", "write -z -u 4M 64k")
	}
	for _, c := range cmds {
		qemuIO(t, img, c)
	}
	qemuImg(t, "convert", "-O", "raw", img, want)
	ref, err := os.ReadFile(want)
	if err != nil {
		t.Fatal(err)
	}

	e := newTestEnv(t)
	n := e.mustOpen(img, true)
	defer n.Unref()
	rng := rand.New(rand.NewSource(1))
	type rd struct {
		off int64
		buf []byte
	}
	burst := func(k int, nested bool) []rd {
		rs := make([]rd, k)
		for i := range rs {
			ln := int64(512 << rng.Intn(4)) // 512 B .. 4 KiB
			if i%7 == 0 {
				ln = 12 << 10 // crosses clusters
			}
			off := rng.Int63n(size-ln) &^ 511
			rs[i] = rd{off, make([]byte, ln)}
		}
		var cd burstDone
		e.main.Run(func() {
			pool := e.g.Pool(e.main)
			e.main.Plug()
			for _, x := range rs {
				r := pool.Get()
				r.Op, r.Off = block.OpRead, x.off
				r.SetBuf(x.buf)
				n.Submit(r, &cd)
			}
			if nested {
				e.main.WaitWhile(func() bool { return cd.n < len(rs) })
			}
			e.main.Unplug()
			e.main.WaitWhile(func() bool { return cd.n < len(rs) })
		})
		if cd.err != nil {
			t.Fatal(cd.err)
		}
		return rs
	}
	for round, k := range []int{150, 150, 40} {
		for _, x := range burst(k, round == 1) {
			if !bytes.Equal(x.buf, ref[x.off:x.off+int64(len(x.buf))]) {
				t.Fatalf("round %d: read at %#x+%d differs from qemu-img's", round, x.off, len(x.buf))
			}
		}
	}

	if raceEnabled || !checkAllocs {
		return // the race detector allocates
	}
	// A warm burst of data reads: no allocation per burst.
	offs := make([]int64, 32)
	for i := range offs {
		offs[i] = rng.Int63n(1<<20-4096) &^ 4095
	}
	bufs := make([][]byte, len(offs))
	for i := range bufs {
		bufs[i] = make([]byte, 4096)
	}
	var allocs float64
	var cd burstDone
	e.main.Run(func() {
		pool := e.g.Pool(e.main)
		run := func() {
			cd.n = 0
			e.main.Plug()
			for i, off := range offs {
				r := pool.Get()
				r.Op, r.Off = block.OpRead, off
				r.SetBuf(bufs[i])
				n.Submit(r, &cd)
			}
			e.main.Unplug()
			e.main.WaitWhile(func() bool { return cd.n < len(offs) })
		}
		run()
		allocs = testing.AllocsPerRun(50, run)
	})
	if cd.err != nil {
		t.Fatal(cd.err)
	}
	if allocs != 0 {
		t.Errorf("a warm burst of %d batched reads allocated %.1f times", len(offs), allocs)
	}
}

// TestQcow2BatchedReadsIOThreads: two IOThreads read in plugged bursts
// (each its own batch) from one half of an image while the main Context
// allocates, overwrites, discards and flushes in the other half, with a
// tier 1 of four tables (half the image's) and no shared cache, so the tables the readers'
// hints point at are evicted and reloaded all the time. Every read returns
// the data written before the test started. Under -race this also checks
// the batch and hint paths' locking.
func TestQcow2BatchedReadsIOThreads(t *testing.T) {
	needQemu(t)
	e := newTestEnv(t)
	// 8 L2 tables of 2 MiB each; tier 1 gets its minimum, 4.
	const size = 16 << 20
	path := filepath.Join(t.TempDir(), "x.qcow2")
	if err := e.create(path, size, format.CreateOptions{ClusterSize: 4096}); err != nil {
		t.Fatal(err)
	}
	n, d := l2OpenWith(t, e, path, DriverOptions{L2CacheBytes: 4 * 4096, SharedCache: cache.NewLRU(1)})
	ref := make([]byte, size/2)
	rand.New(rand.NewSource(5)).Read(ref)
	if _, err := n.WriteAt(ref, 0); err != nil {
		t.Fatal(err)
	}
	if err := n.Flush(); err != nil {
		t.Fatal(err)
	}
	ctxs := startIOThreads(t, 2)
	rounds := 40
	if testing.Short() {
		rounds = 15
	}
	var wg, readers sync.WaitGroup
	var readersDone atomic.Bool
	fail := make(chan error, 3)
	for ci, c := range ctxs {
		wg.Add(1)
		readers.Add(1)
		go func() {
			defer wg.Done()
			defer readers.Done()
			rng := rand.New(rand.NewSource(int64(ci) + 10))
			bufs := make([][]byte, 48)
			offs := make([]int64, len(bufs))
			// More rounds (up to 20 times as many) while tables have not
			// moved under the readers often enough yet: how often they do
			// depends on how the threads interleave (load, -race).
			for round := 0; round < rounds || round < 20*rounds && d.CacheStats().L2.Evictions < 20; round++ {
				for i := range bufs {
					ln := int64(512 << rng.Intn(4))
					offs[i] = rng.Int63n(size/2-ln) &^ 511
					bufs[i] = make([]byte, ln)
				}
				var cd burstDone
				c.Run(func() {
					pool := e.g.Pool(c)
					c.Plug()
					for i := range bufs {
						r := pool.Get()
						r.Op, r.Off = block.OpRead, offs[i]
						r.SetBuf(bufs[i])
						n.Submit(r, &cd)
					}
					c.Unplug()
					c.WaitWhile(func() bool { return cd.n < len(bufs) })
				})
				if cd.err != nil {
					fail <- cd.err
					return
				}
				for i := range bufs {
					if !bytes.Equal(bufs[i], ref[offs[i]:offs[i]+int64(len(bufs[i]))]) {
						fail <- fmt.Errorf("io%d round %d: read at %#x+%d returned other bytes", ci, round, offs[i], len(bufs[i]))
						return
					}
				}
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		rng := rand.New(rand.NewSource(3))
		buf := make([]byte, 8192)
		// Until the readers are done as well: on a loaded machine the
		// readers may not get a CPU until the writer's own rounds are
		// over, and tables move under them only while both run.
		for round := 0; round < 4*rounds || !readersDone.Load(); round++ {
			off := size/2 + rng.Int63n(size/2-8192)&^511
			var err error
			switch round % 4 {
			case 0, 1:
				rng.Read(buf)
				_, err = n.WriteAt(buf, off)
			case 2:
				err = n.Discard(off&^4095, 8192)
			case 3:
				err = n.Flush()
			}
			if err != nil {
				fail <- fmt.Errorf("writer round %d: %w", round, err)
				return
			}
		}
	}()
	readers.Wait()
	readersDone.Store(true)
	wg.Wait()
	close(fail)
	for err := range fail {
		t.Fatal(err)
	}
	// The test is only worth its name if tables moved under the readers.
	if st := d.CacheStats(); st.L2.Evictions < 20 || st.L2.Hits < 100 {
		t.Errorf("tier 1 saw %d evictions and %d hits; the test wants tables evicted under hinted readers", st.L2.Evictions, st.L2.Hits)
	}
	// The node stays open until the test's cleanup: flush, then the
	// file must pass qemu-img check as it is.
	if err := n.Flush(); err != nil {
		t.Fatal(err)
	}
	qemuCheck(t, path)
}
