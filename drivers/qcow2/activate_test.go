package qcow2

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
	"github.com/ringblk/ringblk/drivers/raw"
)

// openQcow2File opens the qcow2 image at path read-write without file
// locks (qemu-io opens the same file while the node is inactive).
func openQcow2File(t *testing.T, e *blocktest.Env, path string) *block.Node {
	t.Helper()
	file, err := raw.NewNode(e.G, path, raw.Options{Locking: raw.LockingOff}, block.Options{})
	if err != nil {
		t.Fatal(err)
	}
	n, err := NewNode(e.G, file, DriverOptions{}, block.Options{Name: "img"})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func mustWrite(t *testing.T, n *block.Node, b byte, off, size int64) {
	t.Helper()
	if _, err := n.WriteAt(bytes.Repeat([]byte{b}, int(size)), off); err != nil {
		t.Fatalf("write %#x at %d: %v", b, off, err)
	}
}

func mustRead(t *testing.T, n *block.Node, b byte, off, size int64) {
	t.Helper()
	got := make([]byte, size)
	if _, err := n.ReadAt(got, off); err != nil {
		t.Fatalf("read at %d: %v", off, err)
	}
	if want := bytes.Repeat([]byte{b}, int(size)); !bytes.Equal(got, want) {
		i := firstDiff(got, want)
		t.Fatalf("read at %d: byte %d is %#x, want %#x everywhere", off, i, got[i], b)
	}
}

// qemuImgCheckClean runs qemu-img check and fails unless it reports no
// errors and no leaks.
func qemuImgCheckClean(t *testing.T, img string) {
	t.Helper()
	out, err := exec.Command("qemu-img", "check", "-f", "qcow2", img).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "No errors were found") {
		t.Fatalf("qemu-img check after inactivation: %v\n%s", err, out)
	}
}

// TestQcow2InactivateWritesBack (issue 16, Must 5): block.Node.Inactivate
// alone (no flush first) leaves the image complete on disk — qemu-img
// check is clean, qemu-io reads the data, the lazy-refcount dirty bit is
// cleared — and the close of the inactive node writes nothing and
// succeeds.
func TestQcow2InactivateWritesBack(t *testing.T) {
	needQemu(t)
	for _, opts := range []string{"", "lazy_refcounts=on"} {
		t.Run("opts="+opts, func(t *testing.T) {
			e := blocktest.NewEnv(t, 0)
			img := filepath.Join(t.TempDir(), "a.qcow2")
			qemuCreate(t, img, opts, 8<<20)
			n := openQcow2File(t, e, img)
			mustWrite(t, n, 0x5a, 0, 64<<10)
			mustWrite(t, n, 0x5b, 3<<20, 128<<10)
			if err := n.Flush(); err != nil { // lazy: sets the dirty bit
				t.Fatal(err)
			}
			mustWrite(t, n, 0x5c, 5<<20, 64<<10)
			if err := n.Inactivate(); err != nil {
				t.Fatalf("Inactivate: %v", err)
			}
			qemuImgCheckClean(t, img)
			qemuIO(t, img, "read -P 0x5a 0 64k", "read -P 0x5b 3M 128k", "read -P 0x5c 5M 64k")
			if _, err := n.WriteAt(make([]byte, 512), 0); !errors.Is(err, syscall.EPERM) {
				t.Fatalf("write while inactive: %v, want EPERM", err)
			}
			if err := n.Unref(); err != nil {
				t.Fatalf("close of the inactive node: %v", err)
			}
			qemuImgCheckClean(t, img)
		})
	}
}

// TestQcow2ActivateRereadsMetadata (issue 16, Must 5): the migration
// handback. While our node is inactive another process (qemu-io)
// allocates clusters in the same image — one under an L2 table we hold
// cached as unallocated, one under a new L2 table. Activate must drop the
// cached tables and re-read header, L1 and refcounts: the node then reads
// the new data, and its own later allocations do not reuse the clusters
// qemu-io took.
func TestQcow2ActivateRereadsMetadata(t *testing.T) {
	needQemu(t)
	for _, opts := range []string{"", "lazy_refcounts=on"} {
		t.Run("opts="+opts, func(t *testing.T) {
			e := blocktest.NewEnv(t, 0)
			img := filepath.Join(t.TempDir(), "b.qcow2")
			qemuCreate(t, img, opts, 1<<30)
			n := openQcow2File(t, e, img)
			mustWrite(t, n, 0x5a, 0, 64<<10)
			mustRead(t, n, 0, 1<<20, 64<<10) // caches L2 table 0: 1M unallocated
			if err := n.Inactivate(); err != nil {
				t.Fatalf("Inactivate: %v", err)
			}
			qemuIO(t, img, "write -P 0xab 1M 64k", "write -P 0xac 600M 64k")
			if err := n.Activate(); err != nil {
				t.Fatalf("Activate: %v", err)
			}
			mustRead(t, n, 0xab, 1<<20, 64<<10)
			mustRead(t, n, 0xac, 600<<20, 64<<10)
			mustRead(t, n, 0x5a, 0, 64<<10)
			// Our allocations after the handback must not land on qemu-io's
			// clusters (stale refcounts would hand them out again).
			mustWrite(t, n, 0x5d, 2<<20, 128<<10)
			mustWrite(t, n, 0x5e, 700<<20, 64<<10)
			mustRead(t, n, 0xab, 1<<20, 64<<10)
			if err := n.Unref(); err != nil {
				t.Fatalf("close: %v", err)
			}
			qemuImgCheckClean(t, img)
			qemuIO(t, img, "read -P 0x5a 0 64k", "read -P 0xab 1M 64k", "read -P 0xac 600M 64k",
				"read -P 0x5d 2M 128k", "read -P 0x5e 700M 64k")
		})
	}
}

