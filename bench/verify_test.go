package bench

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func verifyEntry(t *testing.T, res *Result) *entry {
	t.Helper()
	es := entries(res)
	if len(es) != 1 {
		t.Fatalf("%d entries", len(es))
	}
	return es[0]
}

// TestVerifyWriteThenRead: a write job with verify reads every block back
// and finds no mismatch, for every method and engine.
func TestVerifyWriteThenRead(t *testing.T) {
	dir := benchDir(t)
	for _, eng := range []string{"ringblk", "io_uring", "psync"} {
		for _, method := range []string{"crc32c", "md5", "pattern"} {
			t.Run(eng+"/"+method, func(t *testing.T) {
				file := filepath.Join(dir, eng+"-"+method)
				args := []string{"--name=v", "--ioengine=" + eng, "--filename=" + file, "--size=1m", "--rw=randwrite",
					"--bs=4k", "--iodepth=4", "--verify=" + method, "--verify_pattern=0xdeadbeef"}
				res := mustRun(t, mustParse(t, args...))
				e := verifyEntry(t, res)
				if e.verify.checked != 256 || e.verify.mismatches != 0 {
					t.Errorf("checked %d blocks, %d mismatches: %v", e.verify.checked, e.verify.mismatches, e.verify.first)
				}
			})
		}
	}
}

// TestQcow2WriteThenVerify: ioengine=ringblk on a qcow2 image made by
// qemu-img: random allocating writes with verify read back intact through
// the qcow2 driver, the job's region is the virtual disk (the file is not
// laid out), and qemu-img check finds the image clean afterwards.
func TestQcow2WriteThenVerify(t *testing.T) {
	qemuImg, err := exec.LookPath("qemu-img")
	if err != nil {
		t.Skip("qemu-img is not installed (make deps installs qemu-utils)")
	}
	file := filepath.Join(benchDir(t), "v.qcow2")
	if out, err := exec.Command(qemuImg, "create", "-q", "-f", "qcow2", file, "8M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v\n%s", err, out)
	}
	res := mustRun(t, mustParse(t, "--name=q", "--ioengine=ringblk", "--filename="+file, "--rw=randwrite",
		"--bs=4k", "--iodepth=8", "--verify=crc32c"))
	e := verifyEntry(t, res)
	if e.verify.checked != 2048 || e.verify.mismatches != 0 {
		t.Errorf("checked %d blocks of the 8 MiB virtual disk, %d mismatches: %v", e.verify.checked, e.verify.mismatches, e.verify.first)
	}
	if out, err := exec.Command(qemuImg, "check", file).CombinedOutput(); err != nil {
		t.Errorf("qemu-img check after the run: %v\n%s", err, out)
	}
}

