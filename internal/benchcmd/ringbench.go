package benchcmd

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ringblk/ringblk/internal/units"

	"github.com/ringblk/ringblk/uring"
	"golang.org/x/sys/unix"
)

// ring-bench measures the ring itself, below aio and block: uniform random
// reads of -bs bytes at queue depth -qd over a file, the workload of
// docs/performance.md and spec/peers.md §2. One goroutine, locked to its
// thread, owns the ring: it refills every completed slot, makes one
// SubmitAndWait(1, …) per batch, and reaps. Buffers come from one mmap'd
// region (one slot per in-flight read). CPU is the whole process's
// getrusage delta (user + system, io-wq workers included), so it compares
// with fio's CPU figures.

type ringBenchConfig struct {
	path     string
	size     int64 // bytes of the file to read over; 0: the whole file
	bs       int
	qd       int
	runtime  time.Duration
	direct   bool
	fixed    bool
	engine   string
	verify   int
	seed     uint64
	without  uint32
	noRingFd bool
	sqpoll   time.Duration
}

// ringBenchResult is what ring-bench prints; with -json, one object.
type ringBenchResult struct {
	Engine      string  `json:"engine"`
	File        string  `json:"file"`
	Direct      bool    `json:"direct"`
	Fixed       bool    `json:"fixed"`
	BlockSize   int     `json:"bs"`
	QueueDepth  int     `json:"qd"`
	Seconds     float64 `json:"runtime_s"`
	IOs         uint64  `json:"ios"`
	IOPS        float64 `json:"iops"`
	CPUNsPerIO  float64 `json:"cpu_ns_per_io"`
	UserNsPerIO float64 `json:"user_ns_per_io"`
	SysNsPerIO  float64 `json:"sys_ns_per_io"`
	CoresBusy   float64 `json:"cores_busy"`
	Batches     uint64  `json:"batches,omitempty"`
	Verified    int     `json:"verified"`
	Setup       string  `json:"setup,omitempty"`
}

