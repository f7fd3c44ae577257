package bench

import (
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
	"time"
)

// Version is what reports name as the producing tool.
const Version = "ringblk-bench (fio-3.33 format)"

// num2str renders n in at most maxlen digits with a unit prefix (base 1000,
// or 1024 with "i" when pow2), keeping as many decimals as fit — the
// compact numbers of fio's reports ("27.6k", "1422.6k", "108Mi").
func num2str(n float64, maxlen int, pow2 bool) string {
	prefixes := []string{"", "k", "M", "G", "T", "P", "E"}
	thousand := uint64(1000)
	if pow2 {
		prefixes = []string{"", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"}
		thousand = 1024
	}
	if n < 0 || math.IsNaN(n) {
		n = 0
	}
	num := uint64(n)
	idx := 0
	modulo := uint64(math.MaxUint64)
	for idx < len(prefixes)-1 && len(strconv.FormatUint(num, 10)) > maxlen {
		modulo = num % thousand
		num /= thousand
		idx++
	}
	s := strconv.FormatUint(num, 10)
	if modulo == math.MaxUint64 {
		return s + prefixes[idx]
	}
	dec := maxlen - len(s) - 1
	if dec <= 0 {
		return s + prefixes[idx]
	}
	frac := modulo
	scale := uint64(1)
	for i := 0; i < dec; i++ {
		scale *= 10
	}
	frac = frac * scale / thousand
	return fmt.Sprintf("%s.%0*d%s", s, dec, frac, prefixes[idx])
}

// bwStr is "108MiB/s (113MB/s)".
func bwStr(bytesPerSec float64) string {
	return num2str(bytesPerSec, 4, true) + "B/s (" + num2str(bytesPerSec, 4, false) + "B/s)"
}

// WriteNormal writes fio's human-readable report of res.
func WriteNormal(out io.Writer, res *Result) {
	es := entries(res)
	for _, e := range es {
		if e.setupFailed {
			continue // fio prints no section for a job that failed at its start
		}
		writeEntry(out, e)
	}
	for _, g := range groupTotals(es) {
		fmt.Fprintf(out, "\nRun status group %d (all jobs):\n", g.id)
		for d, label := range []string{"   READ", "  WRITE"} {
			if g.maxRun[d] <= 0 && g.bytes[d] == 0 {
				continue
			}
			fmt.Fprintf(out, "%s: bw=%s, %sB/s-%sB/s (%sB/s-%sB/s), io=%sB (%sB), run=%d-%dmsec\n",
				label, bwStr(g.bw(d)),
				num2str(g.minBW[d], 4, true), num2str(g.maxBW[d], 4, true),
				num2str(g.minBW[d], 4, false), num2str(g.maxBW[d], 4, false),
				num2str(float64(g.bytes[d]), 4, true), num2str(float64(g.bytes[d]), 4, false),
				g.minRun[d], g.maxRun[d])
		}
	}
	res.writeDiskStats(out)
}

// WriteHeader writes the lines fio prints before a run.
func WriteHeader(out io.Writer, spec *Spec) {
	// fio counts the clones of thread=1 jobs as threads, the others as
	// processes (bench runs every clone on a thread either way).
	threads, procs := 0, 0
	for _, j := range spec.Jobs {
		if j.Thread {
			threads += j.NumJobs
		} else {
			procs += j.NumJobs
		}
	}
	gid := 0
	for i, gj := range groups(spec.Jobs) {
		gid = i
		for _, j := range gj {
			bs := func(d int) string { return fmt.Sprintf("%dB-%dB", j.MinBS(d), j.MaxBS(d)) }
			eng := j.IOEngine
			if eng == "ringblk" {
				f := j.Format
				if f == "" {
					f = "auto"
				}
				eng += "(" + f + ")"
			}
			fmt.Fprintf(out, "%s: (g=%d): rw=%s, bs=(R) %s, (W) %s, (T) %s, ioengine=%s, iodepth=%d\n",
				j.Name, gid, j.RW, bs(DirRead), bs(DirWrite), bs(DirWrite), eng, j.IODepth)
			if j.NumJobs > 1 {
				fmt.Fprintln(out, "...") // fio's mark for the job's clones
			}
		}
	}
	fmt.Fprintln(out, Version)
	fmt.Fprintln(out, startingLine(threads, procs))
}

// startingLine is fio's "Starting N threads and M processes" line.
func startingLine(threads, procs int) string {
	t := fmt.Sprintf("%d thread", threads)
	if threads != 1 {
		t += "s"
	}
	p := fmt.Sprintf("%d process", procs)
	if procs != 1 {
		p += "es"
	}
	switch {
	case threads > 0 && procs > 0:
		return "Starting " + t + " and " + p
	case threads > 0:
		return "Starting " + t
	}
	return "Starting " + p
}

func writeEntry(out io.Writer, e *entry) {
	errno := errnoOf(e.err)
	errText := ""
	if errno != 0 {
		// fio: "err=84 (file:io_u.c:2152, func=…, error=…)"; we have no
		// source location to give.
		errText = " (error=" + errnoText(errno) + ")"
	}
	fmt.Fprintf(out, "%s: (groupid=%d, jobs=%d): err=%2d%s: pid=%d: %s\n", e.name, e.groupID, len(e.clones), errno, errText,
		os.Getpid(), time.Now().Format("Mon Jan _2 15:04:05 2006"))
	if e.err != nil {
		fmt.Fprintf(out, "  error: %v\n", e.err)
	}
	for d, label := range []string{"read", "write"} {
		ds := &e.dirs[d]
		if ds.ios == 0 {
			continue
		}
		// fio ends the write line with its zone reset count (always 0
		// here: no zoned devices).
		zones := ""
		if d == DirWrite {
			zones = "; 0 zone resets"
		}
		fmt.Fprintf(out, "  %s: IOPS=%s, BW=%s(%sB/%dmsec)%s\n", label, num2str(e.iops(d), 4, false),
			bwStr(e.bwBytes(d)), num2str(float64(ds.bytes), 4, true), e.runtimeMs, zones)
		if ds.slat.n > 0 {
			writeLat(out, "    slat", &ds.slat)
		}
		if ds.clat.n > 0 {
			writeLat(out, "    clat", &ds.clat)
		}
		if ds.lat.n > 0 {
			writeLat(out, "     lat", &ds.lat)
		}
		prios := e.reportedPrios(d)
		for _, p := range prios {
			writeLat(out, fmt.Sprintf("    clat prio %d/%d", ioprioClass(p.prio), ioprioLevel(p.prio)), &p.clat)
		}
		if e.job.ClatPercentiles {
			writePercentiles(out, "clat", &ds.clat, jobPercentiles(e.job))
			for _, p := range prios {
				name := fmt.Sprintf("clat prio %d/%d (%.2f%% of IOs)", ioprioClass(p.prio), ioprioLevel(p.prio), float64(p.clat.n)*100/float64(ds.clat.n))
				writePercentiles(out, name, &p.clat, jobPercentiles(e.job))
			}
		}
		if e.job.LatPercentiles {
			writePercentiles(out, " lat", &ds.lat, jobPercentiles(e.job))
		}
		if ds.bw.n > 0 {
			per := e.share[d]
			fmt.Fprintf(out, "   bw (  KiB/s): min=%d, max=%d, per=%.2f%%, avg=%.2f, stdev=%.2f, samples=%d\n",
				int64(ds.bw.min), int64(ds.bw.max), per, ds.bw.mean, ds.bw.stddev(), ds.bw.n)
			fmt.Fprintf(out, "   iops        : min=%d, max=%d, avg=%.2f, stdev=%.2f, samples=%d\n",
				int64(ds.iops.min), int64(ds.iops.max), ds.iops.mean, ds.iops.stddev(), ds.iops.n)
		}
	}
	writeLatDist(out, "nsec", latNsBounds[:], e.latNs[:])
	writeLatDist(out, "usec", latNsBounds[:], e.latUs[:])
	writeLatDist(out, "msec", latMsBounds[:], e.latMs[:])
	fmt.Fprintf(out, "  cpu          : usr=%.2f%%, sys=%.2f%%, ctx=%d, majf=%d, minf=%d\n", e.usrPct, e.sysPct, e.ctx, e.majf, e.minf)
	fmt.Fprintf(out, "  IO depths    : %s\n", distStr(levelLabels[:], e.depth[:]))
	fmt.Fprintf(out, "     submit    : %s\n", distStr(batchLabels[:], e.submit[:]))
	fmt.Fprintf(out, "     complete  : %s\n", distStr(batchLabels[:], e.complete[:]))
	fmt.Fprintf(out, "     issued rwts: total=%d,%d,0,0 short=0,0,0,0 dropped=0,0,0,0\n", e.dirs[0].ios, e.dirs[1].ios)
	fmt.Fprintf(out, "     latency   : target=%d, window=%d, percentile=%.2f%%, depth=%d\n",
		e.job.LatencyTarget.Microseconds(), e.job.LatencyWindow.Microseconds(), e.job.LatencyPercentile, e.latencyDepth())
	if e.job.SS != nil && len(e.clones) > 0 && e.clones[0].ss != nil {
		r := e.clones[0].ss
		what := "mean dev"
		if r.cfg.Slope {
			what = "slope"
		}
		crit := r.crit
		if math.IsInf(crit, 0) {
			crit = 0
		}
		unit := ""
		if r.cfg.Pct {
			unit = "%"
		}
		att := "no"
		if r.attained {
			att = "yes"
		}
		fmt.Fprintf(out, "  steadystate  : attained=%s, bw=%s, iops=%d, %s %s=%.3f%s\n", att,
			bwStr(r.mean(r.bw)), int64(math.Round(r.mean(r.iops))), r.cfg.Kind, what, crit, unit)
	}
	if e.verify.enabled {
		fmt.Fprintf(out, "  verify       : method=%s, checked=%d, mismatches=%d\n", e.job.Verify, e.verify.checked, e.verify.mismatches)
		for _, m := range e.verify.first {
			fmt.Fprintf(out, "     mismatch  : %s\n", m)
		}
	}
}

var (
	levelLabels = [7]string{"1", "2", "4", "8", "16", "32", ">=64"}
	batchLabels = [7]string{"0", "4", "8", "16", "32", "64", ">=64"}
)

func distStr(labels []string, pcts []float64) string {
	parts := make([]string, len(labels))
	for i, l := range labels {
		parts[i] = fmt.Sprintf("%s=%.1f%%", l, pcts[i])
	}
	return strings.Join(parts, ", ")
}

// writeLat writes "clat (usec): min=…, max=…, avg=…, stdev=…", scaling to
// usec or msec when every figure is large enough, as fio does.
func writeLat(out io.Writer, name string, s *latStat) {
	mn, mx, mean, dev := float64(s.minOrZero()), float64(s.max), s.mean, s.stddev()
	unit := "nsec"
	for _, u := range []struct {
		div  float64
		name string
	}{{1e6, "msec"}, {1e3, "usec"}} {
		if mn > u.div && mx > u.div && mean > u.div && dev > u.div {
			mn, mx, mean, dev, unit = mn/u.div, mx/u.div, mean/u.div, dev/u.div, u.name
			break
		}
	}
	fmt.Fprintf(out, "%s (%s): min=%s, max=%s, avg=%5.02f, stdev=%5.02f\n", name, unit,
		num2str(math.Floor(mn), 6, false), num2str(math.Floor(mx), 6, false), mean, dev)
}

// percentileList is fio's default percentile_list.
var percentileList = []float64{1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 99, 99.5, 99.9, 99.95, 99.99}

// jobPercentiles is the job's percentile_list, or fio's default.
func jobPercentiles(j *Job) []float64 {
	if len(j.PercentileList) > 0 {
		return j.PercentileList
	}
	return percentileList
}

func percentiles(s *latStat, list []float64) []int64 {
	out := make([]int64, len(list))
	if s.h == nil || s.n == 0 {
		return out
	}
	for i, p := range list {
		out[i] = s.h.ValueAtQuantile(p)
	}
	return out
}

func writePercentiles(out io.Writer, name string, s *latStat, list []float64) {
	if s.n == 0 || len(list) == 0 {
		return
	}
	percentileList := list
	vals := percentiles(s, list)
	minv, maxv := vals[0], vals[0]
	for _, v := range vals {
		minv, maxv = min(minv, v), max(maxv, v)
	}
	div, unit, scale := int64(1), "nsec", 0
	switch {
	case minv > 2_000_000 && maxv > 99_999_999:
		div, unit, scale = 1_000_000, "msec", 2
	case minv > 2000 && maxv > 99_999:
		div, unit, scale = 1000, "usec", 1
	}
	width := max(5, int(math.Log10(float64(max(maxv/div, 1))))+1)
	perLine := (80 - 7) / (2 + 10 + width)
	fmt.Fprintf(out, "    %s percentiles (%s):\n     |", name, unit)
	for i, p := range percentileList {
		if i != 0 && i%perLine == 0 {
			fmt.Fprint(out, "     |")
		}
		v := vals[i]
		for k := 0; k < scale; k++ {
			v = (v + 999) / 1000
		}
		sep := ","
		if i == len(percentileList)-1 {
			sep = "\n"
		}
		fmt.Fprintf(out, " %5.2fth=[%*d]%s", p, width, v, sep)
		if i != len(percentileList)-1 && i%perLine == perLine-1 {
			fmt.Fprintln(out)
		}
	}
}

// writeLatDist writes the non-empty buckets of one latency unit, five per
// line.
func writeLatDist(out io.Writer, unit string, bounds []int64, pcts []float64) {
	var items []string
	for i, p := range pcts {
		if p <= 0 {
			continue
		}
		label := strconv.FormatInt(bounds[i], 10)
		if bounds[i] == 1<<62 {
			label = ">=2000"
		}
		items = append(items, fmt.Sprintf("%s=%.2f%%", label, math.Max(p, 0.01)))
	}
	for len(items) > 0 {
		n := min(5, len(items))
		fmt.Fprintf(out, "  lat (%s)   : %s\n", unit, strings.Join(items[:n], ", "))
		items = items[n:]
	}
}
