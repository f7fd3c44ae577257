package block_test

import (
	"errors"
	"syscall"
	"testing"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
)

type jobResult int

const (
	jobOK jobResult = iota
	jobRunFails
	jobPrepareFails
)

// testBlockjob is T13–T20 and T38–T41 (blockjob_common_drain_node): a job
// on src with an extra edge to a target; draining a node at or below src,
// or the target, parks the job at a pause point before the drain returns;
// drained end lets it run again; its completion callbacks do synchronous
// I/O on the main Context. With iothread, the source front end lives in an
// IOThread and the job and target follow it.
func testBlockjob(t *testing.T, k drainKind, iothread bool, result jobResult) {
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

	job := blocktest.NewJob(e.G, e.Main)
	flush := func() error { return src.Flush() } // nested wait inside job completion
	var flushes []error
	job.Prepare = func() error {
		flushes = append(flushes, flush())
		if result == jobPrepareFails {
			return syscall.EIO
		}
		return nil
	}
	job.Commit = func() { flushes = append(flushes, flush()) }
	job.Abort = func() { flushes = append(flushes, flush()) }
	if result == jobRunFails {
		job.RunErr = syscall.EIO
	}
	if _, err := job.AddNode(src, "source"); err != nil {
		t.Fatal(err)
	}
	if _, err := job.AddNode(target, "target"); err != nil {
		t.Fatal(err)
	}
	if iothread {
		if err := fs.SetContext(e.IO[0]); err != nil {
			t.Fatal(err)
		}
		if job.Context() != e.IO[0] || target.Context() != e.IO[0] || ft.Context() != e.IO[0] {
			t.Fatal("job, target and its front end did not follow the source")
		}
	}
	job.Start()
	e.WaitFor("job running", func() bool { return job.Iterations.Load() > 0 })

	check := func(what string, pause int, paused, busy bool) {
		t.Helper()
		if job.PauseCount() != pause || job.Paused() != paused || job.Busy() != busy {
			t.Fatalf("%s: pauseCount %d paused %v busy %v, want %d %v %v", what, job.PauseCount(), job.Paused(), job.Busy(), pause, paused, busy)
		}
	}
	wantPause := 1
	if k == drainAll {
		wantPause = 2 // edges to src and target both quiesced
	}
	drained := []*block.Node{src, srcBacking}
	if k == drainSubtree {
		drained = append(drained, overlay)
	}
	for _, n := range append(drained, target) {
		check("before draining "+n.Name(), 0, false, true)
		begin(e.G, k, n, nil)
		check("drained "+n.Name(), wantPause, true, false)
		end(e.G, k, n, nil)
		e.WaitFor("job resumed", func() bool { return !job.Paused() })
		check("after draining "+n.Name(), 0, false, true)
	}

	err := job.Complete(t)
	if result == jobOK && err != nil || result != jobOK && !errors.Is(err, syscall.EIO) {
		t.Fatalf("job result %v (mode %d)", err, result)
	}
	wantFlushes := 2 // prepare + commit, or prepare + abort
	if result == jobRunFails {
		wantFlushes = 1 // abort only
	}
	if len(flushes) != wantFlushes {
		t.Fatalf("%d flushes in completion callbacks, want %d", len(flushes), wantFlushes)
	}
	for _, f := range flushes {
		if f != nil {
			t.Fatalf("flush in job completion: %v", f)
		}
	}
	if job.WrongContext.Load() != 0 {
		t.Fatalf("%d iterations ran outside the job's Context", job.WrongContext.Load())
	}
	if iothread {
		if err := fs.SetContext(e.Main); err != nil {
			t.Fatal(err)
		}
		// The job is gone: target and its front end stay where they are
		// unless moved; move them too and check nothing vetoes.
		if err := ft.SetContext(e.Main); err != nil {
			t.Fatal(err)
		}
	}
	fs.Close()
	ft.Close()
}

func TestT13BlockjobDrainAll(t *testing.T) { testBlockjob(t, drainAll, false, jobOK) }
func TestT14BlockjobDrain(t *testing.T)    { testBlockjob(t, drainNode, false, jobOK) }
func TestT15BlockjobErrorDrainAll(t *testing.T) {
	testBlockjob(t, drainAll, false, jobRunFails)
	testBlockjob(t, drainAll, false, jobPrepareFails)
}
func TestT16BlockjobErrorDrain(t *testing.T) {
	testBlockjob(t, drainNode, false, jobRunFails)
	testBlockjob(t, drainNode, false, jobPrepareFails)
}
func TestT17BlockjobIOThreadDrainAll(t *testing.T) { testBlockjob(t, drainAll, true, jobOK) }
func TestT18BlockjobIOThreadDrain(t *testing.T)    { testBlockjob(t, drainNode, true, jobOK) }
func TestT19BlockjobIOThreadErrorDrainAll(t *testing.T) {
	testBlockjob(t, drainAll, true, jobRunFails)
	testBlockjob(t, drainAll, true, jobPrepareFails)
}
func TestT20BlockjobIOThreadErrorDrain(t *testing.T) {
	testBlockjob(t, drainNode, true, jobRunFails)
	testBlockjob(t, drainNode, true, jobPrepareFails)
}
func TestT38BlockjobDrainSubtree(t *testing.T) { testBlockjob(t, drainSubtree, false, jobOK) }
func TestT39BlockjobErrorDrainSubtree(t *testing.T) {
	testBlockjob(t, drainSubtree, false, jobRunFails)
	testBlockjob(t, drainSubtree, false, jobPrepareFails)
}
func TestT40BlockjobIOThreadDrainSubtree(t *testing.T) { testBlockjob(t, drainSubtree, true, jobOK) }
func TestT41BlockjobIOThreadErrorDrainSubtree(t *testing.T) {
	testBlockjob(t, drainSubtree, true, jobRunFails)
	testBlockjob(t, drainSubtree, true, jobPrepareFails)
}

