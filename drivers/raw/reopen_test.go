package raw_test

import (
	"errors"
	"os"
	"syscall"
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
// descriptor is O_RDWR and a write through the node reaches the file.
// Another process's reader that does not share writes makes the reopen
// fail with the file left read-only.
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
}

// TestSetReadOnlyOfFileOpenedReadOnly: a raw node opened read-only (a
// backing file opened from an overlay's header) becomes writable with
// block.Node.SetReadOnly(false) — O_RDWR, a writer's locks, writes reach
// the file — and read-only again with SetReadOnly(true): a reader's
// locks (another process may open it for reading), writes refused with
// EACCES. Before, the driver refused to promote a file opened read-only
// ("the file was opened read-only").
func TestSetReadOnlyOfFileOpenedReadOnly(t *testing.T) {
	e := newEnv(t, nil, 0)
	path, model := image(t, 1<<20, 1)
	n := e.node(path, raw.Options{ReadOnly: true})
	drv := n.Driver().(*raw.Driver)
	if _, err := n.WriteAt(make([]byte, 512), 0); !errors.Is(err, syscall.EACCES) {
		t.Fatalf("write to the read-only node: %v, want EACCES", err)
	}
	if err := n.SetReadOnly(false); err != nil {
		t.Fatalf("SetReadOnly(false): %v", err)
	}
	if n.ReadOnly() || n.Options().ReadOnly || drv.Options().ReadOnly {
		t.Fatal("node or driver still read-only")
	}
	for b, want := range map[int64]bool{100: true, 101: true, 103: true, 201: true, 203: true} {
		if got := lockByteHeld(t, path, b); got != want {
			t.Errorf("lock byte %d held=%v, want %v", b, got, want)
		}
	}
	if fl, err := unix.FcntlInt(uintptr(drv.Fd()), unix.F_GETFL, 0); err != nil || fl&unix.O_ACCMODE != unix.O_RDWR {
		t.Errorf("descriptor flags %#o (%v), want O_RDWR", fl, err)
	}
	data := pattern(4096, 7)
	if _, err := n.WriteAt(data, 4096); err != nil {
		t.Fatalf("write after SetReadOnly(false): %v", err)
	}
	copy(model[4096:], data)
	if err := n.SetReadOnly(true); err != nil {
		t.Fatalf("SetReadOnly(true): %v", err)
	}
	if !n.ReadOnly() || !drv.Options().ReadOnly {
		t.Fatal("node or driver writable after SetReadOnly(true)")
	}
	if lockByteHeld(t, path, 101) || lockByteHeld(t, path, 103) {
		t.Error("write or resize lock held after SetReadOnly(true)")
	}
	if _, err := n.WriteAt(data, 0); !errors.Is(err, syscall.EACCES) {
		t.Fatalf("write after SetReadOnly(true): %v, want EACCES", err)
	}
	mustEqual(t, "file", fileBytes(t, path), model)
}
