package raw_test

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/raw"
	"github.com/ringblk/ringblk/uring"
)

// The benchmark engine: one job per Context keeps qd requests in flight
// through a front end (front end → node → raw driver → ring → completion),
// resubmitting from each completion, with buffers from the Context's arena
// (so they go out as fixed buffers). It is what scripts/raw-vs-fio.sh runs
// (TestRawBench, flag-driven) and what the allocation test measures.

type job struct {
	ctx    *aio.Context
	q      *block.Queue
	bufs   [][]byte
	write  bool
	seq    bool
	bs     int64
	blocks int64 // file size in units of bs
	rng    uint64
	seqOff int64
	stop   *atomic.Bool
	limit  int64 // requests to issue; < 0 runs until stop
	issued int64
	done   int64
	inFl   int
	errs   int64
	err    error
}

func (j *job) offset() int64 {
	if j.seq {
		off := j.seqOff
		j.seqOff += j.bs
		if j.seqOff >= j.blocks*j.bs {
			j.seqOff = 0
		}
		return off
	}
	// xorshift64*: uniform over the blocks, no allocation.
	j.rng ^= j.rng >> 12
	j.rng ^= j.rng << 25
	j.rng ^= j.rng >> 27
	return int64((j.rng*2685821657736338717)%uint64(j.blocks)) * j.bs
}

func (j *job) submit(slot uint64) {
	j.issued++
	j.inFl++
	if j.write {
		j.q.Write(j.bufs[slot], j.offset(), 0, j, slot)
	} else {
		j.q.Read(j.bufs[slot], j.offset(), j, slot)
	}
}

func (j *job) more() bool {
	return !j.stop.Load() && (j.limit < 0 || j.issued < j.limit)
}

func (j *job) RequestDone(r *block.Request, err error) {
	j.done++
	j.inFl--
	if err != nil {
		j.errs++
		j.err = err
	}
	if j.more() {
		j.submit(r.Tag)
	}
}

// run fills the queue and waits until every request completed. On the
// job's Context.
func (j *job) run() {
	j.q.Plug()
	for i := range j.bufs {
		if !j.more() {
			break
		}
		j.submit(uint64(i))
	}
	j.q.Unplug()
	j.ctx.WaitWhile(func() bool { return j.inFl > 0 })
}

type benchSpec struct {
	file    string
	rw      string
	bs      int64
	qd      int
	runtime time.Duration
	direct  bool
	jobs    int
	nodefer bool // experiment: a kernel ring without SINGLE_ISSUER/DEFER_TASKRUN
	heap    bool // experiment: aligned heap buffers (plain READ/WRITE) instead of the arena
}

type benchResult struct {
	IOPS     float64 `json:"iops"`
	MBps     float64 `json:"mbps"`
	CPUNsIO  float64 `json:"cpu_ns_per_io"`
	IOs      int64   `json:"ios"`
	Secs     float64 `json:"secs"`
	UserSecs float64 `json:"user_s"`
	SysSecs  float64 `json:"sys_s"`
	Errors   int64   `json:"errors"`
	// WarmIOs are the requests run before the measured window (pool and
	// slot warm-up); a harness that measures the whole process's CPU
	// divides by IOs+WarmIOs.
	WarmIOs int64 `json:"warm_ios"`
	// Ring activity per I/O, summed over the jobs' Contexts.
	EntersPerIO float64 `json:"enters_per_io"`
	WaitsPerIO  float64 `json:"waits_per_io"`
}

// benchSetup is a graph on one IOThread per job with a raw node and a
// front end over it.
type benchSetup struct {
	main *aio.Context
	io   []*aio.Context
	g    *block.Graph
	fe   *block.FrontEnd
	jobs []*job
}

