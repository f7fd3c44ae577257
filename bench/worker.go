package bench

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// unit is one I/O slot of a clone: preallocated with its buffer, reused
// for every I/O it carries. Times are nanoseconds since the worker's base.
type unit struct {
	idx    int32
	dir    uint8
	verify bool // a read of the verify phase
	n      int
	off    int64
	issue  int64
	submit int64
	buf    []byte // capacity: the largest block
	// prio is the I/O's priority (prio.go; 0: the thread's), prioIdx its
	// index in the clone's per-priority clat series.
	prio    uint16
	prioIdx uint8
	endSync bool // end_fsync's sync: fio neither counts nor times it
}

// phase of a clone.
const (
	phaseRamp = iota
	phaseRun
	phaseVerify
	phaseDone
)

// progress is what the status line reads from other goroutines.
type progress struct {
	ios   [2]atomic.Uint64
	bytes [2]atomic.Uint64
	state atomic.Int32 // a status character, see statusChar
	_     [64]byte
}

// worker is one clone of a job: generator, units, statistics and phase
// machine. Every method runs on the clone's thread; engines call fill,
// submitted and completed, and tick once per batch.
type worker struct {
	job   *Job
	clone int
	gen   *generator
	ver   *verifier // nil without verify
	units []unit
	free  []int32 // free unit indexes (stack)
	busy  int     // units in flight

	base          time.Time
	phase         int
	rampEnd       int64 // ns
	deadline      int64 // ns; 0: none
	measureStart  int64
	measureEnd    int64
	verifyStart   int64
	verifyEnd     int64
	verifyNext    int
	nextSample    int64
	lastSample    int64
	stopIssuing   bool
	err           error
	stats         [2]dirStats
	depthLevel    [7]uint64
	submitDist    [7]uint64
	completeDist  [7]uint64
	submitCalls   uint64
	completeCalls uint64
	pendingDone   int // completions since the last batch (completeDist)
	ru0, ru1      unix.Rusage
	prog          progress
	noSlat        bool       // sync engines: submission is the I/O itself
	logs          *cloneLogs // write_*_log files; nil: none
	cpuSet        []int      // cpus_allowed with the shared policy
	workerCPUs    []int      // where the clone's io-wq workers run (nil: the kernel's default)
	pace          pacer
	flow          *flowGroup // flow=: the clone's flow_id group
	flowIOs       int64
	syncLat       latStat // fsync/fdatasync latencies (fio's "sync")
	sinceSync     int     // writes since the last sync
	endSynced     bool
	lt            latTarget    // latency_target's depth search
	ss            *steadyRun   // steadystate=: set while the group runs
	doneSinceFill int          // completions since the clone last issued (iodepth_batch_complete_min)
	backlog       backlog      // verify_backlog: written blocks not yet read back
	draining      bool         // reading the backlog back until it is empty
	dumps         int          // verify_dump files written
	exitAll       *atomic.Bool // exitall: set when a clone of an exitall job finished; nil: none in the group
	enterSubmit   uint64       // io_uring_enter calls that submitted (--compare's I/Os per call)
	enterReap     uint64       // io_uring_enter calls that waited for completions
	ringEnters    uint64       // io_uring_enter calls the bare ring made (the kernel's count)
	payload       *payload     // dedupe/compress write contents; nil: the random buffers as they are
	scrambles     uint64       // writes scrambled (scramble_buffers)
	files         fileMap      // several files: a region offset's file (files.go)
	lastFile      int          // the file of the last write (fsync=N syncs it)
	endSyncFile   int          // end_fsync: the next file to sync
	prio          prioPicker   // each I/O's priority (prio, prioclass, cmdprio)
	prioClat      [2][]latStat // cmdprio: clat per priority, indexed as prio.levels
	snapState     snapState    // interim reports (interim.go)
}

// backlog is a fixed ring of completed writes (offset, length) that
// verify_backlog reads back once it holds VerifyBacklog of them.
type backlog struct {
	off        []int64
	n          []int32
	head, size int
}

func (b *backlog) push(off int64, n int) {
	if len(b.off) == 0 || b.size == len(b.off) {
		return // full: the final verify phase still reads it
	}
	i := (b.head + b.size) % len(b.off)
	b.off[i], b.n[i] = off, int32(n)
	b.size++
}

