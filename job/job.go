package job

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/internal/invariants"
)

// Driver is one kind of job (mirror, backup, stream, commit). The
// framework calls Iterate repeatedly on the job's Context, inside a fresh
// coroutine each time, with a pause point, a cancel check and the speed
// limit between calls. Iterate does one unit of work (a batch of chunks),
// waiting for its I/O with the Iteration's helpers, and reports whether the
// run is over. State that must survive a call lives in the driver (the
// Context may change between calls: a move happens only at a pause point).
//
// Optional interfaces: Preparer, Committer, Aborter, Cleaner run on the
// main Context when the run ends; Completer handles the complete verb;
// Canceller turns a cancel of a ready job into a soft one.
type Driver interface {
	Type() string
	Iterate(it *Iteration) (done bool, err error)
}

// Preparer's Prepare runs first when a successful run is finalized; an
// error turns the job into a failed one (Abort runs instead of Commit).
type Preparer interface{ Prepare(j *Job) error }

// Committer's Commit runs after a successful Prepare.
type Committer interface{ Commit(j *Job) }

// Aborter's Abort runs when the job failed or was cancelled.
type Aborter interface{ Abort(j *Job) }

// Cleaner's Clean runs last, either way.
type Cleaner interface{ Clean(j *Job) }

// Completer handles the complete verb (allowed when ready): the driver
// arranges for Iterate to finish.
type Completer interface{ Complete(j *Job) error }

// Canceller is asked first by Cancel; returning false makes the cancel
// soft: the job is not marked cancelled and the driver finishes it itself
// (a ready mirror stops without pivoting and reports completion).
type Canceller interface {
	Cancel(j *Job, force bool) (hard bool)
}

// Options are the generic job options (QMP's job-id, speed,
// auto-finalize, auto-dismiss, on-source-error, on-target-error).
type Options struct {
	ID             string
	Context        *aio.Context // nil: the Context of the first node added
	Speed          int64        // bytes per second, 0 unlimited
	ManualFinalize bool         // auto-finalize=off: stay pending until Finalize
	ManualDismiss  bool         // auto-dismiss=off: stay concluded until Dismiss
	OnSourceError  ErrorPolicy
	OnTargetError  ErrorPolicy
	// AfterEnd, when set, runs once on the main Context when the job
	// ends, whatever its outcome: after the driver's Commit or Abort and
	// Clean and after its edges are dropped, before the completion event
	// (QEMU's job clean, where commit and stream reopen a node read-only
	// again); and from Discard. Its error becomes the job's error when the
	// job had none: it may have written data back.
	AfterEnd func() error
}

// Manager holds the jobs of one graph by ID (QMP's job list) and delivers
// their events.
type Manager struct {
	g      *block.Graph
	events func(Event)
	mu     sync.Mutex
	jobs   map[string]*Job
}

// NewManager returns a manager for g; events (may be nil) receives every
// job's events (see Event).
func NewManager(g *block.Graph, events func(Event)) *Manager {
	return &Manager{g: g, events: events, jobs: map[string]*Job{}}
}

// Graph returns the manager's graph.
func (m *Manager) Graph() *block.Graph { return m.g }

// Get returns the job with the given ID, or nil.
func (m *Manager) Get(id string) *Job {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.jobs[id]
}

// List returns the Info of every job, by ID.
func (m *Manager) List() []Info {
	m.mu.Lock()
	js := make([]*Job, 0, len(m.jobs))
	for _, j := range m.jobs {
		js = append(js, j)
	}
	m.mu.Unlock()
	out := make([]Info, 0, len(js))
	for _, j := range js {
		out = append(out, j.Info())
	}
	sort.Slice(out, func(a, b int) bool { return out[a].ID < out[b].ID })
	return out
}

// Len returns the number of jobs the manager holds.
func (m *Manager) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.jobs)
}

