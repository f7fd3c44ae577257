package blocktest

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/internal/invariants"
)

// Job is a minimal block job for the drain tests that need one (the real
// jobs package plugs into block the same way: through a ChildClass of kind
// JobParent on each of its edges). Its run loop, on the job's Context,
// counts an iteration, "works" for Sleep (or runs Work, see Mirror) while
// busy, and reaches a pause point; at the pause point it parks (paused, not busy) while any of its
// edges is quiesced. When asked to complete it leaves the loop, and its
// exit runs on the main Context: Prepare (if the run succeeded), then
// Commit or Abort, then the edges are dropped. Cancel leaves the loop too
// (without pausing first) and runs Abort only.
//
//	drained begin on an edge's child → PauseCount++ (the loop parks at its
//	                                   next pause point; drain waits for
//	                                   that: DrainedPoll = busy)
//	drained end                      → PauseCount--; at 0 the loop resumes
type Job struct {
	g   *block.Graph
	ctx atomic.Pointer[aio.Context]

	Sleep   time.Duration // per iteration (default 1ms)
	RunErr  error         // what the run loop returns
	Prepare func() error  // main Context; may do synchronous I/O
	Commit  func()
	Abort   func()
	// Work, if set, replaces Sleep as an iteration's "I/O": it runs on the
	// job's Context and must call next exactly once, on that same Context,
	// when the iteration's requests have completed. The job stays busy in
	// between, so a drain (and a Context move) waits for it.
	Work       func(ctx *aio.Context, next func())
	Iterations atomic.Int64
	// Pauses counts how often the loop parked at a pause point.
	Pauses atomic.Int64
	// WrongContext counts iterations that did not run on the job's
	// current Context.
	WrongContext atomic.Int64

	mu struct {
		sync.Mutex
		pauseCount int
		paused     bool
	}
	busy           atomic.Bool
	running        atomic.Bool
	completed      atomic.Bool
	shouldComplete atomic.Bool
	cancelled      atomic.Bool
	edges          []*block.Child
	result         chan error
	next           func() // j.reenter, bound once
}

// NewJob returns a job on ctx (not started).
func NewJob(g *block.Graph, ctx *aio.Context) *Job {
	j := &Job{g: g, Sleep: time.Millisecond, result: make(chan error, 1)}
	j.ctx.Store(ctx)
	j.next = j.reenter
	return j
}

// ErrCancelled is the result of a cancelled job.
var ErrCancelled = errors.New("blocktest: job cancelled")

// AddNode gives the job an edge to n (it takes a reference).
func (j *Job) AddNode(n *block.Node, name string) (*block.Child, error) {
	c, err := j.g.Attach(nil, n, block.ChildSpec{Name: name, Class: jobClass{}, Owner: j})
	if err == nil {
		j.g.Control(func() { j.edges = append(j.edges, c) })
	}
	return c, err
}

// Start runs the loop.
func (j *Job) Start() {
	j.busy.Store(true)
	j.running.Store(true)
	j.ctx.Load().Schedule(j.step)
}

// Context returns the job's Context.
func (j *Job) Context() *aio.Context { return j.ctx.Load() }

// PauseCount, Paused, Busy, Completed report the job's state.
func (j *Job) PauseCount() int {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.mu.pauseCount
}

func (j *Job) Paused() bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.mu.paused
}

func (j *Job) Busy() bool      { return j.busy.Load() }
func (j *Job) Running() bool   { return j.running.Load() }
func (j *Job) Completed() bool { return j.completed.Load() }

// step is one iteration of the run loop, on the job's Context.
func (j *Job) step() {
	ctx := j.ctx.Load()
	if !ctx.InContext() {
		j.WrongContext.Add(1)
	}
	j.mu.Lock()
	if j.mu.pauseCount > 0 && !j.cancelled.Load() {
		// Pause point: park until the last resume re-enters the loop
		// (a cancelled job does not pause, drain.md §1.12).
		j.mu.paused = true
		j.busy.Store(false)
		j.Pauses.Add(1)
		j.mu.Unlock()
		j.g.Main().Kick()
		return
	}
	j.mu.Unlock()
	if j.shouldComplete.Load() {
		j.busy.Store(false)
		j.g.Main().Kick()
		j.g.Main().Schedule(j.exit)
		return
	}
	j.Iterations.Add(1)
	if j.Work != nil {
		j.Work(ctx, j.next)
		return
	}
	ctx.AfterFunc(j.Sleep, j.step) // "I/O": busy throughout
}

// reenter continues the loop after an iteration's Work, from a fresh
// bottom half of the job's Context (the Context cannot change while the
// job is busy: a move drains it first).
func (j *Job) reenter() { j.ctx.Load().Schedule(j.step) }

func (j *Job) resume() {
	j.mu.Lock()
	j.mu.pauseCount--
	if j.mu.pauseCount < 0 {
		invariants.Failf("blocktest: job resumed more often than paused")
	}
	wake := j.mu.pauseCount == 0 && j.mu.paused
	if wake {
		j.mu.paused = false
		j.busy.Store(true)
	}
	j.mu.Unlock()
	if wake {
		j.ctx.Load().Schedule(j.step)
	}
}

// exit runs on the main Context after the loop returned.
func (j *Job) exit() {
	err := j.RunErr
	if j.cancelled.Load() {
		err = ErrCancelled
	}
	if err == nil && j.Prepare != nil {
		err = j.Prepare()
	}
	if err != nil {
		if j.Abort != nil {
			j.Abort()
		}
	} else if j.Commit != nil {
		j.Commit()
	}
	for _, c := range j.edges {
		j.g.Detach(c)
	}
	j.edges = nil
	j.completed.Store(true)
	j.running.Store(false)
	j.result <- err
}

// RequestComplete asks the job to leave its loop at the next iteration.
func (j *Job) RequestComplete() { j.shouldComplete.Store(true) }

// Complete asks the job to finish and waits (bounded) for its result.
func (j *Job) Complete(t interface{ Fatalf(string, ...any) }) error {
	j.shouldComplete.Store(true)
	select {
	case err := <-j.result:
		return err
	case <-time.After(30 * time.Second):
		t.Fatalf("blocktest: job did not complete")
		return nil
	}
}

// Cancel asks the job to leave its loop without preparing or committing
// (Abort runs) and waits (bounded) for its result, ErrCancelled. A job
// parked at a pause point is entered so that it notices.
func (j *Job) Cancel(t interface{ Fatalf(string, ...any) }) error {
	j.cancelled.Store(true)
	j.shouldComplete.Store(true)
	j.mu.Lock()
	wake := j.mu.paused
	if wake {
		j.mu.paused = false
		j.busy.Store(true)
	}
	j.mu.Unlock()
	if wake {
		j.ctx.Load().Schedule(j.step)
	}
	return j.Complete(t)
}

type jobClass struct{}

func (jobClass) Kind() block.ParentKind { return block.JobParent }

func (jobClass) DrainedBegin(c *block.Child) {
	j := c.Owner().(*Job)
	j.mu.Lock()
	j.mu.pauseCount++
	j.mu.Unlock()
}

func (jobClass) DrainedPoll(c *block.Child) bool {
	j := c.Owner().(*Job)
	return j.busy.Load() && !j.completed.Load()
}

func (jobClass) DrainedEnd(c *block.Child) { c.Owner().(*Job).resume() }

func (jobClass) MoveContext(c *block.Child, m *block.Move) error {
	j := c.Owner().(*Job)
	for _, e := range j.edges {
		m.AddNode(e.Node())
	}
	m.OnCommit(func() { j.ctx.Store(m.Target()) })
	return nil
}
