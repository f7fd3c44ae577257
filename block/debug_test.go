package block_test

import (
	"errors"
	"syscall"
	"testing"
	"time"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
)

// TestDebugFilter: the fault filter fails the Nth matching request, delays
// by rule, holds a request until released (a drain waits for it), and
// passes everything else to its child.
func TestDebugFilter(t *testing.T) {
	e := blocktest.NewEnv(t, 0)
	mem := blocktest.NewMem(64 << 10)
	child := e.Open(mem, block.Options{Name: "mem"})
	dbg := &blocktest.Debug{}
	f := e.Open(dbg, block.Options{Name: "debug"})
	dbg.Edge.Store(e.Attach(f, child, "file", block.RoleFiltered))
	child.Unref()
	defer f.Unref()

	fail := dbg.AddRule(blocktest.Rule{Op: block.OpWrite, OffMin: 4096, OffMax: 8192, Nth: 2, Err: syscall.ENOSPC})
	for i := 0; i < 3; i++ {
		_, err := f.WriteAt([]byte{byte(i + 1)}, 4096)
		if want := i == 1; want != errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	if _, err := f.WriteAt([]byte{9}, 0); err != nil || fail.Fired() != 1 || mem.Data[4096] != 3 || mem.Data[0] != 9 {
		t.Fatalf("outside the range: %v, fired %d, data %d/%d", err, fail.Fired(), mem.Data[4096], mem.Data[0])
	}

	dbg.ClearRules()
	dbg.AddRule(blocktest.Rule{Op: block.OpRead, Delay: 5 * time.Millisecond, Once: true})
	start := time.Now()
	if _, err := f.ReadAt(make([]byte, 1), 0); err != nil || time.Since(start) < 5*time.Millisecond {
		t.Fatalf("delayed read: %v after %v", err, time.Since(start))
	}

	dbg.AddRule(blocktest.Rule{Op: block.OpFlush, Hold: true, Once: true})
	res := blocktest.NewResult()
	e.OnMain(func() {
		r := e.G.Pool(e.Main).Get()
		r.Op = block.OpFlush
		f.Submit(r, res)
	})
	e.WaitFor("flush held", func() bool { return dbg.Held() == 1 })
	if f.InFlight() != 1 {
		t.Fatalf("held flush not counted: in-flight %d", f.InFlight())
	}
	go func() {
		time.Sleep(2 * time.Millisecond)
		dbg.Release()
	}()
	f.DrainedBegin() // waits for the held request
	if !res.Finished() || res.Err != nil || f.InFlight() != 0 {
		t.Fatalf("drain returned with the held request pending (finished %v err %v)", res.Finished(), res.Err)
	}
	f.DrainedEnd()
}