// New creates a job in status created with the driver drv; the caller
// (a job kind's constructor) adds its edges with AddNode and then the
// user starts it. A job that fails to be set up is dropped with Discard.
func (m *Manager) New(opts Options, drv Driver) (*Job, error) {
	if opts.ID == "" {
		return nil, errors.New("job: empty job ID")
	}
	if opts.Speed < 0 {
		return nil, fmt.Errorf("job %q: negative speed %d", opts.ID, opts.Speed)
	}
	j := &Job{m: m, g: m.g, drv: drv, opts: opts, done: make(chan struct{})}
	j.speed.Store(opts.Speed)
	if opts.Context != nil {
		j.ctx.Store(opts.Context)
	}
	j.stepFn, j.afterFn, j.exitFn = j.step, j.after, j.exit
	m.mu.Lock()
	if _, dup := m.jobs[opts.ID]; dup {
		m.mu.Unlock()
		return nil, fmt.Errorf("job %q: a job with this ID exists", opts.ID)
	}
	m.jobs[opts.ID] = j
	m.mu.Unlock()
	j.mu.Lock()
	j.setStatus(Created)
	j.mu.Unlock()
	j.flushEvents()
	return j, nil
}

// Job is one block job. Its run loop runs on its Context; its verbs may
// be called from any goroutine that is not one of the graph's Contexts
// (they marshal to the main Context where needed).
type Job struct {
	m    *Manager
	g    *block.Graph
	drv  Driver
	opts Options
	ctx  atomic.Pointer[aio.Context]

	// mu guards the fields below it.
	mu         sync.Mutex
	status     Status
	pauseCount int  // drained edges plus one for a user pause
	userPaused bool // the user (or a stop policy) paused it
	parked     bool // sitting at a pause point
	sleeping   bool // waiting for its speed or idle timer
	sleepGen   uint64
	cancelled  bool
	force      bool
	everReady  bool
	ioFailed   bool // a stop policy paused it: iostatus "failed"
	errs       []ErrorRecord
	result     error
	pending    []Event // events to deliver after mu is released
	edges      []*block.Child
	started    bool
	finalizing bool // Prepare/Commit/Abort under way: a cancel is too late
	txn        *Txn // the group it completes with (nil: alone)

	busy    atomic.Bool // between pause points (drain waits for it)
	runDone atomic.Bool // the run loop has returned; exit is on main
	cur     atomic.Int64
	total   atomic.Int64
	speed   atomic.Int64

	// Run loop state (the job's Context only).
	nextAt  int64 // rate limit: monotonic ns before which no more work starts
	iterRes struct {
		done bool
		err  error
	}
	runErr error

	evMu sync.Mutex
	done chan struct{}

	stepFn, afterFn, exitFn func()
}

// ErrorRecord is one error the job saw, kept for query.
type ErrorRecord struct {
	Time   time.Time
	Err    error
	Action Action
}

// maxErrors bounds the errors kept per job (the oldest go first).
const maxErrors = 32

// ID returns the job's ID.
func (j *Job) ID() string { return j.opts.ID }

// Type returns the driver's type ("mirror", "backup", …).
func (j *Job) Type() string { return j.drv.Type() }

// Driver returns the job's driver.
func (j *Job) Driver() Driver { return j.drv }

// Graph returns the job's graph.
func (j *Job) Graph() *block.Graph { return j.g }

// Context returns the Context the run loop runs on.
func (j *Job) Context() *aio.Context { return j.ctx.Load() }

// Status returns the current status.
func (j *Job) Status() Status {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.status
}

// Busy reports whether the job is between pause points.
func (j *Job) Busy() bool { return j.busy.Load() }

// PauseCount returns how many pauses are in force (drained edges, user).
func (j *Job) PauseCount() int {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.pauseCount
}

// Parked reports whether the job sits at a pause point.
func (j *Job) Parked() bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.parked
}

// Cancelled reports whether the job was (hard) cancelled: Iterate should
// return soon.
func (j *Job) Cancelled() bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.cancelled
}

// SetTotal and AddProgress report progress (bytes); AddProgress also
// charges the speed limit. Any Context.
func (j *Job) SetTotal(n int64) { j.total.Store(n) }
func (j *Job) AddTotal(n int64) { j.total.Add(n) }
func (j *Job) Progress() (cur, total int64) {
	return j.cur.Load(), j.total.Load()
}

