package qcow2

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

type qemuCheckJSON struct {
	Corruptions        int64 `json:"corruptions"`
	Leaks              int64 `json:"leaks"`
	CheckErrors        int64 `json:"check-errors"`
	ImageEndOffset     int64 `json:"image-end-offset"`
	TotalClusters      int64 `json:"total-clusters"`
	AllocatedClusters  int64 `json:"allocated-clusters"`
	FragmentedClusters int64 `json:"fragmented-clusters"`
	CompressedClusters int64 `json:"compressed-clusters"`
}

func qemuCheckResult(t *testing.T, img string) qemuCheckJSON {
	t.Helper()
	out, _ := exec.Command("qemu-img", "check", "--output=json", img).Output()
	var q qemuCheckJSON
	if err := json.Unmarshal(out, &q); err != nil {
		t.Fatalf("qemu-img check output %q: %v", out, err)
	}
	return q
}

func compareCheck(t *testing.T, img string) {
	t.Helper()
	im, err := openFile(t, img, format.Options{})
	if err != nil {
		t.Fatal(err)
	}
	got, err := im.Check()
	if err != nil {
		t.Fatal(err)
	}
	want := qemuCheckResult(t, img)
	g := qemuCheckJSON{got.Corruptions, got.Leaks, got.CheckErrors, got.ImageEndOffset, got.TotalClusters,
		got.AllocatedClusters, got.FragmentedClusters, got.CompressedClusters}
	if g != want {
		t.Errorf("%s: Check = %+v\nqemu-img check = %+v\n%q", filepath.Base(img), g, want, got.Messages)
	}
}

