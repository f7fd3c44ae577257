package job_test

import (
	"errors"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
	"github.com/ringblk/ringblk/job"
)

// countJob reads one chunk of its node per iteration, stays busy for
// Busy after the read (so a drain has to wait for it), and is done after
// N iterations — or, with Forever, becomes ready after N and runs until
// completed.
type countJob struct {
	edge    *block.Child
	buf     []byte
	N       int
	Forever bool
	Busy    time.Duration
	// FailAt makes iterations fail with an IOError while fails > 0.
	FailErr    error
	FailTarget bool
	fails      atomic.Int32

	iters       atomic.Int64
	inIter      atomic.Bool
	complete    atomic.Bool
	prepareErr  error
	prepared    atomic.Bool
	committed   atomic.Bool
	aborted     atomic.Bool
	cleaned     atomic.Bool
	wrongCtx    atomic.Int64
	prepareMain atomic.Bool
}

func (c *countJob) Type() string { return "count" }

func (c *countJob) Iterate(it *job.Iteration) (bool, error) {
	j := it.Job
	if !j.Context().InContext() {
		c.wrongCtx.Add(1)
	}
	c.inIter.Store(true)
	defer c.inIter.Store(false)
	n := c.iters.Add(1)
	if err := it.Read(c.edge, c.buf, 0); err != nil {
		return false, &job.IOError{Op: "read", Err: err}
	}
	if c.Busy > 0 {
		it.Co.Sleep(c.Busy)
	}
	if c.fails.Load() > 0 {
		c.fails.Add(-1)
		return false, &job.IOError{Target: c.FailTarget, Op: "write", Off: 0, Err: c.FailErr}
	}
	j.AddProgress(int64(len(c.buf)))
	if int(n) >= c.N {
		if !c.Forever || c.complete.Load() {
			return true, nil
		}
		j.SetReady()
		it.SleepNext(time.Millisecond)
	}
	return false, nil
}

func (c *countJob) Complete(*job.Job) error { c.complete.Store(true); return nil }
func (c *countJob) Prepare(j *job.Job) error {
	c.prepared.Store(true)
	c.prepareMain.Store(j.Graph().Main().InContext())
	return c.prepareErr
}
func (c *countJob) Commit(*job.Job) { c.committed.Store(true) }
func (c *countJob) Abort(*job.Job)  { c.aborted.Store(true) }
func (c *countJob) Clean(*job.Job)  { c.cleaned.Store(true) }

type recorder struct {
	mu  sync.Mutex
	evs []job.Event
}

func (r *recorder) add(e job.Event) { r.mu.Lock(); r.evs = append(r.evs, e); r.mu.Unlock() }
func (r *recorder) statuses(id string) []job.Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []job.Status
	for _, e := range r.evs {
		if e.Type == job.EventStatusChange && e.ID == id {
			out = append(out, e.Status)
		}
	}
	return out
}
func (r *recorder) count(t job.EventType) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, e := range r.evs {
		if e.Type == t {
			n++
		}
	}
	return n
}
func (r *recorder) last(t job.EventType) (job.Event, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := len(r.evs) - 1; i >= 0; i-- {
		if r.evs[i].Type == t {
			return r.evs[i], true
		}
	}
	return job.Event{}, false
}

type fixture struct {
	e   *blocktest.Env
	m   *job.Manager
	rec *recorder
	n   *block.Node
}

func newFixture(t *testing.T, iothreads int) *fixture {
	e := blocktest.NewEnv(t, iothreads)
	rec := &recorder{}
	f := &fixture{e: e, m: job.NewManager(e.G, rec.add), rec: rec}
	f.n = e.Open(blocktest.NewMem(64<<10), block.Options{Name: "n"})
	t.Cleanup(func() {
		if f.n != nil {
			f.n.Unref()
		}
	})
	return f
}

func (f *fixture) newJob(t *testing.T, id string, c *countJob, o job.Options) *job.Job {
	t.Helper()
	o.ID = id
	j, err := f.m.New(o, c)
	if err != nil {
		t.Fatal(err)
	}
	if c.buf == nil {
		c.buf = make([]byte, 4096)
	}
	if c.edge, err = j.AddNode(f.n, "node"); err != nil {
		t.Fatal(err)
	}
	return j
}