// AddNode gives the job an edge to n (QEMU's block_job_add_bdrv): drains
// of n pause the job, and n moves between Contexts with it. The first
// node added sets the job's Context unless Options.Context did; later
// nodes are moved to it (which their other users may veto).
func (j *Job) AddNode(n *block.Node, name string) (*block.Child, error) {
	var c *block.Child
	var err error
	j.g.Control(func() {
		// A job's nodes share its Context (as QEMU moves a mirror's
		// target into the source's AioContext).
		if ctx := j.ctx.Load(); ctx != nil && n.Context() != ctx {
			if err = n.SetContext(ctx); err != nil {
				return
			}
		}
		c, err = j.g.Attach(nil, n, block.ChildSpec{Name: name, Class: jobClass{}, Owner: j})
		if err == nil {
			j.mu.Lock()
			j.edges = append(j.edges, c)
			j.mu.Unlock()
			if j.ctx.Load() == nil {
				j.ctx.Store(n.Context())
			}
		}
	})
	return c, err
}

// Edges returns the job's edges.
func (j *Job) Edges() []*block.Child {
	j.mu.Lock()
	defer j.mu.Unlock()
	return append([]*block.Child(nil), j.edges...)
}

// Discard drops a job that was never started (setup failed): its edges
// go, it leaves the manager. Its status goes from created straight to
// null, as QEMU's early failure of a job.
func (j *Job) Discard() error {
	return j.discard()
}

// Abandon drops a job that was created but never started because the
// transaction that made it was rolled back. QEMU cancels such a job, so
// a client sees its status go through aborting and concluded to null
// (whatever its auto-dismiss), where Discard goes straight to null.
func (j *Job) Abandon() error {
	j.mu.Lock()
	if j.status == Created {
		j.setStatus(Aborting)
		j.setStatus(Concluded)
	}
	j.mu.Unlock()
	return j.discard()
}

func (j *Job) discard() error {
	var err error
	j.g.Control(func() { err = errors.Join(j.dropEdges(), j.afterEnd()) })
	j.mu.Lock()
	if j.status == Created || j.status == Concluded {
		j.setStatus(Null)
	}
	j.mu.Unlock()
	j.flushEvents()
	j.remove()
	j.closeDone()
	return err
}

// afterEnd runs Options.AfterEnd once (main Context).
func (j *Job) afterEnd() error {
	j.mu.Lock()
	fn := j.opts.AfterEnd
	j.opts.AfterEnd = nil
	j.mu.Unlock()
	if fn == nil {
		return nil
	}
	return fn()
}

func (j *Job) dropEdges() error {
	j.mu.Lock()
	edges := j.edges
	j.edges = nil
	j.mu.Unlock()
	var errs []error
	for _, c := range edges {
		if c.Node() != nil {
			errs = append(errs, j.g.Detach(c))
		}
	}
	return errors.Join(errs...)
}

func (j *Job) remove() {
	j.m.mu.Lock()
	if j.m.jobs[j.opts.ID] == j {
		delete(j.m.jobs, j.opts.ID)
	}
	j.m.mu.Unlock()
}

func (j *Job) closeDone() {
	select {
	case <-j.done:
	default:
		close(j.done)
	}
}

// Start runs a created job.
func (j *Job) Start() error {
	j.mu.Lock()
	if j.status != Created || j.started {
		st := j.status
		j.mu.Unlock()
		return &VerbError{ID: j.opts.ID, Verb: VerbResume, Status: st}
	}
	if j.ctx.Load() == nil {
		j.ctx.Store(j.g.Main())
	}
	j.started = true
	j.setStatus(Running)
	j.busy.Store(true)
	ctx := j.ctx.Load()
	j.mu.Unlock()
	j.flushEvents()
	ctx.Schedule(j.stepFn)
	return nil
}

// Done is closed when the job has concluded (or was discarded).
func (j *Job) Done() <-chan struct{} { return j.done }

// Wait waits until the job has concluded and returns its result. It must
// not be called on one of the graph's Contexts.
func (j *Job) Wait() error {
	<-j.done
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.result
}

