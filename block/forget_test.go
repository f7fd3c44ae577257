package block_test

import (
	"strings"
	"sync/atomic"
	"testing"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
)

type countDone struct{ n atomic.Int32 }

func (d *countDone) RequestDone(r *block.Request, err error) { d.n.Add(1) }

// TestForgetContextDropsPoolAndQueues: once a Context's requests are done,
// ForgetContext drops its pool and front-end queues, so the next use builds
// fresh ones; while a request from it is still held in flight, it refuses.
func TestForgetContextDropsPoolAndQueues(t *testing.T) {
	e := blocktest.NewEnv(t, 1)
	io := e.IO[0]
	dbg := &blocktest.Debug{}
	leaf := e.Open(blocktest.NewMem(1<<20), block.Options{Name: "leaf"})
	top := e.Open(dbg, block.Options{Name: "dbg"})
	e.Attach(top, leaf, "file", block.RoleFile)
	leaf.Unref()
	fe := e.FrontEnd("fe", top, block.FrontEndOptions{})
	top.Unref()

	hold := dbg.AddRule(blocktest.Rule{Op: block.OpRead, Hold: true, Once: true})
	q := fe.Queue(io)
	pool := e.G.Pool(io)
	var done countDone
	buf := make([]byte, 4096)
	e.On(io, func() { q.Read(buf, 0, &done, 1) })
	e.WaitFor("held read", func() bool { return dbg.Held() == 1 })

	err := e.G.ForgetContext(io)
	if err == nil || !strings.Contains(err.Error(), "still in flight") {
		t.Fatalf("ForgetContext with a request held in flight: got %v, want an in-flight error", err)
	}
	if e.G.Pool(io) != pool || fe.Queue(io) != q {
		t.Fatal("a refused ForgetContext dropped the pool or the queue")
	}

	dbg.Release()
	e.WaitFor("released read", func() bool { return done.n.Load() == 1 })
	if hold.Fired() != 1 {
		t.Fatalf("hold rule fired %d times, want 1", hold.Fired())
	}
	if err := e.G.ForgetContext(io); err != nil {
		t.Fatalf("ForgetContext on an idle Context: %v", err)
	}
	if e.G.Pool(io) == pool {
		t.Error("pool survived ForgetContext")
	}
	q2 := fe.Queue(io)
	if q2 == q {
		t.Error("front-end queue survived ForgetContext")
	}
	// The fresh queue works.
	e.On(io, func() { q2.Read(buf, 4096, &done, 2) })
	e.WaitFor("read on the fresh queue", func() bool { return done.n.Load() == 2 })
}

// TestForgetContextWhileFrontEndsChange: ForgetContext looks at the
// Context's queues on the Context's own thread while the main Context keeps
// running its events; front ends opened and closed from another goroutine
// in that time must not race with the look (the graph's list of front ends
// belongs to main). Run with -race.
func TestForgetContextWhileFrontEndsChange(t *testing.T) {
	e := blocktest.NewEnv(t, 1)
	io := e.IO[0]
	leaf := e.Open(blocktest.NewMem(1<<20), block.Options{Name: "leaf"})
	fe := e.FrontEnd("fe", leaf, block.FrontEndOptions{})
	leaf.Unref()
	var stop atomic.Bool
	churned := make(chan int)
	go func() {
		n := 0
		for !stop.Load() {
			x := e.G.NewFrontEnd(block.FrontEndOptions{Name: "churn"})
			if err := x.Close(); err != nil {
				t.Error(err)
			}
			n++
		}
		churned <- n
	}()
	for i := 0; i < 200; i++ {
		_ = fe.Queue(io)
		if err := e.G.ForgetContext(io); err != nil {
			t.Fatal(err)
		}
	}
	stop.Store(true)
	if n := <-churned; n == 0 {
		t.Fatal("no front end was opened and closed during the ForgetContext calls")
	}
}