func waitDone(t *testing.T, j *job.Job) error {
	t.Helper()
	select {
	case <-j.Done():
		return j.Result()
	case <-time.After(30 * time.Second):
		t.Fatalf("job %s did not conclude: %+v pauses %d parked %v on %s", j.ID(), j.Info(), j.PauseCount(), j.Parked(), j.Context().Name())
		return nil
	}
}

func TestTransitionTable(t *testing.T) {
	legal := [][2]job.Status{
		{job.Undefined, job.Created}, {job.Created, job.Running}, {job.Created, job.Aborting},
		{job.Created, job.Null}, {job.Running, job.Paused}, {job.Running, job.Ready},
		{job.Running, job.Waiting}, {job.Running, job.Aborting}, {job.Paused, job.Running},
		{job.Ready, job.Standby}, {job.Ready, job.Waiting}, {job.Ready, job.Aborting},
		{job.Ready, job.Running}, {job.Standby, job.Ready}, {job.Waiting, job.Pending},
		{job.Waiting, job.Aborting}, {job.Pending, job.Concluded}, {job.Pending, job.Aborting},
		{job.Aborting, job.Concluded}, {job.Concluded, job.Null},
	}
	n := 0
	for from := job.Undefined; from <= job.Null; from++ {
		for to := job.Undefined; to <= job.Null; to++ {
			want := slices.Contains(legal, [2]job.Status{from, to}) || from == job.Aborting && to == job.Aborting
			if job.CanTransition(from, to) != want {
				t.Errorf("%s → %s: legal %v, want %v", from, to, !want, want)
			}
			if want {
				n++
			}
		}
	}
	if n != len(legal)+1 {
		t.Fatalf("%d legal transitions, want %d", n, len(legal)+1)
	}
	if job.Allowed(job.VerbComplete, job.Running) || !job.Allowed(job.VerbComplete, job.Ready) ||
		!job.Allowed(job.VerbComplete, job.Standby) || job.Allowed(job.VerbFinalize, job.Concluded) ||
		!job.Allowed(job.VerbDismiss, job.Concluded) || job.Allowed(job.VerbCancel, job.Concluded) ||
		!job.Allowed(job.VerbCancel, job.Pending) || job.Allowed(job.VerbPause, job.Waiting) {
		t.Fatal("verb table wrong")
	}
}

func TestLifecycleAuto(t *testing.T) {
	f := newFixture(t, 1)
	c := &countJob{N: 5}
	j := f.newJob(t, "j1", c, job.Options{})
	if j.Status() != job.Created || j.Busy() {
		t.Fatalf("new job: %s busy %v", j.Status(), j.Busy())
	}
	if err := j.Complete(); err == nil {
		t.Fatal("complete of a created job allowed")
	}
	if err := j.Start(); err != nil {
		t.Fatal(err)
	}
	if err := waitDone(t, j); err != nil {
		t.Fatal(err)
	}
	want := []job.Status{job.Created, job.Running, job.Waiting, job.Pending, job.Concluded, job.Null}
	if got := f.rec.statuses("j1"); !slices.Equal(got, want) {
		t.Fatalf("statuses %v, want %v", got, want)
	}
	if !c.prepared.Load() || !c.committed.Load() || c.aborted.Load() || !c.cleaned.Load() || !c.prepareMain.Load() {
		t.Fatal("completion callbacks wrong")
	}
	if f.m.Get("j1") != nil || len(f.n.Parents()) != 0 {
		t.Fatal("auto-dismissed job still registered or holds edges")
	}
	if ev, ok := f.rec.last(job.EventCompleted); !ok || ev.Error != "" || ev.Offset != 5*4096 {
		t.Fatalf("completed event %+v %v", ev, ok)
	}
}

