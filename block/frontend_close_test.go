package block_test

import (
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
