package nbd

import (
	"slices"
	"syscall"
	"testing"

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
