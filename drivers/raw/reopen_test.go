package raw_test

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ringblk/ringblk/drivers/raw"
)

// lockByteHeld reports whether another open file description holds a
// lock on byte b of path (QEMU's lock bytes).
func lockByteHeld(t *testing.T, path string, b int64) bool {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	lk := unix.Flock_t{Type: unix.F_WRLCK, Start: b, Len: 1}
	if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_GETLK, &lk); err != nil {
		t.Skipf("no OFD locks here: %v", err)
	}
	return lk.Type != unix.F_UNLCK
}

// TestReopenReadWriteUndoesReopenReadOnly: read-write, then read-only
// (a snapshot's old top), then read-write again (a commit into it): the
// locks are a writer's again (101 and 103 held, 201 and 203 still), the
// descriptor is O_RDWR and a write through the node reaches the file. A
// file opened read-only is never promoted, and another process's reader
// that does not share writes makes the reopen fail with the file left
// read-only.
func TestReopenReadWriteUndoesReopenReadOnly(t *testing.T) {
	e := newEnv(t, nil, 0)
	path, model := image(t, 1<<20, 1)
	n := e.node(path, raw.Options{})
	drv := n.Driver().(*raw.Driver)
	e.g.Control(func() {
		if err := drv.ReopenReadOnly(); err != nil {
			t.Fatal(err)
		}
	})
	if lockByteHeld(t, path, 101) {
		t.Fatal("write byte held after ReopenReadOnly")
	}
	e.g.Control(func() {
		if err := drv.ReopenReadWrite(); err != nil {
			t.Fatal(err)
		}
	})
	for b, want := range map[int64]bool{100: true, 101: true, 103: true, 201: true, 203: true} {
		if got := lockByteHeld(t, path, b); got != want {
			t.Errorf("lock byte %d held=%v, want %v", b, got, want)
		}
	}
	if fl, err := unix.FcntlInt(uintptr(drv.Fd()), unix.F_GETFL, 0); err != nil || fl&unix.O_ACCMODE != unix.O_RDWR {
		t.Errorf("descriptor flags %#o (%v), want O_RDWR", fl, err)
	}
	data := pattern(4096, 9)
	if _, err := n.WriteAt(data, 8192); err != nil {
		t.Fatalf("write after ReopenReadWrite: %v", err)
	}
	if err := n.Flush(); err != nil {
		t.Fatal(err)
	}
	copy(model[8192:], data)
	mustEqual(t, "file", fileBytes(t, path), model)

	// A reader elsewhere that does not share writes: the promotion fails
	// and the file stays read-only with a reader's locks.
	e.g.Control(func() {
		if err := drv.ReopenReadOnly(); err != nil {
			t.Fatal(err)
		}
	})
	other, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	lk := unix.Flock_t{Type: unix.F_RDLCK, Start: 201, Len: 1} // "write not shared"
	if err := unix.FcntlFlock(other.Fd(), unix.F_OFD_SETLK, &lk); err != nil {
		t.Fatal(err)
	}
	e.g.Control(func() {
		if err := drv.ReopenReadWrite(); err == nil {
			t.Error("ReopenReadWrite succeeded against a reader that does not share writes")
		}
	})
	if !lockByteHeld(t, path, 100) || lockByteHeld(t, path, 101) {
		t.Error("after the refused promotion the reader's locks are not back")
	}

	ro := e.node(path, raw.Options{ReadOnly: true})
	e.g.Control(func() {
		if err := ro.Driver().(*raw.Driver).ReopenReadWrite(); err == nil {
			t.Error("a file opened read-only was promoted")
		}
	})
}