func TestManualFinalizeDismissAndReady(t *testing.T) {
	f := newFixture(t, 0)
	c := &countJob{N: 3, Forever: true}
	j := f.newJob(t, "m", c, job.Options{ManualFinalize: true, ManualDismiss: true})
	j.Start()
	// The status changes under the job's lock and the event is delivered
	// right after it is released: wait for the event, then look.
	f.e.WaitFor("BLOCK_JOB_READY", func() bool { return f.rec.count(job.EventReady) == 1 })
	if st := j.Status(); st != job.Ready {
		t.Fatalf("status %s after BLOCK_JOB_READY", st)
	}
	if err := j.Finalize(); err == nil {
		t.Fatal("finalize of a ready job allowed")
	}
	if err := j.Complete(); err != nil {
		t.Fatal(err)
	}
	f.e.WaitFor("pending", func() bool { return j.Status() == job.Pending })
	if c.prepared.Load() {
		t.Fatal("prepared before finalize")
	}
	if err := j.Finalize(); err != nil {
		t.Fatal(err)
	}
	if err := waitDone(t, j); err != nil {
		t.Fatal(err)
	}
	if j.Status() != job.Concluded || f.m.Get("m") != j {
		t.Fatalf("after finalize: %s", j.Status())
	}
	if err := j.Dismiss(); err != nil {
		t.Fatal(err)
	}
	if j.Status() != job.Null || f.m.Len() != 0 {
		t.Fatal("dismiss did not remove the job")
	}
	if err := j.Dismiss(); err == nil {
		t.Fatal("second dismiss allowed")
	}
}

func TestUserPauseResumeCancel(t *testing.T) {
	f := newFixture(t, 1)
	c := &countJob{N: 1 << 30}
	j := f.newJob(t, "p", c, job.Options{})
	j.Start()
	f.e.WaitFor("running", func() bool { return c.iters.Load() > 2 })
	if err := j.Pause(); err != nil {
		t.Fatal(err)
	}
	f.e.WaitFor("paused", func() bool { return j.Status() == job.Paused && j.Parked() })
	n := c.iters.Load()
	time.Sleep(10 * time.Millisecond)
	if c.iters.Load() != n || j.Busy() {
		t.Fatal("paused job kept iterating")
	}
	if in := j.Info(); !in.Paused {
		t.Fatalf("info %+v", in)
	}
	if err := j.Resume(); err != nil {
		t.Fatal(err)
	}
	f.e.WaitFor("resumed", func() bool { return c.iters.Load() > n+2 })
	j.Pause()
	f.e.WaitFor("paused again", func() bool { return j.Parked() })
	if err := j.Cancel(false); err != nil {
		t.Fatal(err)
	}
	if err := waitDone(t, j); !errors.Is(err, job.ErrCancelled) {
		t.Fatalf("cancel result %v", err)
	}
	if !c.aborted.Load() || c.committed.Load() || f.rec.count(job.EventCancelled) != 1 {
		t.Fatal("cancel did not abort")
	}
}

func TestCancelCreated(t *testing.T) {
	f := newFixture(t, 0)
	j := f.newJob(t, "c", &countJob{N: 1}, job.Options{})
	if err := j.Cancel(true); err != nil {
		t.Fatal(err)
	}
	if err := waitDone(t, j); !errors.Is(err, job.ErrCancelled) {
		t.Fatal(err)
	}
	want := []job.Status{job.Created, job.Aborting, job.Concluded, job.Null}
	if got := f.rec.statuses("c"); !slices.Equal(got, want) {
		t.Fatalf("%v want %v", got, want)
	}
}

func TestPrepareFails(t *testing.T) {
	f := newFixture(t, 0)
	c := &countJob{N: 2, prepareErr: syscall.EIO}
	j := f.newJob(t, "pf", c, job.Options{})
	j.Start()
	if err := waitDone(t, j); !errors.Is(err, syscall.EIO) {
		t.Fatal(err)
	}
	if !c.aborted.Load() || c.committed.Load() {
		t.Fatal("prepare failure must abort")
	}
	if ev, _ := f.rec.last(job.EventCompleted); ev.Error == "" {
		t.Fatal("completed event without the error")
	}
}

