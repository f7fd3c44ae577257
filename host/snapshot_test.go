package host_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ringblk/ringblk/host"
)

// fdFlags returns the open flags (from /proc/self/fdinfo) of every
// descriptor of this process open on path.
func fdFlags(t *testing.T, path string) []int {
	t.Helper()
	want, err := filepath.EvalSymlinks(path)
	if err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	var out []int
	for _, e := range ents {
		target, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err != nil || target != want {
			continue
		}
		info, err := os.ReadFile("/proc/self/fdinfo/" + e.Name())
		if err != nil {
			continue // closed meanwhile
		}
		for _, line := range strings.Split(string(info), "\n") {
			if v, ok := strings.CutPrefix(line, "flags:"); ok {
				f, err := strconv.ParseInt(strings.TrimSpace(v), 8, 64)
				if err != nil {
					t.Fatalf("fdinfo %s: %q", e.Name(), line)
				}
				out = append(out, int(f))
			}
		}
	}
	return out
}

// lockHeld reports whether another open file description holds a lock on
// byte b of path (QEMU's lock bytes: 100+perm held, 200+perm not shared).
func lockHeld(t *testing.T, path string, b int64) bool {
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

func TestLiveSnapshotReopensReadOnlyRaw(t *testing.T)   { liveSnapshotReadOnly(t, "raw") }
func TestLiveSnapshotReopensReadOnlyQcow2(t *testing.T) { liveSnapshotReadOnly(t, "qcow2") }

// liveSnapshotReadOnly: after a live snapshot the old image's file is open
// only O_RDONLY, and its locks are a reader's — consistent read held
// (100), write and resize no longer held (101, 103), write and resize
// still not shared (201, 203) — so qemu-img info opens it without -U
// while a writer is still refused; its content is the snapshot instant
// and the device keeps working and closes cleanly.
func liveSnapshotReadOnly(t *testing.T, format string) {
	h := newHost(t, host.Options{})
	base := image(t, h, format, 1<<20)
	d, err := h.OpenDevice(base, host.OpenOptions{Format: format})
	if err != nil {
		t.Fatal(err)
	}
	a := pattern(make([]byte, 4096), 3)
	if _, err := d.WriteAt(a, 0); err != nil {
		t.Fatal(err)
	}
	if !lockHeld(t, base, 101) {
		t.Fatal("before the snapshot: the write lock byte 101 is not held (the probe cannot see our locks)")
	}
	if err := d.LiveSnapshot(base + ".top.qcow2"); err != nil {
		t.Fatal(err)
	}
	flags := fdFlags(t, base)
	if len(flags) == 0 {
		t.Fatal("the old image is not open any more")
	}
	for _, f := range flags {
		if f&unix.O_ACCMODE != unix.O_RDONLY {
			t.Errorf("the old image is open with flags %#o, want O_RDONLY", f)
		}
	}
	for b, want := range map[int64]bool{100: true, 101: false, 103: false, 201: true, 203: true} {
		if got := lockHeld(t, base, b); got != want {
			t.Errorf("lock byte %d held=%v, want %v", b, got, want)
		}
	}
	if qemuImg, err := exec.LookPath("qemu-img"); err == nil {
		out, err := exec.Command(qemuImg, "info", "-f", format, base).CombinedOutput()
		if err != nil {
			t.Errorf("qemu-img info (no -U) on the old image: %v\n%s", err, out)
		}
	}
	if qemuIO, err := exec.LookPath("qemu-io"); err == nil {
		out, err := exec.Command(qemuIO, "-f", format, "-c", "write 0 512", base).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "lock") {
			t.Errorf("qemu-io write on the old image: %v\n%s (want a lock error)", err, out)
		}
	}
	b := pattern(make([]byte, 4096), 4)
	if _, err := d.WriteAt(b, 0); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4096)
	if _, err := d.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	mustEqual(t, "after the snapshot", got, b)
	if err := d.Close(); err != nil {
		t.Fatalf("close after the snapshot: %v", err)
	}
	if n := len(fdFlags(t, base)); n != 0 {
		t.Fatalf("%d descriptors still open on the old image after Close", n)
	}
	old, err := h.OpenDevice(base, host.OpenOptions{Format: format, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if _, err := old.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	mustEqual(t, "old image", got, a)
}
