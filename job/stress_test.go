package job_test

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"runtime"
	"testing"
	"time"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
	"github.com/ringblk/ringblk/job"
)

// TestJobsUnderDrainAndMoves: [JOB][IOT][GRAPH] a mirror and a backup run
// on IOThreads while the main Context drains their nodes (node, subtree
// and drain-all sections), moves their front ends — and with them the
// jobs — between Contexts, and pauses and resumes them. Inside every
// drained section each job with an edge under it sits at a pause point
// (not busy) and the drained node has nothing in flight; the mirror still
// pivots with its target equal to the source and the backup is still the
// point-in-time image.
func TestJobsUnderDrainAndMoves(t *testing.T) {
	rounds := 150
	if testing.Short() {
		rounds = 40
	}
	e := blocktest.NewEnv(t, 2)
	ctxs := []*aio.Context{e.Main, e.IO[0], e.IO[1]}
	const size = 2 << 20
	m := job.NewManager(e.G, nil)

	type side struct {
		srcMem, tgtMem *blocktest.Mem
		src, tgt       *block.Node
		fe             *block.FrontEnd
		g              *guest
	}
	mk := func(name string, seed uint64, delay time.Duration) *side {
		s := &side{srcMem: randomMem(size, seed), tgtMem: blocktest.NewMem(size)}
		s.src = e.Open(s.srcMem, block.Options{Name: name + "-src"})
		s.tgt = e.Open(s.tgtMem, block.Options{Name: name + "-tgt"})
		s.fe = e.FrontEnd(name+"-fe", s.src, block.FrontEndOptions{AllowContextChange: true})
		if err := s.fe.SetContext(e.IO[0]); err != nil {
			t.Fatal(err)
		}
		s.g = startGuest(e, s.fe, e.IO[0], size, 4, seed, delay)
		return s
	}
	ms := mk("m", 21, 5*time.Millisecond)
	bs := mk("b", 22, 200*time.Microsecond)

	var equalAtPivot bool
	mj, _, err := job.NewMirror(m, job.MirrorOptions{Options: job.Options{ID: "mirror"}, Source: ms.src, Target: ms.tgt,
		MaxRequest: 128 << 10, Parallel: 2, Granularity: 4096,
		PivotHook: func(*block.Node, *block.Node) {
			equalAtPivot = bytes.Equal(ms.srcMem.Snapshot(), ms.tgtMem.Snapshot())
		}})
	if err != nil {
		t.Fatal(err)
	}
	bs.src.DrainedBegin()
	pit := bs.srcMem.Snapshot()
	bj, _, err := job.NewBackup(m, job.BackupOptions{Options: job.Options{ID: "backup", Speed: 4 << 20}, Source: bs.src, Target: bs.tgt,
		Drained: true, MaxRequest: 64 << 10, Parallel: 2})
	bs.src.DrainedEnd()
	if err != nil {
		t.Fatal(err)
	}
	mj.Start()
	bj.Start()

	rng := rand.New(rand.NewPCG(17, 17))
	jobs := map[*block.Node][]*job.Job{ms.src: {mj}, ms.tgt: {mj}, bs.src: {bj}, bs.tgt: {bj}}
	nodes := []*block.Node{ms.src, ms.tgt, bs.src, bs.tgt}
	checkParked := func(what string, ns []*block.Node) {
		for _, n := range ns {
			for _, j := range jobs[n] {
				if st := j.Status(); j.Busy() && st != job.Null && st != job.Concluded {
					t.Errorf("%s: job %s busy (status %s) inside a drained section of %s", what, j.ID(), st, n.Name())
				}
			}
			if n.InFlight() != 0 {
				t.Errorf("%s: %s has %d requests in flight while drained", what, n.Name(), n.InFlight())
			}
		}
	}
	for i := 0; i < rounds && !t.Failed(); i++ {
		switch op := rng.IntN(6); op {
		case 0, 1:
			n := nodes[rng.IntN(len(nodes))]
			e.OnMain(func() {
				n.DrainedBegin()
				checkParked("drain "+n.Name(), []*block.Node{n})
				n.DrainedEnd()
			})
		case 2:
			e.OnMain(func() {
				e.G.DrainAllBegin()
				checkParked("drain-all", nodes)
				e.G.DrainAllEnd()
			})
		case 3:
			n := nodes[rng.IntN(len(nodes))]
			e.OnMain(func() {
				n.SubtreeDrainedBegin()
				checkParked("subtree drain "+n.Name(), []*block.Node{n})
				n.SubtreeDrainedEnd()
			})
		case 4:
			s := []*side{ms, bs}[rng.IntN(2)]
			ctx := ctxs[rng.IntN(len(ctxs))]
			if err := s.fe.SetContext(ctx); err != nil {
				t.Fatalf("move %s to %s: %v", s.fe.Name(), ctx.Name(), err)
			}
			j := mj
			if s == bs {
				j = bj
			}
			if st := j.Status(); st != job.Null && st != job.Concluded && j.Context() != ctx {
				t.Fatalf("job %s on %s after its node moved to %s", j.ID(), j.Context().Name(), ctx.Name())
			}
		case 5:
			j := []*job.Job{mj, bj}[rng.IntN(2)]
			if j.Pause() == nil {
				time.Sleep(100 * time.Microsecond)
				j.Resume()
			}
		}
		time.Sleep(time.Duration(rng.IntN(300)) * time.Microsecond)
	}
	e.WaitFor("mirror ready", func() bool { return mj.IsReady() })
	if err := mj.Complete(); err != nil {
		t.Fatal(err)
	}
	for _, j := range []*job.Job{mj, bj} {
		if err := waitDone(t, j); err != nil {
			t.Fatalf("%s: %v", j.ID(), err)
		}
	}
	if !equalAtPivot {
		t.Fatal("mirror target differs from the source at the pivot")
	}
	if got := bs.tgtMem.Snapshot(); !bytes.Equal(got, pit) {
		t.Fatalf("backup differs from the point in time at %d", firstDiff(got, pit))
	}
	for _, s := range []*side{ms, bs} {
		s.g.halt(e)
		if s.g.errs.Load() != 0 {
			t.Fatalf("guest errors: %v", s.g.lastErr.Load())
		}
		s.fe.SetContext(e.Main)
		s.fe.Close()
	}
	wantQuiet(t, nodes...)
	for _, n := range nodes {
		n.Unref()
	}
	if m.Len() != 0 {
		t.Fatalf("%d jobs left", m.Len())
	}
}

