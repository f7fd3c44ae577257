package qcow2

import (
	"bytes"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"testing"

	"github.com/ringblk/ringblk/block"
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
	qemuImg(t, "convert", "-q", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=4096", filepath.Join(dir, "data.raw"), img)
	qemuImg(t, "rebase", "-u", "-b", base, "-F", "raw", img)
	for _, c := range []string{
		"discard 1M 1M", "write -z 2M 256k", "discard 3M 64k", "write -c -P 0x33 3M 64k",
		"write -z -u 4M 64k", "discard 5M 4k",
	} {
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

	if raceEnabled {
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
