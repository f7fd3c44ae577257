package qcow2

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
	"github.com/ringblk/ringblk/drivers/raw"
)

// The kill -9 harness of qcow2.md §2.10: a child process (this test binary,
// re-executed with killChildEnv set) runs a seeded random mix of writes,
// write-zeroes, discards, flushes and a resize through the real stack
// (aio Context, drivers/raw, drivers/qcow2) on an image file, several
// requests in flight at once, and after every completed flush appends to
// an fsync'd side log how far the durable prefix of its operation stream
// reaches. The parent SIGKILLs it at a random point and checks the image:
// qemu-img check finds no corruption (leaks allowed), every sector reads,
// through ringblk, a value the operation stream allows — the last value
// written before the durable point, or the value of a later operation
// that may have landed — and qemu-img convert reads the same bytes (every
// byte through QEMU's driver, not just a sample). When the child got past
// its resize, the header must show the new size and the moved L1 table
// (and, in the 512-byte-cluster configuration, the grown refcount table).
//
// The operation stream is a pure function of (config, seed), so the parent
// regenerates it instead of the child logging every operation. Page cache
// survives kill -9: this checks the order of the process's own writes,
// while crash_test.go's power-loss simulator covers lost writes.
//
// Knobs: RINGBLK_QCOW2_KILL_ROUNDS=N runs N rounds (soak; default 8, or 2
// with -short), RINGBLK_SEED=S picks the first round's seed,
// RINGBLK_QCOW2_KILL_CONFIG=NAME runs only that configuration,
// RINGBLK_QCOW2_KILL_KEEP=DIR copies a failed round's files there.

const killChildEnv = "RINGBLK_QCOW2_KILL_CHILD"

// killChildTimeout bounds a child's run (it normally lasts well under a
// second, more under the race detector on a loaded machine).
const killChildTimeout = 2 * time.Minute

func TestMain(m *testing.M) {
	if spec := os.Getenv(killChildEnv); spec != "" {
		os.Exit(killChild(spec))
	}
	os.Exit(m.Run())
}

// killConfig is one image layout and workload shape.
type killConfig struct {
	Name        string
	ClusterSize int64
	Opts        string // qemu-img create -o (cluster_size is added)
	Size        int64  // initial virtual size (a multiple of ClusterSize)
	Backing     bool   // a qcow2 backing file with qemu-io data in it
	// Snapshot: qemu-io data in the image and an internal snapshot of it
	// (qemu-img snapshot -c) before the child starts, so its writes COW
	// clusters and L2 tables the snapshot shares (refcount 2, no COPIED).
	Snapshot bool
	Fill     int64 // sequential 64 KiB writes first (refcount table growth)
	GrowAt   int   // op index of a resize to GrowTo (0: none)
	GrowTo   int64
	L2Cache  int64 // DriverOptions.L2CacheBytes in the child (dirty evictions)
	MaxOps   int
	QD       int
}

var killConfigs = []killConfig{
	// 512-byte clusters with 64-bit refcounts: one refcount block covers
	// 32 KiB and the first refcount table 2 MiB of file, so the fill grows
	// the table; the resize moves the L1 table.
	{Name: "c512-rc64-grow", ClusterSize: 512, Opts: "refcount_bits=64", Size: 3 << 20,
		Fill: 5 << 19, GrowAt: 120, GrowTo: 6 << 20, L2Cache: 8 * 512, MaxOps: 1500, QD: 8},
	{Name: "c4k-backing", ClusterSize: 4096, Size: 8 << 20, Backing: true, L2Cache: 4 * 4096, MaxOps: 2000, QD: 8},
	{Name: "c64k", ClusterSize: 65536, Size: 16 << 20, MaxOps: 1500, QD: 8},
	{Name: "c4k", ClusterSize: 4096, Size: 8 << 20, MaxOps: 2000, QD: 16},
	{Name: "c4k-snapshot", ClusterSize: 4096, Size: 8 << 20, Snapshot: true, L2Cache: 4 * 4096, MaxOps: 2000, QD: 8},
}

type killOpKind int

const (
	kWrite killOpKind = iota
	kZero
	kDiscard
	kFlush
	kResize
)

