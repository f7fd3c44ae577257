//go:build rbd

package rbd_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
	"github.com/ringblk/ringblk/drivers/rbd"
	"github.com/ringblk/ringblk/internal/cephtest"
)

// submitWrites issues k 64 KiB writes to n from ctx's queue without
// waiting; cb counts them.
func submitWrites(e *blocktest.Env, fe *block.FrontEnd, ctxIdx int, k int, cb *counter) {
	ctx := e.Main
	if ctxIdx >= 0 {
		ctx = e.IO[ctxIdx]
	}
	e.On(ctx, func() {
		q := fe.Queue(ctx)
		for i := range k {
			q.Write(pattern(64<<10, uint64(i)), int64(i)*(64<<10), 0, cb, 0)
		}
	})
}

// TestDrainWaitsForLibrbd: writes submitted from an IOThread (a Context
// other than the node's, so they go through the inbox and come back
// through an outbox) are all complete when a drained section begins:
// the drain waited for librbd's completions. The data is then there.
func TestDrainWaitsForLibrbd(t *testing.T) {
	s := newImage(t, imgSize)
	e := blocktest.NewEnv(t, 1)
	n := open(t, e, s, false)
	fe := e.FrontEnd("fe", n, block.FrontEndOptions{})
	defer fe.Close()
	var errs atomic.Int64
	cb := &counter{errs: &errs}
	const k = 200
	submitWrites(e, fe, 0, k, cb)
	n.DrainedBegin()
	var done int
	e.On(e.IO[0], func() { done = cb.done })
	var busy int
	e.OnMain(func() { busy = n.Driver().(*rbd.Driver).InFlight() })
	n.DrainedEnd()
	if done != k || busy != 0 || n.InFlight() != 0 {
		t.Fatalf("after DrainedBegin: %d of %d writes completed, %d librbd operations outstanding, node in flight %d", done, k, busy, n.InFlight())
	}
	if errs.Load() != 0 {
		t.Fatalf("%d writes failed", errs.Load())
	}
	got := make([]byte, 64<<10)
	for _, i := range []int{0, k / 2, k - 1} {
		if _, err := n.ReadAt(got, int64(i)*(64<<10)); err != nil || !bytes.Equal(got, pattern(64<<10, uint64(i))) {
			t.Fatalf("block %d after drain: %v", i, err)
		}
	}
}

// TestOSDStoppedMidIO: with the OSD stopped while writes are in flight,
// every request fails with ETIMEDOUT within the configured timeout (not
// hangs), a drain ends, and so does closing the node. A private cluster:
// the shared one must keep its OSD.
func TestOSDStoppedMidIO(t *testing.T) {
	if cluster == nil {
		t.Skip(cephtest.Absent)
	}
	if testing.Short() {
		t.Skip("starts a second cluster (a few seconds); not in -short")
	}
	dir := fmt.Sprintf("/var/tmp/ringblk-cephfault-%d", os.Getpid())
	c, err := cephtest.StartPrivate(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	const timeout = 3 * time.Second
	s, err := rbd.ParseName(c.Name("fault") + ":timeout=3")
	if err != nil {
		t.Fatal(err)
	}
	if err := rbd.Create(s, imgSize); err != nil {
		t.Fatal(err)
	}
	e := blocktest.NewEnv(t, 1)
	n, err := rbd.NewNode(e.G, s, false, block.Options{Name: "fault"})
	if err != nil {
		t.Fatal(err)
	}
	fe := e.FrontEnd("fe", n, block.FrontEndOptions{})
	if _, err := n.WriteAt(make([]byte, 4096), 0); err != nil { // takes the exclusive lock
		t.Fatal(err)
	}
	if err := c.StopOSD(); err != nil {
		t.Fatal(err)
	}
	var errs atomic.Int64
	cb := &counter{errs: &errs}
	const k = 50
	start := time.Now()
	submitWrites(e, fe, 0, k, cb)
	submitWrites(e, fe, -1, k, &counter{errs: &errs})
	drained := make(chan struct{})
	go func() { n.DrainedBegin(); n.DrainedEnd(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(timeout + 20*time.Second):
		t.Fatalf("drain with the OSD stopped did not end in %v", timeout+20*time.Second)
	}
	took := time.Since(start)
	if errs.Load() != 2*k {
		t.Fatalf("%d of %d writes failed with the OSD stopped", errs.Load(), 2*k)
	}
	_, err = n.ReadAt(make([]byte, 4096), 0)
	if !errors.Is(err, syscall.ETIMEDOUT) || !strings.Contains(err.Error(), "fault") {
		t.Fatalf("read with the OSD stopped: %v, want ETIMEDOUT naming the node", err)
	}
	t.Logf("drain ended %v after the writes (timeout %v); read error: %v", took, timeout, err)
	fe.Close()
	closed := make(chan error, 1)
	go func() { closed <- n.Unref() }()
	select {
	case err := <-closed:
		t.Logf("close with the OSD stopped: %v", err)
	case <-time.After(timeout + 30*time.Second):
		t.Fatal("closing the node with the OSD stopped hangs")
	}
}

// statusCheck counts block status answers that are not the expected.
type statusCheck struct {
	off       int64
	done, bad int
}

func (c *statusCheck) RequestDone(r *block.Request, err error) {
	c.done++
	if err != nil || r.Status&block.StatusData == 0 || r.Pnum != 4<<20 {
		c.bad++
	}
}

// TestBlockStatusFromTwoContexts: block status asked from the node's
// Context and from an IOThread at once; both get the right answer (the
// query's extent array belongs to the node's Context, so the IOThread's
// request goes there).
func TestBlockStatusFromTwoContexts(t *testing.T) {
	s := newImage(t, imgSize)
	e := blocktest.NewEnv(t, 1)
	n := open(t, e, s, false)
	// Data in objects 0 and 3: from 0 and from 12 MiB, 4 MiB of data
	// each, but from 12 MiB the first extent of the query from 0 is
	// behind the offset (an answer built from the other query's extents
	// says zero).
	for _, off := range []int64{0, 12 << 20} {
		if _, err := n.WriteAt(pattern(4<<20, 1), off); err != nil {
			t.Fatal(err)
		}
	}
	fe := e.FrontEnd("fe", n, block.FrontEndOptions{})
	defer fe.Close()
	const k = 500
	checks := []*statusCheck{{off: 0}, {off: 12 << 20}}
	for i, ctx := range []*aio.Context{e.Main, e.IO[0]} {
		c := checks[i]
		ctx.Schedule(func() {
			q := fe.Queue(ctx)
			for range k {
				r := q.Get()
				r.Op, r.Off, r.Len = block.OpBlockStatus, c.off, imgSize-c.off
				q.Submit(r, c)
			}
		})
	}
	e.WaitFor("block status answers", func() bool {
		var done int
		e.OnMain(func() { done = checks[0].done })
		e.On(e.IO[0], func() { done += checks[1].done })
		return done == 2*k
	})
	if checks[0].bad+checks[1].bad != 0 {
		t.Fatalf("%d and %d wrong block status answers", checks[0].bad, checks[1].bad)
	}
}