func TestErrorPolicies(t *testing.T) {
	for _, tc := range []struct {
		name   string
		o      job.Options
		target bool
		err    error
		want   job.Action
	}{
		{"report", job.Options{}, false, syscall.EIO, job.ActionReport},
		{"ignore", job.Options{OnSourceError: job.PolicyIgnore}, false, syscall.EIO, job.ActionIgnore},
		{"stop", job.Options{OnTargetError: job.PolicyStop}, true, syscall.EIO, job.ActionStop},
		{"enospc-stop", job.Options{OnTargetError: job.PolicyEnospc}, true, syscall.ENOSPC, job.ActionStop},
		{"enospc-report", job.Options{OnTargetError: job.PolicyEnospc}, true, syscall.EIO, job.ActionReport},
		{"target-policy-not-source", job.Options{OnTargetError: job.PolicyIgnore}, false, syscall.EIO, job.ActionReport},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, 1)
			c := &countJob{N: 6, FailErr: tc.err, FailTarget: tc.target}
			c.fails.Store(2)
			j := f.newJob(t, "e", c, tc.o)
			j.Start()
			if tc.want == job.ActionStop {
				// Each failure stops the job: resume it once it is parked
				// with that failure recorded. (Waiting on the driver's
				// count of failures let the last Resume run before the
				// job stopped, and the job then stayed paused.)
				for k := 1; k <= 2; k++ {
					f.e.WaitFor("stopped after failure "+strconv.Itoa(k), func() bool {
						return len(j.Errors()) == k && j.Status() == job.Paused && j.Parked()
					})
					if in := j.Info(); in.IOStatus != "failed" {
						t.Fatalf("iostatus %q after failure %d", in.IOStatus, k)
					}
					if err := j.Resume(); err != nil {
						t.Fatalf("resume after failure %d: %v", k, err)
					}
				}
			}
			err := waitDone(t, j)
			errs := j.Errors()
			switch tc.want {
			case job.ActionReport:
				if !errors.Is(err, tc.err) || len(errs) != 1 {
					t.Fatalf("report: result %v, %d errors", err, len(errs))
				}
			default:
				if err != nil || len(errs) != 2 {
					t.Fatalf("%s: result %v, %d errors", tc.want, err, len(errs))
				}
			}
			if errs[0].Action != tc.want || !errors.Is(errs[0].Err, tc.err) {
				t.Fatalf("error record %+v", errs[0])
			}
			if ev, ok := f.rec.last(job.EventError); !ok || ev.Action != tc.want || ev.Operation != "write" {
				t.Fatalf("error event %+v", ev)
			}
		})
	}
}

// TestDrainPausesJob: [JOB] a drained section of the job's node parks the
// job at its pause point before DrainedBegin returns — the iteration in
// progress (busy, with a request in flight) is waited for; drained end
// resumes it. The job runs on an IOThread while main drains.
func TestDrainPausesJob(t *testing.T) {
	for _, k := range []string{"node", "all"} {
		t.Run(k, func(t *testing.T) {
			f := newFixture(t, 1)
			if err := f.n.SetContext(f.e.IO[0]); err != nil {
				t.Fatal(err)
			}
			c := &countJob{N: 1 << 30, Busy: 2 * time.Millisecond}
			j := f.newJob(t, "d", c, job.Options{})
			if j.Context() != f.e.IO[0] {
				t.Fatal("job not on its node's Context")
			}
			j.Start()
			for round := 0; round < 20; round++ {
				f.e.WaitFor("iterating", func() bool { return c.inIter.Load() })
				var inIter, parked bool
				var inFlight int64
				var st job.Status
				f.e.OnMain(func() {
					if k == "node" {
						f.n.DrainedBegin()
					} else {
						f.e.G.DrainAllBegin()
					}
					inIter, parked, inFlight, st = c.inIter.Load(), j.Parked(), f.n.InFlight(), j.Status()
				})
				if inIter || !parked || inFlight != 0 || st != job.Paused || j.PauseCount() != 1 {
					t.Fatalf("round %d: drained with job in iteration %v, parked %v, in flight %d, status %s, pauses %d",
						round, inIter, parked, inFlight, st, j.PauseCount())
				}
				n := c.iters.Load()
				time.Sleep(time.Millisecond)
				if c.iters.Load() != n {
					t.Fatal("job iterated inside the drained section")
				}
				f.e.OnMain(func() {
					if k == "node" {
						f.n.DrainedEnd()
					} else {
						f.e.G.DrainAllEnd()
					}
				})
				f.e.WaitFor("resumed", func() bool { return c.iters.Load() > n })
			}
			j.Cancel(true)
			waitDone(t, j)
			if c.wrongCtx.Load() != 0 {
				t.Fatal("iterations on the wrong Context")
			}
		})
	}
}

