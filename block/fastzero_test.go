package block_test

import (
	"errors"
	"syscall"
	"testing"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
)

// fastMem is a Mem that declares NoFallback support.
type fastMem struct{ *blocktest.Mem }

func (fastMem) FastZeroes() bool { return true }

// TestNoFallbackNeedsFastZeroer: a NoFallback write-zeroes reaches only a
// driver that declares FastZeroer; any other driver is not called and the
// request fails with ENOTSUP (an Unsupported *block.Error), leaving the data
// alone. Without the flag the same driver zeroes as before.
func TestNoFallbackNeedsFastZeroer(t *testing.T) {
	e := blocktest.NewEnv(t, 0)
	mem := blocktest.NewMem(64 << 10)
	for i := range mem.Data {
		mem.Data[i] = 0xa5
	}
	n := e.Open(mem, block.Options{Name: "mem", Align: 512, MaxTransfer: 4096})
	defer n.Unref()
	err := n.WriteZeroes(0, 32<<10, block.NoFallback|block.MayUnmap)
	if !errors.Is(err, syscall.ENOTSUP) || !errors.Is(err, &block.Error{Kind: block.Unsupported}) {
		t.Fatalf("NoFallback write-zeroes on a driver without FastZeroer: err %v, want an Unsupported ENOTSUP", err)
	}
	if mem.Ops != 0 || mem.Data[0] != 0xa5 {
		t.Fatalf("driver ran %d requests for a refused NoFallback write-zeroes (data[0]=%#x)", mem.Ops, mem.Data[0])
	}
	if err := n.WriteZeroes(0, 32<<10, 0); err != nil || mem.Data[0] != 0 {
		t.Fatalf("plain write-zeroes: %v, data[0]=%#x", err, mem.Data[0])
	}

	fm := fastMem{blocktest.NewMem(64 << 10)}
	fm.Data[100] = 1
	fn := e.Open(fm, block.Options{Name: "fast", Align: 512, MaxTransfer: 4096})
	defer fn.Unref()
	if err := fn.WriteZeroes(0, 32<<10, block.NoFallback); err != nil {
		t.Fatalf("NoFallback write-zeroes on a FastZeroer: %v", err)
	}
	if fm.Data[100] != 0 || fm.Ops != 8 {
		t.Fatalf("FastZeroer saw %d pieces (want 8 of 4 KiB), data[100]=%d", fm.Ops, fm.Data[100])
	}
}
