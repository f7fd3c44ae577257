package qcow2

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
	"github.com/ringblk/ringblk/drivers/raw"
)

// openQcow2ReadOnly opens the qcow2 image at path read-only with QEMU's
// file locks, as a backing file opened from an overlay's header is.
func openQcow2ReadOnly(t *testing.T, e *blocktest.Env, path string) *block.Node {
	t.Helper()
	file, err := raw.NewNode(e.G, path, raw.Options{ReadOnly: true}, block.Options{})
	if err != nil {
		t.Fatal(err)
	}
	n, err := NewNode(e.G, file, DriverOptions{}, block.Options{Name: "img", ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// lockHeldByOther reports whether another open file description holds a
// lock on byte b of path (QEMU's lock bytes: 101 is "write held").
func lockHeldByOther(t *testing.T, path string, b int64) bool {
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

// bitmapFlags returns the flags qemu-img info -U lists for bitmap name.
func bitmapFlags(t *testing.T, img, name string) []string {
	t.Helper()
	out, err := exec.Command("qemu-img", "info", "-U", "--output=json", img).Output()
	if err != nil {
		t.Fatalf("qemu-img info: %v", err)
	}
	var info struct {
		FormatSpecific struct {
			Data struct {
				Bitmaps []struct {
					Name  string   `json:"name"`
					Flags []string `json:"flags"`
				} `json:"bitmaps"`
			} `json:"data"`
		} `json:"format-specific"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatal(err)
	}
	for _, b := range info.FormatSpecific.Data.Bitmaps {
		if b.Name == name {
			return b.Flags
		}
	}
	t.Fatalf("bitmap %s not in the image:\n%s", name, out)
	return nil
}

func hasFlag(flags []string, f string) bool {
	for _, x := range flags {
		if x == f {
			return true
		}
	}
	return false
}

// TestQcow2ReopenReadWriteAndBack: a qcow2 node opened read-only (as a
// backing file is) becomes writable with block.Node.SetReadOnly(false) —
// its file takes a writer's lock, lazy refcounts work (the dirty bit is
// set by a flush), the persistent bitmap is marked in use before the
// first write and records it — and SetReadOnly(true) writes everything
// back: dirty bit clear, bitmap stored without in_use, qemu-img check
// clean, the write lock dropped, writes refused again. Before, a node
// opened read-only could not be made writable at all.
func TestQcow2ReopenReadWriteAndBack(t *testing.T) {
	needQemu(t)
	for _, opts := range []string{"", "lazy_refcounts=on"} {
		t.Run("opts="+opts, func(t *testing.T) {
			e := blocktest.NewEnv(t, 0)
			img := filepath.Join(t.TempDir(), "base.qcow2")
			qemuCreate(t, img, opts, 8<<20)
			qemuIO(t, img, "write -P 0x11 0 64k")
			qemuImg(t, "bitmap", "--add", img, "b0")
			n := openQcow2ReadOnly(t, e, img)
			if _, err := n.WriteAt(make([]byte, 512), 0); !errors.Is(err, syscall.EACCES) {
				t.Fatalf("write to the read-only node: %v, want EACCES", err)
			}
			if err := n.SetReadOnly(false); err != nil {
				t.Fatalf("SetReadOnly(false): %v", err)
			}
			file := n.Child(block.RoleFile).Node()
			if n.ReadOnly() || file.ReadOnly() {
				t.Fatalf("read-only after the reopen: node %v, file %v", n.ReadOnly(), file.ReadOnly())
			}
			if !lockHeldByOther(t, img, 101) {
				t.Error("no write lock (byte 101) on the image after the read-write reopen")
			}
			mustWrite(t, n, 0x22, 1<<20, 128<<10)
			if err := n.Flush(); err != nil {
				t.Fatal(err)
			}
			if !hasFlag(bitmapFlags(t, img, "b0"), "in-use") {
				t.Error("persistent bitmap not marked in use after a write of the read-write node")
			}
			if dirty := incompatOf(t, img)&format.IncompatDirty != 0; dirty != (opts != "") {
				t.Errorf("dirty bit %v after an allocating write and a flush, want %v (lazy refcounts %q)", dirty, opts != "", opts)
			}
			if b := n.Bitmap("b0"); b == nil || b.Count() == 0 {
				t.Error("the write did not reach the persistent bitmap")
			}

			if err := n.SetReadOnly(true); err != nil {
				t.Fatalf("SetReadOnly(true): %v", err)
			}
			if !n.ReadOnly() || !file.ReadOnly() {
				t.Fatalf("writable after the read-only reopen: node %v, file %v", !n.ReadOnly(), !file.ReadOnly())
			}
			if v := incompatOf(t, img); v&format.IncompatDirty != 0 {
				t.Errorf("dirty bit set after the read-only reopen: %#x", v)
			}
			if f := bitmapFlags(t, img, "b0"); hasFlag(f, "in-use") {
				t.Errorf("bitmap flags %v after the read-only reopen, want it stored (not in use)", f)
			}
			if lockHeldByOther(t, img, 101) {
				t.Error("write lock still held after the read-only reopen")
			}
			qemuImgCheckClean(t, img) // a reader's open: allowed again
			if _, err := n.WriteAt(make([]byte, 512), 0); !errors.Is(err, syscall.EACCES) {
				t.Fatalf("write after the read-only reopen: %v, want EACCES", err)
			}
			mustRead(t, n, 0x22, 1<<20, 128<<10)
			if err := n.Unref(); err != nil {
				t.Fatal(err)
			}
			qemuIO(t, img, "read -P 0x11 0 64k", "read -P 0x22 1M 128k")
			qemuImgCheckClean(t, img)
		})
	}
}

// TestQcow2ReopenReadWriteRepairsDirtyImage: a dirty image (lazy
// refcounts, not closed cleanly) opened read-only is repaired when it is
// reopened read-write, as a read-write open repairs it, so the allocator
// never trusts the stale refcounts; the image checks clean after the
// writes and the reopen back to read-only.
func TestQcow2ReopenReadWriteRepairsDirtyImage(t *testing.T) {
	needQemu(t)
	e := blocktest.NewEnv(t, 0)
	dir := t.TempDir()
	img, crash := filepath.Join(dir, "lazy.qcow2"), filepath.Join(dir, "crash.qcow2")
	qemuCreate(t, img, "lazy_refcounts=on", 8<<20)
	w := openQcow2File(t, e, img)
	mustWrite(t, w, 0x33, 0, 256<<10)
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	copyFile(t, img, crash) // a power cut here: dirty, refcounts behind
	if err := w.Unref(); err != nil {
		t.Fatal(err)
	}
	if incompatOf(t, crash)&format.IncompatDirty == 0 {
		t.Fatal("the crash copy is not dirty")
	}
	n := openQcow2ReadOnly(t, e, crash)
	if err := n.SetReadOnly(false); err != nil {
		t.Fatalf("SetReadOnly(false) of a dirty image: %v", err)
	}
	if v := incompatOf(t, crash); v&format.IncompatDirty != 0 {
		t.Fatalf("dirty bit still set after the read-write reopen (no repair): %#x", v)
	}
	mustWrite(t, n, 0x44, 1<<20, 256<<10)
	if err := n.SetReadOnly(true); err != nil {
		t.Fatal(err)
	}
	qemuImgCheckClean(t, crash)
	if err := n.Unref(); err != nil {
		t.Fatal(err)
	}
	qemuIO(t, crash, "read -P 0x33 0 256k", "read -P 0x44 1M 256k")
	qemuImgCheckClean(t, crash)
}

// TestQcow2ReopenReadWriteRefusedByReader: another process reading the
// image without sharing writes (qemu-io -r on a qcow2 image holds byte
// 201) makes the read-write reopen fail with QEMU's lock error, and the
// node stays read-only and readable, its file with a reader's locks.
func TestQcow2ReopenReadWriteRefusedByReader(t *testing.T) {
	needQemu(t)
	e := blocktest.NewEnv(t, 0)
	img := filepath.Join(t.TempDir(), "held.qcow2")
	qemuCreate(t, img, "", 8<<20)
	qemuIO(t, img, "write -P 0x11 0 64k")
	n := openQcow2ReadOnly(t, e, img)
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	lk := unix.Flock_t{Type: unix.F_RDLCK, Start: 201, Len: 1} // "write not shared"
	if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &lk); err != nil {
		t.Skipf("no OFD locks here: %v", err)
	}
	err = n.SetReadOnly(false)
	var le *raw.LockError
	if !errors.As(err, &le) || le.Sentence() != `Failed to get "write" lock` {
		t.Fatalf("SetReadOnly(false) against a reader that does not share writes: %v, want a LockError on \"write\"", err)
	}
	if !n.ReadOnly() || !n.Child(block.RoleFile).Node().ReadOnly() {
		t.Fatal("the refused reopen left the node or its file writable")
	}
	if lockHeldByOther(t, img, 101) {
		t.Error("the refused reopen left a write lock")
	}
	mustRead(t, n, 0x11, 0, 64<<10)
	if err := n.Unref(); err != nil {
		t.Fatal(err)
	}
}
