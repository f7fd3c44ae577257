package bench

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ringblk/ringblk/drivers/raw"
)

// Compare mode runs one job several ways, interleaved over repeats (rep 1:
// every row, rep 2: every row, …) so that a disturbance on the shared
// machine spreads over all rows, and prints each row's median with min/max
// and its ratio to the ringblk row.
//
// Rows:
//
//	ringblk        this tool, ioengine=ringblk (the job's format)
//	io_uring       this tool, ioengine=io_uring: ringblk's ring, no block layer
//	fio-io_uring   fio 3.33, ioengine=io_uring   (format=null: fio's null engine)
//	fio-libaio     fio 3.33, ioengine=libaio
//	qemu-io_uring  qemu-img bench -i io_uring    (format=null: the null-co driver)
//	qemu-native    qemu-img bench -i native      (needs direct=1)
//
// CPU per I/O is the whole process's user+system time (ours: getrusage
// around the run; external tools: the child's rusage) over its I/Os.
var compareRows = map[string]int{
	"ringblk": 0, "io_uring": 1, "fio-io_uring": 2, "fio-libaio": 3, "qemu-io_uring": 4, "qemu-native": 5,
	"fio-null": 6, "qemu-null-co": 7,
}

func compareRowNames() []string {
	names := make([]string, 0, len(compareRows))
	for n := range compareRows {
		names = append(names, n)
	}
	sort.Slice(names, func(a, b int) bool { return compareRows[names[a]] < compareRows[names[b]] })
	return names
}

// sample is one run of one row.
type sample struct {
	iops     float64
	bwBytes  float64
	cpuPerIO float64 // ns
	// perSubmit and perReap are I/Os per io_uring_enter that submitted
	// and per enter that reaped (fio's t/io_uring "IOS/call"); 0: unknown.
	perSubmit, perReap float64
	note               string
}

type compareRow struct {
	name    string
	run     func() (sample, error)
	skip    string // why the row does not run
	samples []sample
	err     error
}

// RunCompare runs cfg's job in compare mode and writes the table to out.
func RunCompare(cfg *Config, out, log io.Writer) error {
	spec := cfg.Spec
	if len(spec.Jobs) != 1 {
		return fmt.Errorf("--compare runs one job; the job list has %d", len(spec.Jobs))
	}
	j := spec.Jobs[0]
	if !j.TimeBased && j.Runtime == 0 {
		return errors.New("--compare needs a runtime (time_based recommended) so that the rows run equally long")
	}
	if j.Verify != VerifyNone {
		return errors.New("--compare measures speed: drop verify")
	}
	format := j.Format
	if format == "" && j.Filename != "" {
		var err error
		if format, err = probeFormat(j.Filename); err != nil && !os.IsNotExist(err) {
			return err
		}
		if format == "" {
			format = "raw"
		}
	}
	null := format == "null"
	if !null {
		// Lay the file out once, before any row runs.
		if _, _, err := prepareFile(j, log); err != nil {
			return err
		}
	}
	qemuRate = 0
	rows := buildRows(cfg, j, format, log)
	fmt.Fprintf(log, "compare: %d repeat(s) of %d row(s), interleaved; about %s per run\n", cfg.Repeats, len(rows), j.RampTime+j.Runtime)
	for rep := 0; rep < cfg.Repeats; rep++ {
		for _, r := range rows {
			if r.skip != "" || r.err != nil {
				continue
			}
			s, err := r.run()
			if err != nil {
				r.err = err
				continue
			}
			r.samples = append(r.samples, s)
			if r.name == "ringblk" && qemuRate == 0 {
				qemuRate = s.iops
			}
		}
	}
	writeCompare(out, cfg, j, format, rows)
	return nil
}

