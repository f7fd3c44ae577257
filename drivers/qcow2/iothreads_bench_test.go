package qcow2

import (
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/raw"
)

// ioThreadBenchSize is the image size of BenchmarkCachedReadIOThreads: every
// cluster allocated, every L2 table in tier 1, the file in the page cache.
const ioThreadBenchSize = 64 << 20

// ioThreadLoop is one IOThread's closed loop of 4 KiB random reads at
// queue depth qd: it keeps qd requests in flight until quota completed.
type ioThreadLoop struct {
	ctx      *aio.Context
	n        *block.Node
	qd       int
	quota    int64
	inflight int
	done     int64
	err      error
	rng      uint64
	bufs     [][]byte
	free     []int
	full     func() bool
	busy     func() bool
}

type loopDone struct {
	l *ioThreadLoop
	i int
}

func (d *loopDone) RequestDone(_ *block.Request, err error) {
	l := d.l
	if err != nil && l.err == nil {
		l.err = err
	}
	l.inflight--
	l.done++
	l.free = append(l.free, d.i)
}

func (l *ioThreadLoop) run(g *block.Graph) {
	l.ctx.Run(func() {
		pool := g.Pool(l.ctx)
		dones := make([]loopDone, l.qd)
		for i := range dones {
			dones[i] = loopDone{l: l, i: i}
		}
		var issued int64
		for issued < l.quota {
			for l.inflight < l.qd && issued < l.quota {
				i := l.free[len(l.free)-1]
				l.free = l.free[:len(l.free)-1]
				l.rng ^= l.rng << 13
				l.rng ^= l.rng >> 7
				l.rng ^= l.rng << 17
				r := pool.Get()
				r.Op, r.Off = block.OpRead, int64(l.rng%(ioThreadBenchSize/4096))*4096
				r.SetBuf(l.bufs[i])
				l.inflight++
				issued++
				l.n.Submit(r, &dones[i])
			}
			l.ctx.WaitWhile(l.full)
		}
		l.ctx.WaitWhile(l.busy)
	})
}

// BenchmarkCachedReadIOThreads: 4 KiB random reads of one image's cached
// clusters at queue depth 16 per IOThread, from 1 and from 2 IOThreads
// (aio Contexts, each with its own ring), through the qcow2 driver and
// through the raw driver on the file the qcow2 image was converted from.
// b.N is the number of requests in total, split evenly; the benchmark
// reports IOPS. Scaling is IOPS(threads=2)/IOPS(threads=1) of one driver;
// the hot-path rule wants qcow2's at least raw's. Images live in
// $RINGBLK_BENCH_DIR (default /var/tmp: io_uring punts tmpfs reads).
func BenchmarkCachedReadIOThreads(b *testing.B) {
	needQemuB(b)
	base := os.Getenv("RINGBLK_BENCH_DIR")
	if base == "" {
		base = "/var/tmp"
	}
	dir, err := os.MkdirTemp(base, "q2iothreads")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	rawPath := filepath.Join(dir, "data.raw")
	qcowPath := filepath.Join(dir, "data.qcow2")
	data := make([]byte, ioThreadBenchSize)
	rand.Read(data)
	if err := os.WriteFile(rawPath, data, 0o644); err != nil {
		b.Fatal(err)
	}
	if out, err := exec.Command("qemu-img", "convert", "-f", "raw", "-O", "qcow2", rawPath, qcowPath).CombinedOutput(); err != nil {
		b.Fatalf("%v %s", err, out)
	}
	for _, drvName := range []string{"raw", "qcow2"} {
		for _, threads := range []int{1, 2} {
			b.Run(fmt.Sprintf("driver=%s/threads=%d", drvName, threads), func(b *testing.B) {
				benchIOThreads(b, drvName, rawPath, qcowPath, threads)
			})
		}
	}
}

func benchIOThreads(b *testing.B, drvName, rawPath, qcowPath string, threads int) {
	e := newTestEnv(b)
	var ctxs []*aio.Context
	for i := range threads {
		c, err := aio.New(aio.Options{Name: fmt.Sprintf("iothread%d", i), CPU: aio.NoCPU, Entries: 64, ArenaSize: 1 << 20})
		if err != nil {
			b.Fatal(err)
		}
		if err := c.Start(); err != nil {
			b.Skipf("cannot start a Context: %v", err)
		}
		b.Cleanup(func() { c.Stop() })
		ctxs = append(ctxs, c)
	}
	var n *block.Node
	if drvName == "raw" {
		var err error
		n, err = raw.NewNode(e.g, rawPath, raw.Options{Locking: raw.LockingOff}, block.Options{ReadOnly: true})
		if err != nil {
			b.Fatal(err)
		}
	} else {
		file, err := raw.NewNode(e.g, qcowPath, raw.Options{Locking: raw.LockingOff}, block.Options{ReadOnly: true})
		if err != nil {
			b.Fatal(err)
		}
		if n, err = NewNode(e.g, file, DriverOptions{}, block.Options{ReadOnly: true}); err != nil {
			b.Fatal(err)
		}
	}
	defer n.Unref()
	// Warm: the file's pages and (qcow2) every L2 table.
	buf := make([]byte, 1<<20)
	for off := int64(0); off < ioThreadBenchSize; off += int64(len(buf)) {
		if _, err := n.ReadAt(buf, off); err != nil {
			b.Fatal(err)
		}
	}
	const qd = 16
	loops := make([]*ioThreadLoop, threads)
	for i := range loops {
		l := &ioThreadLoop{ctx: ctxs[i], n: n, qd: qd, rng: uint64(i)*0x9e3779b97f4a7c15 + 1}
		for j := range qd {
			l.bufs = append(l.bufs, make([]byte, 4096))
			l.free = append(l.free, j)
		}
		l.full = func() bool { return l.inflight == l.qd }
		l.busy = func() bool { return l.inflight > 0 }
		loops[i] = l
	}
	runAll := func(per int64) time.Duration {
		var wg sync.WaitGroup
		t0 := time.Now()
		for _, l := range loops {
			l.quota, l.done = per, 0
			wg.Add(1)
			go func() { defer wg.Done(); l.run(e.g) }()
		}
		wg.Wait()
		for _, l := range loops {
			if l.err != nil {
				b.Fatal(l.err)
			}
		}
		return time.Since(t0)
	}
	runAll(2000) // warm the pools and the rings
	per := max(int64(b.N)/int64(threads), 1)
	b.ResetTimer()
	el := runAll(per)
	b.StopTimer()
	b.ReportMetric(float64(per*int64(threads))/el.Seconds(), "IOPS")
}