// Result returns the job's result once concluded (nil before).
func (j *Job) Result() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.result
}

// Errors returns the errors kept for query, oldest first.
func (j *Job) Errors() []ErrorRecord {
	j.mu.Lock()
	defer j.mu.Unlock()
	return append([]ErrorRecord(nil), j.errs...)
}

// Info is what query-jobs reports about a job.
type Info struct {
	ID       string
	Type     string
	Status   Status
	Current  int64
	Total    int64
	Speed    int64
	Busy     bool
	Paused   bool
	Ready    bool
	IOStatus string // "ok" or "failed"
	Error    string // the final error, once concluded
	// AutoFinalize and AutoDismiss are QMP's names for !ManualFinalize
	// and !ManualDismiss.
	AutoFinalize, AutoDismiss bool
}

// Info returns a snapshot of the job's state.
func (j *Job) Info() Info {
	j.mu.Lock()
	defer j.mu.Unlock()
	in := Info{
		ID: j.opts.ID, Type: j.drv.Type(), Status: j.status,
		Current: j.cur.Load(), Total: j.total.Load(), Speed: j.speed.Load(),
		Busy: j.busy.Load(), Paused: j.pauseCount > 0 && j.userPaused,
		Ready: j.status == Ready || j.status == Standby, IOStatus: "ok",
		AutoFinalize: !j.opts.ManualFinalize, AutoDismiss: !j.opts.ManualDismiss,
	}
	if j.ioFailed {
		in.IOStatus = "failed"
	}
	if j.result != nil {
		in.Error = ErrorText(j.result)
	}
	return in
}

// ErrorText is a job's error as QEMU reports it (BLOCK_JOB_COMPLETED,
// query-jobs): an I/O error is its errno's strerror ("Input/output
// error"), whatever the layers that failed added; any other error is its
// own text.
func ErrorText(err error) string {
	var ioe *IOError
	var errno syscall.Errno
	if errors.As(err, &ioe) && errors.As(err, &errno) && errno != 0 {
		msg := errno.Error()
		return strings.ToUpper(msg[:1]) + msg[1:]
	}
	return err.Error()
}

// setStatus changes the status (j.mu held) and queues the event.
func (j *Job) setStatus(s Status) {
	if j.status == s {
		return
	}
	if !CanTransition(j.status, s) {
		invariants.Failf("job %q: illegal transition %s → %s", j.opts.ID, j.status, s)
	}
	j.status = s
	j.pending = append(j.pending, Event{Type: EventStatusChange, ID: j.opts.ID, Status: s})
}

func (j *Job) check(v Verb) error {
	if !Allowed(v, j.status) {
		return &VerbError{ID: j.opts.ID, Verb: v, Status: j.status}
	}
	return nil
}

// ErrAlreadyPaused and ErrNotPaused refuse a user pause of a job the
// user (or a stop policy) paused already, and a resume of one nobody
// paused, as QEMU does: a user pause is one flag, not a count, so the
// second pause would be undone by the first resume.
var (
	ErrAlreadyPaused = errors.New("job is already paused")
	ErrNotPaused     = errors.New("job was not paused")
)

// Pause asks the job to pause at its next pause point (user pause).
func (j *Job) Pause() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if err := j.check(VerbPause); err != nil {
		return err
	}
	if j.userPaused {
		return fmt.Errorf("job %q: %w", j.opts.ID, ErrAlreadyPaused)
	}
	j.userPaused = true
	j.pauseRequest()
	return nil
}

// Resume undoes a user pause (and clears a stop policy's failed state).
func (j *Job) Resume() error {
	j.mu.Lock()
	if !j.userPaused {
		j.mu.Unlock()
		return fmt.Errorf("job %q: %w", j.opts.ID, ErrNotPaused)
	}
	if err := j.check(VerbResume); err != nil {
		j.mu.Unlock()
		return err
	}
	j.userPaused = false
	j.ioFailed = false
	j.resumeRequest()
	j.mu.Unlock()
	j.flushEvents()
	return nil
}