func newBench(tb testing.TB, s benchSpec) *benchSetup {
	tb.Helper()
	b := &benchSetup{}
	start := func(o aio.Options) *aio.Context {
		c, err := aio.New(o)
		if err != nil {
			tb.Fatal(err)
		}
		if err := c.Start(); err != nil {
			tb.Skipf("cannot start a Context: %v", err)
		}
		tb.Cleanup(func() { c.Stop() })
		return c
	}
	b.main = start(aio.Options{Name: "main", Main: true, CPU: aio.NoCPU, ArenaSize: -1})
	arena := max(4<<20, 2*s.qd*int(s.bs))
	for i := 0; i < s.jobs; i++ {
		cpu := aio.NoCPU
		if s.jobs > 1 {
			cpu = i // one Context per core
		}
		o := aio.Options{Name: fmt.Sprintf("io%d", i), Pin: cpu >= 0, CPU: cpu, ArenaSize: arena}
		if s.nodefer {
			r, err := uring.New(256, uring.WithoutSetupFlags(uring.IORING_SETUP_SINGLE_ISSUER))
			if err != nil {
				tb.Fatal(err)
			}
			o.Queue = r
		}
		b.io = append(b.io, start(o))
	}
	b.g = block.NewGraph(b.main)
	cache := raw.CacheWriteback
	if s.direct {
		cache = raw.CacheNone
	}
	n, err := raw.NewNode(b.g, s.file, raw.Options{Cache: cache}, block.Options{Name: "raw", Context: b.io[0]})
	if err != nil {
		tb.Fatal(err)
	}
	size, err := n.Length()
	if err != nil {
		tb.Fatal(err)
	}
	b.fe = b.g.NewFrontEnd(block.FrontEndOptions{Name: "bench", Context: b.io[0]})
	if err := b.fe.Insert(n); err != nil {
		tb.Fatal(err)
	}
	n.Unref()
	tb.Cleanup(func() { b.fe.Close() })
	for i, c := range b.io {
		j := &job{ctx: c, q: b.fe.Queue(c), write: s.rw == "randwrite" || s.rw == "write",
			seq: s.rw == "read" || s.rw == "write", bs: s.bs, blocks: size / s.bs,
			rng: 0x9e3779b97f4a7c15 + uint64(i)*7919, seqOff: int64(i) * (size / int64(s.jobs)) / s.bs * s.bs}
		c.Run(func() {
			for k := 0; k < s.qd; k++ {
				buf, err := c.Arena().Alloc(int(s.bs))
				if err != nil {
					tb.Fatal(err)
				}
				if s.heap {
					buf = alignedHeap(int(s.bs))
				}
				copy(buf, pattern(int(s.bs), uint64(k+1)))
				j.bufs = append(j.bufs, buf)
			}
		})
		b.jobs = append(b.jobs, j)
	}
	return b
}

// runFor runs every job for d (or count requests each when count > 0).
func (b *benchSetup) runFor(d time.Duration, count int64) benchResult {
	var stop atomic.Bool
	var ru0, ru1 syscall.Rusage
	var st0, st1 aio.Stats
	for _, j := range b.jobs {
		j.ctx.Run(func() { st := j.ctx.Stats(); st0.Enters += st.Enters; st0.Waits += st.Waits })
	}
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	t0 := time.Now()
	var wg sync.WaitGroup
	for _, j := range b.jobs {
		j.stop, j.limit, j.issued, j.done, j.errs = &stop, -1, 0, 0, 0
		if count > 0 {
			j.limit = count
		}
		wg.Add(1)
		go func() { defer wg.Done(); j.ctx.Run(j.run) }()
	}
	if count <= 0 {
		time.Sleep(d)
		stop.Store(true)
	}
	wg.Wait()
	el := time.Since(t0)
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	var res benchResult
	for _, j := range b.jobs {
		res.IOs += j.done
		res.Errors += j.errs
	}
	for _, j := range b.jobs {
		j.ctx.Run(func() { st := j.ctx.Stats(); st1.Enters += st.Enters; st1.Waits += st.Waits })
	}
	res.EntersPerIO = float64(st1.Enters-st0.Enters) / float64(res.IOs)
	res.WaitsPerIO = float64(st1.Waits-st0.Waits) / float64(res.IOs)
	res.Secs = el.Seconds()
	res.UserSecs = tv(ru1.Utime) - tv(ru0.Utime)
	res.SysSecs = tv(ru1.Stime) - tv(ru0.Stime)
	res.IOPS = float64(res.IOs) / res.Secs
	res.MBps = res.IOPS * float64(b.jobs[0].bs) / 1e6
	res.CPUNsIO = (res.UserSecs + res.SysSecs) * 1e9 / float64(res.IOs)
	return res
}

