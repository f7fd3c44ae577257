package bench

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestUnsupportedOptionsOneError: every option bench lacks, in every job
// and [global], is named in one error with its line — not the first only.
func TestUnsupportedOptionsOneError(t *testing.T) {
	text := "[global]\nverify_async=2\n[a]\nfilename=/tmp/x\nexitall_on_error=1\nfrobnicate=1\n[b]\nfilename=/tmp/y\nopenfiles=2\n"
	_, err := ParseJobText("j.fio", text)
	if err == nil {
		t.Fatal("parsed")
	}
	msg := err.Error()
	for _, want := range []string{`"verify_async" (fio option, j.fio:2)`, `"exitall_on_error" (fio option, j.fio:5)`, `"frobnicate" (unknown, j.fio:6)`, `"openfiles" (fio option, j.fio:9)`, "4 options"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q lacks %q", msg, want)
		}
	}
	if strings.Count(msg, `"verify_async"`) != 1 || strings.Contains(msg, "\n") {
		t.Errorf("error %q: a [global] option must be named once, on one line", msg)
	}
}

// TestAliases: fio's other names for options.
func TestAliases(t *testing.T) {
	spec, err := ParseJobText("j.fio", "[j]\nfilename=/tmp/x\ntimeout=3\nthreads\nio_limit=8k\n")
	if err != nil {
		t.Fatal(err)
	}
	j := spec.Jobs[0]
	if j.Runtime.Seconds() != 3 || !j.Thread || j.IOSize != 8192 {
		t.Errorf("runtime %v thread %v io_size %d", j.Runtime, j.Thread, j.IOSize)
	}
}

// TestDefaultFilename: without filename=, a job's file is fio's
// jobname.0.0 in directory=, and clone K's jobname.K.0.
func TestDefaultFilename(t *testing.T) {
	spec, err := ParseJobText("j.fio", "[global]\ndirectory=/var/tmp/d\n[job1]\nsize=1m\n")
	if err != nil {
		t.Fatal(err)
	}
	if got := spec.Jobs[0].Filename; got != "/var/tmp/d/job1.0.0" {
		t.Errorf("filename %q", got)
	}
	// numjobs > 1: one file per clone, jobname.K.0, as fio (tiobench-example).
	dir := benchDir(t)
	for _, eng := range []string{"psync", "ringblk"} {
		spec, err := ParseJobText("j.fio", "[global]\ndirectory="+dir+"\nioengine="+eng+"\n[f"+eng+"]\nsize=64k\nnumjobs=3\nrw=write\n")
		if err != nil {
			t.Fatal(err)
		}
		res := mustRun(t, spec)
		for k := 0; k < 3; k++ {
			name := filepath.Join(dir, "f"+eng+"."+strconv.Itoa(k)+".0")
			if st, err := os.Stat(name); err != nil || st.Size() != 64<<10 {
				t.Errorf("%s: clone %d file %s: %v", eng, k, name, err)
			}
			if w := res.Jobs[0].Clones[k]; w.job.Filename != name || w.stats[DirWrite].ios != 16 {
				t.Errorf("%s: clone %d wrote %d blocks to %s", eng, k, w.stats[DirWrite].ios, w.job.Filename)
			}
		}
	}
}

func genOffsets(t *testing.T, text string, n int) (offs []int64, total int64) {
	t.Helper()
	spec, err := ParseJobText("j.fio", text)
	if err != nil {
		t.Fatal(err)
	}
	j := spec.Jobs[0]
	g := newGenerator(j, 0, 0, j.Size)
	for {
		_, off, sz, ok := g.next()
		if !ok {
			break
		}
		total += int64(sz)
		if len(offs) < n {
			offs = append(offs, off)
		}
	}
	return offs, total
}

// TestIOSizeAndLoops: io_size bounds the bytes of one loop, loops repeats.
func TestIOSizeAndLoops(t *testing.T) {
	if _, total := genOffsets(t, "[j]\nfilename=/tmp/x\nsize=64k\nbs=4k\nio_size=16k\n", 0); total != 16<<10 {
		t.Errorf("io_size=16k: %d bytes", total)
	}
	if _, total := genOffsets(t, "[j]\nfilename=/tmp/x\nsize=64k\nbs=4k\nloops=3\nrw=randread\n", 0); total != 3*64<<10 {
		t.Errorf("loops=3: %d bytes", total)
	}
	if _, err := ParseJobText("j.fio", "[j]\nfilename=/tmp/x\nloops=0\n"); err == nil || !strings.Contains(err.Error(), "j.fio:3") {
		t.Errorf("loops=0: %v", err)
	}
}

