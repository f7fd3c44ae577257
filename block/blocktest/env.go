package blocktest

import (
	"fmt"
	"testing"
	"time"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/uring"
)

// Env is the scenario harness: a started main Context, IOThreads, and a
// graph on them, all stopped by t.Cleanup. Tests drive everything through
// it from the test goroutine; control calls marshal onto the main Context.
type Env struct {
	T    testing.TB
	Main *aio.Context
	IO   []*aio.Context
	G    *block.Graph
}

// EnvOptions configure NewEnvOpts.
type EnvOptions struct {
	IOThreads int
	// Queue, if set, builds the ring of each Context (for example a
	// uringtest ring); nil uses the kernel ring.
	Queue func(name string) uring.Queue
	// MainPollTime is the main Context's adaptive busy-poll window (see
	// aio.Options.PollTime); zero never spins.
	MainPollTime time.Duration
	// ArenaSize is each Context's buffer arena (aio.Options.ArenaSize);
	// zero: none.
	ArenaSize int
	// MaxSlots caps each Context's op-slot table (aio.Options.MaxSlots);
	// zero: the default.
	MaxSlots int
}

// NewEnv starts a main Context and n IOThreads.
func NewEnv(t testing.TB, iothreads int) *Env {
	return NewEnvOpts(t, EnvOptions{IOThreads: iothreads})
}

// NewEnvOpts starts an Env as configured.
func NewEnvOpts(t testing.TB, o EnvOptions) *Env {
	t.Helper()
	e := &Env{T: t}
	mk := func(name string, main bool) *aio.Context {
		opts := aio.Options{Name: name, CPU: aio.NoCPU, Main: main, ArenaSize: -1, Entries: 64, MaxSlots: o.MaxSlots}
		if o.ArenaSize > 0 {
			opts.ArenaSize = o.ArenaSize
		}
		if main {
			opts.PollTime = o.MainPollTime
		}
		if o.Queue != nil {
			opts.Queue = o.Queue(name)
		}
		c, err := aio.New(opts)
		if err != nil {
			t.Fatalf("aio.New(%s): %v", name, err)
		}
		if err := c.Start(); err != nil {
			t.Fatalf("start %s: %v", name, err)
		}
		t.Cleanup(func() {
			if _, err := c.Stop(); err != nil {
				t.Errorf("stop %s: %v", name, err)
			}
		})
		return c
	}
	e.Main = mk("main", true)
	for i := 0; i < o.IOThreads; i++ {
		e.IO = append(e.IO, mk(fmt.Sprintf("iothread%d", i), false))
	}
	e.G = block.NewGraph(e.Main)
	return e
}

// OnMain runs fn on the main Context and returns when it has run.
func (e *Env) OnMain(fn func()) { e.Main.Run(fn) }

// On runs fn on ctx and returns when it has run.
func (e *Env) On(ctx *aio.Context, fn func()) { ctx.Run(fn) }

// Co runs fn as a coroutine of ctx and returns when it has returned.
func (e *Env) Co(ctx *aio.Context, fn func(co *aio.Co)) {
	done := make(chan struct{})
	ctx.Schedule(func() {
		ctx.Go(func(co *aio.Co) {
			defer close(done)
			fn(co)
		})
	})
	e.wait(done, "coroutine")
}

func (e *Env) wait(ch <-chan struct{}, what string) {
	select {
	case <-ch:
	case <-time.After(30 * time.Second):
		e.T.Fatalf("blocktest: %s did not finish within 30s (hang)", what)
	}
}

// WaitFor polls cond from the test goroutine until it holds or the bound
// passes (a hang is a failure, not a stuck test).
func (e *Env) WaitFor(what string, cond func() bool) {
	e.T.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			e.T.Fatalf("blocktest: waiting for %s: timed out", what)
		}
		time.Sleep(50 * time.Microsecond)
	}
}

// Open opens a node (fatal on error).
func (e *Env) Open(drv block.Driver, opts block.Options) *block.Node {
	e.T.Helper()
	n, err := e.G.Open(drv, opts)
	if err != nil {
		e.T.Fatalf("open %s: %v", opts.Name, err)
	}
	return n
}

// Attach attaches child under parent with a role (fatal on error).
func (e *Env) Attach(parent, child *block.Node, name string, role block.Role) *block.Child {
	e.T.Helper()
	c, err := e.G.Attach(parent, child, block.ChildSpec{Name: name, Role: role})
	if err != nil {
		e.T.Fatalf("attach %s: %v", name, err)
	}
	return c
}

// FrontEnd creates a front end on root (fatal on error).
func (e *Env) FrontEnd(name string, root *block.Node, opts block.FrontEndOptions) *block.FrontEnd {
	e.T.Helper()
	opts.Name = name
	fe := e.G.NewFrontEnd(opts)
	if root != nil {
		if err := fe.Insert(root); err != nil {
			e.T.Fatalf("insert %s: %v", root.Name(), err)
		}
	}
	return fe
}

// Result records a request's completion; it is a block.Done.
type Result struct {
	done chan struct{}
	Err  error
	N    int // completions seen (must be 1)
	Ran  bool
}

// NewResult returns an unfinished Result.
func NewResult() *Result { return &Result{done: make(chan struct{})} }

func (r *Result) RequestDone(_ *block.Request, err error) {
	r.N++
	r.Err = err
	r.Ran = true
	if r.N == 1 {
		close(r.done)
	}
}

// Finished reports whether the completion ran.
func (r *Result) Finished() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

// Wait waits (bounded) for the completion.
func (r *Result) Wait(e *Env) { e.wait(r.done, "request") }
