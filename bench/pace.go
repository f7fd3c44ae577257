package bench

import (
	"math"
	"strconv"
	"sync/atomic"
	"time"
)

// Pacing: thinktime, rate, rate_iops (linear or poisson) and startdelay.
// A paced clone holds its next I/O until a time the worker computes; the
// engines then wait (sleep, a ring wait with a timeout, or a Context
// timer) instead of ending the phase. Nothing here allocates.

// pacer is a worker's pacing state.
type pacer struct {
	on        bool // any pacing option
	gated     bool // the last fill held back an I/O
	until     int64
	thinkLeft int
	thinking  bool // the think point was reached: drain, then pause
	issued    [2]struct{ bytes, ios int64 }
	next      [2]int64 // poisson: the next arrival per direction
	minOn     bool     // rate_min or rate_iops_min
	cycleEnd  int64    // end of the current rate_cycle
	cycle     [2]struct{ bytes, ios uint64 }
	pend      struct {
		valid bool
		dir   int
		off   int64
		n     int
	}
}

func (w *worker) initPacer() {
	j := w.job
	p := &w.pace
	p.on = j.ThinkTime > 0 || j.Rate != [2]int64{} || j.RateIOPS != [2]int64{}
	p.thinkLeft = j.ThinkBlocks
	p.minOn = j.RateMin != [2]int64{} || j.RateIOPSMin != [2]int64{}
	if j.Flow > 0 {
		p.on = true
	}
}

// flowGroup is the shared state of one flow_id in a group of jobs: the
// I/Os its clones issued, their total weight, and whether one finished
// (then the others run free: their partner is gone).
type flowGroup struct {
	total    atomic.Int64
	weight   int64
	finished atomic.Bool
}

// flowGroups joins every clone of grp with a flow weight to its flow_id's
// group.
func flowGroups(grp []*JobResult) {
	groups := map[int]*flowGroup{}
	for _, jr := range grp {
		j := jr.Job
		if j.Flow == 0 {
			continue
		}
		g := groups[j.FlowID]
		if g == nil {
			g = &flowGroup{}
			groups[j.FlowID] = g
		}
		for _, w := range jr.Clones {
			g.weight += int64(j.Flow)
			w.flow = g
		}
	}
}

// flowAllows reports whether the clone may issue its next I/O: its share
// of the group's I/Os stays within its weight's share (one I/O of slack).
func (w *worker) flowAllows() bool {
	g := w.flow
	if g == nil || g.finished.Load() {
		return true
	}
	wt := int64(w.job.Flow)
	return w.flowIOs*g.weight <= g.total.Load()*wt+wt
}

// errRateMin is a job that fell below rate_min or rate_iops_min.
type errRateMin struct {
	iops      bool
	want, got int64
}