// TestQcow2ActivateDamagedImage (issue 16, Must 5): an image damaged while
// the node was inactive fails Activate with an error naming the problem;
// the node stays inactive with its old state (reads work, writes fail),
// closes without writing, and activates once the image is whole again.
func TestQcow2ActivateDamagedImage(t *testing.T) {
	needQemu(t)
	for _, tc := range []struct {
		name string
		off  int64
		b    []byte
		want string
	}{
		{"magic", 0, []byte("XXXX"), "magic"},
		{"l1_table_offset", 40, []byte{0x7f, 0, 0, 0, 0, 0, 0, 0}, "l1_table_offset"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := blocktest.NewEnv(t, 0)
			img := filepath.Join(t.TempDir(), "c.qcow2")
			qemuCreate(t, img, "", 8<<20)
			n := openQcow2File(t, e, img)
			mustWrite(t, n, 0x5a, 0, 64<<10)
			if err := n.Inactivate(); err != nil {
				t.Fatalf("Inactivate: %v", err)
			}
			f, err := os.OpenFile(img, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			good := make([]byte, len(tc.b))
			if _, err := f.ReadAt(good, tc.off); err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteAt(tc.b, tc.off); err != nil {
				t.Fatal(err)
			}
			err = n.Activate()
			var be *block.Error
			if err == nil || !errors.As(err, &be) || be.Op != block.OpActivate || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Activate of a damaged image = %v, want a block.Error of activate naming %s", err, tc.want)
			}
			if !n.Inactive() {
				t.Fatal("node active after a failed Activate")
			}
			mustRead(t, n, 0x5a, 0, 64<<10)
			if _, err := n.WriteAt(make([]byte, 512), 0); !errors.Is(err, syscall.EPERM) {
				t.Fatalf("write after a failed Activate: %v, want EPERM", err)
			}
			if _, err := f.WriteAt(good, tc.off); err != nil {
				t.Fatal(err)
			}
			f.Close()
			if err := n.Activate(); err != nil {
				t.Fatalf("Activate of the repaired image: %v", err)
			}
			mustWrite(t, n, 0x5b, 1<<20, 64<<10)
			if err := n.Unref(); err != nil {
				t.Fatalf("close: %v", err)
			}
			qemuImgCheckClean(t, img)
			qemuIO(t, img, "read -P 0x5a 0 64k", "read -P 0x5b 1M 64k")
		})
	}
}

// TestQcow2ActivateWithReaders: reads through the lock-free path keep
// running while the node is inactivated and activated again; every read
// returns the data (run it with -race: the tables and the view are
// replaced under readers).
func TestQcow2ActivateWithReaders(t *testing.T) {
	needQemu(t)
	e := blocktest.NewEnv(t, 0)
	img := filepath.Join(t.TempDir(), "d.qcow2")
	qemuCreate(t, img, "", 8<<20)
	n := openQcow2File(t, e, img)
	mustWrite(t, n, 0x5a, 0, 256<<10)
	stop := make(chan struct{})
	errc := make(chan error, 2)
	for g := 0; g < 2; g++ {
		go func(g int) {
			buf := make([]byte, 4096)
			for i := 0; ; i++ {
				select {
				case <-stop:
					errc <- nil
					return
				default:
				}
				off := int64((i*2+g)%64) * 4096
				if _, err := n.ReadAt(buf, off); err != nil {
					errc <- err
					return
				}
				if buf[0] != 0x5a || buf[4095] != 0x5a {
					errc <- errors.New("read returned wrong data during activation")
					return
				}
			}
		}(g)
	}
	for i := 0; i < 20; i++ {
		if err := n.Inactivate(); err != nil {
			t.Fatalf("Inactivate %d: %v", i, err)
		}
		if err := n.Activate(); err != nil {
			t.Fatalf("Activate %d: %v", i, err)
		}
	}
	close(stop)
	for g := 0; g < 2; g++ {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	mustWrite(t, n, 0x5b, 1<<20, 64<<10)
	if err := n.Unref(); err != nil {
		t.Fatalf("close: %v", err)
	}
	qemuImgCheckClean(t, img)
}
