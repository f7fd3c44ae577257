package block_test

import (
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
)

// TestFrontEndCloseWaitsForRequests: FrontEnd.Close with a request still in
// flight waits for it (QEMU's blk_remove_bs drains too). A request's
// callback runs before it leaves the front end's count, so a host that
// closes as soon as its last callback signalled raced with that count:
// CI saw "closing front end with 1 requests in flight" from
// TestMixedAlignedAndRMWTwoContexts. Here Close is called while the read's
// callback runs (the node is idle by then, so detaching the root did not
// wait); before the fix Close returned at once, and failed the invariant
// in -tags invariants builds.
func TestFrontEndCloseWaitsForRequests(t *testing.T) {
	e := blocktest.NewEnv(t, 1)
	d := blocktest.NewDriver(64 << 10)
	d.ReadDelay = -1
	n := e.Open(d, block.Options{Name: "n"})
	fe := e.FrontEnd("fe", n, block.FrontEndOptions{AllowContextChange: true})
	n.Unref()
	q := fe.Queue(e.IO[0])
	var started, done atomic.Bool
	buf := make([]byte, 512)
	e.IO[0].Schedule(func() {
		q.Read(buf, 0, &funcDone{fn: func(err error) {
			if err != nil {
				t.Errorf("read: %v", err)
			}
			started.Store(true)
			time.Sleep(100 * time.Millisecond)
			done.Store(true)
		}}, 0)
	})
	for !started.Load() {
		time.Sleep(time.Millisecond)
	}
	if err := fe.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if !done.Load() {
		t.Fatal("Close returned while a read of the front end was still in flight")
	}
}

// TestCancelParked: the requests a drained section holds for one Done of
// one queue complete at once with the given error, in parking order, and
// leave the front end; the others stay parked and run at drained end,
// and nothing cancelled reaches the driver. A user closing its request
// source inside a section it cannot end (host.Queue.Close) had no way to
// take its requests back and waited for the section forever.
func TestCancelParked(t *testing.T) {
	e := blocktest.NewEnv(t, 0)
	mem := blocktest.NewMem(64 << 10)
	n := e.Open(mem, block.Options{Name: "n"})
	fe := e.FrontEnd("fe", n, block.FrontEndOptions{})
	n.Unref()
	defer fe.Close()
	q := fe.Queue(e.Main)
	var cancelled []int
	var kept int
	other := &funcDone{fn: func(err error) {
		if err != nil {
			t.Errorf("kept request: %v", err)
		}
		kept++
	}}
	var mine *funcDone
	e.OnMain(func() {
		n.DrainedBegin()
		for i := 0; i < 6; i++ {
			var done block.Done = other
			if i == 4 {
				mine = &funcDone{fn: func(err error) {
					if !errors.Is(err, errGone) {
						t.Errorf("cancelled request completed with %v", err)
					}
					cancelled = append(cancelled, i)
				}}
				done = mine
			}
			q.Write([]byte{byte(i + 1)}, int64(i), 0, done, 0)
		}
		if got := fe.ParkedCount(); got != 6 {
			t.Errorf("%d parked, want 6", got)
		}
		if k := q.CancelParked(mine, errGone); k != 1 {
			t.Errorf("CancelParked cancelled %d, want 1", k)
		}
		if got := fe.ParkedCount(); got != 5 {
			t.Errorf("%d parked after one cancel, want 5", got)
		}
		n.DrainedEnd()
		e.Main.WaitWhile(func() bool { return kept < 5 })
	})
	if len(cancelled) != 1 || cancelled[0] != 4 {
		t.Fatalf("cancelled %v, want [4]", cancelled)
	}
	if mem.Data[4] != 0 {
		t.Fatal("a cancelled write reached the driver")
	}
	if mem.Data[0] != 1 || mem.Data[1] != 2 || mem.Data[2] != 3 || mem.Data[3] != 4 || mem.Data[5] != 6 {
		t.Fatalf("the other writes did not run at drained end: %v", mem.Data[:6])
	}
	if fe.InFlight() != 0 || fe.ParkedCount() != 0 {
		t.Fatalf("in-flight %d parked %d after the section", fe.InFlight(), fe.ParkedCount())
	}

	// A shared Done: all of its requests go, oldest first, none of another.
	var order []int
	shared := &orderDone{order: &order}
	keep := &funcDone{fn: func(error) { kept++ }}
	kept = 0
	e.OnMain(func() {
		n.DrainedBegin()
		for i := 0; i < 4; i++ {
			q.Write([]byte{9}, 8, 0, shared, uint64(i))
			q.Write([]byte{7}, 9, 0, keep, 0)
		}
		if k := q.CancelParked(shared, errGone); k != 4 {
			t.Errorf("CancelParked cancelled %d, want 4", k)
		}
		n.DrainedEnd()
		e.Main.WaitWhile(func() bool { return kept < 4 })
	})
	if len(order) != 4 || order[0] != 0 || order[1] != 1 || order[2] != 2 || order[3] != 3 {
		t.Fatalf("cancelled in order %v, want [0 1 2 3]", order)
	}
	if mem.Data[8] != 0 || mem.Data[9] != 7 {
		t.Fatalf("bytes 8, 9 = %d, %d: want 0 (cancelled) and 7", mem.Data[8], mem.Data[9])
	}
}

var errGone = errors.New("gone")

type orderDone struct{ order *[]int }

func (o *orderDone) RequestDone(r *block.Request, err error) {
	if errors.Is(err, errGone) {
		*o.order = append(*o.order, int(r.Tag))
	}
}
