package bench

import (
	"time"
)

// entry is one reported job: a clone, or a whole group with
// group_reporting (fio's thread_stat).
type entry struct {
	name      string
	groupID   int
	job       *Job
	share     [2]float64 // per=: percent of the group's bandwidth
	optsJob   *Job       // whose "job options" are echoed (group_reporting: the last job); nil: job
	clones    []*worker
	err       error
	dirs      [2]dirStats
	sync      latStat
	prios     [2][]prioLat // cmdprio: clat per priority, in first-seen order
	runtimeMs int64        // measured time (longest clone)
	usrPct    float64
	sysPct    float64
	ctx       uint64
	majf      uint64
	minf      uint64
	depth     [7]float64 // IO depth distribution, percent
	submit    [7]float64
	complete  [7]float64
	latNs     [10]float64 // latency distribution, percent of I/Os
	latUs     [10]float64
	latMs     [12]float64
	verify    verifySummary
	// setupFailed: every job of the entry failed at its start (no
	// section in the normal report).
	setupFailed bool
	elapsed     time.Duration
	sums        entrySums // raw sums between add and finish
}

type verifySummary struct {
	enabled    bool
	checked    uint64
	mismatches uint64
	first      []Mismatch
}

// groupTotal is one reporting group's "Run status group" line per direction.
type groupTotal struct {
	id      int
	bytes   [2]uint64
	minBW   [2]float64 // bytes/s over the group's entries
	maxBW   [2]float64
	minRun  [2]int64 // ms
	maxRun  [2]int64
	entries int
}

// entries builds the reported entries of a result: one per clone, or one
// per group for jobs with group_reporting.
func entries(res *Result) []*entry {
	var out []*entry
	merged := map[int]*entry{}
	for _, jr := range res.Jobs {
		for _, w := range jr.Clones {
			if jr.Job.GroupReporting {
				e := merged[jr.GroupID]
				if e == nil {
					e = newEntry(jr.Job.Name, jr.GroupID, jr.Job)
					e.setupFailed = true
					merged[jr.GroupID] = e
					out = append(out, e)
				}
				e.setupFailed = e.setupFailed && jr.SetupFailed != nil
				e.add(w, jr)
				e.optsJob = jr.Job // fio echoes the group's last job's options
				continue
			}
			e := newEntry(jr.Job.Name, jr.GroupID, jr.Job)
			e.setupFailed = jr.SetupFailed != nil
			e.add(w, jr)
			out = append(out, e)
		}
	}
	for _, e := range out {
		e.finish()
	}
	setShares(out)
	return out
}

// setShares gives each entry its per= share: the mean of its bandwidth
// samples in percent of its group's aggregate bandwidth (fio's p_of_agg,
// at most 100).
func setShares(es []*entry) {
	byID := map[int]*groupTotal{}
	for _, g := range groupTotals(es) {
		byID[g.id] = g
	}
	for _, e := range es {
		for d := 0; d < 2; d++ {
			agg := byID[e.groupID].bw(d) / 1024
			if agg > 0 && e.dirs[d].bw.n > 0 {
				e.share[d] = min(100, e.dirs[d].bw.mean*100/agg)
			}
		}
	}
}

func newEntry(name string, gid int, j *Job) *entry {
	e := &entry{name: name, groupID: gid, job: j}
	for d := range e.dirs {
		e.dirs[d] = newDirStats()
	}
	return e
}

// raw per-entry sums kept between add and finish.
type entrySums struct {
	usrNs, sysNs, runNs int64
	depth, submit, cmpl [7]uint64
}

