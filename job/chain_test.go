package job_test

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"syscall"
	"testing"
	"time"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
	"github.com/ringblk/ringblk/job"
)

// chainEnv is B ← M ← T (cowMem layers, each allocating a random third
// of its clusters with its own data), with a guest writing T through a
// front end on an IOThread.
type chainEnv struct {
	e          *blocktest.Env
	db, dm, dt *cowMem
	b, mid, t  *block.Node
	fe         *block.FrontEnd
	g          *guest
	initial    []byte
	m          *job.Manager
	rec        *recorder
}

func fillRandom(d *cowMem, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 5))
	buf := make([]byte, cowCluster)
	for c := int64(0); c < int64(len(d.alloc)); c++ {
		if rng.IntN(3) == 0 {
			for i := range buf {
				buf[i] = byte(rng.Uint32())
			}
			d.writeAt(buf, c*cowCluster)
		}
	}
}

func newChainEnv(t *testing.T, size int64, withMid bool, delay time.Duration) *chainEnv {
	e := blocktest.NewEnv(t, 1)
	ce := &chainEnv{e: e, rec: &recorder{}}
	ce.db = newCow(size, nil)
	fillRandom(ce.db, 1)
	ce.b = e.Open(ce.db, block.Options{Name: "B"})
	under := ce.b
	underDrv := ce.db
	if withMid {
		ce.dm = newCow(size, ce.db)
		fillRandom(ce.dm, 2)
		ce.mid = e.Open(ce.dm, block.Options{Name: "M"})
		e.Attach(ce.mid, ce.b, "backing", block.RoleBacking)
		under, underDrv = ce.mid, ce.dm
	}
	ce.dt = newCow(size, underDrv)
	fillRandom(ce.dt, 3)
	ce.t = e.Open(ce.dt, block.Options{Name: "T"})
	e.Attach(ce.t, under, "backing", block.RoleBacking)
	ce.initial = ce.dt.view()
	ce.fe = e.FrontEnd("fe", ce.t, block.FrontEndOptions{AllowContextChange: true})
	if err := ce.fe.SetContext(e.IO[0]); err != nil {
		t.Fatal(err)
	}
	ce.g = startGuest(e, ce.fe, e.IO[0], size, 4, 11, delay)
	ce.m = job.NewManager(e.G, ce.rec.add)
	return ce
}

func (ce *chainEnv) finish(t *testing.T, nodes ...*block.Node) {
	ce.g.halt(ce.e)
	if n := ce.g.errs.Load(); n != 0 {
		t.Fatalf("%d guest write errors: %v", n, ce.g.lastErr.Load())
	}
	ce.fe.SetContext(ce.e.Main)
	ce.fe.Close()
	for _, n := range nodes {
		if n != nil {
			wantQuiet(t, n)
			n.Unref()
		}
	}
}

// TestStream: [JOB] stream pulls the backing data into T while the guest
// writes T; T then reads exactly what it read before plus the guest's
// writes, with its backing link dropped (Base nil) or pointed at B
// (through DropIntermediate, with B's name recorded in T).
func TestStream(t *testing.T) {
	for _, toBase := range []bool{false, true} {
		t.Run(fmt.Sprint("base=", toBase), func(t *testing.T) {
			const size = 2 << 20
			ce := newChainEnv(t, size, true, 200*time.Microsecond)
			o := job.StreamOptions{Options: job.Options{ID: "s"}, Top: ce.t, Chunk: 64 << 10}
			if toBase {
				o.Base = ce.b
			}
			j, _, err := job.NewStream(ce.m, o)
			if err != nil {
				t.Fatal(err)
			}
			j.Start()
			if err := waitDone(t, j); err != nil {
				t.Fatal(err)
			}
			ce.g.halt(ce.e)
			want := ce.g.expect(ce.initial)
			if got := ce.dt.view(); !bytes.Equal(got, want) {
				t.Fatalf("T after stream differs at %d", firstDiff(got, want))
			}
			var parents int
			ce.e.OnMain(func() { parents = len(ce.mid.Parents()) })
			if parents != 0 {
				t.Fatal("M is still in the chain")
			}
			var backing *block.Child
			ce.e.OnMain(func() { backing = ce.t.Child(block.RoleBacking) })
			if toBase {
				if ce.dt.backing.Load() != ce.db || ce.dt.backingName != "B" || backing.Node() != ce.b {
					t.Fatalf("T's backing: %q", ce.dt.backingName)
				}
			} else {
				if ce.dt.backing.Load() != nil || backing != nil {
					t.Fatal("T still has a backing link")
				}
				if ce.fe.Root() != ce.t {
					t.Fatal("front end not back on T")
				}
			}
			ce.finish(t, ce.t, ce.mid, ce.b)
		})
	}
}

