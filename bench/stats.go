package bench

import (
	"math"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Latencies are recorded in nanoseconds from 1 ns to histMax with three
// significant digits (0.1% error), fio's own histogram precision is coarser.
const histMax = int64(600e9)

// latStat is one latency series (slat, clat or lat) of one direction: exact
// min, max, mean and standard deviation (Welford), plus an HDR histogram
// for percentiles. record never allocates.
type latStat struct {
	n        uint64
	min, max int64
	mean, m2 float64
	h        *hdrhistogram.Histogram
}

func newLatStat(withHist bool) latStat {
	s := latStat{min: math.MaxInt64}
	if withHist {
		s.h = hdrhistogram.New(1, histMax, 3)
	}
	return s
}

func (s *latStat) record(v int64) {
	if v < 0 {
		v = 0
	}
	s.n++
	s.min = min(s.min, v)
	s.max = max(s.max, v)
	d := float64(v) - s.mean
	s.mean += d / float64(s.n)
	s.m2 += d * (float64(v) - s.mean)
	if s.h != nil {
		_ = s.h.RecordValue(min(v, histMax)) // in range: cannot fail
	}
}

func (s *latStat) reset() {
	s.n, s.min, s.max, s.mean, s.m2 = 0, math.MaxInt64, 0, 0, 0
	if s.h != nil {
		s.h.Reset()
	}
}

// stddev is the sample standard deviation, as fio reports it.
func (s *latStat) stddev() float64 {
	if s.n < 2 {
		return 0
	}
	return math.Sqrt(s.m2 / float64(s.n-1))
}

func (s *latStat) minOrZero() int64 {
	if s.n == 0 {
		return 0
	}
	return s.min
}

// merge folds o into s (group reporting).
func (s *latStat) merge(o *latStat) {
	if o.n == 0 {
		return
	}
	if s.n == 0 {
		h := s.h
		*s = *o
		s.h = h
		if h != nil && o.h != nil {
			h.Reset()
			h.Merge(o.h)
		}
		return
	}
	n := s.n + o.n
	d := o.mean - s.mean
	s.m2 += o.m2 + d*d*float64(s.n)*float64(o.n)/float64(n)
	s.mean += d * float64(o.n) / float64(n)
	s.n = n
	s.min = min(s.min, o.min)
	s.max = max(s.max, o.max)
	if s.h != nil && o.h != nil {
		s.h.Merge(o.h)
	}
}

// sampleStat collects bandwidth or IOPS samples (fio's bw_* and iops_*).
type sampleStat struct {
	n        int
	min, max float64
	mean, m2 float64
}

func (s *sampleStat) add(v float64) {
	if s.n == 0 {
		s.min, s.max = v, v
	}
	s.n++
	s.min = math.Min(s.min, v)
	s.max = math.Max(s.max, v)
	d := v - s.mean
	s.mean += d / float64(s.n)
	s.m2 += d * (v - s.mean)
}

func (s *sampleStat) stddev() float64 {
	if s.n < 2 {
		return 0
	}
	return math.Sqrt(s.m2 / float64(s.n-1))
}

// dirStats is what one direction of one clone measured.
type dirStats struct {
	ios   uint64
	bytes uint64
	slat  latStat
	clat  latStat
	lat   latStat
	bw    sampleStat // KiB/s per sample window
	iops  sampleStat
	// window start for the bw/iops samples
	winIOs, winBytes uint64
}

func newDirStats() dirStats {
	return dirStats{slat: newLatStat(false), clat: newLatStat(true), lat: newLatStat(true)}
}

func (d *dirStats) reset() {
	d.ios, d.bytes, d.winIOs, d.winBytes = 0, 0, 0, 0
	d.slat.reset()
	d.clat.reset()
	d.lat.reset()
	d.bw, d.iops = sampleStat{}, sampleStat{}
}

// levelBucket and batchBucket index fio's IO depth distributions. Level
// buckets are floors (1, 2, 4, 8, 16, 32, >=64: depth 5 counts as "4");
// submit/complete buckets are ceilings (0, 4, 8, 16, 32, 64, >=64).
func levelBucket(n int) int {
	switch {
	case n >= 64:
		return 6
	case n >= 32:
		return 5
	case n >= 16:
		return 4
	case n >= 8:
		return 3
	case n >= 4:
		return 2
	case n >= 2:
		return 1
	}
	return 0
}

func batchBucket(n int) int {
	switch {
	case n <= 0:
		return 0
	case n <= 4:
		return 1
	case n <= 8:
		return 2
	case n <= 16:
		return 3
	case n <= 32:
		return 4
	case n <= 64:
		return 5
	}
	return 6
}