// killOp is one operation of the stream. A resize's new size is in N.
type killOp struct {
	Kind   killOpKind
	Off, N int64
	Flags  block.Flags
}

// killOps returns the operation stream of (cfg, seed): every range is
// sector-aligned and inside the disk size current at that point;
// discards cover whole clusters (so their effect, zeros in a v3 image, is
// exact).
func killOps(cfg killConfig, seed uint64) []killOp {
	rng := rand.New(rand.NewPCG(seed, 0x6b696c6c))
	cs := cfg.ClusterSize
	cur := cfg.Size
	var ops []killOp
	for off := int64(0); off < cfg.Fill; off += 64 << 10 {
		ops = append(ops, killOp{Kind: kWrite, Off: off, N: min(64<<10, cfg.Fill-off)})
		if off/(64<<10)%8 == 7 {
			ops = append(ops, killOp{Kind: kFlush})
		}
	}
	maxLen := min(64<<10, 3*cs)
	for len(ops) < cfg.MaxOps {
		if cfg.GrowAt > 0 && len(ops) == cfg.GrowAt {
			ops = append(ops, killOp{Kind: kResize, N: cfg.GrowTo})
			cur = cfg.GrowTo
			continue
		}
		sectors := func(maxN int64) (int64, int64) {
			off := rng.Int64N(cur/512) * 512
			n := min(cur-off, 512*(1+rng.Int64N(maxN/512)))
			return off, n
		}
		switch r := rng.IntN(100); {
		case r < 9:
			ops = append(ops, killOp{Kind: kFlush})
		case r < 17:
			c := rng.Int64N(cur / cs)
			n := min(cur/cs-c, 1+rng.Int64N(4))
			ops = append(ops, killOp{Kind: kDiscard, Off: c * cs, N: n * cs})
		case r < 27:
			off, n := sectors(maxLen)
			var fl block.Flags
			if rng.IntN(2) == 0 {
				fl = block.MayUnmap
			}
			ops = append(ops, killOp{Kind: kZero, Off: off, N: n, Flags: fl})
		case r < 45:
			// Whole clusters: batched allocation, or in place.
			c := rng.Int64N(cur / cs)
			n := min(cur/cs-c, 1+rng.Int64N(max(1, maxLen/cs)))
			ops = append(ops, killOp{Kind: kWrite, Off: c * cs, N: n * cs})
		default:
			off, n := sectors(maxLen)
			ops = append(ops, killOp{Kind: kWrite, Off: off, N: n})
		}
	}
	return ops
}

// killSector fills b (one 512-byte sector) with the data op i writes at
// guest offset off: unique per (seed, i, off) and never all zeros.
func killSector(b []byte, seed uint64, i int, off int64) {
	x := seed ^ uint64(i+1)*0x9e3779b97f4a7c15 ^ uint64(off)*0xbf58476d1ce4e5b9
	for j := 0; j < 512; j += 8 {
		x += 0x9e3779b97f4a7c15
		z := x
		z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
		z = (z ^ z>>27) * 0x94d049bb133111eb
		binary.LittleEndian.PutUint64(b[j:], z^z>>31|1)
	}
}

// killChildSpec is what the parent passes to the child.
type killChildSpec struct {
	Img, Log string
	Seed     uint64
	Cfg      killConfig
}