// SetSpeed changes the speed limit (bytes per second, 0 unlimited).
func (j *Job) SetSpeed(bps int64) error {
	if bps < 0 {
		return fmt.Errorf("job %q: negative speed %d", j.opts.ID, bps)
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if err := j.check(VerbSetSpeed); err != nil {
		return err
	}
	j.speed.Store(bps)
	j.wakeSleeper() // a long wait at the old speed ends now
	return nil
}

// Complete asks a ready job to finish (mirror: pivot to the target).
func (j *Job) Complete() error {
	j.mu.Lock()
	if err := j.check(VerbComplete); err != nil {
		j.mu.Unlock()
		return err
	}
	c, ok := j.drv.(Completer)
	j.mu.Unlock()
	if !ok {
		return fmt.Errorf("job %q: %s jobs cannot be completed", j.opts.ID, j.drv.Type())
	}
	if err := c.Complete(j); err != nil {
		return err
	}
	j.Kick()
	return nil
}

// Kick ends a sleep of the run loop early (a driver calls it when new
// work or a completion request arrives). Any goroutine.
func (j *Job) Kick() {
	j.mu.Lock()
	j.wakeSleeper()
	j.mu.Unlock()
}

// Cancel cancels the job. A ready job with a Canceller may turn a cancel
// that is not forced into a soft one (see Canceller).
func (j *Job) Cancel(force bool) error {
	j.mu.Lock()
	if err := j.check(VerbCancel); err != nil {
		j.mu.Unlock()
		return err
	}
	st := j.status
	j.mu.Unlock()
	if c, ok := j.drv.(Canceller); ok && (st == Ready || st == Standby) && !c.Cancel(j, force) {
		j.mu.Lock()
		// Soft: let the run finish by itself, unpaused.
		if j.userPaused {
			j.userPaused = false
			j.resumeRequest()
		}
		j.wakeSleeper()
		j.mu.Unlock()
		j.flushEvents()
		return nil
	}
	j.mu.Lock()
	j.cancelled = true
	j.force = force
	switch {
	case j.status == Created:
		j.mu.Unlock()
		j.g.Main().Schedule(j.exitFn)
		return nil
	case j.status == Pending || j.status == Waiting:
		if j.finalizing {
			j.cancelled = false
			st := j.status // read under the lock: the finalize changes it
			j.mu.Unlock()
			return &VerbError{ID: j.opts.ID, Verb: VerbCancel, Status: st}
		}
		j.mu.Unlock()
		j.g.Main().Schedule(j.exitFn)
		return nil
	case j.parked:
		// A cancelled job does not pause (drain.md §1.12): enter it.
		j.parked = false
		j.busy.Store(true)
		j.restoreRunStatus()
		j.ctx.Load().Schedule(j.stepFn)
	default:
		j.wakeSleeper()
	}
	j.mu.Unlock()
	return nil
}

// Finalize runs the completion of a pending job (ManualFinalize).
func (j *Job) Finalize() error {
	j.mu.Lock()
	if err := j.check(VerbFinalize); err != nil {
		j.mu.Unlock()
		return err
	}
	j.mu.Unlock()
	j.g.Control(j.finalize)
	return nil
}

// Dismiss removes a concluded job (ManualDismiss).
func (j *Job) Dismiss() error {
	j.mu.Lock()
	if err := j.check(VerbDismiss); err != nil {
		j.mu.Unlock()
		return err
	}
	j.setStatus(Null)
	j.mu.Unlock()
	j.flushEvents()
	j.remove()
	return nil
}

// pauseRequest adds a pause (j.mu held): a sleeping job is woken so that
// it reaches its pause point now.
func (j *Job) pauseRequest() {
	j.pauseCount++
	j.wakeSleeper()
}

// resumeRequest removes a pause (j.mu held); at zero a parked job runs.
func (j *Job) resumeRequest() {
	j.pauseCount--
	if j.pauseCount < 0 {
		invariants.Failf("job %q: resumed more often than paused", j.opts.ID)
	}
	if j.pauseCount == 0 && j.parked {
		j.parked = false
		j.busy.Store(true)
		j.restoreRunStatus()
		j.ctx.Load().Schedule(j.stepFn)
	}
}

// wakeSleeper ends the run loop's sleep (j.mu held): busy again at once,
// so a drain that asked for the pause waits for the pause point.
func (j *Job) wakeSleeper() {
	if !j.sleeping {
		return
	}
	j.sleeping = false
	j.sleepGen++
	j.busy.Store(true)
	j.ctx.Load().Schedule(j.stepFn)
}

func (j *Job) restoreRunStatus() {
	switch j.status {
	case Paused:
		j.setStatus(Running)
	case Standby:
		j.setStatus(Ready)
	}
}

// SetReady moves a running job to ready (mirror in sync) and sends
// BLOCK_JOB_READY the first time. Any Context.
func (j *Job) SetReady() {
	j.mu.Lock()
	if j.status == Running {
		j.setStatus(Ready)
		if !j.everReady {
			j.everReady = true
			j.pending = append(j.pending, j.blockEvent(EventReady))
		}
	}
	j.mu.Unlock()
	j.flushEvents()
}

// SetRunning moves a ready job back to running (the copy fell behind).
func (j *Job) SetRunning() {
	j.mu.Lock()
	if j.status == Ready {
		j.setStatus(Running)
	}
	j.mu.Unlock()
	j.flushEvents()
}

// IsReady reports whether the job is ready or standby.
func (j *Job) IsReady() bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.status == Ready || j.status == Standby
}