// TestRWSuffix: rw=read:-8k reads backwards (fio's backwards-read
// example), rw=write:4k leaves 4k holes, rw=randread:4 issues runs of
// four sequential I/Os from each random offset.
func TestRWSuffix(t *testing.T) {
	offs, _ := genOffsets(t, "[j]\nfilename=/tmp/x\nsize=64k\nbs=4k\nrw=read:-8k\n", 4)
	want := []int64{0, 56 << 10, 52 << 10, 48 << 10}
	for i := range want {
		if offs[i] != want[i] {
			t.Fatalf("read:-8k offsets %v, want %v", offs, want)
		}
	}
	offs, _ = genOffsets(t, "[j]\nfilename=/tmp/x\nsize=64k\nbs=4k\nrw=write:4k\n", 3)
	if offs[1] != 8<<10 || offs[2] != 16<<10 {
		t.Errorf("write:4k offsets %v", offs)
	}
	offs, _ = genOffsets(t, "[j]\nfilename=/tmp/x\nsize=1m\nbs=4k\nrw=randread:4\nnorandommap\n", 8)
	for i := 0; i < 8; i++ {
		if i%4 != 0 && offs[i] != offs[i-1]+4096 && offs[i-1]+8192 <= 1<<20 {
			t.Errorf("randread:4 offsets %v: I/O %d does not follow", offs, i)
		}
	}
	for _, bad := range []string{"randread:0", "read:x"} {
		if _, err := ParseJobText("j.fio", "[j]\nfilename=/tmp/x\nrw="+bad+"\n"); err == nil || !strings.Contains(err.Error(), "j.fio:3") {
			t.Errorf("rw=%s: %v", bad, err)
		}
	}
}

// TestLatencySwitches: disable_* and gtod_reduce leave their series
// empty; clat_percentiles=0 drops the percentiles from the JSON, and
// percentile_list replaces fio's default list.
func TestLatencySwitches(t *testing.T) {
	dir := benchDir(t)
	file := filepath.Join(dir, "f")
	run := func(extra ...string) map[string]any {
		args := append([]string{"--name=j", "--filename=" + file, "--size=1m", "--bs=4k", "--ioengine=io_uring", "--iodepth=4"}, extra...)
		res := mustRun(t, mustParse(t, args...))
		var b bytes.Buffer
		if err := WriteJSON(&b, res); err != nil {
			t.Fatal(err)
		}
		var top map[string]any
		if err := json.Unmarshal(b.Bytes(), &top); err != nil {
			t.Fatal(err)
		}
		return top["jobs"].([]any)[0].(map[string]any)["read"].(map[string]any)
	}
	n := func(rd map[string]any, k string) float64 { return rd[k].(map[string]any)["N"].(float64) }
	rd := run("--disable_clat", "--disable_lat=1")
	if n(rd, "clat_ns") != 0 || n(rd, "lat_ns") != 0 || n(rd, "slat_ns") == 0 {
		t.Errorf("disable_clat+disable_lat: %v", rd)
	}
	rd = run("--gtod_reduce=1")
	if n(rd, "clat_ns") != 0 || n(rd, "lat_ns") != 0 || n(rd, "slat_ns") != 0 || rd["total_ios"].(float64) != 256 {
		t.Errorf("gtod_reduce: %v", rd)
	}
	if _, ok := rd["clat_ns"].(map[string]any)["percentile"]; ok {
		t.Errorf("gtod_reduce: clat percentiles reported")
	}
	rd = run("--percentile_list=50:99.5")
	p := rd["clat_ns"].(map[string]any)["percentile"].(map[string]any)
	if len(p) != 2 || p["50.000000"] == nil || p["99.500000"] == nil {
		t.Errorf("percentile_list: %v", p)
	}
	rd = run("--lat_percentiles=1", "--clat_percentiles=0")
	if _, ok := rd["lat_ns"].(map[string]any)["percentile"]; !ok {
		t.Errorf("lat_percentiles=1: no lat percentiles")
	}
	if _, ok := rd["clat_ns"].(map[string]any)["percentile"]; ok {
		t.Errorf("clat_percentiles=0: clat percentiles reported")
	}
}