// TestSpeedLimit: 1 MiB at 4 MiB/s takes about 250 ms, without a goroutine
// per wait (timers on the job's Context).
func TestSpeedLimit(t *testing.T) {
	f := newFixture(t, 1)
	c := &countJob{N: 16, buf: make([]byte, 64<<10)}
	j := f.newJob(t, "s", c, job.Options{Speed: 4 << 20})
	g0 := runtime.NumGoroutine()
	start := time.Now()
	j.Start()
	maxG := 0
	for j.Status() != job.Null {
		maxG = max(maxG, runtime.NumGoroutine())
		time.Sleep(time.Millisecond)
	}
	el := time.Since(start)
	if el < 130*time.Millisecond || el > 3*time.Second {
		t.Fatalf("1 MiB at 4 MiB/s took %v", el)
	}
	if maxG > g0+4 {
		t.Fatalf("goroutines grew from %d to %d while rate limited", g0, maxG)
	}
	// Raising the speed of a slow job ends its wait at once.
	c2 := &countJob{N: 4, buf: make([]byte, 64<<10)}
	j2 := f.newJob(t, "s2", c2, job.Options{Speed: 1})
	j2.Start()
	f.e.WaitFor("first iteration", func() bool { return c2.iters.Load() >= 1 })
	if err := j2.SetSpeed(0); err != nil {
		t.Fatal(err)
	}
	if err := waitDone(t, j2); err != nil {
		t.Fatal(err)
	}
}

func TestDuplicateID(t *testing.T) {
	f := newFixture(t, 0)
	f.newJob(t, "x", &countJob{N: 1}, job.Options{})
	if _, err := f.m.New(job.Options{ID: "x"}, &countJob{}); err == nil {
		t.Fatal("duplicate ID accepted")
	}
	if _, err := f.m.New(job.Options{}, &countJob{}); err == nil {
		t.Fatal("empty ID accepted")
	}
	f.m.Get("x").Discard()
}

// TestBadOptions: options that are out of range fail with an error naming
// them, before anything is allocated or attached (no huge buffers from a
// huge request size).
func TestBadOptions(t *testing.T) {
	e := blocktest.NewEnv(t, 0)
	m := job.NewManager(e.G, nil)
	a := e.Open(blocktest.NewMem(1<<20), block.Options{Name: "a"})
	b := e.Open(blocktest.NewMem(1<<20), block.Options{Name: "b"})
	small := e.Open(blocktest.NewMem(1<<19), block.Options{Name: "small"})
	for name, err := range map[string]error{
		"mirror granularity": func() error {
			_, _, err := job.NewMirror(m, job.MirrorOptions{Options: job.Options{ID: "x"}, Source: a, Target: b, Granularity: 3000})
			return err
		}(),
		"mirror request": func() error {
			_, _, err := job.NewMirror(m, job.MirrorOptions{Options: job.Options{ID: "x"}, Source: a, Target: b, MaxRequest: 1 << 40})
			return err
		}(),
		"mirror parallel": func() error {
			_, _, err := job.NewMirror(m, job.MirrorOptions{Options: job.Options{ID: "x"}, Source: a, Target: b, Parallel: 1 << 20})
			return err
		}(),
		"mirror sizes": func() error {
			_, _, err := job.NewMirror(m, job.MirrorOptions{Options: job.Options{ID: "x"}, Source: a, Target: small})
			return err
		}(),
		"backup cluster": func() error {
			_, _, err := job.NewBackup(m, job.BackupOptions{Options: job.Options{ID: "x"}, Source: a, Target: b, ClusterSize: 1 << 30})
			return err
		}(),
		"backup bitmap missing": func() error {
			_, _, err := job.NewBackup(m, job.BackupOptions{Options: job.Options{ID: "x"}, Source: a, Target: b, Sync: job.BackupIncremental})
			return err
		}(),
		"backup no such bitmap": func() error {
			_, _, err := job.NewBackup(m, job.BackupOptions{Options: job.Options{ID: "x"}, Source: a, Target: b, Sync: job.BackupIncremental, Bitmap: "nope"})
			return err
		}(),
		"stream without backing": func() error {
			_, _, err := job.NewStream(m, job.StreamOptions{Options: job.Options{ID: "x"}, Top: a})
			return err
		}(),
		"commit base not below": func() error {
			_, _, err := job.NewCommit(m, job.CommitOptions{Options: job.Options{ID: "x"}, Top: a, Base: b})
			return err
		}(),
		"negative speed": func() error {
			_, err := m.New(job.Options{ID: "x", Speed: -1}, &countJob{})
			return err
		}(),
	} {
		if err == nil {
			t.Errorf("%s: accepted", name)
		} else if testing.Verbose() {
			t.Logf("%s: %v", name, err)
		}
	}
	if m.Len() != 0 || len(a.Parents()) != 0 || len(b.Parents()) != 0 || len(a.Bitmaps()) != 0 {
		t.Fatalf("a refused job left something behind: %d jobs, parents %v %v", m.Len(), a.Parents(), b.Parents())
	}
	a.Unref()
	b.Unref()
	small.Unref()
}