// step is the run loop between iterations: cancel check, pause point,
// speed limit, then the next iteration in a fresh coroutine. Job's
// Context.
func (j *Job) step() {
	ctx := j.ctx.Load()
	j.mu.Lock()
	if j.cancelled {
		j.mu.Unlock()
		j.finishRun(ErrCancelled)
		return
	}
	if j.pauseCount > 0 {
		// Pause point: park until the last resume enters the loop again.
		j.parked = true
		switch j.status {
		case Running:
			j.setStatus(Paused)
		case Ready:
			j.setStatus(Standby)
		}
		j.busy.Store(false)
		j.mu.Unlock()
		j.flushEvents()
		j.g.Main().Kick()
		return
	}
	if d := j.delay(); d > 0 {
		j.sleepFor(ctx, d)
		j.mu.Unlock()
		j.g.Main().Kick()
		return
	}
	j.mu.Unlock()
	j.flushEvents()
	ctx.Go(j.iterate)
}

// sleepFor parks the run loop on a timer of its Context (j.mu held); a
// pause, cancel, kick or speed change ends the sleep early (wakeSleeper).
// No goroutine sleeps: the timer is the loop's.
func (j *Job) sleepFor(ctx *aio.Context, d time.Duration) {
	j.sleeping = true
	j.sleepGen++
	gen := j.sleepGen
	j.busy.Store(false)
	ctx.AfterFunc(d, func() {
		j.mu.Lock()
		if !j.sleeping || j.sleepGen != gen {
			j.mu.Unlock()
			return
		}
		j.sleeping = false
		j.busy.Store(true)
		j.mu.Unlock()
		j.step()
	})
}

// SleepNext makes the run loop wait d before the next iteration (an idle
// mirror waiting for new writes). Called from Iterate.
func (it *Iteration) SleepNext(d time.Duration) { it.sleep = int64(d) }

// delay is the speed limit (j.mu held): work may start once the clock
// reached nextAt, which each AddProgress pushes by bytes/speed.
func (j *Job) delay() time.Duration {
	now := time.Now().UnixNano()
	if j.speed.Load() == 0 {
		j.nextAt = now
		return 0
	}
	if j.nextAt <= now {
		if j.nextAt < now-int64(rateSlice) {
			j.nextAt = now - int64(rateSlice) // bounded credit after idling
		}
		return 0
	}
	return time.Duration(j.nextAt - now)
}

// rateSlice is the burst the speed limit allows after an idle period.
const rateSlice = 100 * time.Millisecond

