package qcow2

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
	"github.com/ringblk/ringblk/drivers/raw"
)

// Lazy refcount tests. A crash is simulated without killing anything: the
// image file is copied while a node still has it open (after a guest
// flush, before the close), which is what a power cut at that moment
// leaves on disk.

func incompatOf(t *testing.T, path string) uint64 {
	t.Helper()
	b := make([]byte, 80)
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return binary.BigEndian.Uint64(b[72:])
}

// qemuCheckCode runs qemu-img check and returns its exit code and output.
func qemuCheckCode(t *testing.T, img string) (int, string) {
	t.Helper()
	out, err := exec.Command("qemu-img", "check", img).CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), string(out)
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0, string(out)
}

func pattern(n int, v byte) []byte { return bytes.Repeat([]byte{v}, n) }

// TestLazyRefcountsCreate: CreateOptions.LazyRefcounts sets compatible
// bit 0 (qemu-img info agrees) and is refused for version 2 with
// qemu-img's message.
func TestLazyRefcountsCreate(t *testing.T) {
	e := newTestEnv(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "lazy.qcow2")
	if err := e.create(img, 16<<20, format.CreateOptions{LazyRefcounts: true}); err != nil {
		t.Fatal(err)
	}
	im, err := openFile(t, img, format.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if im.Header.CompatibleFeatures != format.CompatLazyRefcounts {
		t.Errorf("compatible features %#x, want %#x", im.Header.CompatibleFeatures, format.CompatLazyRefcounts)
	}
	if _, err := exec.LookPath("qemu-img"); err == nil {
		info := qemuInfo(t, img)
		spec, _ := info["format-specific"].(map[string]any)
		data, _ := spec["data"].(map[string]any)
		if data["lazy-refcounts"] != true {
			t.Errorf("qemu-img info: lazy-refcounts = %v", data["lazy-refcounts"])
		}
	}
	err = e.create(filepath.Join(dir, "v2.qcow2"), 16<<20, format.CreateOptions{LazyRefcounts: true, Version: 2})
	if !errors.Is(err, format.ErrUnsupported) || !strings.Contains(err.Error(), "Lazy refcounts only supported with compatibility level 1.1 and above") {
		t.Errorf("version 2 with lazy refcounts: %v", err)
	}
}

// TestLazyRefcountsCrashCopyRepair: writes through a lazy image set the
// dirty bit and leave refcount blocks unwritten at a flush, so a copy
// taken after the flush is dirty and has refcount errors for qemu-img; the
// clean close writes them and clears the bit; a read-only open of the
// copy changes nothing, and a read-write open repairs it, keeping the
// data that was flushed.
func TestLazyRefcountsCrashCopyRepair(t *testing.T) {
	needQemu(t)
	e := newTestEnv(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "lazy.qcow2")
	crash := filepath.Join(dir, "crash.qcow2")
	if err := e.create(img, 16<<20, format.CreateOptions{LazyRefcounts: true}); err != nil {
		t.Fatal(err)
	}
	const size = 16 << 20
	ref := make([]byte, size)
	n := e.mustOpen(img, false)
	write := func(off int64, p []byte) {
		t.Helper()
		if _, err := n.WriteAt(p, off); err != nil {
			t.Fatalf("write at %d: %v", off, err)
		}
		copy(ref[off:], p)
	}
	write(0, pattern(64<<10, 0x11))
	write(1<<20, pattern(192<<10, 0x22))
	write(9<<20+512, pattern(4096, 0x33)) // partial cluster (COW)
	if err := n.Flush(); err != nil {
		t.Fatal(err)
	}
	if incompatOf(t, img)&format.IncompatDirty == 0 {
		t.Fatal("dirty bit not set on disk after allocating writes and a flush")
	}
	copyFile(t, img, crash)
	atCrash := append([]byte(nil), ref...)

	write(4<<20, pattern(64<<10, 0x44))
	n.Unref() // clean close
	if v := incompatOf(t, img); v&format.IncompatDirty != 0 {
		t.Fatalf("dirty bit still set after a clean close: %#x", v)
	}
	if code, out := qemuCheckCode(t, img); code != 0 {
		t.Fatalf("qemu-img check after clean close: exit %d\n%s", code, out)
	}
	qemuCompare(t, img, ref)

	// The crash copy: dirty, and refcounts behind the references.
	if incompatOf(t, crash)&format.IncompatDirty == 0 {
		t.Fatal("crash copy is not dirty")
	}
	code, out := qemuCheckCode(t, crash)
	if code != 2 || !strings.Contains(out, "refcount=0 reference=1") {
		t.Fatalf("qemu-img check of the crash copy: exit %d, want 2 with refcount=0 errors\n%s", code, out)
	}
	before, err := os.ReadFile(crash)
	if err != nil {
		t.Fatal(err)
	}
	ro := e.mustOpen(crash, true)
	got := readAll(t, ro, 1<<20)
	ro.Unref()
	checkSame(t, got, atCrash)
	after, _ := os.ReadFile(crash)
	if !bytes.Equal(before, after) {
		t.Fatal("read-only open of a dirty image changed the file")
	}

	rw := e.mustOpen(crash, false) // repairs
	if v := incompatOf(t, crash); v&format.IncompatDirty != 0 {
		t.Errorf("dirty bit still set after a read-write open: %#x", v)
	}
	checkSame(t, readAll(t, rw, 1<<20), atCrash)
	if _, err := rw.WriteAt(pattern(64<<10, 0x55), 6<<20); err != nil {
		t.Fatal(err)
	}
	copy(atCrash[6<<20:], pattern(64<<10, 0x55))
	rw.Unref()
	if code, out := qemuCheckCode(t, crash); code != 0 {
		t.Fatalf("qemu-img check after the repairing open: exit %d\n%s", code, out)
	}
	qemuCompare(t, crash, atCrash)
}

// TestLazyRefcountsQemuDirtyImage: an image with lazy refcounts that
// qemu-io left dirty (abort after a flush) is dirty with refcount errors
// for qemu-img; a read-write open by the driver repairs it, and after
// more writes and a close, qemu-img check is clean and both tools' data
// reads back.
func TestLazyRefcountsQemuDirtyImage(t *testing.T) {
	needQemu(t)
	e := newTestEnv(t)
	img := filepath.Join(t.TempDir(), "q.qcow2")
	qemuCreate(t, img, "lazy_refcounts=on", 16<<20)
	// abort(3) ends qemu-io without a clean close; its exit status is the
	// signal's.
	out, _ := exec.Command("qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 192k", "-c", "write -P 0x5b 5M 4k", "-c", "flush", "-c", "abort", img).CombinedOutput()
	if incompatOf(t, img)&format.IncompatDirty == 0 {
		t.Fatalf("qemu-io did not leave the image dirty:\n%s", out)
	}
	if code, out := qemuCheckCode(t, img); code != 2 {
		t.Fatalf("qemu-img check of the dirty image: exit %d, want 2\n%s", code, out)
	}
	var logged []string
	file, err := raw.NewNode(e.g, img, raw.Options{Locking: raw.LockingOff}, block.Options{})
	if err != nil {
		t.Fatal(err)
	}
	n, err := NewNode(e.g, file, DriverOptions{CheckLog: func(m string) { logged = append(logged, m) }}, block.Options{})
	if err != nil {
		t.Fatalf("read-write open of a dirty image: %v", err)
	}
	if !strings.Contains(strings.Join(logged, "\n"), "Rebuilding refcount structure") {
		t.Errorf("open did not rebuild the refcounts; log:\n%s", strings.Join(logged, "\n"))
	}
	if _, err := n.WriteAt(pattern(128<<10, 0x66), 2<<20); err != nil {
		t.Fatal(err)
	}
	n.Unref()
	if code, out := qemuCheckCode(t, img); code != 0 {
		t.Fatalf("qemu-img check after the repairing open: exit %d\n%s", code, out)
	}
	qemuIO(t, img, "read -P 0x5a 0 192k", "read -P 0x5b 5M 4k", "read -P 0x66 2M 128k", "read -P 0 3M 64k")
}

// TestLazyRefcountsQemuInterop: an image made by qemu-img with
// lazy_refcounts=on and written by qemu-io opens read-write; after the
// driver's writes and a clean close the image is clean for qemu-img and
// QEMU reads both tools' data.
func TestLazyRefcountsQemuInterop(t *testing.T) {
	needQemu(t)
	e := newTestEnv(t)
	img := filepath.Join(t.TempDir(), "q.qcow2")
	qemuCreate(t, img, "lazy_refcounts=on", 64<<20)
	qemuIO(t, img, "write -P 0x01 0 1M", "write -P 0x02 33M 64k")
	n := e.mustOpen(img, false)
	if _, err := n.WriteAt(pattern(256<<10, 0x03), 10<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := n.WriteAt(pattern(4096, 0x04), 512<<10); err != nil { // in place
		t.Fatal(err)
	}
	if err := n.Flush(); err != nil {
		t.Fatal(err)
	}
	if incompatOf(t, img)&format.IncompatDirty == 0 {
		t.Error("dirty bit not set while the image is open with unwritten refcounts")
	}
	n.Unref()
	if v := incompatOf(t, img); v&format.IncompatDirty != 0 {
		t.Fatalf("dirty bit set after close: %#x", v)
	}
	if code, out := qemuCheckCode(t, img); code != 0 {
		t.Fatalf("qemu-img check: exit %d\n%s", code, out)
	}
	qemuIO(t, img, "read -P 0x01 0 512k", "read -P 0x04 512k 4k", "read -P 0x01 516k 508k",
		"read -P 0x02 33M 64k", "read -P 0x03 10M 256k")
}

// TestLazyRefcountsCheckOpenRefusesWrites: with CheckOpen a dirty image
// opens read-write without a repair; writes fail until Check repairs it.
func TestLazyRefcountsCheckOpenRefusesWrites(t *testing.T) {
	needQemu(t)
	e := newTestEnv(t)
	img := filepath.Join(t.TempDir(), "q.qcow2")
	qemuCreate(t, img, "lazy_refcounts=on", 16<<20)
	exec.Command("qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 128k", "-c", "flush", "-c", "abort", img).Run()
	if incompatOf(t, img)&format.IncompatDirty == 0 {
		t.Fatal("qemu-io did not leave the image dirty")
	}
	file, err := raw.NewNode(e.g, img, raw.Options{Locking: raw.LockingOff}, block.Options{})
	if err != nil {
		t.Fatal(err)
	}
	n, err := NewNode(e.g, file, DriverOptions{CheckOpen: true}, block.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if n != nil {
			n.Unref()
		}
	}()
	if incompatOf(t, img)&format.IncompatDirty == 0 {
		t.Fatal("CheckOpen repaired the image at open")
	}
	if _, err := n.WriteAt(pattern(4096, 1), 1<<20); err == nil {
		t.Fatal("write to an unrepaired dirty image succeeded")
	}
	res, err := n.Check(block.CheckFixLeaks | block.CheckFixErrors)
	if err != nil {
		t.Fatal(err)
	}
	if res.CorruptionsFixed == 0 || res.Corruptions != 0 {
		t.Fatalf("repair result %+v", res)
	}
	if incompatOf(t, img)&format.IncompatDirty != 0 {
		t.Fatal("dirty bit still set after the repair")
	}
	if _, err := n.WriteAt(pattern(4096, 1), 1<<20); err != nil {
		t.Fatalf("write after the repair: %v", err)
	}
	n.Unref()
	n = nil
	if code, out := qemuCheckCode(t, img); code != 0 {
		t.Fatalf("qemu-img check: exit %d\n%s", code, out)
	}
	qemuIO(t, img, "read -P 0x5a 0 128k", "read -P 1 1M 4k")
}

// TestLazyRefcountsCrashStates: random writes and guest flushes on a lazy
// image over a recording file (crash_test.go's recFile), then simulated
// power-loss states: everything before some flush plus a random subset of
// the writes after it. A state without the dirty bit must be consistent
// for qemu-img (at most leaks): the bit is durable before any table that
// relies on an unwritten refcount. A dirty state must be repaired by a
// read-write open, after which qemu-img check is clean and every byte
// that the last flush inside the state covered (and that was not written
// afterwards) reads back.
func TestLazyRefcountsCrashStates(t *testing.T) {
	needQemu(t)
	states := 40
	if raceEnabled {
		states = 12
	}
	e := newTestEnv(t)
	f := &recFile{}
	fn, err := e.g.Open(f, block.Options{})
	if err != nil {
		t.Fatal(err)
	}
	const size, cs = 4 << 20, 4096
	if err := Create(fn, size, format.CreateOptions{ClusterSize: cs, LazyRefcounts: true}); err != nil {
		t.Fatal(err)
	}
	start := append([]byte(nil), f.data...)
	f.log = nil
	n, err := NewNode(e.g, fn, DriverOptions{}, block.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ref := make([]byte, size)
	lastTouch := make([]int32, size)
	type gflush struct {
		logLen int
		op     int32
	}
	var flushes []gflush
	var opIdx int32
	rng := rand.New(rand.NewPCG(7, 11))
	for i := 0; i < 150; i++ {
		if rng.IntN(6) == 0 {
			if err := n.Flush(); err != nil {
				t.Fatal(err)
			}
			f.mu.Lock()
			flushes = append(flushes, gflush{len(f.log), opIdx})
			f.mu.Unlock()
			continue
		}
		off := rng.Int64N(size/512) * 512
		ln := min(size-off, 512*(1+rng.Int64N(3*cs/512)))
		buf := bytes.Repeat([]byte{byte(i + 1)}, int(ln))
		if _, err := n.WriteAt(buf, off); err != nil {
			t.Fatal(err)
		}
		copy(ref[off:], buf)
		opIdx++
		for j := off; j < off+ln; j++ {
			lastTouch[j] = opIdx
		}
	}
	n.Unref()
	log := f.log
	var bounds []int
	for i, op := range log {
		if op.flush {
			bounds = append(bounds, i)
		}
	}
	if len(bounds) < 4 {
		t.Fatalf("only %d flushes in the log", len(bounds))
	}
	final := append([]byte(nil), f.data...)
	if im := openBytes(t, final, format.Options{}); im.Header.IncompatibleFeatures&format.IncompatDirty != 0 {
		t.Fatal("dirty bit set after the clean close")
	}
	dir := t.TempDir()
	dirtyStates := 0
	for s := 0; s < states; s++ {
		// k = -1: nothing durable yet; the last bounds are the close's.
		k := rng.IntN(len(bounds)+1) - 1
		if s%8 == 7 {
			k = len(bounds) - 1 - s/8%2
		}
		prefix := 0
		if k >= 0 {
			prefix = bounds[k] + 1
		}
		next := len(log)
		if k+1 < len(bounds) {
			next = bounds[k+1]
		}
		img := append([]byte(nil), start...)
		apply := func(op recOp) {
			if op.flush {
				return
			}
			if end := op.off + int64(len(op.b)); end > int64(len(img)) {
				img = append(img, make([]byte, end-int64(len(img)))...)
			}
			copy(img[op.off:], op.b)
		}
		for _, op := range log[:prefix] {
			apply(op)
		}
		for _, op := range log[prefix:next] {
			if rng.IntN(2) == 0 {
				apply(op)
			}
		}
		path := filepath.Join(dir, "state.qcow2")
		if err := os.WriteFile(path, img, 0o644); err != nil {
			t.Fatal(err)
		}
		dirty := binary.BigEndian.Uint64(img[72:])&format.IncompatDirty != 0
		if !dirty {
			if code, out := qemuCheckCode(t, path); code != 0 && code != 3 {
				t.Fatalf("state %d (flush %d): clean state, qemu-img check exit %d\n%s", s, k, code, out)
			}
		} else {
			dirtyStates++
			rw, err := e.open(path, false)
			if err != nil {
				t.Fatalf("state %d: read-write open of the dirty state: %v", s, err)
			}
			rw.Unref()
			if code, out := qemuCheckCode(t, path); code != 0 {
				t.Fatalf("state %d (flush %d): after the repairing open qemu-img check exit %d\n%s", s, k, code, out)
			}
		}
		// The data of the last guest flush inside the state.
		g := -1
		for j, gf := range flushes {
			if gf.logLen <= prefix {
				g = j
			}
		}
		if g < 0 {
			continue
		}
		after, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		im := openBytes(t, after, format.Options{})
		got := make([]byte, size)
		if _, err := im.ReadAt(got, 0, nil); err != nil {
			t.Fatalf("state %d: read: %v", s, err)
		}
		for i := range got {
			if lastTouch[i] <= flushes[g].op && got[i] != ref[i] {
				t.Fatalf("state %d: flushed byte %d is %02x, want %02x", s, i, got[i], ref[i])
			}
		}
	}
	if dirtyStates == 0 || dirtyStates == states {
		t.Errorf("%d of %d crash states had the dirty bit: want some of each", dirtyStates, states)
	}
	t.Logf("%d states, %d dirty", states, dirtyStates)
}
