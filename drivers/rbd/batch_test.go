//go:build rbd

package rbd_test

import (
	"sync/atomic"
	"testing"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
	"github.com/ringblk/ringblk/drivers/rbd"
)

// TestRBDPluggedBatchOneCall: 32 reads issued in one plugged section of
// the node's Context start with one cgo call (rb_submit_batch at the
// section's end), and all complete with the data written before.
func TestRBDPluggedBatchOneCall(t *testing.T) {
	s := newImage(t, 16<<20)
	e := blocktest.NewEnv(t, 0)
	n := open(t, e, s, false)
	want := pattern(32*4096, 3)
	if _, err := n.WriteAt(want, 0); err != nil {
		t.Fatal(err)
	}
	fe := e.FrontEnd("fe", n, block.FrontEndOptions{})
	defer fe.Close()
	d := n.Driver().(*rbd.Driver)
	got := make([]byte, len(want))
	var errs atomic.Int64
	cb := &counter{errs: &errs}
	var calls int
	e.OnMain(func() {
		q := fe.Queue(e.Main)
		before := d.SubmitCalls()
		q.Plug()
		for i := range 32 {
			q.Read(got[i*4096:(i+1)*4096], int64(i)*4096, cb, 0)
		}
		q.Unplug()
		calls = d.SubmitCalls() - before
		e.Main.WaitWhile(func() bool { return cb.done < 32 })
	})
	if calls != 1 {
		t.Errorf("32 plugged reads took %d cgo submission calls, want 1", calls)
	}
	if errs.Load() != 0 || string(got) != string(want) {
		t.Fatalf("%d reads failed; data equal: %v", errs.Load(), string(got) == string(want))
	}
}