func RingBenchMain(args []string) int {
	fs := flag.NewFlagSet("ring-bench", flag.ContinueOnError)
	// Help goes to stdout; a parse error is reported below in one line
	// (the flag package would print it followed by the whole usage).
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	help := func() {
		fs.SetOutput(os.Stdout)
		fmt.Fprint(fs.Output(), "usage: ringblk ring-bench -file FILE [options]\n\n"+
			"Uniform random reads through ringblk's own io_uring ring (or a pread baseline).\n\n")
		fs.PrintDefaults()
	}
	var cfg ringBenchConfig
	var sizeArg, bsArg, withoutArg string
	jsonOut := fs.Bool("json", false, "print one JSON object")
	fs.StringVar(&cfg.path, "file", "", "file or block device to read (required)")
	fs.StringVar(&sizeArg, "size", "", "bytes to read over from offset 0, e.g. 1g (default: the whole file)")
	fs.StringVar(&bsArg, "bs", "4k", "block size of each read")
	fs.IntVar(&cfg.qd, "qd", 32, "queue depth: reads in flight")
	fs.DurationVar(&cfg.runtime, "runtime", 10*time.Second, "measured run time")
	fs.BoolVar(&cfg.direct, "direct", false, "open the file with O_DIRECT")
	fs.BoolVar(&cfg.fixed, "fixed", false, "registered file and fixed buffers (READ_FIXED)")
	fs.StringVar(&cfg.engine, "engine", "ring", "ring, or pread: -qd goroutines calling pread(2), a baseline")
	fs.IntVar(&cfg.verify, "verify", 1000, "compare the first N completions with pread before timing starts")
	fs.Uint64Var(&cfg.seed, "seed", 1, "seed of the offset generator")
	fs.StringVar(&withoutArg, "without", "", "ring setup to leave out, comma-separated: defer, coop, submit-all, registered-ring")
	fs.DurationVar(&cfg.sqpoll, "sqpoll", 0, "use an SQPOLL thread with this idle time (0: no SQPOLL)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			help()
			return 0
		}
		fmt.Fprintf(os.Stderr, "ringblk: ring-bench: %v\n", err)
		return 1
	}
	usageErr := func(format string, a ...any) int {
		fmt.Fprintf(os.Stderr, "ringblk: ring-bench: "+format+"\n", a...)
		return 1
	}
	var err error
	if cfg.path == "" {
		return usageErr("-file is required")
	}
	if bs, err := units.ParseSize(bsArg); err != nil || bs <= 0 || bs > 1<<30 {
		return usageErr("bad -bs %q", bsArg)
	} else {
		cfg.bs = int(bs)
	}
	if sizeArg != "" {
		if cfg.size, err = units.ParseSize(sizeArg); err != nil || cfg.size <= 0 {
			return usageErr("bad -size %q", sizeArg)
		}
	}
	if cfg.qd < 1 || cfg.qd > 4096 {
		return usageErr("-qd %d out of range 1..4096", cfg.qd)
	}
	if cfg.runtime <= 0 {
		return usageErr("-runtime must be positive")
	}
	for _, w := range strings.Split(withoutArg, ",") {
		switch strings.TrimSpace(w) {
		case "":
		case "defer", "single-issuer":
			cfg.without |= uring.IORING_SETUP_SINGLE_ISSUER | uring.IORING_SETUP_DEFER_TASKRUN
		case "coop":
			cfg.without |= uring.IORING_SETUP_COOP_TASKRUN | uring.IORING_SETUP_TASKRUN_FLAG
		case "submit-all":
			cfg.without |= uring.IORING_SETUP_SUBMIT_ALL
		case "registered-ring":
			cfg.noRingFd = true
		default:
			return usageErr("unknown -without item %q", w)
		}
	}

	var res ringBenchResult
	switch cfg.engine {
	case "ring":
		res, err = runRingBench(&cfg)
	case "pread":
		if cfg.fixed || cfg.sqpoll != 0 {
			return usageErr("-fixed and -sqpoll apply to -engine ring only")
		}
		res, err = runPreadBench(&cfg)
	default:
		return usageErr("unknown -engine %q (ring, pread)", cfg.engine)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "ringblk: ring-bench: %v\n", err)
		return 1
	}
	if *jsonOut {
		out, _ := json.MarshalIndent(res, "", "  ")
		fmt.Println(string(out))
		return 0
	}
	fmt.Printf("ring-bench: engine=%s file=%s bs=%d qd=%d direct=%t fixed=%t runtime=%.2fs\n",
		res.Engine, res.File, res.BlockSize, res.QueueDepth, res.Direct, res.Fixed, res.Seconds)
	if res.Setup != "" {
		fmt.Printf("  setup:    %s\n", res.Setup)
	}
	fmt.Printf("  verified: %d completions identical to pread\n", res.Verified)
	fmt.Printf("  ios=%d iops=%.0f\n", res.IOs, res.IOPS)
	fmt.Printf("  cpu=%.0f ns/io (user %.0f, sys %.0f), %.2f cores busy", res.CPUNsPerIO, res.UserNsPerIO, res.SysNsPerIO, res.CoresBusy)
	if res.Batches != 0 {
		fmt.Printf(", %.1f ios per batch (one io_uring_enter each)", float64(res.IOs)/float64(res.Batches))
	}
	fmt.Println()
	return 0
}

// benchFile opens cfg.path and returns it with the number of bs blocks the
// reads range over.
func benchFile(cfg *ringBenchConfig) (*os.File, uint64, error) {
	flags := os.O_RDONLY
	if cfg.direct {
		flags |= syscall.O_DIRECT
	}
	f, err := os.OpenFile(cfg.path, flags, 0)
	if err != nil {
		return nil, 0, err
	}
	size, err := f.Seek(0, io.SeekEnd) // works for block devices too
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	if cfg.size > 0 {
		if cfg.size > size {
			f.Close()
			return nil, 0, fmt.Errorf("-size %d is larger than %s (%d bytes)", cfg.size, cfg.path, size)
		}
		size = cfg.size
	}
	blocks := uint64(size) / uint64(cfg.bs)
	if blocks == 0 {
		f.Close()
		return nil, 0, fmt.Errorf("%s is smaller than one %d-byte block", cfg.path, cfg.bs)
	}
	return f, blocks, nil
}

// ringBench is the state of one ring run. Slots are indexes into buf; a
// slot's user_data is its index.
type ringBench struct {
	ring    *uring.Ring
	fd      int32 // file descriptor, or registered slot 0 with -fixed
	fixed   bool
	bs      int
	blocks  uint64
	rng     *rand.Rand
	buf     []byte   // qd × bs, mmap'd
	offsets []uint64 // offset in flight per slot
	free    []int    // slots not in flight
	cqes    []uring.CQE
	batches uint64
}