// AddProgress counts n bytes done and charges them to the speed limit.
// Job's Context (from Iterate).
func (j *Job) AddProgress(n int64) {
	j.cur.Add(n)
	if s := j.speed.Load(); s > 0 && n > 0 {
		now := time.Now().UnixNano()
		j.mu.Lock()
		if j.nextAt < now-int64(rateSlice) {
			j.nextAt = now - int64(rateSlice)
		}
		j.nextAt += n * int64(time.Second) / s
		j.mu.Unlock()
	}
}

// iterate runs one Iterate in a coroutine of the job's Context.
func (j *Job) iterate(co *aio.Co) {
	it := Iteration{Job: j, Co: co}
	done, err := j.drv.Iterate(&it)
	j.iterRes.done, j.iterRes.err = done, err
	if it.sleep > 0 && !done && err == nil {
		j.mu.Lock()
		if !j.cancelled && j.pauseCount == 0 {
			j.sleepFor(co.Context(), time.Duration(it.sleep))
			j.mu.Unlock()
			j.g.Main().Kick()
			return
		}
		j.mu.Unlock()
	}
	co.Context().Schedule(j.afterFn)
}

// after handles an iteration's result on the job's Context.
func (j *Job) after() {
	done, err := j.iterRes.done, j.iterRes.err
	j.iterRes.done, j.iterRes.err = false, nil
	if err != nil && !errors.Is(err, ErrCancelled) {
		action := ActionReport
		var ioe *IOError
		if errors.As(err, &ioe) {
			p := j.opts.OnSourceError
			if ioe.Target {
				p = j.opts.OnTargetError
			}
			action = p.decide(err)
		}
		j.mu.Lock()
		j.recordError(err, action)
		if ioe != nil {
			ev := j.blockEvent(EventError)
			ev.Action = action
			ev.Operation = ioe.Op
			ev.Error = err.Error()
			j.pending = append(j.pending, ev)
		}
		switch action {
		case ActionReport:
			j.mu.Unlock()
			j.flushEvents()
			j.finishRun(err)
			return
		case ActionStop:
			j.ioFailed = true
			if !j.userPaused {
				j.userPaused = true
				j.pauseRequest()
			}
		}
		j.mu.Unlock()
		j.flushEvents()
	}
	if err != nil && errors.Is(err, ErrCancelled) {
		j.finishRun(err)
		return
	}
	if done {
		j.finishRun(nil)
		return
	}
	j.step()
}

// NoteError keeps err for query without changing the job's course (a
// cleanup step that failed).
func (j *Job) NoteError(err error) {
	if err == nil {
		return
	}
	j.mu.Lock()
	j.recordError(err, ActionReport)
	j.mu.Unlock()
}

func (j *Job) recordError(err error, a Action) {
	if len(j.errs) == maxErrors {
		copy(j.errs, j.errs[1:])
		j.errs = j.errs[:maxErrors-1]
	}
	j.errs = append(j.errs, ErrorRecord{Time: time.Now(), Err: err, Action: a})
}

// finishRun leaves the run loop; the rest happens on the main Context.
func (j *Job) finishRun(err error) {
	j.runErr = err
	j.runDone.Store(true)
	j.busy.Store(false)
	j.g.Main().Kick()
	j.g.Main().Schedule(j.exitFn)
}

// exit runs on the main Context after the run loop returned (or for a
// job cancelled before it started / while pending).
func (j *Job) exit() {
	j.mu.Lock()
	if j.status == Concluded || j.status == Null || j.status == Aborting || j.finalizing {
		j.mu.Unlock()
		return
	}
	err := j.runErr
	txn := j.txn
	if err == nil && !j.cancelled && txn != nil && txn.isAborting() {
		// Its group failed after this run ended well: it aborts too.
		j.cancelled = true
	}
	if j.cancelled {
		err = ErrCancelled
	}
	j.restoreRunStatus()
	if j.status == Pending || j.status == Waiting {
		// cancelled while waiting for its group or for finalize
		j.setStatus(Aborting)
		j.mu.Unlock()
		j.flushEvents()
		j.conclude(err, false)
		if txn != nil {
			txn.abortOthers(j)
		}
		return
	}
	if err != nil {
		j.setStatus(Aborting)
		j.mu.Unlock()
		j.flushEvents()
		j.conclude(err, false)
		if txn != nil {
			txn.abortOthers(j)
		}
		return
	}
	j.setStatus(Waiting)
	if txn != nil {
		j.mu.Unlock()
		j.flushEvents()
		txn.completed()
		return
	}
	j.setStatus(Pending)
	manual := j.opts.ManualFinalize
	if manual {
		// The job now waits for Finalize: QEMU tells the user so with
		// BLOCK_JOB_PENDING, after the status change.
		j.pending = append(j.pending, j.blockEvent(EventPending))
	}
	j.mu.Unlock()
	j.flushEvents()
	if !manual {
		j.finalize()
	}
}

