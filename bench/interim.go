package bench

import (
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Interim reports (fio's --status-interval and SIGUSR1): the full report of
// the run so far, printed while the jobs go on.
//
// A clone's statistics belong to its thread, which writes them without a
// lock. The reporter therefore never reads a running clone's statistics:
// it raises a shared request count, and each clone, at its next tick (once
// per batch, on its own thread), copies what the report reads into a
// fresh worker value and publishes it. A clone that finished is read as it
// is (its final store of the status character orders its last writes
// before the reporter's load). A clone that does not answer within the
// wait (one sleeping on a rate limit or thinktime) is reported from its
// previous copy, or as not started. The clones pay one atomic load per
// batch when interim reports are on, and nothing otherwise.

// snapState is one clone's side of the interim-report handshake. Two
// copies circulate per clone, so the clones allocate none once warm: the
// clone fills one taken from free (or a new one) and publishes it in snap;
// the reporter takes it out of snap, renders it, keeps it as the clone's
// last copy (the fallback for a clone that does not answer) and hands the
// copy it kept before back through free. The clone never touches a copy
// after publishing it; the reporter never touches one after freeing it.
type snapState struct {
	req  *atomic.Uint64 // the reporter's request count; nil: no interim reports
	seen uint64         // the last request this clone answered
	done atomic.Uint64  // the request the newest published copy answers
	snap atomic.Pointer[worker]
	free atomic.Pointer[worker]
	last *worker // the reporter's: the copy it rendered last
}

// snapshotDue answers an interim-report request; tick calls it.
func (w *worker) snapshotDue(now int64) {
	if r := w.snapState.req.Load(); r != w.snapState.seen {
		w.snapState.seen = r
		s := w.snapState.free.Swap(nil)
		if s == nil {
			s = idleWorker(w.job, w.clone)
		}
		w.snapshot(now, s)
		w.snapState.snap.Store(s)
		w.snapState.done.Store(r)
	}
}

// snapshot copies what the report reads into s, as if the clone ended now,
// reusing s's histograms. It runs on the clone's thread (its CPU time is
// the thread's).
func (w *worker) snapshot(now int64, s *worker) {
	stats, syncLat, prioClat, ver := s.stats, s.syncLat, s.prioClat, s.ver
	*s = worker{
		job: w.job, clone: w.clone, base: w.base, phase: w.phase,
		measureStart: w.measureStart, measureEnd: w.measureEnd,
		verifyStart: w.verifyStart, verifyEnd: w.verifyEnd,
		err: w.err, depthLevel: w.depthLevel, submitDist: w.submitDist, completeDist: w.completeDist,
		submitCalls: w.submitCalls, completeCalls: w.completeCalls, ru0: w.ru0, ru1: w.ru1,
		noSlat: w.noSlat, lt: w.lt, enterSubmit: w.enterSubmit, enterReap: w.enterReap,
		ringEnters: w.ringEnters, scrambles: w.scrambles, prio: w.prio,
		stats: stats, syncLat: syncLat,
	}
	w.syncLat.copyTo(&s.syncLat)
	for d := range w.stats {
		w.stats[d].copyTo(&s.stats[d])
	}
	for d := range w.prioClat {
		for len(prioClat[d]) < len(w.prioClat[d]) {
			prioClat[d] = append(prioClat[d], newLatStat(true))
		}
		prioClat[d] = prioClat[d][:len(w.prioClat[d])]
		for i := range w.prioClat[d] {
			w.prioClat[d][i].copyTo(&prioClat[d][i])
		}
	}
	s.prioClat = prioClat
	if w.ver != nil {
		if ver == nil {
			ver = &verifier{}
		}
		ver.checked, ver.mismatches = w.ver.checked, w.ver.mismatches
		ver.first = append(ver.first[:0], w.ver.first...)
		s.ver = ver
	}
	switch w.phase {
	case phaseRamp:
		// Nothing measured yet: the ramp's I/O is not reported.
		for d := range s.stats {
			s.stats[d].reset()
		}
		s.measureStart, s.measureEnd = now, now
		s.depthLevel, s.submitDist, s.completeDist = [7]uint64{}, [7]uint64{}, [7]uint64{}
		_ = unix.Getrusage(unix.RUSAGE_THREAD, &s.ru0)
		s.ru1 = s.ru0
	case phaseRun, phaseVerify:
		s.measureEnd = now
		_ = unix.Getrusage(unix.RUSAGE_THREAD, &s.ru1)
	}
	s.phase = phaseDone
}

// copyTo makes dst a copy of s, keeping dst's histogram.
func (s *latStat) copyTo(dst *latStat) {
	h := dst.h
	*dst = *s
	dst.h = h
	if s.h == nil {
		dst.h = nil
		return
	}
	if h == nil {
		dst.h = newLatStat(true).h
	} else {
		h.Reset()
	}
	dst.h.Merge(s.h)
}

func (d *dirStats) copyTo(dst *dirStats) {
	slat, clat, lat := dst.slat, dst.clat, dst.lat
	*dst = *d
	dst.slat, dst.clat, dst.lat = slat, clat, lat
	d.slat.copyTo(&dst.slat)
	d.clat.copyTo(&dst.clat)
	d.lat.copyTo(&dst.lat)
}

// interimWait bounds how long a report waits for the clones' copies.
const interimWait = 200 * time.Millisecond

// interim collects the report of the run so far: the groups that finished
// and the group that runs (cur, nil between groups).
type interim struct {
	mu    sync.Mutex
	req   atomic.Uint64
	done  []*JobResult // finished groups
	cur   []*JobResult
	began time.Time // when cur started
	gid   int       // cur's group; groups after it have not started
	grps  [][]*Job  // every group of the run, for the ones not started
}

// idleWorker is a clone that has measured nothing.
func idleWorker(j *Job, clone int) *worker {
	w := &worker{job: j, clone: clone, phase: phaseDone, syncLat: newLatStat(true)}
	for d := range w.stats {
		w.stats[d] = newDirStats()
	}
	return w
}

// setGroup makes jr the running group and connects its clones.
func (in *interim) setGroup(jr []*JobResult, gid int, began time.Time) {
	for _, r := range jr {
		for _, w := range r.Clones {
			w.snapState.req = &in.req
		}
	}
	in.mu.Lock()
	in.cur, in.gid, in.began = jr, gid, began
	in.mu.Unlock()
}

// endGroup moves the running group to the finished ones.
func (in *interim) endGroup(jr []*JobResult) {
	in.mu.Lock()
	in.cur = nil
	in.done = append(in.done, jr...)
	in.mu.Unlock()
}

// collect asks every running clone for a copy and builds the report's
// result from them.
func (in *interim) collect(res *Result) *Result {
	in.mu.Lock()
	defer in.mu.Unlock()
	r := in.req.Add(1)
	deadline := time.Now().Add(interimWait)
	for _, jr := range in.cur {
		for _, w := range jr.Clones {
			for w.snapState.done.Load() != r && w.prog.state.Load() != '_' && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
		}
	}
	now := time.Now()
	out := &Result{Spec: res.Spec, Start: res.Start, End: now, diskBefore: res.diskBefore}
	out.Jobs = append(out.Jobs, in.done...)
	for _, jr := range in.cur {
		c := &JobResult{Job: jr.Job, GroupID: jr.GroupID, SetupFailed: jr.SetupFailed, Elapsed: now.Sub(in.began)}
		for _, w := range jr.Clones {
			var s *worker
			switch st := w.prog.state.Load(); {
			case st == '_':
				s = w // finished: its statistics no longer change
			default:
				ss := &w.snapState
				if s = ss.snap.Swap(nil); s != nil {
					if ss.last != nil {
						ss.free.Store(ss.last)
					}
					ss.last = s
				}
				if s = ss.last; s == nil || st == 'P' {
					s = idleWorker(jr.Job, w.clone) // not started (or no copy yet)
				}
			}
			if s.err != nil && c.Err == nil {
				c.Err = s.err
			}
			c.Clones = append(c.Clones, s)
		}
		out.Jobs = append(out.Jobs, c)
	}
	// Jobs of later groups are listed with nothing measured, as fio does.
	for gid := in.gid + 1; gid < len(in.grps); gid++ {
		for _, j := range in.grps[gid] {
			c := &JobResult{Job: j, GroupID: gid}
			for k := 0; k < j.NumJobs; k++ {
				c.Clones = append(c.Clones, idleWorker(j, k))
			}
			out.Jobs = append(out.Jobs, c)
		}
	}
	for _, b := range res.diskBefore {
		if a, ok := readDiskSnap(b.name); ok {
			out.diskAfter = append(out.diskAfter, a)
		}
	}
	return out
}

// startInterim calls report with the run so far every interval (0: never)
// and whenever now receives, until the returned stop is called.
func startInterim(in *interim, res *Result, interval time.Duration, now <-chan struct{}, report func(*Result)) (stop func()) {
	quit := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		var tick <-chan time.Time
		if interval > 0 {
			t := time.NewTicker(interval)
			defer t.Stop()
			tick = t.C
		}
		for {
			select {
			case <-quit:
				return
			case <-tick:
			case <-now:
			}
			report(in.collect(res))
		}
	}()
	return func() {
		close(quit)
		wg.Wait()
	}
}