func (b *backlog) pop() (int64, int) {
	off, n := b.off[b.head], int(b.n[b.head])
	b.head = (b.head + 1) % len(b.off)
	b.size--
	return off, n
}

// latTarget is the state of latency_target's search for the deepest queue
// whose window meets the target: a bisection between low (met) and high
// (not yet failed), starting at depth 1 as fio does.
type latTarget struct {
	qd, low, high int
	winStart      int64 // ns
	ios, missed   int64 // I/Os of the window, and those over the target
	found         bool
}

// latTargetCheck counts an I/O of latency lat and, once the window is
// over, moves the depth: up halfway to high when the window met the
// target, down halfway to low when it did not. The search ends when a met
// depth is high; the job then stops, as fio's does without latency_run.
// An I/O issued before the window began (at the previous depth) is not
// counted.
func (w *worker) latTargetCheck(issue, now int64) {
	t := &w.lt
	if issue < t.winStart {
		return
	}
	lat := now - issue
	t.ios++
	if lat > int64(w.job.LatencyTarget) {
		t.missed++
	}
	if now-t.winStart < int64(w.job.LatencyWindow) || t.found {
		return
	}
	met := float64(t.missed)*100 <= (100-w.job.LatencyPercentile)*float64(t.ios)
	if met {
		t.low = t.qd
		if t.qd >= t.high {
			t.found = true
			w.stopIssuing = true
		} else {
			t.qd = (t.qd + t.high + 1) / 2
		}
	} else {
		t.high = max(t.low, t.qd-1)
		t.qd = max(1, (t.low+t.high+1)/2)
	}
	t.winStart, t.ios, t.missed = now, 0, 0
}

// sampleWindow is fio's bwavgtime/iopsavgtime default.
const sampleWindow = 500 * time.Millisecond

func newWorker(j *Job, clone int, regionOff, regionLen int64) *worker {
	w := &worker{job: j, clone: clone, gen: newGenerator(j, clone, regionOff, regionLen), syncLat: newLatStat(true)}
	for d := range w.stats {
		w.stats[d] = newDirStats()
	}
	if j.Verify != VerifyNone {
		track := j.RW.Writes() && j.DoVerify
		w.ver = newVerifier(j, max(j.MaxBS(DirRead), j.MaxBS(DirWrite)), regionOff, regionLen, w.gen.align, track)
	}
	depth := j.IODepth
	if syncEngine(j.IOEngine) {
		depth = 1
		w.noSlat = true
	}
	w.units = make([]unit, depth)
	w.free = make([]int32, 0, depth)
	for i := depth - 1; i >= 0; i-- {
		w.units[i].idx = int32(i)
		w.free = append(w.free, int32(i))
	}
	w.lt.qd = depth
	w.payload = newPayload(j, clone, regionLen)
	if j.VerifyBacklog > 0 && w.ver != nil {
		k := j.VerifyBacklog + depth
		w.backlog = backlog{off: make([]int64, k), n: make([]int32, k)}
	}
	if j.LatencyTarget > 0 {
		w.lt = latTarget{qd: 1, low: 1, high: depth}
	}
	w.files = newFileMap(j)
	w.prio = newPrioPicker(j, clone)
	if w.prio.on {
		for d := range w.prioClat {
			for range w.prio.levels[d] {
				w.prioClat[d] = append(w.prioClat[d], newLatStat(true))
			}
		}
	}
	w.prog.state.Store('P')
	w.initPacer()
	return w
}

// maxBlock is the buffer size every unit needs.
func (w *worker) maxBlock() int { return max(w.job.MaxBS(DirRead), w.job.MaxBS(DirWrite)) }

// setBuffers gives the units their buffers and fills them with random
// bytes (what writes carry when not verifying).
func (w *worker) setBuffers(bufs [][]byte) {
	x := uint64(0x2545f4914f6cdd1d) + uint64(w.clone)
	for i := range w.units {
		b := bufs[i]
		for k := 0; k+8 <= len(b); k += 8 {
			x ^= x << 13
			x ^= x >> 7
			x ^= x << 17
			b[k], b[k+1], b[k+2], b[k+3] = byte(x), byte(x>>8), byte(x>>16), byte(x>>24)
			b[k+4], b[k+5], b[k+6], b[k+7] = byte(x>>32), byte(x>>40), byte(x>>48), byte(x>>56)
		}
		w.units[i].buf = b
	}
}