// TestLogs: write_bw_log, write_iops_log and write_lat_log write fio's
// log format, an entry per I/O; with log_avg_msec an entry per window
// with block size 0; per_job_logs=0 drops the clone number.
func TestLogs(t *testing.T) {
	dir := benchDir(t)
	file := filepath.Join(dir, "f")
	p := filepath.Join(dir, "l")
	mustRun(t, mustParse(t, "--name=j", "--filename="+file, "--size=1m", "--bs=4k", "--ioengine=io_uring", "--iodepth=4",
		"--rw=randwrite", "--write_bw_log="+p, "--write_iops_log="+p, "--write_lat_log="+p, "--log_offset=1"))
	offs := map[string]bool{}
	for _, kind := range []string{"bw", "iops", "lat", "clat", "slat"} {
		data, err := os.ReadFile(p + "_" + kind + ".1.log")
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSpace(string(data)), "\n")
		if len(lines) != 256 {
			t.Errorf("%s log: %d entries, want 256 (one per I/O)", kind, len(lines))
		}
		for _, l := range lines {
			f := strings.Split(l, ", ")
			// fio 3.33 with log_offset=1: time, value, ddir, bs, offset, prio.
			if len(f) != 6 || f[2] != "1" || f[3] != "4096" || f[5] != "0" {
				t.Fatalf("%s log line %q: want time, value, 1, 4096, offset, 0", kind, l)
			}
			if kind == "iops" && f[1] != "1" {
				t.Fatalf("iops log line %q", l)
			}
			if kind == "lat" {
				offs[f[4]] = true
			}
		}
	}
	if len(offs) != 256 {
		t.Errorf("log_offset=1: %d distinct offsets, want 256", len(offs))
	}
	wres := mustRun(t, mustParse(t, "--name=w", "--filename="+file, "--size=1m", "--bs=4k", "--ioengine=psync", "--rw=read",
		"--runtime=350ms", "--time_based", "--write_bw_log="+p+"w", "--log_avg_msec=100", "--per_job_logs=0"))
	data, err := os.ReadFile(p + "w_bw.log")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	// One averaged entry per window of at least 100 ms, as fio, and the
	// last, partial window at the end: a quiet run gives 4 over 350 ms, a
	// run the machine stalls fewer, longer windows (the stall ends inside
	// one), never more than the runtime holds.
	runtime := entries(wres)[0].runtimeMs
	if len(lines) < 1 || int64(len(lines)) > runtime/100+1 {
		t.Errorf("log_avg_msec=100 over a %d ms run: %d entries %q", runtime, len(lines), lines)
	}
	prev := int64(0)
	for i, l := range lines {
		f := strings.Split(l, ", ")
		if len(f) != 5 || f[2] != "0" || f[3] != "0" || f[1] == "0" {
			t.Errorf("windowed line %q", l)
			continue
		}
		at, err := strconv.ParseInt(f[0], 10, 64)
		last := i == len(lines)-1
		if err != nil || at <= prev || !last && at-prev < 100 || at > runtime+100 {
			t.Errorf("windowed line %q ends %d ms after the one before (want at least 100) in a %d ms run", l, at-prev, runtime)
		}
		prev = at
	}
	if _, err := ParseJobText("j.fio", "[j]\nfilename=/tmp/x\nnumjobs=2\nwrite_bw_log=x\nper_job_logs=0\n"); err == nil {
		t.Error("per_job_logs=0 with numjobs=2 parsed")
	}
}

// TestVerifyReadsAreReads: the reads of a write job's verify phase are
// reported as the job's reads, as fio reports them.
func TestVerifyReadsAreReads(t *testing.T) {
	dir := benchDir(t)
	res := mustRun(t, mustParse(t, "--name=v", "--filename="+filepath.Join(dir, "f"), "--size=256k", "--bs=4k",
		"--ioengine=psync", "--rw=write", "--verify=crc32c"))
	e := entries(res)[0]
	if e.dirs[DirWrite].ios != 64 || e.dirs[DirRead].ios != 64 || e.dirs[DirRead].clat.n != 64 {
		t.Errorf("write ios %d, read ios %d (clat %d); want 64 each", e.dirs[DirWrite].ios, e.dirs[DirRead].ios, e.dirs[DirRead].clat.n)
	}
}

// TestFilenameColons: "\:" is a colon of the name (fio's escape) and the
// directories of a new file are created; unescaped colons (several
// files) are refused by name.
func TestFilenameColons(t *testing.T) {
	dir := benchDir(t)
	spec := mustParse(t, "--name=c", "--directory="+dir, `--filename=a\:b/c`, "--size=64k", "--ioengine=psync", "--rw=read")
	if got := spec.Jobs[0].Filename; got != filepath.Join(dir, "a:b/c") {
		t.Fatalf("filename %q", got)
	}
	mustRun(t, spec)
	if _, err := os.Stat(filepath.Join(dir, "a:b", "c")); err != nil {
		t.Error(err)
	}
	if _, err := ParseArgs([]string{"--name=c", "--filename=/tmp/a:/tmp/b"}); err == nil || !strings.Contains(err.Error(), "several files") {
		t.Errorf("filename=a:b: %v", err)
	}
}