// killChild runs in the re-executed test binary: the operation stream on
// the image until it ends (or the parent kills the process). stdout gets
// "ready", "F <w>" after each logged flush, "R" after the resize and
// "done"; an error goes to stderr with exit status 2.
func killChild(spec string) int {
	var s killChildSpec
	if err := json.Unmarshal([]byte(spec), &s); err != nil {
		fmt.Fprintln(os.Stderr, "kill child: spec:", err)
		return 2
	}
	fail := func(format string, a ...any) {
		fmt.Fprintf(os.Stderr, "kill child: "+format+"\n", a...)
		os.Exit(2)
	}
	logf, err := os.OpenFile(s.Log, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		fail("%v", err)
	}
	ctx, err := aio.New(aio.Options{Name: "main", Main: true, CPU: aio.NoCPU, Entries: 64, ArenaSize: 1 << 20})
	if err != nil {
		fail("aio.New: %v", err)
	}
	if err := ctx.Start(); err != nil {
		fail("start: %v", err)
	}
	e := &testEnv{main: ctx, g: block.NewGraph(ctx)}
	file, err := raw.NewNode(e.g, s.Img, raw.Options{Locking: raw.LockingOff}, block.Options{})
	if err != nil {
		fail("open file: %v", err)
	}
	dir := filepath.Dir(s.Img)
	n, err := NewNode(e.g, file, DriverOptions{
		ID: fileID(s.Img), L2CacheBytes: s.Cfg.L2Cache,
		Backing: func(req BackingRequest) (*block.Node, error) {
			return e.openAt(filepath.Join(dir, req.Name), true, req.Depth, req.Chain)
		},
	}, block.Options{})
	if err != nil {
		fail("open image: %v", err)
	}
	ops := killOps(s.Cfg, s.Seed)
	out := bufio.NewWriter(os.Stdout)
	say := func(format string, a ...any) {
		fmt.Fprintf(out, format+"\n", a...)
		out.Flush()
	}
	say("ready")
	c := &killRunner{ops: ops, done: make([]bool, len(ops)), flushW: make([]int, len(ops)), log: logf, say: say, fail: fail}
	ctx.Run(func() {
		pool := e.g.Pool(ctx)
		for i, op := range ops {
			r := pool.Get()
			r.Tag = uint64(i)
			switch op.Kind {
			case kResize:
				ctx.WaitWhile(func() bool { return len(c.inflight) > 0 })
				r.Op, r.Off = block.OpTruncate, op.N
			case kFlush:
				ctx.WaitWhile(func() bool { return len(c.inflight) >= s.Cfg.QD })
				r.Op = block.OpFlush
				// Everything below the watermark completed before this
				// flush was submitted: durable once it completes.
				c.flushW[i] = c.low
			default:
				ctx.WaitWhile(func() bool { return len(c.inflight) >= s.Cfg.QD || c.overlaps(op, s.Cfg.ClusterSize) })
				r.Off = op.Off
				switch op.Kind {
				case kWrite:
					buf := make([]byte, op.N)
					for j := int64(0); j < op.N; j += 512 {
						killSector(buf[j:j+512], s.Seed, i, op.Off+j)
					}
					r.Op = block.OpWrite
					r.SetBuf(buf)
				case kZero:
					r.Op, r.Len, r.Flags = block.OpWriteZeroes, op.N, op.Flags
				case kDiscard:
					r.Op, r.Len = block.OpDiscard, op.N
				}
			}
			c.inflight = append(c.inflight, i)
			n.Submit(r, c)
			if op.Kind == kResize {
				ctx.WaitWhile(func() bool { return len(c.inflight) > 0 })
				say("R")
			}
		}
		ctx.WaitWhile(func() bool { return len(c.inflight) > 0 })
	})
	say("done")
	return 0
}

// killRunner tracks the child's requests. All fields are used on the
// Context's owner only.
type killRunner struct {
	ops      []killOp
	done     []bool
	low      int   // every op below low has completed
	inflight []int // op indexes
	flushW   []int // a flush's watermark at submission
	log      *os.File
	say      func(string, ...any)
	fail     func(string, ...any)
}

// killAllowZeroRace lets a write-zeroes run while another request on the
// same cluster is in flight (the pattern of
// TestQcow2PartialZeroWaitsForAllocatingWrite). Set false to keep such
// requests a cluster apart when hunting a different bug.
var killAllowZeroRace = true

// overlaps reports whether op must wait for an in-flight request: their
// bytes overlap (then their order would be undefined), or, unless
// killAllowZeroRace, one is a write-zeroes and they share a cluster.
func (c *killRunner) overlaps(op killOp, cs int64) bool {
	for _, j := range c.inflight {
		o := c.ops[j]
		if o.Kind == kFlush || o.Kind == kResize {
			continue
		}
		lo, hi, olo, ohi := op.Off, op.Off+op.N, o.Off, o.Off+o.N
		if !killAllowZeroRace && (op.Kind == kZero || o.Kind == kZero) {
			lo, hi = lo&^(cs-1), (hi+cs-1)&^(cs-1)
			olo, ohi = olo&^(cs-1), (ohi+cs-1)&^(cs-1)
		}
		if lo < ohi && olo < hi {
			return true
		}
	}
	return false
}

