package raw_test

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ringblk/ringblk/drivers/raw"
)

func openDrv(t *testing.T, path string, o raw.Options) (*raw.Driver, error) {
	t.Helper()
	d, err := raw.Open(path, o)
	if err == nil {
		t.Cleanup(func() { d.Release() })
	}
	return d, err
}

func wantLocked(t *testing.T, err error, msg string) {
	t.Helper()
	if !errors.Is(err, raw.ErrLocked) {
		t.Fatalf("open: %v; want a lock conflict", err)
	}
	if !strings.Contains(err.Error(), msg) {
		t.Fatalf("lock error %q does not say %q", err, msg)
	}
}

// TestLockBetweenOurOpens: QEMU's rules between two ringblk opens of one
// image (OFD locks conflict between open file descriptions, so this works
// inside one process).
func TestLockBetweenOurOpens(t *testing.T) {
	path, _ := image(t, 65536, 1)
	w1, err := openDrv(t, path, raw.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if !w1.Locked() {
		t.Fatal("no locks taken on ext4")
	}
	_, err = openDrv(t, path, raw.Options{})
	wantLocked(t, err, `Failed to get "write" lock`)
	_, err = openDrv(t, path, raw.Options{ReadOnly: true})
	wantLocked(t, err, `Failed to get shared "write" lock`)
	if _, err := openDrv(t, path, raw.Options{ReadOnly: true, ShareRW: true}); err != nil {
		t.Fatalf("read-only open sharing writes next to a writer: %v", err)
	}
	if _, err := openDrv(t, path, raw.Options{Locking: raw.LockingOff}); err != nil {
		t.Fatalf("locking=off: %v", err)
	}
	w1.Release()
	w2, err := openDrv(t, path, raw.Options{})
	if err != nil {
		t.Fatalf("open after the writer closed: %v", err)
	}
	w2.Release()

	r1, err := openDrv(t, path, raw.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := openDrv(t, path, raw.Options{ReadOnly: true}); err != nil {
		t.Fatalf("two readers: %v", err)
	}
	_, err = openDrv(t, path, raw.Options{})
	wantLocked(t, err, `Failed to get "write" lock`)
	r1.Release()
}

func needQemu(t *testing.T, tool string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err != nil {
		t.Skipf("%s not installed", tool)
	}
	return p
}

// TestLockQemuSeesOurs: while ringblk holds an image read-write, qemu-io
// (read-write) and qemu-img resize are refused with QEMU's lock error;
// a read-only qemu-io, which asks for nothing we refuse, still reads.
func TestLockQemuSeesOurs(t *testing.T) {
	qio := needQemu(t, "qemu-io")
	qimg := needQemu(t, "qemu-img")
	path, _ := image(t, 1<<20, 2)
	if _, err := openDrv(t, path, raw.Options{Cache: raw.CacheNone}); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(qio, "-f", "raw", "-c", "read 0 4k", path).CombinedOutput()
	if err == nil || !strings.Contains(string(out), `Failed to get "write" lock`) {
		t.Fatalf("qemu-io read-write on our image: err %v, output %q", err, out)
	}
	out, err = exec.Command(qimg, "resize", "-f", "raw", path, "2M").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "lock") {
		t.Fatalf("qemu-img resize on our image: err %v, output %q", err, out)
	}
	out, err = exec.Command(qio, "-r", "-f", "raw", "-c", "read 0 4k", path).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-io -r on our image: %v: %s", err, out)
	}
}

// TestLockWeSeeQemu: while a qemu-io process holds the image read-write,
// ringblk refuses to open it for writing (and read-only without
// share-rw); after it exits, the open succeeds. A read-only qemu-io does
// not keep us from writing.
func TestLockWeSeeQemu(t *testing.T) {
	qio := needQemu(t, "qemu-io")
	path, _ := image(t, 1<<20, 3)
	hold := func(args ...string) *exec.Cmd {
		cmd := exec.Command(qio, append(args, "-f", "raw", "-c", "sleep 20000", path)...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		return cmd
	}
	// waitHeld polls until qemu-io has the image open (its locks appear).
	waitHeld := func(o raw.Options) error {
		deadline := time.Now().Add(10 * time.Second)
		for {
			d, err := raw.Open(path, o)
			if err != nil || time.Now().After(deadline) {
				return err
			}
			d.Release()
			time.Sleep(20 * time.Millisecond)
		}
	}
	cmd := hold()
	err := waitHeld(raw.Options{})
	wantLocked(t, err, `Failed to get shared "write" lock`)
	_, err = openDrv(t, path, raw.Options{ReadOnly: true})
	wantLocked(t, err, `Failed to get shared "write" lock`)
	if _, err := openDrv(t, path, raw.Options{ReadOnly: true, ShareRW: true}); err != nil {
		t.Fatalf("read-only share-rw open next to qemu: %v", err)
	}
	cmd.Process.Kill()
	cmd.Wait()
	if _, err := openDrv(t, path, raw.Options{}); err != nil {
		t.Fatalf("open after qemu-io exited: %v", err)
	}
}

// TestLockWriterNextToQemuReader: a read-only qemu-io holds only
// "consistent read", which we share, so ringblk may write.
func TestLockWriterNextToQemuReader(t *testing.T) {
	qio := needQemu(t, "qemu-io")
	path, _ := image(t, 1<<20, 4)
	cmd := exec.Command(qio, "-r", "-f", "raw", "-c", "sleep 20000", path)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	// Wait until qemu-io holds byte 100 (its "consistent read"), as
	// /proc/locks shows, so the open below really runs next to it.
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf(":%d 100 100", st.Ino)
	deadline := time.Now().Add(10 * time.Second)
	for {
		locks, _ := os.ReadFile("/proc/locks")
		if strings.Contains(string(locks), want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("qemu-io -r never took its lock; /proc/locks:\n%s", locks)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := openDrv(t, path, raw.Options{}); err != nil {
		t.Fatalf("writer next to a read-only qemu: %v", err)
	}
}

// TestCreateLocksBeforeTruncate: Create on a file another open holds
// (read-only here, which refuses writers) fails with the lock error and
// leaves every byte; once released, Create replaces the file.
func TestCreateLocksBeforeTruncate(t *testing.T) {
	path, _ := image(t, 65536, 1)
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	d, err := raw.Open(path, raw.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []raw.Prealloc{raw.PreallocOff, raw.PreallocFalloc, raw.PreallocFull} {
		err = raw.Create(path, 4096, p)
		wantLocked(t, err, `Failed to get "write" lock`)
		if after, _ := os.ReadFile(path); string(after) != string(before) {
			t.Fatalf("Create(%v) on a held file changed it: %d bytes, was %d", p, len(after), len(before))
		}
	}
	if err := d.Release(); err != nil {
		t.Fatal(err)
	}
	if err := raw.Create(path, 4096, raw.PreallocOff); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(path); err != nil || st.Size() != 4096 {
		t.Fatalf("after Create: %v, %v; want 4096 bytes", st, err)
	}
}