// TestWorkerCPUsPlacement: iowq_workers decides where a pinned clone's
// io-wq workers run: auto puts them on the other CPUs at depth (issue 20:
// sharing the clone's CPU held zram QD32 at 0.57x fio) and leaves them on
// the clone's CPU at iodepth 1; same never moves them; an unpinned clone's
// workers are left alone; a bad value is refused.
func TestWorkerCPUsPlacement(t *testing.T) {
	if !iowqAffinityWorks() {
		t.Skip("the kernel does not place io-wq workers (IORING_REGISTER_IOWQ_AFF)")
	}
	spec, err := ParseJobText("j.fio", "[a]\nfilename=/tmp/x\niodepth=32\n[b]\nfilename=/tmp/x\niodepth=1\n[c]\nfilename=/tmp/x\niodepth=32\niowq_workers=same\n[d]\nfilename=/tmp/x\niodepth=1\niowq_workers=other\n")
	if err != nil {
		t.Fatal(err)
	}
	var procs unix.CPUSet
	for _, c := range []int{0, 1, 2, 3} {
		procs.Set(c)
	}
	a, b, c, d := spec.Jobs[0], spec.Jobs[1], spec.Jobs[2], spec.Jobs[3]
	if got := workerCPUs(a, 1, nil, &procs); !slices.Equal(got, []int{0, 2, 3}) {
		t.Errorf("auto, iodepth 32, clone on CPU 1: workers on %v, want [0 2 3]", got)
	}
	if got := workerCPUs(a, -1, []int{0, 1}, &procs); !slices.Equal(got, []int{2, 3}) {
		t.Errorf("auto, iodepth 32, clone on set [0 1]: workers on %v, want [2 3]", got)
	}
	if got := workerCPUs(a, -1, nil, &procs); got != nil {
		t.Errorf("unpinned clone: workers on %v, want the kernel's default", got)
	}
	if got := workerCPUs(b, 1, nil, &procs); got != nil {
		t.Errorf("auto, iodepth 1: workers on %v, want the clone's CPU", got)
	}
	if got := workerCPUs(c, 1, nil, &procs); got != nil {
		t.Errorf("same: workers on %v", got)
	}
	if got := workerCPUs(d, 1, nil, &procs); !slices.Equal(got, []int{0, 2, 3}) {
		t.Errorf("other, iodepth 1: workers on %v", got)
	}
	var one unix.CPUSet
	one.Set(0)
	if got := workerCPUs(a, 0, nil, &one); got != nil {
		t.Errorf("one CPU: workers on %v, want the default", got)
	}
	if _, err := ParseArgs([]string{"--name=x", "--filename=/tmp/x", "--iowq_workers=elsewhere"}); err == nil || !strings.Contains(err.Error(), "iowq_workers") {
		t.Errorf("iowq_workers=elsewhere: %v", err)
	}
}

// TestPlacement: cpus_allowed and cpus_allowed_policy decide where each
// clone runs; a CPU that is not present is refused with its line.
func TestPlacement(t *testing.T) {
	spec, err := ParseJobText("j.fio", "[j]\nfilename=/tmp/x\ncpus_allowed=0\ncpus_allowed_policy=split\n[k]\nfilename=/tmp/x\ncpus_allowed=0\n[l]\nfilename=/tmp/x\ncpus_allowed_policy=shared\n")
	if err != nil {
		t.Fatal(err)
	}
	if cpu, set := placement(spec.Jobs[0], 3, 7, 2, false); cpu != 0 || set != nil {
		t.Errorf("split: %d %v", cpu, set)
	}
	if cpu, set := placement(spec.Jobs[1], 1, 7, 2, false); cpu != -1 || len(set) != 1 || set[0] != 0 {
		t.Errorf("shared set: %d %v", cpu, set)
	}
	if cpu, set := placement(spec.Jobs[2], 1, 7, 2, false); cpu != -1 || set != nil {
		t.Errorf("shared, no set: %d %v", cpu, set)
	}
	if _, err := ParseJobText("j.fio", "[j]\nfilename=/tmp/x\ncpus_allowed=0-9999\n"); err == nil || !strings.Contains(err.Error(), "j.fio:3: ") || !strings.Contains(err.Error(), "not present") {
		t.Errorf("cpus_allowed=0-9999: %v", err)
	}
	// A clone restricted to CPU 0 with the shared policy runs there.
	dir := benchDir(t)
	for _, eng := range []string{"psync", "ringblk"} {
		res := mustRun(t, mustParse(t, "--name=p", "--filename="+filepath.Join(dir, "f"), "--size=64k", "--ioengine="+eng, "--cpus_allowed=0", "--numjobs=2"))
		if res.Jobs[0].Clones[1].cpuSet[0] != 0 {
			t.Errorf("%s: clone set %v", eng, res.Jobs[0].Clones[1].cpuSet)
		}
	}
}

// TestOffsetIncrementUnlinkAlign: offset_increment moves each clone's
// region (the file is laid out to cover the last); unlink removes the
// file after the job; ba aligns random offsets.
func TestOffsetIncrementUnlinkAlign(t *testing.T) {
	dir := benchDir(t)
	file := filepath.Join(dir, "f")
	res := mustRun(t, mustParse(t, "--name=o", "--filename="+file, "--size=64k", "--offset_increment=1m", "--numjobs=3",
		"--ioengine=psync", "--rw=write", "--unlink=1"))
	for k, w := range res.Jobs[0].Clones {
		if w.gen.regionOff != int64(k)<<20 {
			t.Errorf("clone %d region at %d", k, w.gen.regionOff)
		}
	}
	if _, err := os.Stat(file); !os.IsNotExist(err) {
		t.Errorf("unlink=1: file still there (%v)", err)
	}
	offs, _ := genOffsets(t, "[j]\nfilename=/tmp/x\nsize=1m\nbs=512\nblockalign=64k\nrw=randread\n", 50)
	for _, o := range offs {
		if o%(64<<10) != 0 {
			t.Fatalf("blockalign=64k: offset %d", o)
		}
	}
}

