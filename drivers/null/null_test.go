package null_test

import (
	"os"
	"os/exec"
	"regexp"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/null"
	"github.com/ringblk/ringblk/internal/invariants"
)

type env struct {
	main *aio.Context
	g    *block.Graph
}

func newEnv(tb testing.TB) *env {
	tb.Helper()
	m, err := aio.New(aio.Options{Name: "main", Main: true, CPU: aio.NoCPU, ArenaSize: -1})
	if err != nil {
		tb.Fatal(err)
	}
	if err := m.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { m.Stop() })
	return &env{main: m, g: block.NewGraph(m)}
}

func TestReadZeroes(t *testing.T) {
	e := newEnv(t)
	n, err := e.g.Open(null.New(1<<20, null.Options{ReadZeroes: true}), block.Options{Name: "null"})
	if err != nil {
		t.Fatal(err)
	}
	buf := []byte{1, 2, 3, 4}
	if _, err := n.ReadAt(buf, 4096); err != nil {
		t.Fatal(err)
	}
	for i, b := range buf {
		if b != 0 {
			t.Fatalf("byte %d = %d after a read-zeroes read", i, b)
		}
	}
	buf = []byte{1, 2}
	n2, _ := e.g.Open(null.New(1<<20, null.Options{}), block.Options{Name: "null2"})
	if _, err := n2.ReadAt(buf, 0); err != nil || buf[0] != 1 || buf[1] != 2 {
		t.Fatalf("plain null read touched the buffer or failed: %v %v", buf, err)
	}
	if sz, _ := n.Length(); sz != 1<<20 {
		t.Fatalf("length %d", sz)
	}
	n.Unref()
	n2.Unref()
}

func TestLatency(t *testing.T) {
	e := newEnv(t)
	n, _ := e.g.Open(null.New(1<<20, null.Options{Latency: 2 * time.Millisecond}), block.Options{})
	defer n.Unref()
	start := time.Now()
	if _, err := n.ReadAt(make([]byte, 512), 0); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 2*time.Millisecond {
		t.Fatalf("read with 2ms latency took %v", d)
	}
}

// qd32 keeps depth requests in flight through a front end, resubmitting
// each from its completion, until total requests completed.
type qd32 struct {
	q         *block.Queue
	bufs      [][]byte
	remaining int
	inflight  int
	done      bool
	main      *aio.Context
	errs      int
}

func (b *qd32) RequestDone(r *block.Request, err error) {
	if err != nil {
		b.errs++
	}
	b.inflight--
	if b.remaining > 0 {
		b.remaining--
		b.inflight++
		i := r.Tag
		b.q.Read(b.bufs[i], int64(i)*4096, b, i)
		return
	}
	if b.inflight == 0 {
		b.done = true
	}
}

func runQD(e *env, q *block.Queue, depth, total int) *qd32 {
	b := &qd32{q: q, remaining: total, main: e.main}
	for i := 0; i < depth; i++ {
		b.bufs = append(b.bufs, make([]byte, 4096))
	}
	e.main.Run(func() {
		for i := 0; i < depth && b.remaining > 0; i++ {
			b.remaining--
			b.inflight++
			q.Read(b.bufs[i], int64(i)*4096, b, uint64(i))
		}
		e.main.WaitWhile(func() bool { return !b.done })
	})
	return b
}

// BenchmarkQD32Read4K: 4 KiB reads at queue depth 32 through the whole
// layer (front end → node → null driver → completion) on one Context.
// b.N is the number of requests; IOPS = 1e9 / (ns/op).
func BenchmarkQD32Read4K(b *testing.B) {
	e := newEnv(b)
	n, err := e.g.Open(null.New(1<<30, null.Options{}), block.Options{Name: "null"})
	if err != nil {
		b.Fatal(err)
	}
	fe := e.g.NewFrontEnd(block.FrontEndOptions{Name: "bench"})
	if err := fe.Insert(n); err != nil {
		b.Fatal(err)
	}
	n.Unref()
	q := fe.Queue(e.main)
	runQD(e, q, 32, 10000) // warm the pools
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	res := runQD(e, q, 32, b.N)
	el := time.Since(start)
	b.StopTimer()
	if res.errs > 0 {
		b.Fatalf("%d errors", res.errs)
	}
	b.ReportMetric(float64(b.N)/el.Seconds(), "IOPS")
	fe.Close()
}