// buildRows lists the sides of a comparison for an image of the given
// format (raw, qcow2 or null). On a qcow2 image only the sides that read its
// virtual disk run: ringblk and qemu-img bench -f qcow2; our bare ring and
// fio would read the file's bytes, which is not the same job.
func buildRows(cfg *Config, j *Job, format string, log io.Writer) []*compareRow {
	null, qcow2 := format == "null", format == "qcow2"
	const notVirtual = "reads the image file's bytes, not the qcow2 virtual disk"
	want := map[string]bool{}
	for _, n := range cfg.CompareWith {
		want[n] = true
	}
	var rows []*compareRow
	add := func(name string, run func() (sample, error), skip string) {
		if len(want) > 0 && !want[name] {
			return
		}
		rows = append(rows, &compareRow{name: name, run: run, skip: skip})
	}
	add("ringblk", func() (sample, error) { return runSelf(j, "ringblk") }, "")
	switch {
	case null:
		add("io_uring", nil, "format=null has no file")
	case qcow2:
		add("io_uring", nil, notVirtual)
	default:
		add("io_uring", func() (sample, error) { return runSelf(j, "io_uring") }, "")
	}
	fio, fioErr := exec.LookPath("fio")
	qemu, qemuErr := exec.LookPath("qemu-img")
	fioEngines := []string{"io_uring", "libaio"}
	qemuModes := []string{"io_uring", "native"}
	if null { // the counterparts of the null driver
		fioEngines, qemuModes = []string{"null"}, []string{"null-co"}
	}
	for _, eng := range fioEngines {
		name := "fio-" + eng
		switch {
		case qcow2:
			add(name, nil, notVirtual)
		case fioErr != nil:
			add(name, nil, "fio not installed")
		default:
			engine := eng
			add(name, func() (sample, error) { return runFio(cfg, fio, j, engine, log) }, "")
		}
	}
	for _, aio := range qemuModes {
		name := "qemu-" + aio
		if null {
			aio = "io_uring" // aio mode is irrelevant to null-co
		}
		switch {
		case qemuErr != nil:
			add(name, nil, "qemu-img not installed")
		case j.RW.Reads() && j.RW.Writes():
			add(name, nil, "qemu-img bench cannot mix reads and writes")
		case aio == "native" && !j.Direct:
			add(name, nil, "aio=native needs direct=1")
		default:
			mode := aio
			add(name, func() (sample, error) { return runQemu(cfg, qemu, j, mode, format, log) }, "")
		}
	}
	return rows
}

// runSelf runs the job in this process with another engine.
func runSelf(j *Job, engine string) (sample, error) {
	c := *j
	c.IOEngine = engine
	if engine != "ringblk" {
		c.Format = ""
	}
	var ru0, ru1 unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &ru0)
	res, err := Run(&Spec{Jobs: []*Job{&c}}, RunOptions{})
	unix.Getrusage(unix.RUSAGE_SELF, &ru1)
	if err != nil {
		return sample{}, err
	}
	es := entries(res)
	var s sample
	var ios uint64
	for _, e := range es {
		if e.err != nil {
			return sample{}, e.err
		}
		for d := 0; d < 2; d++ {
			s.iops += e.iops(d)
			s.bwBytes += e.bwBytes(d)
			ios += e.dirs[d].ios
		}
	}
	cpu := float64(ru1.Utime.Nano()-ru0.Utime.Nano()) + float64(ru1.Stime.Nano()-ru0.Stime.Nano())
	if ios > 0 {
		s.cpuPerIO = cpu / float64(ios)
	}
	s.perSubmit, s.perReap = iosPerEnter(res)
	return s, nil
}

// iosPerEnter is the run's I/Os (all of them, ramp included) per
// io_uring_enter that submitted and per enter that reaped, from the
// engines' counts (0 for psync, which has no ring).
func iosPerEnter(res *Result) (perSubmit, perReap float64) {
	var ios, sub, reap uint64
	for _, jr := range res.Jobs {
		for _, w := range jr.Clones {
			for d := range w.prog.ios {
				ios += w.prog.ios[d].Load()
			}
			sub += w.enterSubmit
			reap += w.enterReap
		}
	}
	if sub > 0 {
		perSubmit = float64(ios) / float64(sub)
	}
	if reap > 0 {
		perReap = float64(ios) / float64(reap)
	}
	return perSubmit, perReap
}

// fioArgs renders the job as fio command-line options.
func fioArgs(j *Job, engine string) []string {
	args := []string{"--name=" + j.Name}
	skip := map[string]bool{"name": true, "ioengine": true, "format": true, "description": true, "share_rw": true, "locking": true}
	seen := map[string]int{}
	var opts []string
	for _, o := range append(append([]Option(nil), j.globals...), j.Options...) {
		k := strings.ToLower(o.Key)
		if skip[k] {
			continue
		}
		a := "--" + o.Key
		if !o.Bare {
			a += "=" + o.Value
		}
		if i, ok := seen[k]; ok {
			opts[i] = a
			continue
		}
		seen[k] = len(opts)
		opts = append(opts, a)
	}
	args = append(args, opts...)
	args = append(args, "--ioengine="+engine, "--output-format=json")
	if engine == "null" && j.Filename == "" {
		args = append(args, "--filename=/dev/null")
	}
	return args
}

