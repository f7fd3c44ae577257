package job_test

import (
	"errors"
	"fmt"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
	"github.com/ringblk/ringblk/job"
)

// caseJob is the job of drain.md's T13–T20 and T38–T41 on the real
// framework: edges to a source and a target; each iteration reads the
// source and stays busy for 1 ms (simulated I/O) before its pause point;
// ready after the first iteration; Prepare, Commit and Abort flush the
// source synchronously on the main Context (a nested wait inside job
// completion). RunErr fails an iteration, PrepareErr the prepare.
type caseJob struct {
	src, tgt   *block.Child
	srcNode    *block.Node
	buf        []byte
	RunErr     error
	PrepareErr error
	complete   atomic.Bool
	iters      atomic.Int64
	wrongCtx   atomic.Int64
	flushes    []error
}

func (c *caseJob) Type() string { return "test" }

func (c *caseJob) Iterate(it *job.Iteration) (bool, error) {
	if !it.Job.Context().InContext() {
		c.wrongCtx.Add(1)
	}
	c.iters.Add(1)
	if err := it.Read(c.src, c.buf, 0); err != nil {
		return false, err
	}
	it.Co.Sleep(time.Millisecond) // busy: not at a pause point
	if c.complete.Load() {
		return true, c.RunErr
	}
	it.Job.SetReady()
	return false, nil
}

func (c *caseJob) Complete(*job.Job) error { c.complete.Store(true); return nil }
func (c *caseJob) Prepare(*job.Job) error {
	c.flushes = append(c.flushes, c.srcNode.Flush())
	return c.PrepareErr
}
func (c *caseJob) Commit(*job.Job) { c.flushes = append(c.flushes, c.srcNode.Flush()) }
func (c *caseJob) Abort(*job.Job)  { c.flushes = append(c.flushes, c.srcNode.Flush()) }

type drainKind int

const (
	drainAll drainKind = iota
	drainNode
	drainSubtree
)

func beginDrain(g *block.Graph, k drainKind, n *block.Node) {
	switch k {
	case drainAll:
		g.DrainAllBegin()
	case drainNode:
		n.DrainedBegin()
	default:
		n.SubtreeDrainedBegin()
	}
}

func endDrain(g *block.Graph, k drainKind, n *block.Node) {
	switch k {
	case drainAll:
		g.DrainAllEnd()
	case drainNode:
		n.DrainedEnd()
	default:
		n.SubtreeDrainedEnd()
	}
}

// TestJobDrainCases: [JOB] drain.md T13–T20 and T38–T41 with job.Job:
// front end Fs → overlay → src → src-backing, a target with its own front
// end, a job with edges to src and target. Draining src, src-backing, the
// target (and, for subtree drains, the overlay) parks the job at its
// pause point before the drain returns — pause count 2 under drain-all
// (both edges quiesced), 1 otherwise — and it runs again after the end.
// Completion's synchronous flushes do not deadlock; a failing run or
// prepare aborts. With iothread the front ends are on an IOThread and the
// job and target follow; iterations never run on another Context.
func TestJobDrainCases(t *testing.T) {
	for _, k := range []drainKind{drainAll, drainNode, drainSubtree} {
		for _, iothread := range []bool{false, true} {
			for _, result := range []string{"ok", "run-fails", "prepare-fails"} {
				name := fmt.Sprintf("%s/iothread=%v/%s", []string{"all", "node", "subtree"}[k], iothread, result)
				t.Run(name, func(t *testing.T) { jobDrainCase(t, k, iothread, result) })
			}
		}
	}
}