// now reads the monotonic clock (one vDSO call).
func (w *worker) now() int64 { return int64(time.Since(w.base)) }

// start begins the run; call on the clone's thread.
func (w *worker) start() {
	w.base = time.Now()
	j := w.job
	w.phase = phaseRun
	if j.RampTime > 0 {
		w.phase = phaseRamp
		w.rampEnd = int64(j.RampTime)
		w.prog.state.Store('/')
	} else {
		w.beginMeasuring(0)
	}
	if j.Runtime > 0 {
		w.deadline = int64(j.RampTime + j.Runtime)
	}
}

func (w *worker) beginMeasuring(now int64) {
	w.phase = phaseRun
	for d := range w.stats {
		w.stats[d].reset()
	}
	w.syncLat.reset()
	for d := range w.prioClat {
		for i := range w.prioClat[d] {
			w.prioClat[d][i].reset()
		}
	}
	w.depthLevel, w.submitDist, w.completeDist = [7]uint64{}, [7]uint64{}, [7]uint64{}
	w.submitCalls, w.completeCalls = 0, 0
	w.measureStart = now
	w.lastSample = now
	w.lt.winStart = now
	w.nextSample = now + int64(sampleWindow)
	if w.logs != nil {
		w.logs.start = now
	}
	_ = unix.Getrusage(unix.RUSAGE_THREAD, &w.ru0)
	w.prog.state.Store(int32(statusChar(w.job)))
}

// tick advances the phase machine; engines call it once per batch with a
// fresh clock reading.
func (w *worker) tick(now int64) {
	if w.snapState.req != nil {
		w.snapshotDue(now)
	}
	switch w.phase {
	case phaseRamp:
		if now >= w.rampEnd {
			w.beginMeasuring(now)
		}
	case phaseRun, phaseVerify:
		if now >= w.nextSample && !w.job.DisableBW {
			w.sample(now)
		}
		if w.logs != nil {
			w.logs.tick(now)
		}

	}
	if w.deadline > 0 && now >= w.deadline && w.phase != phaseVerify {
		w.stopIssuing = true
	}
	if w.exitAll != nil && !w.stopIssuing && w.exitAll.Load() {
		// exitall: another clone's job finished; stop as at the deadline.
		w.stopIssuing = true
		if w.phase == phaseVerify {
			w.verifyNext = len(w.ver.written)
		}
	}
	if w.ss != nil && !w.stopIssuing && w.ss.stop.Load() {
		w.stopIssuing = true // steady state reached
	}
	if interrupted.Load() && !w.stopIssuing {
		// Ctrl-C: stop as at the deadline; the report is still written.
		w.stopIssuing = true
		if w.phase == phaseVerify {
			w.verifyNext = len(w.ver.written)
		}
	}
}

// sample closes a bw/iops window.
func (w *worker) sample(now int64) {
	secs := float64(now-w.lastSample) / 1e9
	for d := range w.stats {
		s := &w.stats[d]
		if s.ios == s.winIOs && !w.job.RW.writesOrReads(d) {
			continue
		}
		s.bw.add(float64(s.bytes-s.winBytes) / 1024 / secs)
		s.iops.add(float64(s.ios-s.winIOs) / secs)
		s.winIOs, s.winBytes = s.ios, s.bytes
	}
	w.lastSample = now
	w.nextSample = now + int64(sampleWindow)
}

func (r RW) writesOrReads(dir int) bool {
	if dir == DirRead {
		return r.Reads()
	}
	return r.Writes()
}