// TestQD32ZeroAllocs: the steady-state request path allocates nothing.
func TestQD32ZeroAllocs(t *testing.T) {
	if raceEnabled || invariants.Enabled {
		t.Skip("allocation budgets hold for production builds (no -race, no invariants tag)")
	}
	e := newEnv(t)
	n, _ := e.g.Open(null.New(1<<30, null.Options{}), block.Options{Name: "null"})
	fe := e.g.NewFrontEnd(block.FrontEndOptions{Name: "allocs"})
	fe.Insert(n)
	n.Unref()
	q := fe.Queue(e.main)
	runQD(e, q, 32, 1000)
	allocs := testing.AllocsPerRun(5, func() { runQD(e, q, 32, 10000) })
	// runQD itself allocates its harness (buffers, closures, the Run
	// hand-off): well under 100 objects for 10000 requests.
	if allocs > 100 {
		t.Fatalf("%.0f allocations for 10000 requests: the request path allocates", allocs)
	}
	fe.Close()
}

// TestCompareQemuImgBench runs qemu-img bench on null-co with the same
// parameters next to our benchmark and prints both (RINGBLK_QEMU_BENCH=1).
func TestCompareQemuImgBench(t *testing.T) {
	if os.Getenv("RINGBLK_QEMU_BENCH") == "" {
		t.Skip("set RINGBLK_QEMU_BENCH=1 to run qemu-img bench side by side")
	}
	path, err := exec.LookPath("qemu-img")
	if err != nil {
		t.Skip("qemu-img not installed")
	}
	const count = 2000000
	var qemu []float64
	var ours []float64
	for round := 0; round < 3; round++ {
		start := time.Now()
		out, err := exec.Command(path, "bench", "-c", strconv.Itoa(count), "-d", "32", "-s", "4k",
			"--image-opts", "driver=null-co,size=1G").CombinedOutput()
		if err != nil {
			t.Fatalf("qemu-img bench: %v\n%s", err, out)
		}
		m := regexp.MustCompile(`Run completed in ([0-9.]+) seconds`).FindSubmatch(out)
		secs := time.Since(start).Seconds()
		if m != nil {
			secs, _ = strconv.ParseFloat(string(m[1]), 64)
		}
		qemu = append(qemu, count/secs)

		e := newEnv(t)
		n, _ := e.g.Open(null.New(1<<30, null.Options{}), block.Options{Name: "null"})
		fe := e.g.NewFrontEnd(block.FrontEndOptions{Name: "bench"})
		fe.Insert(n)
		n.Unref()
		q := fe.Queue(e.main)
		runQD(e, q, 32, 10000)
		start = time.Now()
		runQD(e, q, 32, count)
		ours = append(ours, count/time.Since(start).Seconds())
		fe.Close()
	}
	sort.Float64s(qemu)
	sort.Float64s(ours)
	t.Logf("qemu-img bench null-co 4k qd32 x%d: median %.0f IOPS (runs %.0f)", count, qemu[1], qemu)
	t.Logf("ringblk front end → null   4k qd32 x%d: median %.0f IOPS (runs %.0f)", count, ours[1], ours)
	t.Logf("ratio: %.2fx", ours[1]/qemu[1])
}

// TestLengthWhileTruncating: Length from any goroutine while Truncate
// runs on a Context sees one of the sizes set, and (under -race) is not a
// data race. The size was a plain field: the host API's bound check reads
// it from host goroutines and queue Contexts while a resize writes it on
// the main Context (found by host's TestAdversarialHost under -race).
func TestLengthWhileTruncating(t *testing.T) {
	e := newEnv(t)
	n, err := e.g.Open(null.New(1<<20, null.Options{}), block.Options{Name: "null"})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Unref()
	done := make(chan struct{})
	bad := make(chan int64, 1)
	go func() {
		defer close(done)
		for i := 0; i < 2000; i++ {
			if size, _ := n.Length(); size != 1<<20 && size != 2<<20 {
				bad <- size
				return
			}
		}
	}()
	for i := 0; i < 200; i++ {
		if err := n.Truncate(int64(1+i%2) << 20); err != nil {
			t.Fatal(err)
		}
	}
	<-done
	select {
	case size := <-bad:
		t.Fatalf("Length returned %d, a size never set", size)
	default:
	}
}