// TestVerifyFindsCorruption: write a file with verify headers, corrupt one
// block behind the tool's back, read it with verify: the block is found
// and reported with its offset.
func TestVerifyFindsCorruption(t *testing.T) {
	dir := benchDir(t)
	for _, method := range []string{"crc32c", "md5"} {
		t.Run(method, func(t *testing.T) {
			file := filepath.Join(dir, "c-"+method)
			mustRun(t, mustParse(t, "--name=w", "--ioengine=ringblk", "--filename="+file, "--size=256k", "--rw=write",
				"--bs=4k", "--iodepth=4", "--verify="+method, "--do_verify=0"))
			const bad = 40960 + 100 // a payload byte of block 10
			f, err := os.OpenFile(file, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			var b [1]byte
			f.ReadAt(b[:], bad)
			b[0] ^= 0xff
			f.WriteAt(b[:], bad)
			f.Close()

			var out, errb bytes.Buffer
			code := Main([]string{"--name=r", "--ioengine=ringblk", "--filename=" + file, "--size=256k", "--rw=read",
				"--bs=4k", "--iodepth=4", "--verify=" + method}, &out, &errb)
			if code != 1 || !strings.Contains(errb.String(), "err=84") {
				t.Fatalf("exit %d, stderr %q; want 1 and err=84 (a verify failure fails the job, as in fio)", code, errb.String())
			}
			want := "mismatch  : offset 40960, length 4096: bad " + method
			if !strings.Contains(out.String(), "checked=64, mismatches=1") || !strings.Contains(out.String(), want) {
				t.Errorf("report does not name the corrupt block (%q):\n%s", want, out.String())
			}

			// verify_fatal stops the job with fio's EILSEQ.
			spec := mustParse(t, "--name=r", "--ioengine=ringblk", "--filename="+file, "--size=256k", "--rw=read",
				"--bs=4k", "--verify="+method, "--verify_fatal=1")
			res, err := Run(spec, RunOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if e := verifyEntry(t, res); errnoOf(e.err) != 84 || !strings.Contains(e.err.Error(), "offset 40960") {
				t.Errorf("verify_fatal: err %v (errno %d)", e.err, errnoOf(e.err))
			}
		})
	}
}

// TestVerifyPatternMismatch: verify=pattern names the first differing byte.
func TestVerifyPatternMismatch(t *testing.T) {
	j := newJob("p", Loc{})
	j.Verify, j.VerifyPattern = VerifyPattern, []byte{0xaa, 0x55}
	v := newVerifier(j, 4096, 0, 1<<20, 4096, false)
	buf := make([]byte, 4096)
	v.stamp(buf, 8192, 0)
	if !v.check(buf, 8192) {
		t.Fatal("clean block failed")
	}
	buf[7] = 0
	if v.check(buf, 8192) || v.mismatches != 1 || !strings.Contains(v.first[0].String(), "offset 8192, length 4096: pattern mismatch at byte 7 (offset 8199)") {
		t.Errorf("mismatch: %v", v.first)
	}
}

// TestHotPathZeroAllocs: the worker's per-I/O calls allocate nothing, and
// the ringblk engine's whole submit/complete loop (block layer, null
// driver, aio Context) allocates nothing per I/O once warm.
func TestHotPathZeroAllocs(t *testing.T) {
	j := newJob("a", Loc{})
	j.RW, j.IODepth, j.Verify, j.TimeBased, j.Runtime = RWRandRead, 4, VerifyNone, true, time.Hour
	w := newWorker(j, 0, 0, 1<<30)
	bufs := make([][]byte, 4)
	for i := range bufs {
		bufs[i] = make([]byte, 4096)
	}
	w.setBuffers(bufs)
	w.start()
	batch := make([]*unit, 0, 4)
	allocs := testing.AllocsPerRun(1000, func() {
		now := w.now()
		w.tick(now)
		batch = batch[:0]
		for u := w.take(); u != nil; u = w.take() {
			w.fill(u, now)
			batch = append(batch, u)
		}
		w.submitted(batch, w.now())
		for _, u := range batch {
			w.completed(u, w.now(), nil)
		}
	})
	if allocs != 0 {
		t.Errorf("worker: %v allocations per batch", allocs)
	}

	// The engine over the block layer: count every allocation of the
	// process while one clone runs flat out, per I/O.
	checkAllocsPerIO(t, "ringblk engine, null driver", mustParse(t, "--name=z", "--ioengine=ringblk", "--format=null",
		"--size=1g", "--rw=randread", "--bs=4k", "--iodepth=32", "--iodepth_batch_submit=8", "--runtime=1500ms", "--time_based"))
}

// runAsync runs spec on its own goroutine; the channel gets the result
// (nil after a set-up error, which fails the test).
func runAsync(t *testing.T, spec *Spec) <-chan *Result {
	done := make(chan *Result, 1)
	go func() {
		res, err := Run(spec, RunOptions{})
		if err != nil {
			t.Error(err)
		}
		done <- res
	}()
	return done
}

// checkAllocsPerIO runs spec (a time_based job of 1.5 s or more) and
// counts every allocation of the process over 500 ms once it is warm
// (pools, arena, histograms), GC and runtime included: at most one per
// thousand I/Os passes.
func checkAllocsPerIO(t *testing.T, what string, spec *Spec) {
	t.Helper()
	done := runAsync(t, spec)
	time.Sleep(500 * time.Millisecond)
	var ios0, ios1 uint64
	perRun := testing.AllocsPerRun(1, func() {
		ios0 = liveIOs()
		time.Sleep(500 * time.Millisecond)
		ios1 = liveIOs()
	})
	if res := <-done; res == nil {
		return
	}
	ios := ios1 - ios0
	if ios < 10_000 {
		t.Skipf("only %d I/Os in the window: machine too busy to judge", ios)
	}
	t.Logf("%s: %v allocations over %d I/Os (the test process's total, GC and runtime included)", what, perRun, ios)
	if perRun/float64(ios) > 0.001 {
		t.Errorf("%s: %v allocations over %d I/Os: the I/O path allocates", what, perRun, ios)
	}
}

// TestVerifyInterchangeableWithFio: blocks carry fio's verify header, so
// what fio writes (do_verify=0) verifies here with verify_only=1, what
// ringblk writes verifies in fio with verify_only=1, and a corrupted
// payload byte fails both with err=84. The headers of a sequential write
// are the same bytes as fio's (all but the time), rand_seed included.
func TestVerifyInterchangeableWithFio(t *testing.T) {
	if _, err := exec.LookPath("fio"); err != nil {
		t.Skip("fio not installed (make deps installs it)")
	}
	dir := benchDir(t)
	for _, method := range []string{"crc32c", "crc32c-intel", "md5", "crc64", "sha256"} {
		t.Run(method, func(t *testing.T) {
			common := []string{"--size=256k", "--bs=4k", "--rw=randwrite", "--verify=" + method}
			fioFile, rbFile := filepath.Join(dir, "fio-"+method), filepath.Join(dir, "rb-"+method)
			if code, jobErr := fioRun(t, append([]string{"--name=w", "--ioengine=psync", "--filename=" + fioFile, "--do_verify=0"}, common...)...); code != 0 || jobErr != 0 {
				t.Fatalf("fio writing: exit %d, error %d", code, jobErr)
			}
			mustRun(t, mustParse(t, append([]string{"--name=w", "--ioengine=ringblk", "--iodepth=4", "--filename=" + rbFile, "--do_verify=0"}, common...)...))

			rbVerify := func(file string) (int, string) {
				var out, errb bytes.Buffer
				code := Main(append([]string{"--name=w", "--ioengine=io_uring", "--iodepth=4", "--filename=" + file, "--verify_only=1"}, common...), &out, &errb)
				return code, out.String() + errb.String()
			}
			if code, out := rbVerify(fioFile); code != 0 || !strings.Contains(out, "checked=64, mismatches=0") {
				t.Errorf("ringblk verify_only of fio's data: exit %d\n%s", code, out)
			}
			if code, jobErr := fioRun(t, append([]string{"--name=w", "--ioengine=psync", "--filename=" + rbFile, "--verify_only=1"}, common...)...); code != 0 || jobErr != 0 {
				t.Errorf("fio verify_only of ringblk's data: exit %d, error %d", code, jobErr)
			}

			for _, file := range []string{fioFile, rbFile} {
				corrupt(t, file, 40960+100)
				if code, out := rbVerify(file); code != 1 || !strings.Contains(out, "err=84") || !strings.Contains(out, "offset 40960, length 4096: bad ") {
					t.Errorf("ringblk on corrupted %s: exit %d; want 1, err=84 and the block\n%s", filepath.Base(file), code, out)
				}
				if code, jobErr := fioRun(t, append([]string{"--name=w", "--ioengine=psync", "--filename=" + file, "--verify_only=1"}, common...)...); code != 1 || jobErr != 84 {
					t.Errorf("fio on corrupted %s: exit %d, error %d; want 1 and 84", filepath.Base(file), code, jobErr)
				}
			}
		})
	}

	// Sequential: fio's and ringblk's first headers are the same bytes
	// but for the time (24..31): magic, type, length, rand_seed, offset,
	// thread, write number and so the header crc differ only by the time.
	fioFile, rbFile := filepath.Join(dir, "fio-seq"), filepath.Join(dir, "rb-seq")
	seq := []string{"--size=64k", "--bs=4k", "--rw=write", "--verify=crc32c", "--do_verify=0"}
	if code, jobErr := fioRun(t, append([]string{"--name=w", "--ioengine=psync", "--filename=" + fioFile}, seq...)...); code != 0 || jobErr != 0 {
		t.Fatalf("fio writing: exit %d, error %d", code, jobErr)
	}
	mustRun(t, mustParse(t, append([]string{"--name=w", "--ioengine=psync", "--filename=" + rbFile}, seq...)...))
	a, _ := os.ReadFile(fioFile)
	b, _ := os.ReadFile(rbFile)
	for _, blk := range []int{0, 5, 15} {
		ha, hb := a[blk*4096:blk*4096+44], b[blk*4096:blk*4096+44]
		if !bytes.Equal(ha[:24], hb[:24]) || !bytes.Equal(ha[32:36], hb[32:36]) {
			t.Errorf("block %d header: fio % x, ringblk % x", blk, ha[:36], hb[:36])
		}
	}
}

// TestVerifyOnlyOptions: verify_only is refused where fio cannot replay
// a write workload.
func TestVerifyOnlyOptions(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--rw=write"}, "verify_only needs verify="},
		{[]string{"--rw=write", "--verify=md5", "--time_based", "--runtime=1"}, "does not support time_based"},
		{[]string{"--rw=write", "--verify=sha512"}, "verify=sha512 is a fio method that ringblk bench does not implement"},
	} {
		_, err := ParseArgs(append([]string{"--name=x", "--filename=/var/tmp/none", "--size=64k", "--verify_only=1"}, c.args...))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: err %v, want %q", c.args, err, c.want)
		}
	}
}

