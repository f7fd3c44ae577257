package bench

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// SteadyState is fio's steadystate= criterion: the job ends once the last
// Dur seconds of its IOPS or bandwidth (all clones together, sampled once
// a second after Ramp) vary by at most Limit (a deviation from the mean,
// or with Slope the least-squares slope per second), in percent of the
// mean when Pct.
type SteadyState struct {
	Kind  string // "iops" or "bw"
	Slope bool
	Limit float64
	Pct   bool
	Dur   time.Duration
	Ramp  time.Duration
}

// parseSteadyState reads fio's "iops:10%", "bw_slope:1%", "iops:300".
func parseSteadyState(v string) (SteadyState, error) {
	var s SteadyState
	kind, lim, ok := strings.Cut(strings.ToLower(v), ":")
	if !ok {
		return s, errors.New("want iops|bw|iops_slope|bw_slope:LIMIT[%]")
	}
	s.Kind, s.Slope = strings.CutSuffix(kind, "_slope")
	if s.Kind != "iops" && s.Kind != "bw" {
		return s, errors.New("want iops|bw|iops_slope|bw_slope:LIMIT[%]")
	}
	lim, s.Pct = strings.CutSuffix(lim, "%")
	f, err := strconv.ParseFloat(lim, 64)
	if err != nil || f < 0 || math.IsNaN(f) || math.IsInf(f, 0) {
		return s, fmt.Errorf("limit %q: want a non-negative number", lim)
	}
	s.Limit = f
	return s, nil
}

// steadyRun is a job's steady-state detection while its group runs: the
// sampler goroutine writes it, the clones only load stop (once a batch).
type steadyRun struct {
	cfg      SteadyState
	stop     atomic.Bool
	n        int // samples in the window (cfg.Dur in seconds)
	iops, bw []float64
	filled   int // samples taken, up to n
	head     int // next slot
	attained bool
	crit     float64
	maxDev   float64
	slope    float64
}

func newSteadyRun(cfg SteadyState) *steadyRun {
	n := int(cfg.Dur / time.Second)
	return &steadyRun{cfg: cfg, n: n, iops: make([]float64, n), bw: make([]float64, n)}
}

// add records one second's IOPS and bandwidth (bytes/s) and, with a full
// window, evaluates the criterion; it reports whether it is met.
func (s *steadyRun) add(iops, bw float64) bool {
	if s.n == 0 || s.attained {
		return s.attained
	}
	s.iops[s.head], s.bw[s.head] = iops, bw
	s.head = (s.head + 1) % s.n
	if s.filled < s.n {
		s.filled++
	}
	if s.filled < s.n {
		return false
	}
	data := s.bw
	if s.cfg.Kind == "iops" {
		data = s.iops
	}
	xs := s.ordered(data)
	mean := 0.0
	for _, x := range xs {
		mean += x
	}
	mean /= float64(len(xs))
	if s.cfg.Slope {
		// least squares over t = 0..n-1 seconds
		tm := float64(len(xs)-1) / 2
		var num, den float64
		for i, x := range xs {
			num += (float64(i) - tm) * (x - mean)
			den += (float64(i) - tm) * (float64(i) - tm)
		}
		if den > 0 {
			s.slope = num / den
		}
		s.crit = math.Abs(s.slope)
	} else {
		s.maxDev = 0
		for _, x := range xs {
			s.maxDev = max(s.maxDev, math.Abs(x-mean))
		}
		s.crit = s.maxDev
	}
	if s.cfg.Pct {
		if mean == 0 {
			s.crit = math.Inf(1) // nothing moved: no steady state to speak of
			if s.cfg.Slope && s.slope == 0 || !s.cfg.Slope && s.maxDev == 0 {
				s.crit = 0
			}
		} else {
			s.crit = s.crit / mean * 100
		}
	}
	s.attained = s.crit <= s.cfg.Limit
	return s.attained
}

// ordered is the window oldest first (zeros before it filled).
func (s *steadyRun) ordered(data []float64) []float64 {
	out := make([]float64, 0, s.n)
	if s.filled < s.n {
		out = append(out, data[:s.filled]...)
		for len(out) < s.n {
			out = append(out, 0)
		}
		return out
	}
	out = append(out, data[s.head:]...)
	return append(out, data[:s.head]...)
}

func (s *steadyRun) mean(data []float64) float64 {
	if s.filled == 0 {
		return 0
	}
	t := 0.0
	for _, x := range s.ordered(data)[:s.filled] {
		t += x
	}
	return t / float64(s.filled)
}

// startSteady samples each steady-state job of a group once a second
// (after its ramp) until stopped; a met criterion stops the job's clones.
func startSteady(out []*JobResult, began time.Time) func() {
	type sj struct {
		run        *steadyRun
		jr         *JobResult
		ios, bytes uint64
		at         time.Time
		started    bool
	}
	var list []*sj
	for _, jr := range out {
		if jr.Job.SS == nil {
			continue
		}
		r := newSteadyRun(*jr.Job.SS)
		for _, w := range jr.Clones {
			w.ss = r
		}
		list = append(list, &sj{run: r, jr: jr})
	}
	if len(list) == 0 {
		return func() {}
	}
	quit := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tk := time.NewTicker(time.Second)
		defer tk.Stop()
		for {
			select {
			case <-quit:
				return
			case now := <-tk.C:
				for _, s := range list {
					if now.Sub(began) < s.run.cfg.Ramp {
						continue
					}
					var ios, bytes uint64
					for _, w := range s.jr.Clones {
						for d := range w.prog.ios {
							ios += w.prog.ios[d].Load()
							bytes += w.prog.bytes[d].Load()
						}
					}
					if s.started {
						secs := now.Sub(s.at).Seconds()
						if s.run.add(float64(ios-s.ios)/secs, float64(bytes-s.bytes)/secs) {
							s.run.stop.Store(true)
						}
					}
					s.ios, s.bytes, s.at, s.started = ios, bytes, now, true
				}
			}
		}
	}()
	return func() { close(quit); <-done }
}

// steadyJSON is fio's "steadystate" block of a job's JSON.
func steadyJSON(r *steadyRun) obj {
	c := r.cfg
	kind := c.Kind
	if c.Slope {
		kind += "_slope"
	}
	pct := ""
	if c.Pct {
		pct = "%"
	}
	ints := func(xs []float64) []int64 {
		out := make([]int64, len(xs))
		for i, x := range xs {
			out[i] = int64(math.Round(x))
		}
		return out
	}
	crit := r.crit
	if math.IsInf(crit, 0) {
		crit = 0
	}
	return obj{
		{"ss", fmt.Sprintf("%s:%f%s", kind, c.Limit, pct)},
		{"duration", int64(c.Dur / time.Second)},
		{"attained", b2i(r.attained)},
		{"criterion", fmt.Sprintf("%f%s", crit, pct)},
		{"max_deviation", r.maxDev},
		{"slope", r.slope},
		{"data", obj{
			{"bw_mean", int64(math.Round(r.mean(r.bw)))},
			{"iops_mean", int64(math.Round(r.mean(r.iops)))},
			{"iops", ints(r.ordered(r.iops))},
			{"bw", ints(r.ordered(r.bw))},
		}},
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}
