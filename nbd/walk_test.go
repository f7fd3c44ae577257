package nbd

import (
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"

	"github.com/ringblk/ringblk/internal/nbdproto"
)

// splitStatus is a top image whose first split bytes are allocated data
// and the rest unallocated.
type splitStatus struct {
	blocktest.Driver
	split int64
}

func (d *splitStatus) BlockStatus(r *block.Request) {
	if r.Off < d.split {
		r.Status, r.Pnum = block.StatusData|block.StatusAllocated, min(r.Len, d.split-r.Off)
	} else {
		r.Status, r.Pnum = 0, r.Len
	}
	r.CompleteLater(nil)
}

// newWalkEnv exports top over a backing chain of one image (base) behind
// a debug filter, which can hold or fail the walk's backing requests.
func newWalkEnv(t *testing.T, top, base block.Driver) (*env, *block.Node, *blocktest.Debug) {
	t.Helper()
	var topN *block.Node
	dbg := &blocktest.Debug{}
	e := newEnvFile(t, "", ExportOptions{Name: ""}, func(g *block.Graph) (*block.Node, error) {
		b, err := g.Open(base, block.Options{Name: "base"})
		if err != nil {
			return nil, err
		}
		defer b.Unref()
		f, err := g.Open(dbg, block.Options{Name: "debug"})
		if err != nil {
			return nil, err
		}
		defer f.Unref()
		c, err := g.Attach(f, b, block.ChildSpec{Name: "file", Role: block.RoleFiltered})
		if err != nil {
			return nil, err
		}
		dbg.Edge.Store(c)
		if topN, err = g.Open(top, block.Options{Name: "top"}); err != nil {
			return nil, err
		}
		if _, err := g.Attach(topN, f, block.ChildSpec{Name: "backing", Role: block.RoleBacking}); err != nil {
			topN.Unref()
			return nil, err
		}
		return topN, nil
	})
	return e, topN, dbg
}

// TestBlockStatusAfterBackingError: a walk that fails in a backing image
// leaves its slot, and the next BLOCK_STATUS on that slot starts at the
// top again. It started at the level where the failed walk stopped, so
// the top image was skipped: its data was reported with the backing
// image's status (here a hole), which a client copying only the data
// ranges would have skipped.
func TestBlockStatusAfterBackingError(t *testing.T) {
	e, _, dbg := newWalkEnv(t, &splitStatus{Driver: blocktest.Driver{Size: testSize}, split: 1 << 20}, blocktest.NewDriver(testSize))
	cl := dial(t, e.sock, "", true, nbdproto.CtxAllocation)
	dbg.AddRule(blocktest.Rule{Op: block.OpBlockStatus, Err: syscall.EIO, Once: true})
	if _, errv := cl.blockStatus(1, 1<<20, 1<<20, 0); errv != nbdproto.ErrIO {
		t.Fatalf("block status failing in the backing image: error %d, want EIO", errv)
	}
	res, errv := cl.blockStatus(2, 0, 2<<20, 0)
	if errv != 0 {
		t.Fatalf("block status: error %d", errv)
	}
	want := []extent{{1 << 20, 0}, {1 << 20, nbdproto.StateHole | nbdproto.StateZero}}
	if got := res[idAllocation]; !slices.Equal(got, want) {
		t.Fatalf("base:allocation %v, want %v (data in the top image, then a hole)", got, want)
	}
}

// TestDrainWaitsForBlockStatusWalk: a BLOCK_STATUS request walks the
// backing chain with requests of its own below the export's node. A drain
// of that node must wait for the walk to finish (drain.md D3: the front
// ends above a drained node are idle), as QEMU's export reports itself busy
// while any request is being processed. The export reported itself idle
// as soon as the front end had no request: the drain returned while the
// walk was still in the backing image, the walk's next request to the
// top parked in the quiesced front end, so the reply waited for the end
// of the drained section, and the walk then went on with the chain it had
// loaded before, whatever the drained section changed.
//
// The chain is top (nothing allocated) over a 1 MiB backing image behind
// a debug filter that holds the walk's first backing request. The drain's
// quiesce phase releases it; the reply (1 MiB data, then zeroes past the
// backing image's end, which takes a second request to the top) must be
// sent before the drained section ends.
func TestDrainWaitsForBlockStatusWalk(t *testing.T) {
	topD := blocktest.NewDriver(testSize)
	e, top, dbg := newWalkEnv(t, topD, blocktest.NewMem(1<<20))
	cl := dial(t, e.sock, "", true, nbdproto.CtxAllocation)
	dbg.AddRule(blocktest.Rule{Op: block.OpBlockStatus, Hold: true, Once: true})
	cl.send(nbdproto.CmdBlockStatus, 0, 1, 0, 4<<20, nil)
	deadline := time.Now().Add(10 * time.Second)
	for dbg.Held() != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the walk's backing request never reached the debug filter")
		}
		time.Sleep(100 * time.Microsecond)
	}
	topD.OnDrainBegin = func(*block.Node) { dbg.Release() }
	top.DrainedBegin()
	t.Cleanup(top.DrainedEnd) // before the env's cleanup closes the export
	if e.exp.FrontEnd().Quiesce() == 0 {
		t.Fatal("the export's front end is not quiesced")
	}
	// Still drained: the reply must come now (a deadline only fails the
	// old behaviour, which sent it at DrainedEnd).
	cl.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	res, errv := cl.blockStatusReply(1)
	if errv != 0 {
		t.Fatalf("block status: error %d", errv)
	}
	want := []extent{{1 << 20, 0}, {3 << 20, nbdproto.StateHole | nbdproto.StateZero}}
	if got := res[idAllocation]; !slices.Equal(got, want) {
		t.Fatalf("base:allocation %v, want %v", got, want)
	}
}