// fill puts the next I/O on unit u, issued at now. It returns false when
// nothing more is to be issued in this phase.
func (w *worker) fill(u *unit, now int64) bool {
	if w.phase == phaseVerify {
		next, off, n, ok := w.ver.nextWritten(w.verifyNext)
		w.verifyNext = next
		if !ok {
			return false
		}
		u.dir, u.off, u.n, u.verify, u.issue = DirRead, off, n, true, now
		u.prio, u.prioIdx = w.prio.def, 0
		return true
	}
	if w.job.VerifyOnly && w.phase != phaseVerify {
		// verify_only: the write workload's blocks are generated and
		// recorded (their rand_seeds drawn as the writer drew them), not
		// written; the verify phase then reads them back.
		for {
			dir, off, n, ok := w.gen.next()
			if !ok {
				w.stopIssuing = true
				return false
			}
			if dir == DirWrite {
				w.ver.stamp(u.buf[:n], off, now)
			}
		}
	}
	if w.stopIssuing {
		return w.endSync(u, now)
	}
	if vb := w.job.VerifyBacklog; vb > 0 && w.backlog.size >= vb || w.backlog.size > 0 && w.draining {
		// verify_backlog: read back what was written, then write on.
		w.draining = w.backlog.size > 1
		off, n := w.backlog.pop()
		u.dir, u.off, u.n, u.verify, u.issue = DirRead, off, n, true, now
		u.prio, u.prioIdx = w.prio.def, 0
		return true
	}
	if n := max(w.job.Fsync, w.job.Fdatasync); n > 0 && w.sinceSync >= n && (w.gen.limit == 0 || w.gen.issued < w.gen.limit) {
		w.sinceSync = 0
		// A sync unit's off is the index of the file it syncs.
		u.dir, u.off, u.n, u.verify, u.issue = DirSync, int64(w.lastFile), 0, false, now
		u.endSync = false
		return true
	}
	var dir int
	var off int64
	var n int
	var ok bool
	if w.pace.on {
		w.pace.gated = false
		dir, off, n, ok = w.nextPaced(now)
		if !ok && (w.pace.gated || w.pace.thinking) {
			return false
		}
	} else {
		dir, off, n, ok = w.gen.next()
	}
	if !ok {
		w.stopIssuing = true
		return w.endSync(u, now)
	}
	if dir == DirWrite {
		w.sinceSync++
		if w.files.n > 1 {
			w.lastFile, _ = w.files.locate(off)
		}
	}
	u.dir, u.off, u.n, u.verify, u.issue = uint8(dir), off, n, false, now
	u.prio, u.prioIdx = w.prio.pick(dir, n)
	if dir == DirWrite && w.payload != nil {
		w.payload.fill(u.buf[:n])
	} else if dir == DirWrite && w.ver == nil && w.job.ScrambleBuffers {
		w.scrambles++
		scramble(u.buf[:n], off, w.scrambles)
	}
	if dir == DirWrite && w.ver != nil {
		w.ver.stamp(u.buf[:n], off, now)
	}
	return true
}

// endSync puts end_fsync's sync on u once the job's writes are done and
// nothing else is in flight (u is the only unit taken); false otherwise.
func (w *worker) endSync(u *unit, now int64) bool {
	if !w.job.EndFsync || w.endSynced || !w.job.RW.Writes() || w.phase == phaseVerify || w.busy > 1 {
		return false
	}
	// Every file once, one after another.
	u.dir, u.off, u.n, u.verify, u.issue = DirSync, int64(w.endSyncFile), 0, false, now
	u.endSync = true
	w.endSyncFile++
	w.endSynced = w.endSyncFile >= max(int(w.files.n), 1)
	return true
}

// canTake reports whether take would return a unit.
func (w *worker) canTake() bool { return len(w.free) > 0 && w.busy < w.lt.qd }

// take pops a free unit, or nil.
func (w *worker) take() *unit {
	if !w.canTake() {
		return nil
	}
	k := len(w.free)
	u := &w.units[w.free[k-1]]
	w.free = w.free[:k-1]
	w.busy++
	return u
}

// untake returns a unit that fill did not use.
func (w *worker) untake(u *unit) {
	w.free = append(w.free, u.idx)
	w.busy--
}

// submitted records a batch of count units (the last count taken) handed
// to the kernel or block layer at t.
func (w *worker) submitted(batch []*unit, t int64) {
	if len(batch) == 0 {
		return
	}
	measuring := w.phase == phaseRun
	for _, u := range batch {
		u.submit = t
		if measuring && !u.verify && !w.noSlat && !w.job.DisableSlat && u.dir != DirSync {
			w.stats[u.dir].slat.record(t - u.issue)
			if w.logs != nil {
				w.logs.slat(t, int(u.dir), u.n, u.off, t-u.issue, u.prio)
			}
		}
	}
	if measuring {
		w.submitCalls++
		w.submitDist[batchBucket(len(batch))]++
		// fio's IO depths: a batch counts at the depth it brings the
		// clone to (fio marks each commit at its cur_depth; a refill of
		// one completion goes out at the full depth, the first fill's
		// batches at 1, 2, ... as fio's).
		w.depthLevel[levelBucket(w.busy)] += uint64(len(batch))
		if w.pendingDone > 0 {
			w.completeCalls++
			w.completeDist[batchBucket(w.pendingDone)]++
		}
	}
	w.pendingDone = 0
	w.doneSinceFill = 0
}