// TestAfterEndRunsOnceAtEveryEnd: Options.AfterEnd (where commit and
// stream put their node back to read-only) runs exactly once, on the main
// Context, after the job's edges are gone and before its completion or
// cancel event, whether the job completed, failed, was cancelled or was
// discarded before it started; an error it returns becomes the error of a
// job that had none (its write-back failed), and never hides the job's
// own error.
func TestAfterEndRunsOnceAtEveryEnd(t *testing.T) {
	for _, tc := range []struct {
		name    string
		end     func(t *testing.T, j *job.Job, c *countJob)
		hookErr error
		wantErr error
	}{
		{"completed", func(t *testing.T, j *job.Job, c *countJob) { j.Start() }, nil, nil},
		{"completed, hook fails", func(t *testing.T, j *job.Job, c *countJob) { j.Start() }, syscall.ENOSPC, syscall.ENOSPC},
		{"prepare fails", func(t *testing.T, j *job.Job, c *countJob) { c.prepareErr = syscall.EIO; j.Start() }, syscall.ENOSPC, syscall.EIO},
		{"cancelled", func(t *testing.T, j *job.Job, c *countJob) {
			c.N = 1 << 30
			j.Start()
			if err := j.Cancel(true); err != nil {
				t.Fatal(err)
			}
		}, nil, job.ErrCancelled},
		{"discarded", func(t *testing.T, j *job.Job, c *countJob) {
			if err := j.Discard(); err != nil {
				t.Fatal(err)
			}
		}, nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, 1)
			c := &countJob{N: 2}
			var calls, eventsBefore, edgesLeft int
			var onMain bool
			j := f.newJob(t, "a", c, job.Options{AfterEnd: func() error {
				calls++
				onMain = f.e.G.Main().InContext()
				eventsBefore = f.rec.count(job.EventCompleted) + f.rec.count(job.EventCancelled)
				f.e.G.Control(func() { edgesLeft = len(f.n.Parents()) })
				return tc.hookErr
			}})
			tc.end(t, j, c)
			if tc.name != "discarded" { // Discard returns after the hook
				if err := waitDone(t, j); !errors.Is(err, tc.wantErr) || (tc.wantErr == nil && err != nil) {
					t.Fatalf("job result %v, want %v", err, tc.wantErr)
				}
			}
			if calls != 1 || !onMain || eventsBefore != 0 || edgesLeft != 0 {
				t.Fatalf("AfterEnd: %d calls, on main %v, %d end events before it, %d edges left on the node; want 1, true, 0, 0", calls, onMain, eventsBefore, edgesLeft)
			}
		})
	}
}