func jobDrainCase(t *testing.T, k drainKind, iothread bool, result string) {
	e := blocktest.NewEnv(t, 1)
	src := e.Open(blocktest.NewDriver(64<<10), block.Options{Name: "source"})
	srcBacking := e.Open(blocktest.NewDriver(64<<10), block.Options{Name: "source-backing"})
	overlay := e.Open(blocktest.NewDriver(64<<10), block.Options{Name: "source-overlay"})
	e.Attach(src, srcBacking, "backing", block.RoleBacking)
	e.Attach(overlay, src, "backing", block.RoleBacking)
	srcBacking.Unref()
	src.Unref()
	fs := e.FrontEnd("fs", overlay, block.FrontEndOptions{AllowContextChange: true})
	overlay.Unref()
	target := e.Open(blocktest.NewDriver(64<<10), block.Options{Name: "target"})
	ft := e.FrontEnd("ft", target, block.FrontEndOptions{AllowContextChange: true})
	target.Unref()

	c := &caseJob{srcNode: src, buf: make([]byte, 512)}
	switch result {
	case "run-fails":
		c.RunErr = syscall.EIO
	case "prepare-fails":
		c.PrepareErr = syscall.EIO
	}
	m := job.NewManager(e.G, nil)
	j, err := m.New(job.Options{ID: "job"}, c)
	if err != nil {
		t.Fatal(err)
	}
	if c.src, err = j.AddNode(src, "source"); err != nil {
		t.Fatal(err)
	}
	if c.tgt, err = j.AddNode(target, "target"); err != nil {
		t.Fatal(err)
	}
	if iothread {
		if err := fs.SetContext(e.IO[0]); err != nil {
			t.Fatal(err)
		}
		if j.Context() != e.IO[0] || target.Context() != e.IO[0] || ft.Context() != e.IO[0] {
			t.Fatal("job, target and its front end did not follow the source")
		}
	}
	j.Start()
	e.WaitFor("job ready", func() bool { return j.IsReady() })
	wantPause := 1
	if k == drainAll {
		wantPause = 2
	}
	drained := []*block.Node{src, srcBacking, target}
	if k == drainSubtree {
		drained = append(drained, overlay)
	}
	for _, n := range drained {
		if j.PauseCount() != 0 || j.Parked() {
			t.Fatalf("before draining %s: pause count %d parked %v", n.Name(), j.PauseCount(), j.Parked())
		}
		var pauses int
		var parked, busy bool
		var st job.Status
		e.OnMain(func() {
			beginDrain(e.G, k, n)
			pauses, parked, busy, st = j.PauseCount(), j.Parked(), j.Busy(), j.Status()
		})
		if pauses != wantPause || !parked || busy || st != job.Standby {
			t.Fatalf("drained %s: pause count %d (want %d), parked %v, busy %v, status %s", n.Name(), pauses, wantPause, parked, busy, st)
		}
		it := c.iters.Load()
		time.Sleep(2 * time.Millisecond)
		if c.iters.Load() != it {
			t.Fatalf("job iterated while %s was drained", n.Name())
		}
		e.OnMain(func() { endDrain(e.G, k, n) })
		e.WaitFor("job running again", func() bool { return c.iters.Load() > it+1 })
		if j.Status() != job.Ready {
			t.Fatalf("after draining %s: status %s", n.Name(), j.Status())
		}
	}
	if err := j.Complete(); err != nil {
		t.Fatal(err)
	}
	err = waitDone(t, j)
	if result == "ok" && err != nil || result != "ok" && !errors.Is(err, syscall.EIO) {
		t.Fatalf("result %v", err)
	}
	want := 2 // prepare + commit, or prepare + abort
	if result == "run-fails" {
		want = 1 // abort only
	}
	if len(c.flushes) != want {
		t.Fatalf("%d flushes in completion, want %d", len(c.flushes), want)
	}
	for _, f := range c.flushes {
		if f != nil {
			t.Fatalf("flush in completion: %v", f)
		}
	}
	if c.wrongCtx.Load() != 0 {
		t.Fatal("iterations on the wrong Context")
	}
	if iothread {
		fs.SetContext(e.Main)
		ft.SetContext(e.Main)
	}
	fs.Close()
	ft.Close()
}

// TestJobCompletesAfterDrainedEnd: [JOB][GRAPH] drain.md T28 with job.Job:
// a job asked to complete while its node's child is drained does not
// complete inside the drained section nor inside DrainedEnd (which does
// not poll); its Commit then removes two backing edges cleanly.
func TestJobCompletesAfterDrainedEnd(t *testing.T) {
	e := blocktest.NewEnv(t, 0)
	cn := e.Open(blocktest.NewDriver(64<<10), block.Options{Name: "child-node"})
	var parents []*block.Node
	var edges []*block.Child
	for i := 0; i < 3; i++ {
		p := e.Open(blocktest.NewDriver(64<<10), block.Options{Name: fmt.Sprint("parent-node-", i)})
		edges = append(edges, e.Attach(p, cn, "backing", block.RoleBacking))
		parents = append(parents, p)
	}
	c := &commitEdges{g: e.G, drop: []*block.Child{edges[2], edges[0]}}
	m := job.NewManager(e.G, nil)
	j, _ := m.New(job.Options{ID: "j"}, c)
	if _, err := j.AddNode(parents[2], "job-node"); err != nil {
		t.Fatal(err)
	}
	j.Start()
	e.WaitFor("running", func() bool { return c.iters.Load() > 0 })
	var inSection, inEnd bool
	e.OnMain(func() {
		c.complete.Store(true)
		cn.DrainedBegin()
		inSection = j.Status() == job.Null
		cn.DrainedEnd()
		inEnd = j.Status() == job.Null
	})
	if inSection || inEnd {
		t.Fatalf("job completed inside the drained section (%v) or inside DrainedEnd (%v)", inSection, inEnd)
	}
	if err := waitDone(t, j); err != nil {
		t.Fatal(err)
	}
	var ps []*block.Child
	e.OnMain(func() { ps = cn.Parents() })
	if len(ps) != 1 || ps[0] != edges[1] {
		t.Fatalf("child's parents after commit: %v", ps)
	}
	for _, n := range append(parents, cn) {
		wantQuiet(t, n)
		n.Unref()
	}
}

type commitEdges struct {
	g        *block.Graph
	drop     []*block.Child
	complete atomic.Bool
	iters    atomic.Int64
}

func (c *commitEdges) Type() string { return "test" }
func (c *commitEdges) Iterate(it *job.Iteration) (bool, error) {
	c.iters.Add(1)
	if c.complete.Load() {
		return true, nil
	}
	it.SleepNext(100 * time.Microsecond)
	return false, nil
}
func (c *commitEdges) Commit(*job.Job) {
	for _, e := range c.drop {
		c.g.Detach(e)
	}
}