// refill puts a new random read on every free slot.
func (b *ringBench) refill() {
	for len(b.free) > 0 {
		sqe := b.ring.GetSQE()
		if sqe == nil {
			return // SQ full: the rest waits for the next round
		}
		slot := b.free[len(b.free)-1]
		b.free = b.free[:len(b.free)-1]
		off := b.rng.Uint64N(b.blocks) * uint64(b.bs)
		b.offsets[slot] = off
		dst := b.buf[slot*b.bs : (slot+1)*b.bs]
		if b.fixed {
			sqe.PrepReadFixed(b.fd, dst, off, 0, uint64(slot))
			sqe.SetFixedFile()
		} else {
			sqe.PrepRead(b.fd, dst, off, uint64(slot))
		}
	}
}

// round submits, waits for at least one completion, and reaps. It returns
// the completions; each must have read a whole block.
func (b *ringBench) round() ([]uring.CQE, error) {
	b.refill()
	minComplete := 1
	if len(b.free) == len(b.offsets) {
		// Nothing in flight: refill found the SQ full, which happens on an
		// SQPOLL ring whose thread has posted a batch's CQEs but not yet
		// moved the SQ head. Wait for room, not for a completion.
		minComplete = 0
	}
	if _, err := b.ring.SubmitAndWait(minComplete, -1); err != nil && !errors.Is(err, uring.ErrBusy) {
		return nil, err
	}
	b.batches++
	n := b.ring.Reap(b.cqes)
	for _, c := range b.cqes[:n] {
		if c.Res != int32(b.bs) {
			if err := c.Err(); err != nil {
				return nil, fmt.Errorf("read of %d bytes at %d: %w", b.bs, b.offsets[c.UserData], err)
			}
			return nil, fmt.Errorf("short read at %d: %d of %d bytes", b.offsets[c.UserData], c.Res, b.bs)
		}
		b.free = append(b.free, int(c.UserData))
	}
	return b.cqes[:n], nil
}

func runRingBench(cfg *ringBenchConfig) (ringBenchResult, error) {
	// The owner goroutine stays on one thread: SINGLE_ISSUER, DEFER_TASKRUN
	// and the registered ring fd are per thread, and the kernel keeps one
	// io-wq per submitting thread.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	f, blocks, err := benchFile(cfg)
	if err != nil {
		return ringBenchResult{}, err
	}
	defer f.Close() // after the ring: the fd must outlive every read naming it
	mem, err := unix.Mmap(-1, 0, (cfg.qd+1)*cfg.bs, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_ANON|unix.MAP_PRIVATE|unix.MAP_POPULATE)
	if err != nil {
		return ringBenchResult{}, fmt.Errorf("mmap of the buffers: %w", err)
	}
	defer unix.Munmap(mem)
	bufs, check := mem[:cfg.qd*cfg.bs], mem[cfg.qd*cfg.bs:]

	opts := []uring.Option{uring.WithoutSetupFlags(cfg.without)}
	if cfg.noRingFd {
		opts = append(opts, uring.WithoutRegisteredRing())
	}
	if cfg.sqpoll > 0 {
		opts = append(opts, uring.WithSQPoll(cfg.sqpoll))
	}
	ring, err := uring.New(cfg.qd, opts...)
	if err != nil {
		return ringBenchResult{}, err
	}
	defer ring.Close()
	b := &ringBench{
		ring: ring, fd: int32(f.Fd()), fixed: cfg.fixed, bs: cfg.bs, blocks: blocks,
		rng: rand.New(rand.NewPCG(cfg.seed, cfg.seed^0x9e3779b97f4a7c15)), buf: bufs,
		offsets: make([]uint64, cfg.qd), free: make([]int, 0, cfg.qd), cqes: make([]uring.CQE, cfg.qd),
	}
	for i := cfg.qd - 1; i >= 0; i-- {
		b.free = append(b.free, i)
	}
	if cfg.fixed {
		if err := ring.RegisterFiles(1); err != nil {
			return ringBenchResult{}, err
		}
		if err := ring.UpdateFile(0, int(f.Fd())); err != nil {
			return ringBenchResult{}, err
		}
		if err := ring.RegisterBuffers([][]byte{bufs}); err != nil {
			return ringBenchResult{}, err
		}
		b.fd = 0
	}

	// Verify before timing, so the check's preads do not count.
	verified := 0
	for verified < cfg.verify {
		done, err := b.round()
		if err != nil {
			return ringBenchResult{}, err
		}
		for _, c := range done {
			slot := int(c.UserData)
			got := b.buf[slot*b.bs : (slot+1)*b.bs]
			if _, err := unix.Pread(int(f.Fd()), check, int64(b.offsets[slot])); err != nil {
				return ringBenchResult{}, fmt.Errorf("verify pread: %w", err)
			}
			if !bytes.Equal(got, check) {
				return ringBenchResult{}, fmt.Errorf("completion %d: the ring read at offset %d differs from pread", verified, b.offsets[slot])
			}
			verified++
		}
	}

	var ios uint64
	b.batches = 0
	var ru0, ru1 unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &ru0)
	start := time.Now()
	deadline := start.Add(cfg.runtime)
	for {
		done, err := b.round()
		if err != nil {
			return ringBenchResult{}, err
		}
		ios += uint64(len(done))
		if !time.Now().Before(deadline) {
			break
		}
	}
	elapsed := time.Since(start)
	unix.Getrusage(unix.RUSAGE_SELF, &ru1)
	batches := b.batches

	// Let the reads still in flight finish before the buffers go away.
	for drained := time.Now().Add(5 * time.Second); len(b.free) < cfg.qd && time.Now().Before(drained); {
		if _, err := ring.SubmitAndWait(1, 100*time.Millisecond); err != nil && !errors.Is(err, uring.ErrBusy) {
			return ringBenchResult{}, err
		}
		for _, c := range b.cqes[:ring.Reap(b.cqes)] {
			b.free = append(b.free, int(c.UserData))
		}
	}

	res := cpuResult(cfg, ios, elapsed, &ru0, &ru1)
	res.Engine, res.Verified, res.Batches, res.Setup = "ring", verified, batches, ring.Params().String()
	runtime.KeepAlive(f)
	return res, nil
}

