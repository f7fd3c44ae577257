package job_test

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
	"github.com/ringblk/ringblk/job"
)

type mirrorEnv struct {
	e              *blocktest.Env
	srcMem, tgtMem *blocktest.Mem
	src, tgt       *block.Node
	fe             *block.FrontEnd
	g              *guest
	m              *job.Manager
	rec            *recorder
}

// newMirrorEnv starts a guest writing the source from an IOThread; delay
// paces each of its 4 write slots (a background mirror converges only
// when it copies faster than the guest dirties).
func newMirrorEnv(t *testing.T, size int64, delay time.Duration) *mirrorEnv {
	e := blocktest.NewEnv(t, 1)
	me := &mirrorEnv{e: e, srcMem: randomMem(size, 1), tgtMem: blocktest.NewMem(size), rec: &recorder{}}
	me.src = e.Open(me.srcMem, block.Options{Name: "src"})
	me.tgt = e.Open(me.tgtMem, block.Options{Name: "tgt"})
	me.fe = e.FrontEnd("fe", me.src, block.FrontEndOptions{AllowContextChange: true})
	if err := me.fe.SetContext(e.IO[0]); err != nil {
		t.Fatal(err)
	}
	me.g = startGuest(e, me.fe, e.IO[0], size, 4, 9, delay)
	me.m = job.NewManager(e.G, me.rec.add)
	return me
}

func (me *mirrorEnv) close(t *testing.T) {
	me.g.halt(me.e)
	if n := me.g.errs.Load(); n != 0 {
		t.Fatalf("%d guest write errors, last %v", n, me.g.lastErr.Load())
	}
	wantQuiet(t, me.src, me.tgt)
	if err := me.fe.SetContext(me.e.Main); err != nil {
		t.Fatal(err)
	}
	me.fe.Close()
	me.src.Unref()
	me.tgt.Unref()
}

// TestMirrorLiveConverges: a mirror of an image that a guest on an
// IOThread keeps writing becomes ready, and complete pivots the guest's
// front end to the target inside a drained section in which target and
// source are equal; afterwards the guest writes only the target, the
// source's bitmap and filter are gone. Both copy modes.
func TestMirrorLiveConverges(t *testing.T) {
	for _, mode := range []job.CopyMode{job.Background, job.WriteBlocking} {
		for _, sync := range []job.MirrorSync{job.MirrorFull, job.MirrorTop} {
			t.Run(fmt.Sprintf("mode%d-sync%d", mode, sync), func(t *testing.T) {
				const size = 4 << 20
				delay := 2 * time.Millisecond
				if mode == job.WriteBlocking {
					delay = 100 * time.Microsecond // converges however fast the guest writes
				}
				me := newMirrorEnv(t, size, delay)
				var equalAtPivot, hookRan bool
				var srcAtPivot []byte
				j, mi, err := job.NewMirror(me.m, job.MirrorOptions{
					Options: job.Options{ID: "m"}, Source: me.src, Target: me.tgt, CopyMode: mode, Sync: sync,
					Granularity: 16 << 10, MaxRequest: 256 << 10,
					PivotHook: func(s, tg *block.Node) {
						hookRan = true
						srcAtPivot = me.srcMem.Snapshot()
						equalAtPivot = bytes.Equal(srcAtPivot, me.tgtMem.Snapshot()) && s.Quiesce() > 0
					},
				})
				if err != nil {
					t.Fatal(err)
				}
				if me.fe.Root().Name() != "#mirror-top-m" {
					t.Fatalf("front end root %s, want the mirror filter", me.fe.Root().Name())
				}
				if j.Context() != me.e.IO[0] {
					t.Fatal("mirror not on the source's IOThread")
				}
				j.Start()
				me.e.WaitFor("ready", func() bool { return j.IsReady() })
				w := me.g.writes.Load()
				me.e.WaitFor("guest writing while ready", func() bool { return me.g.writes.Load() > w+500 })
				if err := j.Complete(); err != nil {
					t.Fatal(err)
				}
				if err := waitDone(t, j); err != nil {
					t.Fatal(err)
				}
				if !hookRan || !equalAtPivot || !mi.Pivoted() {
					t.Fatalf("hook ran %v, target equal to the source at the pivot %v, pivoted %v", hookRan, equalAtPivot, mi.Pivoted())
				}
				if me.fe.Root() != me.tgt {
					t.Fatalf("front end on %s after the pivot", me.fe.Root().Name())
				}
				w = me.g.writes.Load()
				me.e.WaitFor("guest writing the target", func() bool { return me.g.writes.Load() > w+200 })
				me.g.halt(me.e)
				if !bytes.Equal(me.srcMem.Snapshot(), srcAtPivot) {
					t.Fatal("the source changed after the pivot")
				}
				if len(me.src.Parents()) != 0 || len(me.tgt.Parents()) != 1 {
					t.Fatalf("left behind: bitmaps %d, source parents %v, target parents %v", len(me.src.Bitmaps()), me.src.Parents(), me.tgt.Parents())
				}
				if me.rec.count(job.EventReady) != 1 || me.rec.count(job.EventCompleted) != 1 {
					t.Fatal("events")
				}
				if cur, total := j.Progress(); cur < size || total < cur {
					t.Fatalf("progress %d/%d", cur, total)
				}
				me.close(t)
			})
		}
	}
}

// TestMirrorCancel: a forced cancel aborts (filter removed, front end back
// on the source, BLOCK_JOB_CANCELLED); a soft cancel of a ready mirror
// leaves the target as a point-in-time copy of the moment of the cancel
// without pivoting and reports completion (as QEMU's block-job-cancel
// after BLOCK_JOB_READY).
func TestMirrorCancel(t *testing.T) {
	for _, force := range []bool{true, false} {
		t.Run(fmt.Sprint("force=", force), func(t *testing.T) {
			me := newMirrorEnv(t, 2<<20, 2*time.Millisecond)
			var equal bool
			j, mi, err := job.NewMirror(me.m, job.MirrorOptions{Options: job.Options{ID: "c"}, Source: me.src, Target: me.tgt,
				PivotHook: func(*block.Node, *block.Node) { equal = bytes.Equal(me.srcMem.Snapshot(), me.tgtMem.Snapshot()) }})
			if err != nil {
				t.Fatal(err)
			}
			j.Start()
			me.e.WaitFor("ready", func() bool { return j.IsReady() })
			if err := j.Cancel(force); err != nil {
				t.Fatal(err)
			}
			err = waitDone(t, j)
			if force {
				if !errors.Is(err, job.ErrCancelled) || me.rec.count(job.EventCancelled) != 1 {
					t.Fatalf("forced cancel: %v", err)
				}
			} else if err != nil || !equal || me.rec.count(job.EventCompleted) != 1 {
				t.Fatalf("soft cancel: %v, equal %v", err, equal)
			}
			if mi.Pivoted() || me.fe.Root() != me.src || len(me.tgt.Parents()) != 0 {
				t.Fatalf("after cancel: pivoted %v, root %s", mi.Pivoted(), me.fe.Root().Name())
			}
			me.close(t)
		})
	}
}
