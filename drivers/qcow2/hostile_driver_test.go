package qcow2

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// TestQcow2DriverHostileImages: every image of the malformed catalogue
// (and the damaged-L2 cases) opened through the driver read-only and
// read-write, then read whole, written, discarded: no panic, and every
// error is a *block.Error.
func TestQcow2DriverHostileImages(t *testing.T) {
	type img struct {
		name string
		b    []byte
	}
	var imgs []img
	for _, c := range hostileImages {
		imgs = append(imgs, img{c.Name, c.Patch(t, append([]byte(nil), loadImage(t, c.Image)...))})
	}
	for _, p := range []struct {
		name string
		off  int
		v    uint64
	}{
		{"l2 unaligned", 0x40000, format.EntryCopied | 0x50200},
		{"l2 past eof", 0x40008, format.EntryCopied | 0x10000000000},
		{"compressed garbage", 0x40000, format.EntryCompressed | 0x50000},
		{"compressed past eof", 0x40000, format.EntryCompressed | 0x100000000},
		{"data on refblock", 0x40000, format.EntryCopied | 0x20000},
		{"data on header", 0x40000, format.EntryCopied},
	} {
		b := append([]byte(nil), loadImage(t, "base64m")...)
		binary.BigEndian.PutUint64(b[p.off:], p.v)
		imgs = append(imgs, img{p.name, b})
	}
	e := newTestEnv(t)
	dir := t.TempDir()
	isBlockErr := func(what string, err error) {
		t.Helper()
		var be *block.Error
		if err != nil && !errors.As(err, &be) {
			t.Errorf("%s: %T %v is not a *block.Error", what, err, err)
		}
	}
	for i, im := range imgs {
		for _, ro := range []bool{true, false} {
			path := filepath.Join(dir, "h.qcow2")
			if err := os.WriteFile(path, im.b, 0o644); err != nil {
				t.Fatal(err)
			}
			n, err := e.open(path, ro)
			isBlockErr(im.name+": open", err)
			if err != nil {
				continue
			}
			size, _ := n.Length()
			buf := make([]byte, 128<<10)
			for off := int64(0); off < min(size, 1<<20); off += int64(len(buf)) {
				_, err := n.ReadAt(buf[:min(int64(len(buf)), size-off)], off)
				isBlockErr(im.name+": read", err)
			}
			if !ro {
				_, err := n.WriteAt(buf[:4096], 0)
				isBlockErr(im.name+": write", err)
				_, err = n.WriteAt(buf[:4096], 1<<20)
				isBlockErr(im.name+": write", err)
				isBlockErr(im.name+": discard", n.Discard(0, 1<<20))
				isBlockErr(im.name+": flush", n.Flush())
			}
			n.Unref()
			_ = i
		}
	}
}

// TestQcow2DriverOverlapMarksCorrupt: an in-place write whose COPIED data
// cluster is the refcount block is refused (R5), the image gets the
// corrupt bit, later requests fail, and a read-write reopen is refused.
func TestQcow2DriverOverlapMarksCorrupt(t *testing.T) {
	b := append([]byte(nil), loadImage(t, "base64m")...)
	binary.BigEndian.PutUint64(b[0x40000:], format.EntryCopied|0x20000)
	path := filepath.Join(t.TempDir(), "o.qcow2")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	e := newTestEnv(t)
	n := e.mustOpen(path, false)
	_, err := n.WriteAt(make([]byte, 512), 0)
	if !block.IsKind(err, block.Corrupt) {
		t.Fatalf("write over the refcount block: %v, want Corrupt", err)
	}
	if _, err := n.ReadAt(make([]byte, 512), 65536); !block.IsKind(err, block.Corrupt) {
		t.Fatalf("read after corruption: %v, want Corrupt", err)
	}
	n.Unref()
	after, _ := os.ReadFile(path)
	if got := binary.BigEndian.Uint64(after[72:]); got&format.IncompatCorrupt == 0 {
		t.Fatalf("incompatible_features %#x: corrupt bit not set", got)
	}
	if string(after[0x20000:0x20200]) != string(b[0x20000:0x20200]) {
		t.Fatal("refcount block was overwritten")
	}
	if _, err := e.open(path, false); err == nil {
		t.Fatal("read-write reopen of a corrupt image succeeded")
	}
	n = e.mustOpen(path, true)
	n.Unref()
}

// TestQcow2DriverKeepsBitmapsAutoclear: a read-only open changes
// nothing; a write keeps the bitmaps autoclear bit set (the driver
// maintains the bitmaps), and both checks find nothing at close.
func TestQcow2DriverKeepsBitmapsAutoclear(t *testing.T) {
	needQemu(t)
	b := loadImage(t, "bitmap")
	path := filepath.Join(t.TempDir(), "b.qcow2")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if binary.BigEndian.Uint64(b[88:])&format.AutoclearBitmaps == 0 {
		t.Fatal("test image has no consistent bitmaps")
	}
	e := newTestEnv(t)
	n := e.mustOpen(path, true)
	n.Unref() // a read-only open changes nothing
	if after, _ := os.ReadFile(path); !bytes.Equal(after, b) {
		t.Fatal("read-only open changed the image")
	}
	n = e.mustOpen(path, false)
	if _, err := n.WriteAt(make([]byte, 4096), 0); err != nil {
		t.Fatal(err)
	}
	n.Unref()
	after, _ := os.ReadFile(path)
	if v := binary.BigEndian.Uint64(after[88:]); v&format.AutoclearBitmaps == 0 {
		t.Fatalf("autoclear_features %#x after a write", v)
	}
	q := qemuCheckResult(t, path)
	if q.Corruptions != 0 || q.CheckErrors != 0 || q.Leaks != 0 {
		t.Fatalf("qemu-img check %+v", q)
	}
	compareCheck(t, path)
}

// TestQcow2DriverRefusesRWOpens: images this driver may read but not
// write are refused read-write with the right kind, and open read-only.
func TestQcow2DriverRefusesRWOpens(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	lazy := filepath.Join(dir, "l.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", lazy, "1M")
	exec.Command("qemu-io", "-f", "qcow2", "-c", "write -P 0x33 0 64k", "-c", "abort", lazy).Run() // leaves the dirty bit
	// A dirty image is repaired at a read-write open (lazy_test.go); one
	// also marked corrupt is refused.
	setU64(72, format.IncompatDirty|format.IncompatCorrupt)(t, lazy)
	e := newTestEnv(t)
	for _, c := range []struct {
		path string
		kind block.Kind
	}{{lazy, block.Corrupt}} { // extended L2 is writable (subcluster.go)
		if _, err := e.open(c.path, false); !block.IsKind(err, c.kind) {
			t.Errorf("%s read-write: %v, want %v", filepath.Base(c.path), err, c.kind)
		}
		n, err := e.open(c.path, true)
		if err != nil {
			t.Errorf("%s read-only: %v", filepath.Base(c.path), err)
			continue
		}
		n.Unref()
	}
}