// TestVerifyOnlyOnReads: as in fio, verify_only on a pattern that does
// not write has nothing to replay and is ignored: the job reads, and
// checks its blocks where verify= is set.
func TestVerifyOnlyOnReads(t *testing.T) {
	for _, args := range [][]string{{"--rw=read", "--verify=md5"}, {"--rw=randread"}} {
		cfg, err := ParseArgs(append([]string{"--name=x", "--filename=/var/tmp/none", "--size=64k", "--verify_only=1"}, args...))
		if err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		if jobs := cfg.Spec.Jobs; len(jobs) != 1 || jobs[0].VerifyOnly {
			t.Errorf("%v: %d jobs, verify_only left set: the read job would generate blocks instead of reading", args, len(jobs))
		}
	}
}

// TestVerifyZeroAllocs: stamping and checking a block allocate nothing,
// for every method with fio's header.
func TestVerifyZeroAllocs(t *testing.T) {
	for _, k := range []VerifyKind{VerifyCRC32C, VerifyMD5, VerifyCRC64, VerifySHA256} {
		if k == VerifySHA256 && raceEnabled {
			continue // counted in the ordinary run: under -race crypto/sha256 allocates
		}
		j := newJob("a", Loc{})
		j.RW, j.Verify = RWWrite, k
		v := newVerifier(j, 4096, 0, 1<<20, 4096, true)
		buf := make([]byte, 4096)
		allocs := testing.AllocsPerRun(200, func() {
			v.stamp(buf, 8192, 1)
			if !v.check(buf, 8192) {
				t.Fatalf("%s: %v", k, v.first)
			}
		})
		if allocs != 0 {
			t.Errorf("verify=%s: %v allocations per block", k, allocs)
		}
	}
}