func (e *errRateMin) Error() string {
	if e.iops {
		return "min iops rate " + itoa(e.want) + " not met, got " + itoa(e.got)
	}
	return "min rate " + itoa(e.want/1024) + " KiB/sec not met, got " + itoa(e.got/1024) + " KiB/sec"
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// checkRateMin is fio's rate_min check, at a completion while
// measuring: after a 2 s settle period, once at least rate_cycle has
// passed since the last check, a direction the job does that moved fewer
// bytes (or I/Os) per second than its minimum fails the job.
func (w *worker) checkRateMin(now int64) {
	p := &w.pace
	if now-w.measureStart < int64(2*time.Second) {
		return
	}
	if p.cycleEnd != 0 && now-p.cycleEnd < int64(w.job.RateCycle) {
		return
	}
	if p.cycleEnd != 0 {
		span := float64(now-p.cycleEnd) / 1e9
		for d := 0; d < 2; d++ {
			if !w.job.RW.writesOrReads(d) {
				continue
			}
			bw := int64(float64(w.stats[d].bytes-p.cycle[d].bytes) / span)
			iops := int64(float64(w.stats[d].ios-p.cycle[d].ios) / span)
			var err error
			if m := w.job.RateMin[d]; m > 0 && bw < m {
				err = &errRateMin{want: m, got: bw}
			} else if m := w.job.RateIOPSMin[d]; m > 0 && iops < m {
				err = &errRateMin{iops: true, want: m, got: iops}
			}
			if err != nil && w.err == nil {
				w.err = err
				w.stopIssuing = true
			}
		}
	}
	p.cycleEnd = now
	for d := 0; d < 2; d++ {
		p.cycle[d].bytes, p.cycle[d].ios = w.stats[d].bytes, w.stats[d].ios
	}
}

// startDelay is how long the clone waits before it starts.
func (w *worker) startDelay() time.Duration {
	d := w.job.StartDelay
	if d[1] > d[0] {
		return d[0] + time.Duration(w.gen.rng.Int64N(int64(d[1]-d[0])+1))
	}
	return d[0]
}

// nextPaced returns the next I/O of the generator when pacing lets it go
// at now; otherwise it holds it and marks the clone gated.
func (w *worker) nextPaced(now int64) (dir int, off int64, n int, ok bool) {
	p := &w.pace
	if p.thinking || now < p.until {
		p.gated = !p.thinking
		return 0, 0, 0, false
	}
	if !w.flowAllows() {
		p.until, p.gated = now+int64(max(w.job.FlowSleep, 20*time.Microsecond)), true
		return 0, 0, 0, false
	}
	if !p.pend.valid {
		dir, off, n, ok := w.gen.next()
		if !ok {
			return 0, 0, 0, false
		}
		p.pend.valid, p.pend.dir, p.pend.off, p.pend.n = true, dir, off, n
	}
	d := p.pend.dir
	if t := w.rateTime(d); now < t {
		p.until, p.gated = t, true
		return 0, 0, 0, false
	}
	p.pend.valid = false
	if w.flow != nil {
		w.flowIOs++
		w.flow.total.Add(1)
	}
	p.issued[d].bytes += int64(p.pend.n)
	p.issued[d].ios++
	if w.job.RateProcess == "poisson" {
		w.advancePoisson(d, p.pend.n)
	}
	if w.job.ThinkTime > 0 {
		p.thinkLeft--
		if p.thinkLeft == 0 {
			p.thinkLeft = w.job.ThinkBlocks
			p.thinking = true
		}
	}
	return d, p.pend.off, p.pend.n, true
}

// rateTime is when direction d may issue its next I/O (ns since start).
func (w *worker) rateTime(d int) int64 {
	j := w.job
	if j.Rate[d] == 0 && j.RateIOPS[d] == 0 {
		return 0
	}
	if j.RateProcess == "poisson" {
		return w.pace.next[d]
	}
	var t int64
	is := w.pace.issued[d]
	if r := j.Rate[d]; r > 0 {
		t = int64(float64(is.bytes) * 1e9 / float64(r))
	}
	if r := j.RateIOPS[d]; r > 0 {
		t = max(t, int64(float64(is.ios)*1e9/float64(r)))
	}
	return t
}

// advancePoisson draws the gap to the next arrival of direction d: an
// exponential with the rate's mean (fio's rate_process=poisson).
func (w *worker) advancePoisson(d, n int) {
	j := w.job
	var mean float64
	if r := j.Rate[d]; r > 0 {
		mean = float64(n) * 1e9 / float64(r)
	}
	if r := j.RateIOPS[d]; r > 0 {
		mean = math.Max(mean, 1e9/float64(r))
	}
	u := w.gen.rng.Float64()
	w.pace.next[d] += int64(-math.Log(1-u) * mean)
}

// thinkDone ends a think point once its I/Os completed: the pause runs
// from now.
func (w *worker) thinkDone(now int64) {
	if w.pace.thinking && w.busy == 0 {
		w.pace.thinking = false
		w.pace.until = now + int64(w.job.ThinkTime)
	}
}

// waitUntil reports whether the clone is held by pacing (not finished)
// and until when it should wait, capped at the run's deadline.
func (w *worker) waitUntil() (int64, bool) {
	if !w.pace.gated || w.stopIssuing {
		return 0, false
	}
	t := w.pace.until
	if w.deadline > 0 {
		t = min(t, w.deadline)
	}
	return t, true
}