func (e *entry) add(w *worker, jr *JobResult) {
	e.clones = append(e.clones, w)
	if w.err != nil && e.err == nil {
		e.err = w.err
	}
	if jr.Err != nil && e.err == nil {
		e.err = jr.Err // a job-level error: its image's close failed
	}
	if jr.Elapsed > e.elapsed {
		e.elapsed = jr.Elapsed
	}
	if e.sync.h == nil {
		e.sync = newLatStat(true)
	}
	e.sync.merge(&w.syncLat)
	for d := range w.prioClat {
		for i := range w.prioClat[d] {
			e.prioSeries(d, w.prio.levels[d][i]).merge(&w.prioClat[d][i])
		}
	}
	for d := range e.dirs {
		src, dst := &w.stats[d], &e.dirs[d]
		dst.ios += src.ios
		dst.bytes += src.bytes
		dst.slat.merge(&src.slat)
		dst.clat.merge(&src.clat)
		dst.lat.merge(&src.lat)
		mergeSamples(&dst.bw, &src.bw)
		mergeSamples(&dst.iops, &src.iops)
	}
	run := (w.measureEnd - w.measureStart) / 1e6
	e.runtimeMs = max(e.runtimeMs, run)
	s := &e.sums
	s.usrNs += w.ru1.Utime.Nano() - w.ru0.Utime.Nano()
	s.sysNs += w.ru1.Stime.Nano() - w.ru0.Stime.Nano()
	s.runNs += w.measureEnd - w.measureStart
	e.ctx += uint64((w.ru1.Nvcsw + w.ru1.Nivcsw) - (w.ru0.Nvcsw + w.ru0.Nivcsw))
	e.majf += uint64(w.ru1.Majflt - w.ru0.Majflt)
	e.minf += uint64(w.ru1.Minflt - w.ru0.Minflt)
	for i := range s.depth {
		s.depth[i] += w.depthLevel[i]
		s.submit[i] += w.submitDist[i]
		s.cmpl[i] += w.completeDist[i]
	}
	if w.ver != nil {
		e.verify.enabled = true
		e.verify.checked += w.ver.checked
		e.verify.mismatches += w.ver.mismatches
		for _, m := range w.ver.first {
			if len(e.verify.first) < maxMismatches {
				e.verify.first = append(e.verify.first, m)
			}
		}
	}
}

func mergeSamples(dst, src *sampleStat) {
	if src.n == 0 {
		return
	}
	if dst.n == 0 {
		*dst = *src
		return
	}
	n := dst.n + src.n
	d := src.mean - dst.mean
	dst.m2 += src.m2 + d*d*float64(dst.n)*float64(src.n)/float64(n)
	dst.mean += d * float64(src.n) / float64(n)
	dst.n = n
	dst.min = min(dst.min, src.min)
	dst.max = max(dst.max, src.max)
}

func (e *entry) finish() {
	s := &e.sums
	if s.runNs > 0 {
		// fio divides CPU time by the summed run time of the clones.
		e.usrPct = float64(s.usrNs) * 100 / float64(s.runNs)
		e.sysPct = float64(s.sysNs) * 100 / float64(s.runNs)
	}
	pct := func(dst *[7]float64, src [7]uint64) {
		var t uint64
		for _, v := range src {
			t += v
		}
		if t == 0 {
			return
		}
		for i, v := range src {
			dst[i] = float64(v) * 100 / float64(t)
			if v > 0 && dst[i] < 0.1 {
				dst[i] = 0.1 // fio shows a bucket that saw any I/O as at least 0.1%
			}
		}
	}
	pct(&e.depth, s.depth)
	pct(&e.submit, s.submit)
	pct(&e.complete, s.cmpl)
	e.latencyBuckets()
}

var (
	latNsBounds = [10]int64{2, 4, 10, 20, 50, 100, 250, 500, 750, 1000}
	latMsBounds = [12]int64{2, 4, 10, 20, 50, 100, 250, 500, 750, 1000, 2000, 1 << 62}
)