func (c *killRunner) RequestDone(r *block.Request, err error) {
	i := int(r.Tag)
	if err != nil {
		c.fail("op %d %+v: %v", i, c.ops[i], err)
	}
	for k, j := range c.inflight {
		if j == i {
			c.inflight = append(c.inflight[:k], c.inflight[k+1:]...)
			break
		}
	}
	c.done[i] = true
	for c.low < len(c.done) && c.done[c.low] {
		c.low++
	}
	if c.ops[i].Kind == kFlush {
		w := c.flushW[i]
		if _, err := fmt.Fprintf(c.log, "%d\n", w); err != nil {
			c.fail("log: %v", err)
		}
		if err := c.log.Sync(); err != nil {
			c.fail("log sync: %v", err)
		}
		c.say("F %d", w)
	}
}

// killTrigger says when the parent kills: after flushes "F" lines that
// made something durable (after the "R" line if afterResize), then delay
// more.
type killTrigger struct {
	afterResize bool
	flushes     int
	delay       time.Duration
}

func TestQcow2KillNine(t *testing.T) {
	needQemu(t)
	rounds := 8
	if testing.Short() {
		rounds = 2
	}
	if v := os.Getenv("RINGBLK_QCOW2_KILL_ROUNDS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("RINGBLK_QCOW2_KILL_ROUNDS=%q: want a positive count", v)
		}
		rounds = n
	}
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("RINGBLK_SEED"); v != "" {
		s, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("RINGBLK_SEED=%q: %v", v, err)
		}
		seed = s
	}
	configs := killConfigs
	if v := os.Getenv("RINGBLK_QCOW2_KILL_CONFIG"); v != "" {
		configs = nil
		for _, c := range killConfigs {
			if c.Name == v {
				configs = append(configs, c)
			}
		}
		if configs == nil {
			t.Fatalf("RINGBLK_QCOW2_KILL_CONFIG=%q: no such configuration", v)
		}
	}
	t.Logf("seed %d (RINGBLK_SEED=%d reproduces the workloads), %d rounds", seed, seed, rounds)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	totalDurable := 0
	for round := 0; round < rounds; round++ {
		cfg := configs[round%len(configs)]
		rs := seed + uint64(round)
		trng := rand.New(rand.NewPCG(rs, 0x74726967))
		tr := killTrigger{flushes: trng.IntN(24), delay: time.Duration(trng.IntN(40)) * time.Millisecond}
		if round == 0 {
			// Some durable data in every run, so the content check below
			// always has something to check.
			tr.flushes = max(tr.flushes, 3)
		}
		// The second round of a growing config kills after the resize, so
		// the default run always covers a crash with both tables moved.
		if cfg.GrowAt > 0 && (round/len(configs))%2 == 1 {
			tr.afterResize = true
			tr.flushes = trng.IntN(6)
		}
		t.Run(fmt.Sprintf("%d-%s", round, cfg.Name), func(t *testing.T) {
			totalDurable += killRound(t, self, cfg, rs, tr)
		})
	}
	if !t.Failed() && totalDurable == 0 {
		t.Errorf("no round had a durable flush before the kill: the content check checked nothing")
	}
}