// finalize runs Prepare and then Commit or Abort (main Context).
func (j *Job) finalize() {
	j.mu.Lock()
	if t := j.txn; t != nil {
		j.mu.Unlock()
		t.finalize()
		return
	}
	if j.status != Pending || j.finalizing {
		j.mu.Unlock()
		return
	}
	j.finalizing = true
	j.mu.Unlock()
	var err error
	if p, ok := j.drv.(Preparer); ok {
		err = p.Prepare(j)
	}
	if err != nil {
		j.mu.Lock()
		j.setStatus(Aborting)
		j.mu.Unlock()
		j.flushEvents()
	}
	j.conclude(err, err == nil)
}

// conclude runs Commit or Abort and Clean, drops the edges and concludes.
func (j *Job) conclude(err error, commit bool) {
	if commit {
		if c, ok := j.drv.(Committer); ok {
			c.Commit(j)
		}
	} else if a, ok := j.drv.(Aborter); ok {
		a.Abort(j)
	}
	if c, ok := j.drv.(Cleaner); ok {
		c.Clean(j)
	}
	if derr := j.dropEdges(); derr != nil && err == nil {
		err = derr
	}
	if aerr := j.afterEnd(); aerr != nil && err == nil {
		err = aerr
	}
	j.mu.Lock()
	j.result = err
	typ := EventCompleted
	if j.cancelled {
		typ = EventCancelled
	}
	ev := j.blockEvent(typ)
	if err != nil && !errors.Is(err, ErrCancelled) {
		ev.Error = ErrorText(err)
	}
	// BLOCK_JOB_COMPLETED (or _CANCELLED) comes before the status change
	// to concluded, as in QEMU, whose clients wait for the former and
	// then query or dismiss.
	j.pending = append(j.pending, ev)
	j.setStatus(Concluded)
	dismiss := !j.opts.ManualDismiss
	if dismiss {
		j.setStatus(Null)
	}
	j.mu.Unlock()
	j.flushEvents()
	if dismiss {
		j.remove()
	}
	j.busy.Store(false)
	j.runDone.Store(true)
	j.closeDone()
	j.g.Main().Kick()
}

// jobClass is the ChildClass of a job's edges (drain.md §1.12): a drain
// of the edge's node pauses the job at its next pause point and waits
// until it sits there (or has finished running).
type jobClass struct{}

func (jobClass) Kind() block.ParentKind { return block.JobParent }

func (jobClass) DrainedBegin(c *block.Child) {
	j := c.Owner().(*Job)
	j.mu.Lock()
	j.pauseRequest()
	j.mu.Unlock()
}

func (jobClass) DrainedPoll(c *block.Child) bool {
	j := c.Owner().(*Job)
	return j.busy.Load() && !j.runDone.Load()
}

func (jobClass) DrainedEnd(c *block.Child) {
	j := c.Owner().(*Job)
	j.mu.Lock()
	j.resumeRequest()
	j.mu.Unlock()
	// Events are delivered by the job's own Context (step) or later verbs:
	// a quiesce-phase callback only queues them.
}

func (jobClass) MoveContext(c *block.Child, m *block.Move) error {
	j := c.Owner().(*Job)
	j.mu.Lock()
	edges := append([]*block.Child(nil), j.edges...)
	j.mu.Unlock()
	for _, e := range edges {
		if n := e.Node(); n != nil {
			m.AddNode(n)
		}
	}
	m.OnCommit(func() { j.ctx.Store(m.Target()) })
	return nil
}