// TestI17AttachBlockjob: a running job follows its node between Contexts
// (paused by the move's drain, resumed on the new Context, never running
// on the wrong one) and completes on the main Context.
func TestI17AttachBlockjob(t *testing.T) {
	e := blocktest.NewEnv(t, 1)
	n := e.Open(blocktest.NewDriver(64<<10), block.Options{Name: "n"})
	fe := e.FrontEnd("fe", n, block.FrontEndOptions{AllowContextChange: true})
	n.Unref()
	job := blocktest.NewJob(e.G, e.Main)
	var prepareOnMain bool
	job.Prepare = func() error { prepareOnMain = e.Main.InContext(); return nil }
	if _, err := job.AddNode(n, "node"); err != nil {
		t.Fatal(err)
	}
	job.Start()
	for round, ctx := range []*struct{ main bool }{{false}, {true}, {false}, {true}, {false}} {
		e.WaitFor("job iterating", func() bool { return job.Iterations.Load() > 0 })
		target := e.IO[0]
		if ctx.main {
			target = e.Main
		}
		if err := fe.SetContext(target); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if job.Context() != target || n.Context() != target {
			t.Fatalf("round %d: job on %s, node on %s", round, job.Context().Name(), n.Context().Name())
		}
		job.Iterations.Store(0)
		e.WaitFor("job iterating in the new Context", func() bool { return job.Iterations.Load() > 0 })
	}
	if err := job.Complete(t); err != nil || !prepareOnMain {
		t.Fatalf("complete: %v, prepare on main %v", err, prepareOnMain)
	}
	if job.WrongContext.Load() != 0 {
		t.Fatalf("%d iterations on the wrong Context", job.WrongContext.Load())
	}
	if err := fe.SetContext(e.Main); err != nil {
		t.Fatal(err)
	}
	fe.Close()
}

// TestT28CommitByDrainedEnd: drained end does not poll, so a job resumed
// by it cannot complete (and rewrite the graph) while drained end still
// walks the drained node's parents; when it completes later, its commit
// removes two of those parent edges cleanly.
func TestT28CommitByDrainedEnd(t *testing.T) {
	e := blocktest.NewEnv(t, 0)
	cn := e.Open(blocktest.NewDriver(64<<10), block.Options{Name: "child-node"})
	var parents []*block.Node
	var edges []*block.Child
	for i := 0; i < 3; i++ {
		p := e.Open(blocktest.NewDriver(64<<10), block.Options{Name: "parent-node-" + string(rune('0'+i))})
		edges = append(edges, e.Attach(p, cn, "backing", block.RoleBacking))
		parents = append(parents, p)
	}
	if ps := cn.Parents(); len(ps) != 3 || ps[0] != edges[2] || ps[2] != edges[0] {
		t.Fatal("child's parent list is not newest first")
	}
	job := blocktest.NewJob(e.G, e.Main)
	job.Sleep = 0
	job.Commit = func() {
		e.G.Detach(edges[2])
		e.G.Detach(edges[0])
	}
	if _, err := job.AddNode(parents[2], "job-node"); err != nil {
		t.Fatal(err)
	}
	job.Start()
	e.WaitFor("job running", func() bool { return job.Iterations.Load() > 0 })
	var completedInEnd bool
	done := make(chan error, 1)
	e.OnMain(func() {
		// Ask for completion, drain and undrain inside one main-Context
		// call: nothing but the drain's own wait can poll here.
		// The job runs on main too, so it cannot act before the drain.
		job.RequestComplete()
		go func() { done <- job.Complete(t) }()
		cn.DrainedBegin()
		if job.Completed() {
			t.Error("job completed inside the drained section")
		}
		cn.DrainedEnd()
		completedInEnd = job.Completed()
	})
	if completedInEnd {
		t.Fatal("drained end polled: the job completed inside it")
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if ps := cn.Parents(); len(ps) != 1 || ps[0] != edges[1] {
		t.Fatalf("child's parents after commit: %v", ps)
	}
	wantQ(t, "after", cn, 0, parents[0], 0, parents[1], 0, parents[2], 0)
	for _, p := range parents {
		p.Unref()
	}
	cn.Unref()
}