// reapMin is how many completions the clone waits for before issuing
// again: iodepth_batch_complete_min, or all in flight if fewer.
func (w *worker) reapMin() int {
	return max(1, min(w.job.IODepthBatchCompleteMin, w.busy))
}

// refillDue reports whether enough completed since the last submission to
// issue again (the event-driven engine's iodepth_batch_complete_min).
func (w *worker) refillDue() bool {
	return w.busy == 0 || w.doneSinceFill >= w.job.IODepthBatchCompleteMin
}

// completed accounts unit u finished at now with err (nil, or the I/O
// error) and frees it.
func (w *worker) completed(u *unit, now int64, err error) {
	w.free = append(w.free, u.idx)
	w.busy--
	w.pendingDone++
	w.doneSinceFill++
	if w.pace.thinking {
		w.thinkDone(now)
	}
	if u.dir == DirSync {
		if err != nil {
			if w.err == nil {
				w.err = &ioError{file: w.job.Filename, dir: "sync", err: err}
			}
			w.stopIssuing = true
		} else if w.phase == phaseRun && !u.endSync {
			w.syncLat.record(now - u.issue)
		}
		return
	}
	if err != nil {
		if w.job.FillDevice && u.dir == DirWrite && errors.Is(err, syscall.ENOSPC) {
			// fill_device: a full device ends the writing, not the job;
			// the block is not verified (it was not written).
			w.stopIssuing = true
			if w.ver != nil {
				w.ver.unwritten(u.off)
			}
			return
		}
		if w.err == nil {
			w.err = &ioError{file: w.job.Filename, dir: dirName(int(u.dir)), off: u.off, n: u.n, err: err}
		}
		w.stopIssuing = true
		return
	}
	buf := u.buf[:u.n]
	if u.verify {
		if !w.ver.check(buf, u.off) {
			w.verifyFailed(buf, u.off)
		}
		if w.phase != phaseVerify {
			w.ver.verified(u.off, u.n) // a backlog read: not again at the end
		}
		// fio counts the reads of its verify phase as the job's reads.
		w.prog.ios[DirRead].Add(1)
		w.prog.bytes[DirRead].Add(uint64(u.n))
		w.account(&w.stats[DirRead], u, now)
		return
	}
	if u.dir == DirRead && w.ver != nil {
		if !w.ver.check(buf, u.off) {
			w.verifyFailed(buf, u.off)
		}
	}
	if u.dir == DirWrite && w.job.VerifyBacklog > 0 {
		w.backlog.push(u.off, u.n)
	}
	w.prog.ios[u.dir].Add(1)
	w.prog.bytes[u.dir].Add(uint64(u.n))
	if w.phase != phaseRun {
		return
	}
	w.account(&w.stats[u.dir], u, now)
	if w.job.LatencyTarget > 0 {
		w.latTargetCheck(u.issue, now)
	}
	if w.pace.minOn {
		w.checkRateMin(now)
	}
}

// account adds a measured I/O to its direction's statistics and logs.
func (w *worker) account(s *dirStats, u *unit, now int64) {
	s.ios++
	s.bytes += uint64(u.n)
	if !w.job.DisableClat {
		s.clat.record(now - u.submit)
		if p := w.prioClat[u.dir]; p != nil && !u.verify {
			p[u.prioIdx].record(now - u.submit)
		}
	}
	if !w.job.DisableLat {
		s.lat.record(now - u.issue)
	}
	if w.logs != nil {
		clat, lat := now-u.submit, now-u.issue
		if w.job.DisableClat {
			clat = -1
		}
		if w.job.DisableLat {
			lat = -1
		}
		w.logs.io(now, int(u.dir), u.n, u.off, clat, lat, u.prio)
	}
}

// interrupted is set by SIGINT/SIGTERM during a run (Main): every clone
// stops issuing, finishes what is in flight, and the report is written
// with what was measured, as fio does on Ctrl-C.
var interrupted atomic.Bool

