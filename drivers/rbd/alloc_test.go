//go:build rbd

package rbd_test

import (
	"testing"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
	"github.com/ringblk/ringblk/internal/invariants"
)

// qdLoop keeps qd requests in flight until left runs out.
type qdLoop struct {
	q        *block.Queue
	bufs     [][]byte
	left     int
	inflight int
	write    bool
	err      error
	next     int
	span     int64
}

func (l *qdLoop) issue(i int) {
	l.left--
	l.inflight++
	off := int64((l.next*7919)%int(l.span/4096)) * 4096
	l.next++
	if l.write {
		l.q.Write(l.bufs[i], off, 0, l, uint64(i))
	} else {
		l.q.Read(l.bufs[i], off, l, uint64(i))
	}
}

func (l *qdLoop) RequestDone(r *block.Request, err error) {
	l.inflight--
	if err != nil && l.err == nil {
		l.err = err
	}
	if l.left > 0 {
		l.issue(int(r.Tag))
	}
}

// TestRBDZeroAllocs: 4 KiB reads and writes at QD32 through the driver
// (one cgo call to submit, completions reaped from the eventfd in
// batches) allocate nothing per request in steady state.
func TestRBDZeroAllocs(t *testing.T) {
	if raceEnabled || invariants.Enabled {
		t.Skip("allocation budgets hold for production builds (no -race, no invariants tag)")
	}
	s := newImage(t, 16<<20)
	e := blocktest.NewEnv(t, 0)
	n := open(t, e, s, false)
	fe := e.FrontEnd("fe", n, block.FrontEndOptions{})
	defer fe.Close()
	const qd = 32
	l := &qdLoop{q: fe.Queue(e.Main), span: 16 << 20}
	for range qd {
		l.bufs = append(l.bufs, make([]byte, 4096))
	}
	run := func(count int) {
		e.OnMain(func() {
			l.left = count
			l.q.Plug()
			for i := 0; i < qd; i++ {
				l.issue(i)
			}
			l.q.Unplug()
			e.Main.WaitWhile(func() bool { return l.inflight > 0 })
		})
	}
	for _, w := range []bool{true, false} {
		l.write = w
		run(1000)
		const count = 2000
		allocs := testing.AllocsPerRun(3, func() { run(count) })
		if l.err != nil {
			t.Fatal(l.err)
		}
		t.Logf("write=%v: %.1f allocations per %d requests", w, allocs, count)
		if allocs > 32 {
			t.Errorf("write=%v: %.0f allocations for %d requests: the request path allocates", w, allocs, count)
		}
	}
}
