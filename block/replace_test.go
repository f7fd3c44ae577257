package block_test

import (
	"sync/atomic"
	"testing"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
)

// replaceTestDriver is T30's "replace_test" driver: it forwards reads to
// its backing child; with yieldBeforeRead a read first parks until the
// node's drain begins (which flushes it); its drain end starts a new read
// to the backing child ("requests flow again"). Flags record what happened.
type replaceTestDriver struct {
	block.DriverBase
	setupDone       bool
	yieldBeforeRead bool
	parked          *block.Request
	wasDrained      atomic.Bool
	wasUndrained    atomic.Bool
	hasRead         atomic.Bool
}

func (d *replaceTestDriver) Length(*block.Node) (int64, error) { return 64 << 10, nil }

func (d *replaceTestDriver) Read(r *block.Request) {
	if d.yieldBeforeRead && d.parked == nil {
		d.parked = r // holds the node's in-flight count while parked
		return
	}
	d.forward(r)
}

func (d *replaceTestDriver) forward(r *block.Request) {
	c := r.Node().Child(block.RoleBacking)
	s := r.Sub()
	s.Op, s.Off, s.Len, s.Iov = r.Op, r.Off, r.Len, r.Iov
	c.Submit(s, replaceFwdDone{d})
}

type replaceFwdDone struct{ d *replaceTestDriver }

func (f replaceFwdDone) RequestDone(s *block.Request, err error) {
	f.d.hasRead.Store(true)
	s.Parent.Complete(err)
}

func (d *replaceTestDriver) DrainBegin(n *block.Node) {
	if !d.setupDone {
		return
	}
	d.wasDrained.Store(true)
	if r := d.parked; r != nil {
		// Flush the parked read from the polling phase, not from here.
		d.parked = nil
		n.Context().Schedule(func() { d.forward(r) })
	}
}

func (d *replaceTestDriver) DrainEnd(n *block.Node) {
	if !d.setupDone {
		return
	}
	d.wasUndrained.Store(true)
	c := n.Child(block.RoleBacking)
	if c == nil {
		return
	}
	// A driver-internal read to the (new) backing child, counted on n.
	n.IncInFlight()
	n.Context().Schedule(func() {
		r := n.Graph().Pool(n.Context()).Get()
		r.Op = block.OpRead
		r.SetBuf(make([]byte, 512))
		c.Submit(r, &funcDone{fn: func(error) {
			d.hasRead.Store(true)
			n.DecInFlight()
		}})
	})
}

// TestT30ReplaceChildMidDrain: replacing a child never lets a request reach
// a child that was drained beforehand; requests pending for the old child
// are flushed before it is detached; a parent drained through both old and
// new child is never undrained in between.
func TestT30ReplaceChildMidDrain(t *testing.T) {
	for _, c := range []struct {
		o, n                           int
		drained, undrained, parentRead bool
	}{
		{0, 0, true, true, true},
		{0, 1, true, false, true},
		{1, 0, false, true, true},
		{1, 1, false, false, false},
	} {
		e := blocktest.NewEnv(t, 0)
		pd := &replaceTestDriver{}
		p := e.Open(pd, block.Options{Name: "parent"})
		od, nd := blocktest.NewDriver(64<<10), blocktest.NewDriver(64<<10)
		od.ReadDelay, nd.ReadDelay = -1, -1
		old := e.Open(od, block.Options{Name: "old"})
		nw := e.Open(nd, block.Options{Name: "new"})
		edge := e.Attach(p, old, "backing", block.RoleBacking) // we keep our reference on old
		fe := e.FrontEnd("fe", p, block.FrontEndOptions{})
		p.Unref()
		for i := 0; i < c.o; i++ {
			old.DrainedBegin()
		}
		for i := 0; i < c.n; i++ {
			nw.DrainedBegin()
		}
		res := blocktest.NewResult()
		if c.o == 0 {
			pd.yieldBeforeRead = true
			q := fe.Queue(e.Main)
			e.OnMain(func() { q.Read(make([]byte, 512), 0, res, 0) })
			e.WaitFor("read parked", func() bool {
				var parked bool
				e.OnMain(func() { parked = pd.parked != nil })
				return parked
			})
			if pd.hasRead.Load() {
				t.Fatal("parent read before the drain")
			}
		}
		e.OnMain(func() {
			pd.wasDrained.Store(false)
			pd.wasUndrained.Store(false)
			pd.hasRead.Store(false)
			pd.setupDone = true
		})
		if p.Quiesce() != c.o {
			t.Fatalf("o=%d n=%d: parent quiesce %d before the replace, want %d", c.o, c.n, p.Quiesce(), c.o)
		}
		e.OnMain(func() {
			old.DrainedBegin()
			nw.DrainedBegin()
			e.G.ReplaceChild(edge, nw)
			nw.DrainedEnd()
			old.DrainedEnd()
		})
		if p.Quiesce() != c.n {
			t.Fatalf("o=%d n=%d: parent quiesce %d after the replace, want %d", c.o, c.n, p.Quiesce(), c.n)
		}
		e.OnMain(func() {}) // let the reads drainEnd started complete
		e.WaitFor("parent idle", func() bool { return p.InFlight() == 0 })
		if pd.wasDrained.Load() != c.drained || pd.wasUndrained.Load() != c.undrained || pd.hasRead.Load() != c.parentRead {
			t.Fatalf("o=%d n=%d: drained %v undrained %v read %v, want %v %v %v", c.o, c.n,
				pd.wasDrained.Load(), pd.wasUndrained.Load(), pd.hasRead.Load(), c.drained, c.undrained, c.parentRead)
		}
		if (c.o == 1 && od.HasRead.Load()) || (c.n == 1 && nd.HasRead.Load()) {
			t.Fatalf("o=%d n=%d: a drained child received a request (old %v new %v)", c.o, c.n, od.HasRead.Load(), nd.HasRead.Load())
		}
		for i := 0; i < c.n; i++ {
			nw.DrainedEnd()
		}
		for i := 0; i < c.o; i++ {
			old.DrainedEnd()
		}
		e.WaitFor("final reads", func() bool { return pd.hasRead.Load() && nd.HasRead.Load() && p.InFlight() == 0 })
		if c.o == 0 {
			res.Wait(e)
		}
		wantQ(t, "end", p, 0, old, 0, nw, 0)
		fe.Close()
		old.Unref()
		nw.Unref()
	}
}
