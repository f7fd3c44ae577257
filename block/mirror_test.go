package block_test

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
)

// TestI22PropagateMirror (drain.md §2.4 I22): a running mirror job whose
// edges go to a filter above src and to target ties src, filter and target
// into one component. Moving src moves the filter, the target and the
// job's Context; moving target moves everything back. A front end on src
// without a name or device ops vetoes a move started at target, and the
// veto leaves everything as it was (no Context changed, nothing quiesced,
// the job not even paused); once the front end allows Context changes the
// same move goes through. The job is paused by each real move, keeps
// copying on its new Context, never runs or completes I/O on a wrong one,
// and every chunk it reports copied equals the source.
func TestI22PropagateMirror(t *testing.T) {
	const size, chunk = 64 << 10, 4 << 10
	e := blocktest.NewEnv(t, 1)
	srcMem := blocktest.NewMem(size)
	rng := rand.New(rand.NewPCG(22, 22))
	for i := range srcMem.Data {
		srcMem.Data[i] = byte(rng.Uint32() | 1) // never 0: an uncopied target chunk differs
	}
	tgtMem := blocktest.NewMem(size)
	src := e.Open(srcMem, block.Options{Name: "src"})
	target := e.Open(tgtMem, block.Options{Name: "target"})
	fwd := &blocktest.Forward{}
	filter := e.Open(fwd, block.Options{Name: "filter_node"})
	fwd.Edge.Store(e.Attach(filter, src, "file", block.RoleFiltered|block.RolePrimary))

	job, err := blocktest.NewMirror(e.G, e.Main, filter, target, chunk)
	if err != nil {
		t.Fatal(err)
	}
	if job.Size() != size {
		t.Fatalf("mirror covers %d bytes, want %d", job.Size(), size)
	}
	job.Sleep = 100 * time.Microsecond // busy between chunks: drain must wait for the job itself
	job.Start()

	nodes := []*block.Node{src, filter, target}
	// wantAll checks every node's Context and the job's.
	wantAll := func(what string, ctx *aio.Context) {
		t.Helper()
		for _, n := range nodes {
			if n.Context() != ctx {
				t.Fatalf("%s: %s on %s, want %s", what, n.Name(), n.Context().Name(), ctx.Name())
			}
		}
		if job.Context() != ctx {
			t.Fatalf("%s: job on %s, want %s", what, job.Context().Name(), ctx.Name())
		}
	}
	// progress waits until the job has copied more chunks (on whatever
	// Context it is on now).
	progress := func(what string) {
		t.Helper()
		n := job.Copies.Load()
		e.WaitFor(what, func() bool { return job.Copies.Load() > n+1 })
	}
	// move moves start to ctx and checks that the move paused the job
	// (it drained the component) and that everything followed.
	move := func(what string, set func(*aio.Context) error, ctx *aio.Context) {
		t.Helper()
		pauses := job.Pauses.Load()
		if err := set(ctx); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		wantAll(what, ctx)
		if job.Pauses.Load() == pauses {
			t.Fatalf("%s: the move did not pause the job", what)
		}
		progress(what + ": job copying on " + ctx.Name())
	}

	wantAll("start", e.Main)
	progress("job copying on main")
	move("move src to the IOThread", src.SetContext, e.IO[0])
	move("move target back to main", target.SetContext, e.Main)

	// A front end without name or device ops does not allow the change.
	fe := e.FrontEnd("", src, block.FrontEndOptions{})
	pauses := job.Pauses.Load()
	err = target.SetContext(e.IO[0])
	if err == nil || !block.IsKind(err, block.Unsupported) {
		t.Fatalf("move through an anonymous front end: %v, want an Unsupported veto", err)
	}
	wantAll("after the vetoed move", e.Main)
	if fe.Context() != e.Main {
		t.Fatalf("after the vetoed move: front end on %s", fe.Context().Name())
	}
	for _, n := range nodes {
		if n.Quiesce() != 0 {
			t.Fatalf("after the vetoed move: %s quiesce %d", n.Name(), n.Quiesce())
		}
	}
	if fe.Quiesce() != 0 || job.PauseCount() != 0 || job.Paused() || job.Pauses.Load() != pauses {
		t.Fatalf("vetoed move drained something: fe quiesce %d, job pauseCount %d paused %v, pauses %d→%d",
			fe.Quiesce(), job.PauseCount(), job.Paused(), pauses, job.Pauses.Load())
	}
	progress("job copying after the veto")

	fe.AllowContextChange(true)
	move("allowed move of target to the IOThread", target.SetContext, e.IO[0])
	if fe.Context() != e.IO[0] {
		t.Fatalf("allowed move: front end on %s", fe.Context().Name())
	}

	// Cancel the job on the IOThread: it aborts, and its edges go.
	aborted := false
	job.Abort = func() { aborted = e.Main.InContext() }
	if err := job.Cancel(t); !errors.Is(err, blocktest.ErrCancelled) {
		t.Fatalf("cancel: %v, want ErrCancelled", err)
	}
	if !aborted || !job.Completed() || job.Running() {
		t.Fatalf("cancel: abort on main %v, completed %v, running %v", aborted, job.Completed(), job.Running())
	}
	if len(target.Parents()) != 0 || len(filter.Parents()) != 0 {
		t.Fatalf("job edges left: target %v, filter %v", target.Parents(), filter.Parents())
	}
	// Without the job, target is on its own; move both parts back.
	if err := fe.SetContext(e.Main); err != nil {
		t.Fatal(err)
	}
	if src.Context() != e.Main || filter.Context() != e.Main || fe.Context() != e.Main {
		t.Fatal("front end's move did not carry src and the filter back")
	}
	if target.Context() != e.IO[0] {
		t.Fatal("target followed a move it is no longer connected to")
	}
	if err := target.SetContext(e.Main); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if n.Context() != e.Main || n.InFlight() != 0 || n.Quiesce() != 0 {
			t.Fatalf("%s at the end: on %s, in flight %d, quiesce %d", n.Name(), n.Context().Name(), n.InFlight(), n.Quiesce())
		}
	}
	if fe.InFlight() != 0 {
		t.Fatalf("front end in flight %d", fe.InFlight())
	}
	if n := job.WrongContext.Load(); n != 0 {
		t.Fatalf("%d job iterations or completions on the wrong Context", n)
	}
	if err := job.LastIOError(); err != nil || job.IOErrors.Load() != 0 {
		t.Fatalf("%d copy errors, last %v", job.IOErrors.Load(), err)
	}

	// Every chunk the job reported copied equals the source there.
	copied := job.Copied()
	if len(copied) == 0 {
		t.Fatal("the job reported no chunk copied")
	}
	want, got := srcMem.Snapshot(), tgtMem.Snapshot()
	for _, off := range copied {
		if !bytes.Equal(got[off:off+chunk], want[off:off+chunk]) {
			t.Fatalf("chunk at %d differs from the source", off)
		}
	}
	if len(copied) < size/chunk && bytes.Equal(got, want) {
		t.Fatal("target equals the source although some chunks were never copied")
	}

	for _, n := range nodes {
		n.Unref()
	}
	fe.Close()
}