func runFio(cfg *Config, fio string, j *Job, engine string, log io.Writer) (sample, error) {
	args := fioArgs(j, engine)
	if cfg.ShowCommands {
		fmt.Fprintf(log, "compare: %s %s\n", fio, strings.Join(args, " "))
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(fio, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return sample{}, fmt.Errorf("fio: %v: %s", err, firstLine(stderr.String()))
	}
	// fio may print notes before the JSON.
	data := stdout.Bytes()
	if k := bytes.IndexByte(data, '{'); k > 0 {
		data = data[k:]
	}
	var doc struct {
		Jobs []struct {
			Error int            `json:"error"`
			R     map[string]any `json:"read"`
			W     map[string]any `json:"write"`
		} `json:"jobs"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return sample{}, fmt.Errorf("fio JSON: %w", err)
	}
	var s sample
	var ios float64
	for _, jb := range doc.Jobs {
		if jb.Error != 0 {
			return sample{}, fmt.Errorf("fio job error %d", jb.Error)
		}
		for _, d := range []map[string]any{jb.R, jb.W} {
			s.iops += num(d["iops"])
			s.bwBytes += num(d["bw_bytes"])
			ios += num(d["total_ios"])
		}
	}
	if ios > 0 {
		s.cpuPerIO = childCPU(cmd) / ios
	}
	return s, nil
}

func num(v any) float64 {
	f, _ := v.(float64)
	return f
}

func childCPU(cmd *exec.Cmd) float64 {
	ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	if !ok {
		return 0
	}
	return float64(ru.Utime.Nano() + ru.Stime.Nano())
}

var qemuTime = regexp.MustCompile(`Run completed in ([0-9.]+) seconds`)

// qemuStride is the step, in blocks, qemu-img bench advances by for random
// patterns: qemu-img bench has no random offsets, so a large odd stride
// (coprime with power-of-two block counts) scatters them over the image.
const qemuStride = 40503

// runQemu runs qemu-img bench with a request count sized from the ringblk
// row's first rate, so it runs about as long as the job's runtime.
func runQemu(cfg *Config, qemu string, j *Job, aio, format string, log io.Writer) (sample, error) {
	null := format == "null"
	bs := j.BS[DirRead]
	if j.RW.Writes() {
		bs = j.BS[DirWrite]
	}
	count := qemuCount(j)
	args := []string{"bench", "-c", strconv.FormatInt(count, 10), "-d", strconv.Itoa(j.IODepth),
		"-s", strconv.Itoa(bs), "-i", aio}
	if j.RW.Writes() {
		args = append(args, "-w")
	}
	if j.RW.Random() {
		args = append(args, "-S", strconv.Itoa(bs*qemuStride))
	}
	if j.Offset > 0 {
		args = append(args, "-o", strconv.FormatInt(j.Offset, 10))
	}
	if null {
		args = append(args, "--image-opts", fmt.Sprintf("driver=null-co,size=%d", j.Offset+j.Size))
	} else {
		if j.Direct {
			args = append(args, "-t", "none")
		}
		args = append(args, "-f", format, j.Filename)
	}
	if cfg.ShowCommands {
		fmt.Fprintf(log, "compare: %s %s\n", qemu, strings.Join(args, " "))
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(qemu, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return sample{}, fmt.Errorf("qemu-img bench: %v: %s", err, firstLine(stderr.String()))
	}
	m := qemuTime.FindStringSubmatch(stdout.String())
	if m == nil {
		return sample{}, fmt.Errorf("qemu-img bench: no run time in %q", firstLine(stdout.String()))
	}
	secs, _ := strconv.ParseFloat(m[1], 64)
	if secs <= 0 {
		secs = 0.001
	}
	s := sample{iops: float64(count) / secs, bwBytes: float64(count) * float64(bs) / secs}
	s.cpuPerIO = childCPU(cmd) / float64(count)
	if j.RW.Random() {
		s.note = "strided"
	}
	return s, nil
}

// qemuRate remembers the first ringblk rate to size qemu-img's count.
var qemuRate float64

func qemuCount(j *Job) int64 {
	rate := qemuRate
	if rate <= 0 {
		rate = 100_000
	}
	n := int64(rate * j.Runtime.Seconds())
	return max(n, 1000)
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return s
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	n := len(s)
	if n == 0 {
		return 0
	}
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func minMax(xs []float64) (float64, float64) {
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, x := range xs {
		lo, hi = math.Min(lo, x), math.Max(hi, x)
	}
	return lo, hi
}

func writeCompare(out io.Writer, cfg *Config, j *Job, format string, rows []*compareRow) {
	bs := strconv.Itoa(j.BS[DirRead])
	fmt.Fprintf(out, "compare: job %q: rw=%s bs=%s iodepth=%d numjobs=%d direct=%t runtime=%s format=%s file=%s\n",
		j.Name, j.RW, bs, j.IODepth, j.NumJobs, j.Direct, j.Runtime, format, orDash(j.Filename))
	fmt.Fprintf(out, "%d repeat(s), rows interleaved; medians with [min-max]; ratios are median IOPS / ringblk median IOPS\n\n", cfg.Repeats)
	fmt.Fprintf(out, "%-14s %-26s %-30s %-20s %-14s %s\n", "row", "IOPS", "BW", "CPU ns/IO", "IOs/enter s/r", "vs ringblk")
	var base float64
	for _, r := range rows {
		if r.name == "ringblk" && len(r.samples) > 0 {
			base = median(field(r.samples, func(s sample) float64 { return s.iops }))
		}
	}
	for _, r := range rows {
		switch {
		case r.skip != "":
			fmt.Fprintf(out, "%-14s skipped: %s\n", r.name, r.skip)
			continue
		case r.err != nil && len(r.samples) == 0:
			fmt.Fprintf(out, "%-14s failed: %v\n", r.name, r.err)
			continue
		}
		iops := field(r.samples, func(s sample) float64 { return s.iops })
		bw := field(r.samples, func(s sample) float64 { return s.bwBytes })
		cpu := field(r.samples, func(s sample) float64 { return s.cpuPerIO })
		il, ih := minMax(iops)
		bl, bh := minMax(bw)
		cl, ch := minMax(cpu)
		ratio := "-"
		if base > 0 {
			ratio = fmt.Sprintf("%.2f", median(iops)/base)
		}
		note := ""
		if r.samples[0].note != "" {
			note = " (" + r.samples[0].note + ")"
		}
		if r.err != nil {
			note += fmt.Sprintf(" (a repeat failed: %v)", r.err)
		}
		fmt.Fprintf(out, "%-14s %-26s %-30s %-20s %-14s %s%s\n", r.name,
			fmt.Sprintf("%s [%s-%s]", num2str(median(iops), 4, false), num2str(il, 4, false), num2str(ih, 4, false)),
			fmt.Sprintf("%sB/s [%s-%s]", num2str(median(bw), 4, true), num2str(bl, 4, true), num2str(bh, 4, true)),
			fmt.Sprintf("%.0f [%.0f-%.0f]", median(cpu), cl, ch), perEnterStr(r.samples), ratio, note)
	}
	fmt.Fprintf(out, "\nper-repeat IOPS:\n")
	for _, r := range rows {
		if len(r.samples) == 0 {
			continue
		}
		var parts []string
		for _, s := range r.samples {
			parts = append(parts, num2str(s.iops, 4, false))
		}
		fmt.Fprintf(out, "  %-14s %s\n", r.name, strings.Join(parts, ", "))
	}
	fmt.Fprintln(out, "\nCPU ns/IO: the process's user+system time over its I/Os (fio and qemu-img: the child's rusage, start-up included).")
	fmt.Fprintln(out, "IOs/enter s/r: median I/Os per io_uring_enter that submitted / that reaped (t/io_uring's IOS/call), from the engine's own counts; '-' where it cannot be known (fio, qemu-img: no counter of their system calls; psync: no ring).")
	if fadviseOf(j) != raw.FadviseNone && !j.Direct && format != "null" {
		fmt.Fprintf(out, "fadvise_hint=%s: every ringblk, io_uring and fio row hints the kernel (%s); qemu-img bench gives no hint, so on a cold page cache its rows may get readahead the others do not.\n", j.FadviseHint, fadviseOf(j))
	}
	if j.RW.Random() {
		fmt.Fprintf(out, "qemu-img bench has no random pattern: its rows stride by %d blocks modulo the image (\"strided\").\n", qemuStride)
	}
}

func field(ss []sample, f func(sample) float64) []float64 {
	out := make([]float64, len(ss))
	for i, s := range ss {
		out[i] = f(s)
	}
	return out
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// perEnterStr is the "IOs/enter s/r" cell: medians, or "-" when unknown.
func perEnterStr(ss []sample) string {
	sub := median(field(ss, func(s sample) float64 { return s.perSubmit }))
	reap := median(field(ss, func(s sample) float64 { return s.perReap }))
	if sub == 0 && reap == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f/%.1f", sub, reap)
}