// runPreadBench is the baseline: -qd goroutines, each with its own buffer,
// each calling pread(2) in a loop.
func runPreadBench(cfg *ringBenchConfig) (ringBenchResult, error) {
	f, blocks, err := benchFile(cfg)
	if err != nil {
		return ringBenchResult{}, err
	}
	defer f.Close()
	mem, err := unix.Mmap(-1, 0, cfg.qd*cfg.bs, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_ANON|unix.MAP_PRIVATE|unix.MAP_POPULATE)
	if err != nil {
		return ringBenchResult{}, fmt.Errorf("mmap of the buffers: %w", err)
	}
	defer unix.Munmap(mem)
	fd := int(f.Fd())

	type counter struct {
		n uint64
		_ [56]byte // one cache line per goroutine
	}
	counts := make([]counter, cfg.qd)
	var stop atomic.Bool
	var firstErr atomic.Pointer[error]
	var wg sync.WaitGroup
	var ru0, ru1 unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &ru0)
	start := time.Now()
	for g := 0; g < cfg.qd; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(cfg.seed+uint64(g), uint64(g)))
			buf := mem[g*cfg.bs : (g+1)*cfg.bs]
			for !stop.Load() {
				off := int64(rng.Uint64N(blocks) * uint64(cfg.bs))
				n, err := unix.Pread(fd, buf, off)
				if err == nil && n != cfg.bs {
					err = fmt.Errorf("short pread at %d: %d of %d bytes", off, n, cfg.bs)
				}
				if err != nil {
					firstErr.CompareAndSwap(nil, &err)
					return
				}
				counts[g].n++
			}
		}(g)
	}
	time.Sleep(cfg.runtime)
	stop.Store(true)
	wg.Wait()
	elapsed := time.Since(start)
	unix.Getrusage(unix.RUSAGE_SELF, &ru1)
	if e := firstErr.Load(); e != nil {
		return ringBenchResult{}, *e
	}
	var ios uint64
	for i := range counts {
		ios += counts[i].n
	}
	res := cpuResult(cfg, ios, elapsed, &ru0, &ru1)
	res.Engine = "pread"
	runtime.KeepAlive(f)
	return res, nil
}

// cpuResult fills in the rates and the CPU cost per I/O.
func cpuResult(cfg *ringBenchConfig, ios uint64, elapsed time.Duration, ru0, ru1 *unix.Rusage) ringBenchResult {
	user := float64(ru1.Utime.Nano() - ru0.Utime.Nano())
	sys := float64(ru1.Stime.Nano() - ru0.Stime.Nano())
	res := ringBenchResult{
		File: cfg.path, Direct: cfg.direct, Fixed: cfg.fixed, BlockSize: cfg.bs, QueueDepth: cfg.qd,
		Seconds: elapsed.Seconds(), IOs: ios, CoresBusy: (user + sys) / float64(elapsed.Nanoseconds()),
	}
	if ios > 0 {
		res.IOPS = float64(ios) / elapsed.Seconds()
		res.CPUNsPerIO = (user + sys) / float64(ios)
		res.UserNsPerIO = user / float64(ios)
		res.SysNsPerIO = sys / float64(ios)
	}
	return res
}