// TestCommitIntermediate: [JOB] committing M into B while the guest
// writes T leaves T reading exactly what it read (plus the guest's
// writes) through B, M dropped by DropIntermediate (T records B).
func TestCommitIntermediate(t *testing.T) {
	const size = 2 << 20
	ce := newChainEnv(t, size, true, 200*time.Microsecond)
	mView := ce.dm.view()
	j, drv, err := job.NewCommit(ce.m, job.CommitOptions{Options: job.Options{ID: "c"}, Top: ce.mid, Base: ce.b, Chunk: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := drv.(*job.Commit); !ok {
		t.Fatalf("intermediate commit driver %T", drv)
	}
	j.Start()
	if err := waitDone(t, j); err != nil {
		t.Fatal(err)
	}
	ce.g.halt(ce.e)
	if got, want := ce.dt.view(), ce.g.expect(ce.initial); !bytes.Equal(got, want) {
		t.Fatalf("T after commit differs at %d", firstDiff(got, want))
	}
	if got := ce.db.view(); !bytes.Equal(got, mView) {
		t.Fatalf("B does not hold M's view at %d", firstDiff(got, mView))
	}
	var backing *block.Child
	ce.e.OnMain(func() { backing = ce.t.Child(block.RoleBacking) })
	if backing.Node() != ce.b || ce.dt.backingName != "B" {
		t.Fatal("T not re-pointed at B")
	}
	ce.finish(t, ce.t, ce.mid, ce.b)
}

// TestCommitActive: [JOB] committing the active layer T into B is a
// mirror: ready, then complete pivots the guest to B with B equal to T at
// the pivot; later guest writes land in B.
func TestCommitActive(t *testing.T) {
	const size = 2 << 20
	ce := newChainEnv(t, size, false, 2*time.Millisecond) // background copy: a guest it can outrun
	var equal bool
	j, drv, err := job.NewCommit(ce.m, job.CommitOptions{Options: job.Options{ID: "a"}, Top: ce.t, Base: ce.b,
		PivotHook: func(s, tg *block.Node) { equal = bytes.Equal(ce.dt.view(), ce.db.view()) }})
	if err != nil {
		t.Fatal(err)
	}
	if mi, ok := drv.(*job.Mirror); !ok || mi.Type() != "commit" {
		t.Fatalf("active commit driver %T", drv)
	}
	j.Start()
	ce.e.WaitFor("ready", func() bool { return j.IsReady() })
	if err := j.Complete(); err != nil {
		t.Fatal(err)
	}
	if err := waitDone(t, j); err != nil {
		t.Fatal(err)
	}
	if !equal || ce.fe.Root() != ce.b {
		t.Fatalf("equal at pivot %v, front end on %s", equal, ce.fe.Root().Name())
	}
	w := ce.g.writes.Load()
	ce.e.WaitFor("guest writing B", func() bool { return ce.g.writes.Load() > w+50 })
	ce.g.halt(ce.e)
	if got, want := ce.db.view(), ce.g.expect(ce.initial); !bytes.Equal(got, want) {
		t.Fatalf("B differs at %d", firstDiff(got, want))
	}
	ce.finish(t, ce.t, ce.b)
}

// TestCommitKeepChain: [JOB] KeepChain (ringblk commit's mode) commits the
// active layer T — no overlay above it — by copying what T and M hold
// into the base with no pivot and no change of any backing link, and
// flushes the base in Prepare: a failing flush of the base fails the job,
// so the command never empties T over data that is not durable.
func TestCommitKeepChain(t *testing.T) {
	const size = 1 << 20
	for _, failFlush := range []bool{false, true} {
		t.Run(fmt.Sprintf("failFlush=%v", failFlush), func(t *testing.T) {
			e := blocktest.NewEnv(t, 0)
			db := newCow(size, nil)
			fillRandom(db, 1)
			b := e.Open(db, block.Options{Name: "B"})
			dbg := &blocktest.Debug{}
			d := e.Open(dbg, block.Options{Name: "D"}) // the base: a fault filter over B
			dbg.Edge.Store(e.Attach(d, b, "file", block.RoleFile|block.RolePrimary))
			b.Unref()
			dm := newCow(size, db)
			fillRandom(dm, 2)
			mid := e.Open(dm, block.Options{Name: "M"})
			e.Attach(mid, d, "backing", block.RoleBacking)
			d.Unref()
			dt := newCow(size, dm)
			fillRandom(dt, 3)
			top := e.Open(dt, block.Options{Name: "T"})
			e.Attach(top, mid, "backing", block.RoleBacking)
			mid.Unref()
			want := dt.view()
			flush := dbg.AddRule(blocktest.Rule{Op: block.OpFlush, Err: syscall.EIO})
			if !failFlush {
				dbg.ClearRules()
				flush = dbg.AddRule(blocktest.Rule{Op: block.OpFlush, Delay: time.Microsecond})
			}
			m := job.NewManager(e.G, nil)
			j, drv, err := job.NewCommit(m, job.CommitOptions{Options: job.Options{ID: "k"}, Top: top, Base: d, KeepChain: true, Chunk: 64 << 10})
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := drv.(*job.Commit); !ok {
				t.Fatalf("KeepChain commit of the active layer: driver %T, want *job.Commit", drv)
			}
			j.Start()
			err = waitDone(t, j)
			if flush.Fired() == 0 {
				t.Fatal("the base was not flushed")
			}
			var ioe *job.IOError
			if failFlush {
				if !errors.As(err, &ioe) || ioe.Op != "flush" || !errors.Is(err, syscall.EIO) {
					t.Fatalf("job result %v, want the base's flush error", err)
				}
			} else if err != nil {
				t.Fatal(err)
			}
			if got := db.view(); !bytes.Equal(got, want) {
				t.Fatalf("B does not hold T's view at %d", firstDiff(got, want))
			}
			var tb, mb *block.Child
			e.OnMain(func() { tb, mb = top.Child(block.RoleBacking), mid.Child(block.RoleBacking) })
			if tb == nil || tb.Node() != mid || mb == nil || mb.Node() != d || dt.nameChanges+dm.nameChanges != 0 {
				t.Fatal("KeepChain changed the backing chain")
			}
			wantQuiet(t, top, mid, d)
			top.Unref()
		})
	}
}