// TestQcow2CheckMatchesQemu: Check's counts equal qemu-img check's on
// clean images of several geometries (with compressed and zero clusters),
// on images with leaks and with corruptions, and on an image after writes
// through the driver.
func TestQcow2CheckMatchesQemu(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	for i, opts := range []string{"", "compat=0.10", "cluster_size=512", "cluster_size=4096,refcount_bits=1", "cluster_size=2M", "extended_l2=on"} {
		img := filepath.Join(dir, fmt.Sprintf("c%d.qcow2", i))
		qemuPopulated(t, img, opts, 40<<20, opts == "" || opts == "cluster_size=512")
		compareCheck(t, img)
	}
	// A snapshot shares clusters.
	snap := filepath.Join(dir, "c0.qcow2")
	qemuImg(t, "snapshot", "-c", "s1", snap)
	qemuIO(t, snap, "write -P 0x44 0 100k")
	compareCheck(t, snap)

	// base64m: L2@0x40000 maps guest 0 → 0x50000 and 64k → 0x60000;
	// the refcount block is at 0x20000 with 16-bit entries.
	patch := func(name string, f func(b []byte)) string {
		b := append([]byte(nil), loadImage(t, "base64m")...)
		f(b)
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	compareCheck(t, patch("leak.qcow2", func(b []byte) { binary.BigEndian.PutUint64(b[0x40008:], 0) }))
	compareCheck(t, patch("corrupt.qcow2", func(b []byte) { binary.BigEndian.PutUint16(b[0x20000+2*5:], 0) }))
	compareCheck(t, patch("copied.qcow2", func(b []byte) { binary.BigEndian.PutUint64(b[0x40000:], 0x50000) }))
	compareCheck(t, patch("double.qcow2", func(b []byte) { binary.BigEndian.PutUint64(b[0x40008:], format.EntryCopied|0x50000) }))

	// After writes through the driver.
	img := filepath.Join(dir, "w.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", img, "4M")
	e := newTestEnv(t)
	n := e.mustOpen(img, false)
	writeWorkload(t, n, make([]byte, 4<<20), 3, 100, 4096)
	n.Unref()
	compareCheck(t, img)
}

// TestQcow2DriverBlockStatusMatchesQemuMap: BlockStatus over the whole
// disk agrees with qemu-img map's present/zero/data flags.
func TestQcow2DriverBlockStatusMatchesQemuMap(t *testing.T) {
	needQemu(t)
	for _, opts := range []string{"cluster_size=65536", "cluster_size=4096", "compat=0.10"} {
		img := filepath.Join(t.TempDir(), "x.qcow2")
		qemuImg(t, "create", "-q", "-f", "qcow2", "-o", opts, img, "8M")
		im, err := openFile(t, img, format.Options{})
		if err != nil {
			t.Fatal(err)
		}
		var cmds []string
		for _, o := range opsFor(&im.Geometry, true) {
			cmds = append(cmds, o.qemu())
		}
		qemuIO(t, img, cmds...)
		qm := parseQemuMap(t, qemuImg(t, "map", "--output=json", img))
		e := newTestEnv(t)
		n := e.mustOpen(img, true)
		size, _ := n.Length()
		for off := int64(0); off < size; {
			st, pnum, err := n.BlockStatus(off, size-off)
			if err != nil || pnum <= 0 {
				t.Fatalf("%s: BlockStatus(%d): %v, pnum %d", opts, off, err, pnum)
			}
			for _, q := range qm {
				if q.Start >= off+pnum || q.Start+q.Length <= off {
					continue
				}
				// qemu-img map also asks the file for holes under data
				// clusters ("zero":true,"data":true); BlockStatus does not
				// (yet), so zero is compared only where there is no data.
				zeroOK := q.Data || q.Zero == (st&block.StatusZero != 0)
				if q.Present != (st&block.StatusAllocated != 0) || !zeroOK || q.Data != (st&block.StatusData != 0) {
					t.Errorf("%s: [%d,+%d) status %b, qemu-img map %+v", opts, off, pnum, st, q)
				}
			}
			off += pnum
		}
		n.Unref()
	}
}

// TestQcow2DriverCheckOp: block's OpCheck on an open node (after writes,
// with dirty metadata) gives qemu-img check's counts after close.
func TestQcow2DriverCheckOp(t *testing.T) {
	needQemu(t)
	img := filepath.Join(t.TempDir(), "x.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", img, "4M")
	qemuIO(t, img, "write -c -P 0x11 0 64k", "write -P 0x12 1M 100k")
	e := newTestEnv(t)
	n := e.mustOpen(img, false)
	writeWorkload(t, n, make([]byte, 4<<20), 11, 60, 4096)
	res, err := n.Check(0)
	if err != nil {
		t.Fatal(err)
	}
	// A repair of the consistent image finds and changes nothing (repair_test.go).
	if rr, err := n.Check(block.CheckFixLeaks | block.CheckFixErrors); err != nil || rr.LeaksFixed != 0 || rr.CorruptionsFixed != 0 || rr.Leaks != 0 || rr.Corruptions != 0 {
		t.Errorf("repair of a consistent image: %+v, %v", rr, err)
	}
	n.Unref()
	q := qemuCheckResult(t, img)
	got := qemuCheckJSON{int64(res.Corruptions), int64(res.Leaks), int64(res.CheckErrors), res.ImageEndOffset, res.TotalClusters,
		res.AllocatedClusters, res.FragmentedClusters, res.CompressedClusters}
	if got != q {
		t.Errorf("OpCheck %+v\nqemu-img check %+v", got, q)
	}
}

// TestQcow2DriverMapParity: the same writes, zero writes (with and without
// unmap), discards and compressed writes done by the driver and by qemu-io
// on twin images give the same qemu-img map classification (unallocated,
// zero, data, compressed) everywhere; host offsets may differ.
func TestQcow2DriverMapParity(t *testing.T) {
	needQemu(t)
	for _, opts := range []string{"cluster_size=65536", "cluster_size=4096", "compat=0.10"} {
		dir := t.TempDir()
		ours, theirs := filepath.Join(dir, "ours.qcow2"), filepath.Join(dir, "theirs.qcow2")
		for _, p := range []string{ours, theirs} {
			qemuImg(t, "create", "-q", "-f", "qcow2", "-o", opts, p, "8M")
		}
		im, err := openFile(t, theirs, format.Options{})
		if err != nil {
			t.Fatal(err)
		}
		ops := opsFor(&im.Geometry, true)
		var cmds []string
		for _, o := range ops {
			cmds = append(cmds, o.qemu())
		}
		qemuIO(t, theirs, cmds...)
		e := newTestEnv(t)
		n := e.mustOpen(ours, false)
		for _, o := range ops {
			var err error
			switch o.cmd {
			case "write":
				_, err = n.WriteAt(bytes.Repeat([]byte{o.pattern}, int(o.n)), o.off)
			case "compress":
				_, err = n.WriteCompressed(bytes.Repeat([]byte{o.pattern}, int(o.n)), o.off)
			case "zero":
				err = n.WriteZeroes(o.off, o.n, 0)
			case "zerou":
				err = n.WriteZeroes(o.off, o.n, block.MayUnmap)
			case "discard":
				err = n.Discard(o.off, o.n)
			}
			if err != nil {
				t.Fatalf("%s: %s: %v", opts, o.qemu(), err)
			}
		}
		n.Unref()
		classes := func(img string) string {
			var rs []run
			for _, r := range normalizeQemu(parseQemuMap(t, qemuImg(t, "map", "--output=json", img))) {
				r.Off = -1
				rs = appendRun(rs, r)
			}
			return runsString(rs)
		}
		if a, b := classes(ours), classes(theirs); a != b {
			t.Errorf("%s: map classification differs:\nours   %s\nqemu   %s", opts, a, b)
		}
		qemuCheck(t, ours)
		if out, err := exec.Command("qemu-img", "compare", ours, theirs).CombinedOutput(); err != nil {
			t.Errorf("%s: contents differ: %s", opts, out)
		}
	}
}