func tv(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }

var (
	benchFile    = flag.String("rawbench.file", "", "run TestRawBench on this image (the harness sets it)")
	benchRW      = flag.String("rawbench.rw", "randread", "randread, randwrite, read or write")
	benchBS      = flag.Int64("rawbench.bs", 4096, "block size in bytes")
	benchQD      = flag.Int("rawbench.qd", 32, "queue depth per job")
	benchRuntime = flag.Duration("rawbench.runtime", 5*time.Second, "run time")
	benchDirect  = flag.Bool("rawbench.direct", false, "O_DIRECT (cache=none)")
	benchJobs    = flag.Int("rawbench.jobs", 1, "jobs, one Context each (pinned to CPU i when > 1)")
	benchHeap    = flag.Bool("rawbench.heap", false, "experiment: heap buffers, not fixed arena buffers")
	benchNoDefer = flag.Bool("rawbench.nodefer", false, "experiment: rings without SINGLE_ISSUER/DEFER_TASKRUN")
)

// TestRawBench is the ringblk side of scripts/raw-vs-fio.sh: with
// -rawbench.file it runs one benchmark row and prints one JSON line. CPU
// is the whole process's getrusage over the run (every Context, the main
// Context, the GC).
func TestRawBench(t *testing.T) {
	if *benchFile == "" {
		t.Skip("benchmark runner: pass -rawbench.file (see scripts/raw-vs-fio.sh)")
	}
	s := benchSpec{file: *benchFile, rw: *benchRW, bs: *benchBS, qd: *benchQD, runtime: *benchRuntime, direct: *benchDirect, jobs: *benchJobs, nodefer: *benchNoDefer, heap: *benchHeap}
	b := newBench(t, s)
	warm := b.runFor(0, 2000) // warm the pools and the slot tables
	res := b.runFor(s.runtime, 0)
	res.WarmIOs = warm.IOs
	if res.Errors > 0 {
		t.Fatalf("%d errors, last: %v", res.Errors, b.jobs[0].err)
	}
	out, _ := json.Marshal(res)
	fmt.Fprintln(os.Stdout, "RAWBENCH "+string(out))
}

// BenchmarkQD32Read4K: 4 KiB random reads at queue depth 32, buffered,
// through the whole layer, on a 64 MiB file. b.N is the request count.
func BenchmarkQD32Read4K(b *testing.B) {
	for _, direct := range []bool{false, true} {
		b.Run(fmt.Sprintf("direct=%v", direct), func(b *testing.B) {
			path, _ := image(b, 64<<20, 1)
			s := newBench(b, benchSpec{file: path, rw: "randread", bs: 4096, qd: 32, jobs: 1, direct: direct})
			s.runFor(0, 2000)
			b.ReportAllocs()
			b.ResetTimer()
			res := s.runFor(0, int64(b.N))
			b.StopTimer()
			b.ReportMetric(res.IOPS, "IOPS")
			b.ReportMetric(res.CPUNsIO, "cpu-ns/io")
		})
	}
}

// alignedHeap returns n bytes of 4096-aligned heap memory (a page-sized
// allocation of a power-of-two size class is page aligned; over-allocate
// and trim otherwise).
func alignedHeap(n int) []byte {
	b := make([]byte, n+4096)
	for i := 0; i < 4096; i++ {
		if raw.AddrAligned(b[i:], 4096) {
			return b[i : i+n : i+n]
		}
	}
	panic("unreachable")
}
