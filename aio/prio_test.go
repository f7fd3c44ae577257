package aio

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestReadPrioReachesKernel: ReadPrio puts the priority in the SQE's
// ioprio field. The kernel checks it: a valid class reads, an invalid
// class (7) fails with EINVAL, which a priority left out of the SQE
// would not.
func TestReadPrioReachesKernel(t *testing.T) {
	c, err := New(Options{Name: "prio", CPU: NoCPU, ArenaSize: -1})
	if err != nil {
		t.Skipf("io_uring: %v", err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	path := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(path, make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	osf, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	f := NewFile(osf)
	defer f.Close()
	read := func(prio uint16) error {
		buf := make([]byte, 4096)
		done := make(chan error, 1)
		c.Run(func() {
			c.ReadPrio(f, buf, 0, prio, DoneFunc(func(_ uint64, _ int, err error) { done <- err }), 0)
		})
		return <-done
	}
	if err := read(2<<13 | 4); err != nil {
		t.Errorf("best-effort level 4: %v", err)
	}
	if err := read(7 << 13); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("invalid class 7: %v, want EINVAL (the priority did not reach the SQE)", err)
	}
}