// TestPacing: rate_iops, rate (linear and poisson), thinktime and
// startdelay hold each clone to its pace on every engine.
func TestPacing(t *testing.T) {
	dir := benchDir(t)
	file := filepath.Join(dir, "f")
	for _, eng := range []string{"psync", "io_uring", "ringblk"} {
		for _, c := range []struct {
			opts   []string
			lo, hi uint64
		}{
			{[]string{"--rate_iops=100"}, 20, 40},
			{[]string{"--rate=400k"}, 20, 40},
			{[]string{"--rate_iops=100", "--rate_process=poisson"}, 10, 60},
			{[]string{"--thinktime=20ms"}, 5, 16},
			{[]string{"--thinktime=20000", "--thinktime_blocks=4", "--iodepth=4"}, 20, 64},
		} {
			args := append([]string{"--name=p", "--filename=" + file, "--size=1m", "--ioengine=" + eng, "--rw=randread",
				"--runtime=300ms", "--time_based"}, c.opts...)
			// The ceiling is the pacing itself and holds on every run. The
			// floor needs the CPU for 300 ms, which a loaded machine (or
			// the race detector beside other tests) may not give: a run
			// below it is tried again, up to three times in all.
			var ios uint64
			for try := 0; try < 3; try++ {
				res := mustRun(t, mustParse(t, args...))
				ios = entries(res)[0].dirs[DirRead].ios
				if ios > c.hi {
					t.Errorf("%s %v: %d I/Os in 300ms, more than the pace allows (%d)", eng, c.opts, ios, c.hi)
				}
				if ios >= c.lo {
					break
				}
			}
			if ios < c.lo {
				t.Errorf("%s %v: %d I/Os in 300ms on the last of three runs, want at least %d", eng, c.opts, ios, c.lo)
			}
		}
		start := time.Now()
		mustRun(t, mustParse(t, "--name=d", "--filename="+file, "--size=64k", "--ioengine="+eng, "--startdelay=250ms"))
		if el := time.Since(start); el < 250*time.Millisecond {
			t.Errorf("%s: startdelay=250ms, run took %v", eng, el)
		}
	}
	if _, err := ParseJobText("j.fio", "[j]\nfilename=/tmp/x\nrate_process=bursty\n"); err == nil || !strings.Contains(err.Error(), "j.fio:3") {
		t.Errorf("rate_process=bursty: %v", err)
	}
}

