package qcow2

import (
	"bytes"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

func l1SizeOf(t *testing.T, path string) uint32 {
	t.Helper()
	b := make([]byte, 40)
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return binary.BigEndian.Uint32(b[36:])
}

// TestQcow2VMStateSaveLoad: VM state saved past the disk (a piece inside
// the first VM-state cluster, a piece across a cluster boundary, one at
// 1 TiB) reads back before and after a reopen, leaves the disk's own
// bytes alone, grows the L1 table past what the size needs (1.5x steps,
// as QEMU) and leaves an image both checks accept; qemu-io 7.2 reads the
// state back, and state qemu-io writes reads back here.
func TestQcow2VMStateSaveLoad(t *testing.T) {
	e := newTestEnv(t)
	img := filepath.Join(t.TempDir(), "vm.qcow2")
	const size = 64 << 20 // one L1 entry with 64 KiB clusters
	if err := e.create(img, size, format.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	n := e.mustOpen(img, false)
	if _, err := n.WriteAt(pattern(4096, 0x77), size-4096); err != nil {
		t.Fatal(err)
	}
	saves := []struct {
		pos int64
		n   int
		v   byte
	}{{512, 1024, 0x11}, {65536 - 512, 4096, 0x22}, {1 << 40, 4096, 0x33}}
	for _, s := range saves {
		if _, err := n.SaveVMState(pattern(s.n, s.v), s.pos); err != nil {
			t.Fatalf("save %d bytes at %d: %v", s.n, s.pos, err)
		}
	}
	verify := func(when string) {
		t.Helper()
		for _, s := range saves {
			buf := make([]byte, s.n)
			if _, err := n.LoadVMState(buf, s.pos); err != nil {
				t.Fatalf("%s: load at %d: %v", when, s.pos, err)
			}
			if !bytes.Equal(buf, pattern(s.n, s.v)) {
				t.Fatalf("%s: VM state at %d reads back wrong", when, s.pos)
			}
		}
		// Around the saved pieces: zeros (fresh clusters, past the L1 table).
		for _, pos := range []int64{0, 2048, 1<<40 + 4096, 1 << 50} {
			buf := pattern(512, 0xee)
			if _, err := n.LoadVMState(buf, pos); err != nil {
				t.Fatalf("%s: load at %d: %v", when, pos, err)
			}
			if !bytes.Equal(buf, make([]byte, 512)) {
				t.Fatalf("%s: unwritten VM state at %d is not zero", when, pos)
			}
		}
		got := make([]byte, 8192)
		if _, err := n.ReadAt(got, size-8192); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, append(make([]byte, 4096), pattern(4096, 0x77)...)) {
			t.Fatalf("%s: the disk's last clusters changed", when)
		}
		if l, _ := n.Length(); l != size {
			t.Fatalf("%s: length %d", when, l)
		}
	}
	verify("open")
	res, err := n.Check(0)
	if err != nil || res.Corruptions != 0 || res.Leaks != 0 {
		t.Fatalf("check: %+v %v", res, err)
	}
	n.Unref()
	// 1 TiB past 64 MiB is L1 index 2049: grown from 1 in 1.5x steps.
	if got := l1SizeOf(t, img); got != 2397 {
		t.Fatalf("l1_size %d, want 2397", got)
	}
	n = e.mustOpen(img, false)
	verify("reopen")
	n.Unref()

	if _, err := exec.LookPath("qemu-io"); err != nil {
		t.Skipf("qemu-io not found: the interop half is not run")
	}
	qemuCheck(t, img)
	qemuIO(t, img, "read -b -P 0x11 512 1024", "read -b -P 0x22 65024 4096",
		"read -b -P 0x33 1T 4k", "read -P 0x77 65532k 4k", "write -b -P 0x44 2T 64k")
	n = e.mustOpen(img, true)
	defer n.Unref()
	buf := make([]byte, 64<<10)
	if _, err := n.LoadVMState(buf, 2<<40); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf, pattern(len(buf), 0x44)) {
		t.Fatal("VM state written by qemu-io reads back wrong")
	}
}

// TestQcow2VMStateLimit: a VM state position the largest L1 table cannot
// map is refused with a limit error, and the image is unchanged.
func TestQcow2VMStateLimit(t *testing.T) {
	e := newTestEnv(t)
	img := filepath.Join(t.TempDir(), "vm.qcow2")
	if err := e.create(img, 1<<20, format.CreateOptions{ClusterSize: 512}); err != nil {
		t.Fatal(err)
	}
	n := e.mustOpen(img, false)
	defer n.Unref()
	// 512-byte clusters: 4 Mi L1 entries map 2^(9+6+22) = 128 GiB.
	if _, err := n.SaveVMState(pattern(512, 1), 200<<30); err == nil {
		t.Fatal("VM state past the largest L1 table was accepted")
	}
	if _, err := n.SaveVMState(pattern(512, 1), 1<<62); err == nil {
		t.Fatal("VM state past the largest guest offset was accepted")
	}
	if got := l1SizeOf(t, img); got != 32 { // 1 MiB / 32 KiB per table
		t.Fatalf("l1_size %d after refused saves", got)
	}
}

// TestQcow2VMStateGrowsL1AcrossRefcountBlocks (iotest 026, 512-byte
// clusters): 64 MiB of VM state past a 1 GiB disk moves a 768-cluster L1
// table to the end of the image, a run spanning several refcount blocks'
// ranges that have no block yet. The blocks go before the run; the save
// succeeds, reads back before and after a reopen, and both checks accept
// the image.
func TestQcow2VMStateGrowsL1AcrossRefcountBlocks(t *testing.T) {
	e := newTestEnv(t)
	img := filepath.Join(t.TempDir(), "vm.qcow2")
	if err := e.create(img, 1<<30, format.CreateOptions{ClusterSize: 512}); err != nil {
		t.Fatal(err)
	}
	n := e.mustOpen(img, false)
	data := pattern(64<<20, 0x5a)
	if _, err := n.SaveVMState(data, 0); err != nil {
		t.Fatalf("save 64 MiB of VM state: %v", err)
	}
	buf := make([]byte, len(data))
	if _, err := n.LoadVMState(buf, 0); err != nil || !bytes.Equal(buf, data) {
		t.Fatalf("VM state reads back wrong (%v)", err)
	}
	res, err := n.Check(0)
	if err != nil || res.Corruptions != 0 || res.Leaks != 0 {
		t.Fatalf("check: %+v %v", res, err)
	}
	n.Unref()
	if got := l1SizeOf(t, img); got <= 32768 {
		t.Fatalf("l1_size %d: the table did not grow", got)
	}
	n = e.mustOpen(img, true)
	clear(buf)
	if _, err := n.LoadVMState(buf, 0); err != nil || !bytes.Equal(buf, data) {
		t.Fatalf("after a reopen the VM state reads back wrong (%v)", err)
	}
	n.Unref()
	if _, err := exec.LookPath("qemu-img"); err == nil {
		qemuCheck(t, img)
	}
}