// errVerify is the job error of a verify failure (fio reports EILSEQ,
// err=84).
var errVerify = errors.New("verify failed")

// verifyFailed makes the first mismatch the job's error, as fio does
// (err=84, a non-zero exit). With verify_fatal the job stops there;
// without, it goes on checking and counting the rest.
func (w *worker) verifyFailed(buf []byte, off int64) {
	if w.job.VerifyDump && w.dumps < maxMismatches {
		// verify_dump: the block as read, beside the file (fio's
		// FILE.OFFSET.received); a dump that cannot be written is noted
		// in the mismatch list, the verdict stands.
		w.dumps++
		name := fmt.Sprintf("%s.%d.received", w.job.Filename, off)
		if err := os.WriteFile(name, buf, 0o644); err != nil && len(w.ver.first) > 0 {
			w.ver.first[len(w.ver.first)-1].Reason += fmt.Sprintf(" (dump: %v)", err)
		}
	}
	if w.err == nil {
		w.err = fmt.Errorf("%w: %s", errVerify, w.ver.first[len(w.ver.first)-1])
	}
	if !w.job.VerifyFatal {
		return
	}
	w.stopIssuing = true
	w.verifyNext = len(w.ver.written)
}

// idle is called when nothing is in flight and fill returned false: it
// ends the run phase (moving to verify if asked) and reports whether the
// clone is finished.
func (w *worker) idle(now int64) bool {
	switch w.phase {
	case phaseRamp, phaseRun:
		if w.phase == phaseRamp { // the run ended inside the ramp
			w.beginMeasuring(now)
		}
		if w.pendingDone > 0 {
			// The final drain's completions are one reap, as fio's.
			w.completeCalls++
			w.completeDist[batchBucket(w.pendingDone)]++
			w.pendingDone = 0
		}
		w.measureEnd = now
		if w.logs != nil {
			w.logs.finish(now)
		}
		_ = unix.Getrusage(unix.RUSAGE_THREAD, &w.ru1)
		if w.ver != nil && w.ver.written != nil && w.err == nil {
			w.phase = phaseVerify
			w.verifyStart = now
			w.prog.state.Store('V')
			return false
		}
	case phaseVerify:
		w.verifyEnd = now
		w.measureEnd = now // the verify reads are the job's reads
		_ = unix.Getrusage(unix.RUSAGE_THREAD, &w.ru1)
	}
	w.phase = phaseDone
	if w.flow != nil {
		w.flow.finished.Store(true)
	}
	w.prog.state.Store('_')
	return true
}

func dirName(d int) string {
	if d == DirRead {
		return "read"
	}
	return "write"
}

// statusChar is the job's letter in fio's status line.
func statusChar(j *Job) byte {
	switch j.RW {
	case RWRead:
		return 'R'
	case RWRandRead:
		return 'r'
	case RWWrite:
		return 'W'
	case RWRandWrite:
		return 'w'
	case RWMixed:
		return 'M'
	}
	return 'm'
}

// errnoOf extracts the errno fio would print for a job error.
func errnoOf(err error) int {
	if err == nil {
		return 0
	}
	if errors.Is(err, errVerify) {
		return int(syscall.EILSEQ)
	}
	var e syscall.Errno
	if errors.As(err, &e) {
		return int(e)
	}
	return int(syscall.EIO)
}

// errnoText is strerror as glibc words it (capitalised), for err= lines.
func errnoText(errno int) string {
	s := syscall.Errno(errno).Error()
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

// ioError is a job's failed I/O, in fio's words: "io_u error on file F:
// No space left on device: write offset=N, buflen=N". The cause (with
// the block layer's context) stays reachable for errors.Is/As.
type ioError struct {
	file, dir string
	off       int64
	n         int
	err       error
}

func (e *ioError) Error() string {
	cause := e.err.Error()
	var errno syscall.Errno
	if errors.As(e.err, &errno) {
		cause = errnoText(int(errno))
	}
	file := e.file
	if file == "" {
		file = "(null image)"
	}
	return fmt.Sprintf("io_u error on file %s: %s: %s offset=%d, buflen=%d", file, cause, e.dir, e.off, e.n)
}

func (e *ioError) Unwrap() error { return e.err }