// killRound runs one child on a fresh image, kills it per tr and checks
// the image. It returns how many sectors held data from a durable write.
func killRound(t *testing.T, self string, cfg killConfig, seed uint64, tr killTrigger) int {
	dir := t.TempDir()
	if keep := os.Getenv("RINGBLK_QCOW2_KILL_KEEP"); keep != "" {
		// Debugging: keep a failed round's files (image, backing, log).
		t.Cleanup(func() {
			if t.Failed() {
				dst := filepath.Join(keep, filepath.Base(t.Name()))
				if out, err := exec.Command("cp", "-r", dir, dst).CombinedOutput(); err != nil {
					t.Logf("keeping %s: %v %s", dir, err, out)
				} else {
					t.Logf("files kept in %s", dst)
				}
			}
		})
	}
	img := filepath.Join(dir, "kill.qcow2")
	logPath := filepath.Join(dir, "durable.log")
	opts := fmt.Sprintf("cluster_size=%d", cfg.ClusterSize)
	if cfg.Opts != "" {
		opts += "," + cfg.Opts
	}
	var base []byte // initial guest content (nil: zeros)
	if cfg.Backing {
		bimg := filepath.Join(dir, "base.qcow2")
		qemuCreate(t, bimg, "", cfg.Size)
		qemuIO(t, bimg,
			"write -P 0x5a 0 1M",
			fmt.Sprintf("write -P 0xa5 %d 512k", cfg.Size/2+4096),
			fmt.Sprintf("write -P 0x33 %d 64k", cfg.Size-64<<10))
		base = convertRaw(t, bimg)
		qemuImg(t, "create", "-q", "-f", "qcow2", "-o", opts, "-b", "base.qcow2", "-F", "qcow2", img, fmt.Sprint(cfg.Size))
	} else {
		qemuCreate(t, img, opts, cfg.Size)
	}
	if cfg.Snapshot {
		qemuIO(t, img,
			"write -P 0x5a 0 1M",
			fmt.Sprintf("write -P 0xa5 %d 512k", cfg.Size/2+4096),
			fmt.Sprintf("write -P 0x33 %d 64k", cfg.Size-64<<10))
		qemuImg(t, "snapshot", "-c", "s1", img)
		base = convertRaw(t, img)
	}

	im0, err := openFile(t, img, format.Options{})
	if err != nil {
		t.Fatal(err)
	}
	h0 := *im0.Header

	spec, err := json.Marshal(killChildSpec{Img: img, Log: logPath, Seed: seed, Cfg: cfg})
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), killChildEnv+"="+string(spec))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Read the child's progress; the kill happens in this goroutine's
	// caller once the trigger is reached.
	trig := make(chan struct{})
	type progress struct {
		lastW   int  // the last "F" watermark seen
		resized bool // "R" seen
	}
	lines := make(chan progress, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		flushes, resized, fired, lastW := 0, false, false, -1
		for sc.Scan() {
			l := sc.Text()
			switch {
			case l == "R":
				resized = true
			case strings.HasPrefix(l, "F "):
				lastW, _ = strconv.Atoi(l[2:])
				if lastW > 0 && (resized || !tr.afterResize) {
					flushes++
				}
			}
			if !fired && l != "done" && (resized || !tr.afterResize) && flushes >= tr.flushes {
				fired = true
				close(trig)
			}
		}
		lines <- progress{lastW, resized}
	}()
	exited := make(chan struct{})
	hung := make(chan bool, 1)
	go func() {
		// A child that reaches neither its trigger nor its end in time is
		// stuck (a deadlock in the driver): kill it and say so.
		stuck := time.NewTimer(killChildTimeout)
		defer stuck.Stop()
		select {
		case <-trig:
			time.Sleep(tr.delay)
			cmd.Process.Signal(syscall.SIGKILL)
		case <-stuck.C:
			hung <- true
			cmd.Process.Signal(syscall.SIGKILL)
		case <-exited:
		}
	}()
	prog := <-lines // stdout closes when the child dies or ends
	lastW := prog.lastW
	werr := cmd.Wait()
	close(exited)
	select {
	case <-hung:
		t.Fatalf("child made no progress to its trigger %+v in %v\n%s", tr, killChildTimeout, stderr.String())
	default:
	}
	killed := false
	if ee, ok := werr.(*exec.ExitError); ok {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
			killed = true
		} else {
			t.Fatalf("child failed: %v\n%s", werr, stderr.String())
		}
	} else if werr != nil {
		t.Fatal(werr)
	}

	// The durable watermark: the largest logged one (a flush's record is
	// logged, and fsync'd, before its "F" line is printed).
	w := 0
	logb, err := os.ReadFile(logPath)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(logb), "\n") {
		if v, err := strconv.Atoi(l); err == nil {
			w = max(w, v)
		}
	}
	if lastW > w {
		t.Fatalf("child reported watermark %d, but the log holds at most %d", lastW, w)
	}

	// qemu-img check: no corruption, leaks allowed.
	out, err := exec.Command("qemu-img", "check", "--output=json", img).Output()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	var q qemuCheckJSON
	if err := json.Unmarshal(out, &q); err != nil {
		t.Fatalf("qemu-img check exit %d, output %q: %v", code, out, err)
	}
	if (code != 0 && code != 3) || q.Corruptions != 0 || q.CheckErrors != 0 {
		t.Fatalf("qemu-img check exit %d %+v (killed %v, durable watermark %d)", code, q, killed, w)
	}

	// A resize the child finished moved the L1 table (and the fill before
	// it the refcount table), and the header says so.
	if prog.resized {
		im, err := openFile(t, img, format.Options{})
		if err != nil {
			t.Fatal(err)
		}
		h := im.Header
		if int64(h.Size) != cfg.GrowTo || h.L1Offset == h0.L1Offset {
			t.Errorf("after the resize: size %d, L1 table at %#x (was %#x): want size %d and a moved L1 table",
				h.Size, h.L1Offset, h0.L1Offset, cfg.GrowTo)
		}
		if cfg.Fill > 0 && h.RefcountTableOffset == h0.RefcountTableOffset {
			t.Errorf("after the fill the refcount table is still at %#x", h.RefcountTableOffset)
		}
	}

	// Content, through ringblk.
	ops := killOps(cfg, seed)
	e := newTestEnv(t)
	n := e.mustOpen(img, true)
	got := readAll(t, n, 1<<20)
	n.Unref()
	size := int64(len(got))
	for i := 0; i < w; i++ {
		if ops[i].Kind == kResize && size != ops[i].N {
			t.Fatalf("resize to %d (op %d) was flushed, but the disk has %d bytes", ops[i].N, i, size)
		}
	}
	durable := killVerify(t, got, base, ops, w, seed)
	// And through QEMU: the same bytes.
	checkSame(t, convertRaw(t, img), got)
	if cfg.Snapshot {
		// The snapshot still holds what it held before the child ran.
		out := filepath.Join(t.TempDir(), "s1.raw")
		qemuImg(t, "convert", "-l", "snapshot.name=s1", "-O", "raw", img, out)
		snap, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(snap, base[:min(len(base), len(snap))]) || len(snap) != len(base) {
			t.Errorf("snapshot s1 changed under the child's writes")
		}
	}
	t.Logf("killed %v after %+v (resized %v): %d ops durable of %d, %d sectors hold durable data, %d leaked clusters",
		killed, tr, prog.resized, w, len(ops), durable, q.Leaks)
	return durable
}