// latencyBuckets fills fio's latency distribution (of total latency, both
// directions) from the HDR histograms: a value counts in the first bucket
// whose bound exceeds it, in the unit it falls in.
func (e *entry) latencyBuckets() {
	var total int64
	add := func(v, count int64) {
		switch {
		case v < 1000:
			e.latNs[bucketOf(latNsBounds[:], v)] += float64(count)
		case v < 1000_000:
			e.latUs[bucketOf(latNsBounds[:], v/1000)] += float64(count)
		default:
			e.latMs[bucketOf(latMsBounds[:], v/1000_000)] += float64(count)
		}
		total += count
	}
	for d := range e.dirs {
		h := e.dirs[d].lat.h
		if h == nil || h.TotalCount() == 0 {
			continue
		}
		for _, b := range h.Distribution() {
			if b.Count > 0 {
				add(b.From, b.Count)
			}
		}
	}
	if total == 0 {
		return
	}
	for i := range e.latNs {
		e.latNs[i] = e.latNs[i] * 100 / float64(total)
		e.latUs[i] = e.latUs[i] * 100 / float64(total)
	}
	for i := range e.latMs {
		e.latMs[i] = e.latMs[i] * 100 / float64(total)
	}
}

func bucketOf(bounds []int64, v int64) int {
	for i, b := range bounds {
		if v < b {
			return i
		}
	}
	return len(bounds) - 1
}

// bwBytes is the entry's bandwidth in bytes/s for direction d.
func (e *entry) bwBytes(d int) float64 {
	if e.runtimeMs == 0 {
		return 0
	}
	return float64(e.dirs[d].bytes) * 1000 / float64(e.runtimeMs)
}

func (e *entry) iops(d int) float64 {
	if e.runtimeMs == 0 {
		return 0
	}
	return float64(e.dirs[d].ios) * 1000 / float64(e.runtimeMs)
}

// groupTotals sums entries by group.
func groupTotals(es []*entry) []*groupTotal {
	var out []*groupTotal
	byID := map[int]*groupTotal{}
	for _, e := range es {
		g := byID[e.groupID]
		if g == nil {
			g = &groupTotal{id: e.groupID}
			for d := 0; d < 2; d++ {
				g.minBW[d], g.minRun[d] = -1, -1
			}
			byID[e.groupID] = g
			out = append(out, g)
		}
		g.entries++
		for d := 0; d < 2; d++ {
			if e.dirs[d].ios == 0 {
				continue
			}
			g.bytes[d] += e.dirs[d].bytes
			bw := e.bwBytes(d)
			if g.minBW[d] < 0 || bw < g.minBW[d] {
				g.minBW[d] = bw
			}
			g.maxBW[d] = max(g.maxBW[d], bw)
			if g.minRun[d] < 0 || e.runtimeMs < g.minRun[d] {
				g.minRun[d] = e.runtimeMs
			}
			g.maxRun[d] = max(g.maxRun[d], e.runtimeMs)
		}
	}
	return out
}

// groupBW is the group's aggregate bandwidth for direction d (bytes/s):
// all bytes over the longest run.
func (g *groupTotal) bw(d int) float64 {
	if g.maxRun[d] <= 0 {
		return 0
	}
	return float64(g.bytes[d]) * 1000 / float64(g.maxRun[d])
}

// prioLat is the completion latency of one direction's I/Os of one
// priority (fio's clat_prio).
type prioLat struct {
	prio uint16
	clat latStat
}

// prioSeries is the entry's series of priority p in direction d, added
// when first seen.
func (e *entry) prioSeries(d int, p uint16) *latStat {
	for i := range e.prios[d] {
		if e.prios[d][i].prio == p {
			return &e.prios[d][i].clat
		}
	}
	e.prios[d] = append(e.prios[d], prioLat{prio: p, clat: newLatStat(true)})
	return &e.prios[d][len(e.prios[d])-1].clat
}

// reportedPrios is what fio reports of a direction's priorities: the
// series that saw I/O, when more than one did (one priority is the plain
// clat line).
func (e *entry) reportedPrios(d int) []*prioLat {
	var out []*prioLat
	for i := range e.prios[d] {
		if e.prios[d][i].clat.n > 0 {
			out = append(out, &e.prios[d][i])
		}
	}
	if len(out) < 2 {
		return nil
	}
	return out
}