// TestJobStress: [JOB][GRAPH] randomized: several short jobs of every kind
// started, paused, cancelled and completed while drains of every kind run
// on the main Context, front ends (and with them the jobs) move between
// Contexts, and filter nodes come and go above the jobs' nodes. No hang (every wait is bounded), every node's
// counters back to 0, no job left, and no goroutine left behind.
func TestJobStress(t *testing.T) {
	seeds := 6
	if testing.Short() {
		seeds = 2
	}
	for seed := uint64(1); seed <= uint64(seeds); seed++ {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			e := blocktest.NewEnv(t, 2)
			runtime.GC()
			g0 := runtime.NumGoroutine()
			stressRound(t, e, seed)
			deadline := time.Now().Add(5 * time.Second)
			for runtime.NumGoroutine() > g0 && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			if n := runtime.NumGoroutine(); n > g0 {
				buf := make([]byte, 1<<16)
				t.Fatalf("%d goroutines after the round, %d before\n%s", n, g0, buf[:runtime.Stack(buf, true)])
			}
		})
	}
}

func stressRound(t *testing.T, e *blocktest.Env, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 99))
	m := job.NewManager(e.G, nil)
	const size = 1 << 20
	ctxs := []*aio.Context{e.Main, e.IO[0], e.IO[1]}
	var all []*block.Node
	var fes []*block.FrontEnd
	var guests []*guest
	var jobs []*job.Job
	open := func(d block.Driver, name string) *block.Node {
		n := e.Open(d, block.Options{Name: name})
		all = append(all, n)
		return n
	}
	for k := 0; k < 4; k++ {
		kind := rng.IntN(4)
		id := fmt.Sprintf("j%d", k)
		ctx := ctxs[1+rng.IntN(2)]
		var top *block.Node
		var j *job.Job
		var err error
		switch kind {
		case 0, 1: // mirror, backup
			src := open(randomMem(size, seed+uint64(k)), id+"-src")
			tgt := open(blocktest.NewMem(size), id+"-tgt")
			top = src
			if kind == 0 {
				j, _, err = job.NewMirror(m, job.MirrorOptions{Options: job.Options{ID: id}, Source: src, Target: tgt,
					CopyMode: job.CopyMode(rng.IntN(2)), MaxRequest: 64 << 10, Parallel: 2})
			} else {
				j, _, err = job.NewBackup(m, job.BackupOptions{Options: job.Options{ID: id, Speed: 8 << 20}, Source: src, Target: tgt})
			}
		case 2, 3: // stream, commit of a three-layer chain
			db := newCow(size, nil)
			fillRandom(db, seed)
			dm := newCow(size, db)
			fillRandom(dm, seed+1)
			dt := newCow(size, dm)
			b, mid, tn := open(db, id+"-b"), open(dm, id+"-m"), open(dt, id+"-t")
			e.Attach(mid, b, "backing", block.RoleBacking)
			e.Attach(tn, mid, "backing", block.RoleBacking)
			top = tn
			if kind == 2 {
				j, _, err = job.NewStream(m, job.StreamOptions{Options: job.Options{ID: id}, Top: tn, Chunk: 64 << 10})
			} else {
				j, _, err = job.NewCommit(m, job.CommitOptions{Options: job.Options{ID: id}, Top: mid, Base: b, Chunk: 64 << 10})
			}
		}
		if err != nil {
			t.Fatalf("%s: %v", id, err)
		}
		var root *block.Node
		e.OnMain(func() {
			root = top
			for len(root.Parents()) > 0 && root.Parents()[0].Parent() != nil {
				root = root.Parents()[0].Parent()
			}
		})
		fe := e.FrontEnd(id+"-fe", root, block.FrontEndOptions{AllowContextChange: true})
		if err := fe.SetContext(ctx); err != nil {
			t.Fatal(err)
		}
		fes = append(fes, fe)
		guests = append(guests, startGuest(e, fe, ctx, size, 2, seed*10+uint64(k), time.Millisecond))
		jobs = append(jobs, j)
		j.Start()
	}
	extra := 0
	for i := 0; i < 60; i++ {
		switch rng.IntN(9) {
		case 7, 8:
			// A graph change around the running jobs: a new parent above a
			// random node, on that node's Context, then gone again (an
			// attach quiesces it if the node is drained; the detach and
			// the delete drain it for its close).
			n := all[rng.IntN(len(all))]
			fwd := &blocktest.Forward{}
			extra++
			p, err := e.G.Open(fwd, block.Options{Name: fmt.Sprint("extra", extra), Context: n.Context()})
			if err != nil {
				t.Fatal(err)
			}
			c, err := e.G.Attach(p, n, block.ChildSpec{Name: "file", Role: block.RoleFiltered | block.RolePrimary})
			if err != nil {
				t.Fatalf("attach above %s: %v", n.Name(), err)
			}
			fwd.Edge.Store(c)
			if rng.IntN(2) == 0 {
				e.OnMain(func() { n.DrainedBegin(); n.DrainedEnd() })
			}
			if err := p.Unref(); err != nil {
				t.Fatal(err)
			}
		case 0:
			n := all[rng.IntN(len(all))]
			e.OnMain(func() { n.DrainedBegin(); n.DrainedEnd() })
		case 1:
			e.G.DrainAllBegin()
			e.G.DrainAllEnd()
		case 2:
			n := all[rng.IntN(len(all))]
			n.SubtreeDrainedBegin()
			n.SubtreeDrainedEnd()
		case 3:
			fe := fes[rng.IntN(len(fes))]
			if err := fe.SetContext(ctxs[rng.IntN(len(ctxs))]); err != nil {
				t.Fatalf("move: %v", err)
			}
		case 4:
			j := jobs[rng.IntN(len(jobs))]
			if j.Pause() == nil {
				j.Resume()
			}
		case 5:
			j := jobs[rng.IntN(len(jobs))]
			if rng.IntN(4) == 0 {
				j.Cancel(rng.IntN(2) == 0)
			} else if j.IsReady() {
				j.Complete()
			}
		case 6:
			time.Sleep(time.Millisecond)
		}
	}
	for _, j := range jobs {
		deadline := time.Now().Add(20 * time.Second)
		for {
			st := j.Status()
			if st == job.Null || st == job.Concluded {
				break
			}
			if st == job.Ready || st == job.Standby {
				j.Complete()
			}
			if time.Now().After(deadline) {
				t.Fatalf("job %s stuck in %s (hang)", j.ID(), st)
			}
			time.Sleep(time.Millisecond)
		}
	}
	for i, fe := range fes {
		guests[i].halt(e)
		fe.SetContext(e.Main)
		fe.Close()
	}
	if m.Len() != 0 {
		t.Fatalf("%d jobs left", m.Len())
	}
	for _, n := range all {
		wantQuiet(t, n)
	}
	for _, n := range all {
		n.Unref()
	}
}