// killVerify checks every sector of got against the stream: it must equal
// the value left by the last operation below the durable watermark w that
// touched it (or the initial content), or the value of any operation at or
// above w that touched it. It returns how many sectors matched data of a
// durable write.
func killVerify(t *testing.T, got, base []byte, ops []killOp, w int, seed uint64) int {
	t.Helper()
	sectors := len(got) / 512
	touch := make([][]int32, sectors)
	for i, op := range ops {
		if op.Kind == kFlush || op.Kind == kResize {
			continue
		}
		for s := op.Off / 512; s < (op.Off+op.N)/512 && s < int64(sectors); s++ {
			touch[s] = append(touch[s], int32(i))
		}
	}
	want := make([]byte, 512)
	// value fills want with what op i (-1: the initial content) leaves at sector s.
	value := func(i int, s int) {
		switch {
		case i < 0:
			clear(want)
			if off := s * 512; off < len(base) {
				copy(want, base[off:])
			}
		case ops[i].Kind == kWrite:
			killSector(want, seed, i, int64(s)*512)
		default:
			clear(want)
		}
	}
	durableData := 0
	for s := 0; s < sectors; s++ {
		sec := got[s*512 : s*512+512]
		last := -1
		var later []int
		for _, i := range touch[s] {
			if int(i) < w {
				last = int(i)
			} else {
				later = append(later, int(i))
			}
		}
		value(last, s)
		if bytes.Equal(sec, want) {
			if last >= 0 && ops[last].Kind == kWrite {
				durableData++
			}
			continue
		}
		ok := false
		for _, i := range later {
			value(i, s)
			if bytes.Equal(sec, want) {
				ok = true
				break
			}
		}
		if !ok {
			what := "initial content"
			if last >= 0 {
				what = fmt.Sprintf("op %d %+v", last, ops[last])
			}
			t.Fatalf("sector at %d (0x%x) holds none of the allowed values: durable %s (watermark %d), later ops %v; starts % x",
				s*512, s*512, what, w, later, sec[:16])
		}
	}
	return durableData
}