// TestRateMin: after fio's 2 s settle period, a rate_cycle below
// rate_min (ratemin) fails the job; one above it does not.
func TestRateMin(t *testing.T) {
	if testing.Short() {
		t.Skip("runs 2.6 s")
	}
	dir := benchDir(t)
	spec := mustParse(t, "--name=m", "--filename="+filepath.Join(dir, "f"), "--size=1m", "--ioengine=psync", "--rw=randread",
		"--runtime=2600ms", "--time_based", "--rate_iops=1000", "--ratemin=1t", "--rate_cycle=200")
	res, err := Run(spec, RunOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if e := res.Jobs[0].Err; e == nil || !strings.Contains(e.Error(), "min rate") {
		t.Errorf("ratemin=1t: job error %v", e)
	}
	mustRun(t, mustParse(t, "--name=m", "--filename="+filepath.Join(dir, "f"), "--size=1m", "--ioengine=psync", "--rw=randread",
		"--runtime=2600ms", "--time_based", "--rate_iops=1000", "--rate_iops_min=10", "--rate_cycle=200"))
}

// TestZonedAndNormal: zoned sends each zone its share of the accesses
// (rand-zones.fio's trailing zone takes the rest of the range); zoned_abs
// takes sizes; normal clusters around the middle.
func TestZonedAndNormal(t *testing.T) {
	count := func(text string, in func(off int64) bool) float64 {
		offs, _ := genOffsets(t, text, 20000)
		n := 0
		for _, o := range offs {
			if in(o) {
				n++
			}
		}
		return float64(n) / float64(len(offs))
	}
	const mb = 1 << 20
	base := "[j]\nfilename=/tmp/x\nsize=10m\nbs=4k\nrw=randread\nnorandommap\nloops=8\n"
	if f := count(base+"random_distribution=zoned:80/10:20/\n", func(o int64) bool { return o < mb }); f < 0.77 || f > 0.83 {
		t.Errorf("zoned:80/10:20/: %.2f of I/Os in the first 10%%, want 0.80", f)
	}
	if f := count(base+"random_distribution=zoned_abs:60/2m:40/8m\n", func(o int64) bool { return o < 2*mb }); f < 0.57 || f > 0.63 {
		t.Errorf("zoned_abs:60/2m:40/8m: %.2f in the first 2m, want 0.60", f)
	}
	if f := count(base+"random_distribution=normal:5\n", func(o int64) bool { return o >= 4*mb && o < 6*mb }); f < 0.9 {
		t.Errorf("normal:5: %.2f within ±10%% of the middle", f)
	}
	for _, bad := range []string{"zoned:50/5:30/15", "zoned:50/60:50/60", "normal:0"} {
		if _, err := ParseJobText("j.fio", "[j]\nfilename=/tmp/x\nrandom_distribution="+bad+"\n"); err == nil || !strings.Contains(err.Error(), "j.fio:3") {
			t.Errorf("%s: %v", bad, err)
		}
	}
}

// TestJSONOptionNames: options are echoed under fio's names, as fio
// echoes them (blockalign as ba, ratemin as rate_min, timeout as runtime).
func TestJSONOptionNames(t *testing.T) {
	o := optionsObj([]Option{{Key: "blockalign", Value: "4k"}, {Key: "ratemin", Value: "1k"}, {Key: "timeout", Value: "1"}, {Key: "iodepth_batch_submit", Value: "2"}, {Key: "bs", Value: "4k"}})
	want := []string{"ba", "rate_min", "runtime", "iodepth_batch", "bs"}
	for i, w := range want {
		if o[i].k != w {
			t.Errorf("option %d echoed as %q, want %q", i, o[i].k, w)
		}
	}
}

// TestFlow: clones of a group sharing a flow_id issue I/O in the ratio of
// their flow weights (fio's flow.fio: 1 to 8); a run with flow goes
// through on each engine. (Once a partner has finished, the rest run
// free, so a timed run's totals depend on start-up order: the ratio is
// checked on the mechanism.)
func TestFlow(t *testing.T) {
	g := &flowGroup{weight: 5}
	a := &worker{job: &Job{Flow: 1}, flow: g}
	b := &worker{job: &Job{Flow: 4}, flow: g}
	for i := 0; i < 10000; i++ {
		for _, w := range []*worker{a, b} {
			if w.flowAllows() {
				w.flowIOs++
				g.total.Add(1)
			}
		}
	}
	if r := float64(b.flowIOs) / float64(a.flowIOs); r < 3.9 || r > 4.1 {
		t.Errorf("flow 1:4 issued %d:%d", a.flowIOs, b.flowIOs)
	}
	dir := benchDir(t)
	file := filepath.Join(dir, "f")
	for _, eng := range []string{"psync", "ringblk"} {
		text := "[global]\nfilename=" + file + "\nsize=1m\nioengine=" + eng + "\nruntime=200ms\ntime_based\nflow_sleep=100\n" +
			"[w]\nrw=randwrite\nflow=1\n[r]\nrw=randread\nflow=4\n"
		spec, err := ParseJobText("flow.fio", text)
		if err != nil {
			t.Fatal(err)
		}
		res := mustRun(t, spec)
		if res.Jobs[0].Clones[0].flowIOs == 0 || res.Jobs[1].Clones[0].flowIOs == 0 {
			t.Errorf("%s: flow run issued %d and %d", eng, res.Jobs[0].Clones[0].flowIOs, res.Jobs[1].Clones[0].flowIOs)
		}
	}
}

// TestZoneStrided: zonemode=strided reads zonesize bytes, then skips
// zoneskip (fio's disk-zone-profile).
func TestZoneStrided(t *testing.T) {
	offs, _ := genOffsets(t, "[j]\nfilename=/tmp/x\nsize=1m\nbs=4k\nzonemode=strided\nzonesize=8k\nzoneskip=56k\n", 5)
	want := []int64{0, 4 << 10, 64 << 10, 68 << 10, 128 << 10}
	for i := range want {
		if offs[i] != want[i] {
			t.Fatalf("offsets %v, want %v", offs, want)
		}
	}
	for _, bad := range []string{"zonemode=zbd\n", "zonemode=strided\nzonesize=8k\nrw=randread\n"} {
		if _, err := ParseJobText("j.fio", "[j]\nfilename=/tmp/x\n"+bad); err == nil || !strings.Contains(err.Error(), "j.fio:3") {
			t.Errorf("%q: %v", bad, err)
		}
	}
}

// TestFsync: fsync=N and fdatasync=N sync after every N writes (63 for
// 256 writes and N=4, as fio counts them), end_fsync once at the end; the
// syncs are reported in the JSON "sync" section as fio 3.33 reports them:
// fsyncs in total_ios and lat_ns, fdatasyncs in lat_ns only (total_ios
// 0), end_fsync in neither.
func TestFsync(t *testing.T) {
	dir := benchDir(t)
	file := filepath.Join(dir, "f")
	for _, eng := range []string{"psync", "io_uring", "ringblk"} {
		for _, c := range []struct {
			opt         string
			want, total uint64
		}{{"--fsync=4", 63, 63}, {"--fdatasync=8", 31, 0}, {"--end_fsync=1", 0, 0}} {
			res := mustRun(t, mustParse(t, "--name=s", "--filename="+file, "--size=1m", "--bs=4k", "--rw=write", "--iodepth=4", "--ioengine="+eng, c.opt))
			e := entries(res)[0]
			if e.sync.n != c.want || e.dirs[DirWrite].ios != 256 {
				t.Errorf("%s %s: %d syncs, %d writes; want %d, 256", eng, c.opt, e.sync.n, e.dirs[DirWrite].ios, c.want)
			}
			if c.opt == "--end_fsync=1" && !e.clones[0].endSynced {
				t.Errorf("%s: end_fsync issued no sync", eng)
			}
			var b bytes.Buffer
			if err := WriteJSON(&b, res); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(b.String(), `"sync" : {
        "total_ios" : `+strconv.FormatUint(c.total, 10)) {
				t.Errorf("%s %s: JSON sync total_ios is not %d", eng, c.opt, c.total)
			}
		}
	}
}

// TestFilesizeWaitFor: filesize sizes the file while size= is the I/O;
// wait_for starts a job of the same group after the named one finished
// (fio's waitfor.fio); a name not defined before is refused.
func TestFilesizeWaitFor(t *testing.T) {
	dir := benchDir(t)
	file := filepath.Join(dir, "f")
	text := "[global]\nfilename=" + file + "\nfilesize=1m\nioengine=psync\nnumjobs=2\n[w]\nrw=write\nsize=64k\n[r]\nwait_for=w\nrw=randread\n"
	spec, err := ParseJobText("w.fio", text)
	if err != nil {
		t.Fatal(err)
	}
	res := mustRun(t, spec)
	if st, err := os.Stat(file); err != nil || st.Size() != 1<<20 {
		t.Fatalf("filesize=1m: %v %v", st, err)
	}
	wEnd := time.Time{}
	for _, c := range res.Jobs[0].Clones {
		if c.stats[DirWrite].ios != 16 {
			t.Errorf("size=64k of a 1m file: %d writes", c.stats[DirWrite].ios)
		}
		if e := c.base.Add(time.Duration(c.measureEnd)); e.After(wEnd) {
			wEnd = e
		}
	}
	for _, c := range res.Jobs[1].Clones {
		if c.base.Before(wEnd) || c.stats[DirRead].ios != 256 {
			t.Errorf("wait_for=w: reader started %v before the writers ended, %d reads", wEnd.Sub(c.base), c.stats[DirRead].ios)
		}
	}
	if _, err := ParseJobText("w.fio", "[r]\nfilename=/tmp/x\nwait_for=later\n[later]\nfilename=/tmp/x\n"); err == nil || !strings.Contains(err.Error(), "w.fio:3") {
		t.Errorf("wait_for a later job: %v", err)
	}
}

// TestNumberIOs: number_ios stops a clone after that many I/Os.
func TestNumberIOs(t *testing.T) {
	if _, total := genOffsets(t, "[j]\nfilename=/tmp/x\nsize=1m\nbs=4k\nnumber_ios=10\n", 0); total != 10*4096 {
		t.Errorf("number_ios=10: %d bytes", total)
	}
}

// TestSyncIO: sync=1 opens the file O_SYNC, sync=dsync O_DSYNC (the
// thread engines); the ringblk engine runs FUA writes.
func TestSyncIO(t *testing.T) {
	dir := benchDir(t)
	file := filepath.Join(dir, "f")
	for _, c := range []struct {
		v    string
		flag int
	}{{"1", syscall.O_SYNC}, {"dsync", syscall.O_DSYNC}} {
		spec := mustParse(t, "--name=s", "--filename="+file, "--size=64k", "--rw=write", "--ioengine=psync", "--sync="+c.v)
		mustRun(t, spec)
		f, err := openJobFile(spec.Jobs[0])
		if err != nil {
			t.Fatal(err)
		}
		fl, err := unix.FcntlInt(f.Fd(), unix.F_GETFL, 0)
		f.Close()
		if err != nil || fl&c.flag != c.flag {
			t.Errorf("sync=%s: open flags %#x lack %#x (%v)", c.v, fl, c.flag, err)
		}
	}
	mustRun(t, mustParse(t, "--name=s", "--filename="+file, "--size=64k", "--rw=write", "--ioengine=ringblk", "--sync=1"))
	if _, err := ParseJobText("j.fio", "[j]\nfilename=/tmp/x\nsync=maybe\n"); err == nil || !strings.Contains(err.Error(), "j.fio:3") {
		t.Errorf("sync=maybe: %v", err)
	}
}

// TestHeaderWording: fio's "..." line under a job with numjobs > 1 and
// its "Starting N processes" / "threads" wording.
func TestHeaderWording(t *testing.T) {
	spec, err := ParseJobText("h.fio", "[a]\nfilename=/tmp/x\nnumjobs=3\n[b]\nfilename=/tmp/x\nthread\n")
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	WriteHeader(&b, spec)
	lines := strings.Split(b.String(), "\n")
	if len(lines) < 5 || lines[1] != "..." || !strings.HasPrefix(lines[2], "b: ") || lines[4] != "Starting 1 thread and 3 processes" {
		t.Errorf("header %q", b.String())
	}
	if got := startingLine(0, 1); got != "Starting 1 process" {
		t.Errorf("%q", got)
	}
}

// TestZoneResetsLine: the write line ends with fio's "; 0 zone resets",
// the read line does not.
func TestZoneResetsLine(t *testing.T) {
	dir := benchDir(t)
	res := mustRun(t, mustParse(t, "--name=z", "--filename="+filepath.Join(dir, "f"), "--size=64k", "--ioengine=psync", "--rw=rw"))
	var b bytes.Buffer
	WriteNormal(&b, res)
	var rd, wr string
	for _, l := range strings.Split(b.String(), "\n") {
		if strings.HasPrefix(l, "  read: ") {
			rd = l
		}
		if strings.HasPrefix(l, "  write: ") {
			wr = l
		}
	}
	if !strings.HasSuffix(wr, "msec); 0 zone resets") || strings.Contains(rd, "zone") || rd == "" {
		t.Errorf("read line %q, write line %q", rd, wr)
	}
}

// TestJSONPlus: --output-format=json+ adds fio's "bins" to each latency
// series that reports percentiles, counting every I/O.
func TestJSONPlus(t *testing.T) {
	dir := benchDir(t)
	out := filepath.Join(dir, "p.json")
	var so, se bytes.Buffer
	if code := Main([]string{"--output-format=json+", "--output=" + out, "--name=p", "--filename=" + filepath.Join(dir, "f"), "--size=64k", "--ioengine=psync"}, &so, &se); code != 0 {
		t.Fatalf("exit %d: %s", code, se.String())
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var top map[string]any
	if err := json.Unmarshal(data, &top); err != nil {
		t.Fatal(err)
	}
	rd := top["jobs"].([]any)[0].(map[string]any)["read"].(map[string]any)
	bins, ok := rd["clat_ns"].(map[string]any)["bins"].(map[string]any)
	total := 0.0
	for _, c := range bins {
		total += c.(float64)
	}
	if !ok || total != 16 {
		t.Errorf("clat bins %v (total %v), want 16 I/Os", bins, total)
	}
	if _, ok := rd["lat_ns"].(map[string]any)["bins"]; ok {
		t.Error("lat_ns has bins without lat percentiles")
	}
}

// TestInterruptReports: Ctrl-C (SIGINT) during a run stops the clones and
// still writes the report, as fio does.
func TestInterruptReports(t *testing.T) {
	dir := benchDir(t)
	var so, se bytes.Buffer
	done := make(chan int, 1)
	go func() {
		done <- Main([]string{"--name=i", "--filename=" + filepath.Join(dir, "f"), "--size=1m", "--ioengine=psync",
			"--runtime=30", "--time_based", "--output-format=json"}, &so, &se)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for liveIOs() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	if err := syscall.Kill(os.Getpid(), syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case code := <-done:
		if code != 0 || !strings.Contains(so.String(), `"jobname" : "i"`) {
			t.Errorf("exit %d, report %.200q, stderr %q", code, so.String(), se.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not stop on SIGINT")
	}
}

// TestAIOPollAuto: aio_poll=auto (the default) spins up to 20 µs at
// iodepth 2 to 16 and never at 1 or past 16 (issue 20: the loop device at
// depth 8 reached fio only with the spin, depth 1 and 128 lost by it); a
// number or 0 is taken as given at any depth; a bad value is refused.
func TestAIOPollAuto(t *testing.T) {
	spec, err := ParseJobText("j.fio", "[global]\nioengine=ringblk\nfilename=/tmp/x\n"+
		"[d1]\niodepth=1\n[d2]\niodepth=2\n[d8]\niodepth=8\n[d16]\niodepth=16\n[d17]\niodepth=17\n[d128]\niodepth=128\n"+
		"[set5]\niodepth=128\naio_poll=5\n[off]\niodepth=8\naio_poll=0\n[auto]\niodepth=8\naio_poll=auto\n")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]time.Duration{
		"d1": 0, "d2": 20 * time.Microsecond, "d8": 20 * time.Microsecond, "d16": 20 * time.Microsecond,
		"d17": 0, "d128": 0, "set5": 5 * time.Microsecond, "off": 0, "auto": 20 * time.Microsecond,
	}
	for _, j := range spec.Jobs {
		if got := aioPollTime(j); got != want[j.Name] {
			t.Errorf("job %s (iodepth %d): poll time %v, want %v", j.Name, j.IODepth, got, want[j.Name])
		}
	}
	if _, err := ParseArgs([]string{"--name=x", "--ioengine=ringblk", "--filename=/tmp/x", "--aio_poll=sometimes"}); err == nil || !strings.Contains(err.Error(), "aio_poll") {
		t.Errorf("aio_poll=sometimes: %v", err)
	}
	// The io_uring engine takes the same option and default; with
	// sqthread_poll auto does not spin (the kernel thread already polls).
	spec, err = ParseJobText("u.fio", "[global]\nioengine=io_uring\nfilename=/tmp/x\n"+
		"[u8]\niodepth=8\n[u32]\niodepth=32\n[u8sq]\niodepth=8\nsqthread_poll=1\n[u8sq5]\niodepth=8\nsqthread_poll=1\naio_poll=5\n")
	if err != nil {
		t.Fatal(err)
	}
	want = map[string]time.Duration{"u8": 20 * time.Microsecond, "u32": 0, "u8sq": 0, "u8sq5": 5 * time.Microsecond}
	for _, j := range spec.Jobs {
		if got := aioPollTime(j); got != want[j.Name] {
			t.Errorf("io_uring job %s: poll time %v, want %v", j.Name, got, want[j.Name])
		}
	}
	if _, err := ParseArgs([]string{"--name=x", "--ioengine=psync", "--filename=/tmp/x", "--aio_poll=5"}); err == nil || !strings.Contains(err.Error(), "aio_poll") {
		t.Errorf("aio_poll with psync: %v, want refused", err)
	}
}
