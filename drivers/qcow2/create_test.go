package qcow2

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/raw"
)

func (e *testEnv) create(path string, size int64, o CreateOptions) error {
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		e.t.Fatal(err)
	}
	file, err := raw.NewNode(e.g, path, raw.Options{Locking: raw.LockingOff}, block.Options{})
	if err != nil {
		e.t.Fatal(err)
	}
	defer file.Unref()
	return Create(file, size, o)
}

func qemuInfo(t *testing.T, img string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(qemuImg(t, "info", "--output=json", img), &m); err != nil {
		t.Fatal(err)
	}
	delete(m, "filename")
	delete(m, "actual-size")
	delete(m, "dirty-flag")
	return m
}

// TestQcow2DriverCreate: images made by Create are accepted by qemu-img
// check, qemu-img info reports what it reports for qemu-img create with
// the same options, and where QEMU's layout applies the files are
// byte-identical.
func TestQcow2DriverCreate(t *testing.T) {
	needQemu(t)
	cases := []struct {
		size int64
		o    CreateOptions
		qopt string
	}{
		{1 << 30, CreateOptions{}, ""},
		{1<<30 + 512, CreateOptions{}, ""},
		{0, CreateOptions{}, ""},
		{1 << 20, CreateOptions{Version: 2}, "compat=0.10"},
		{1 << 30, CreateOptions{ClusterSize: 512}, "cluster_size=512"},
		{1 << 30, CreateOptions{ClusterSize: 4096}, "cluster_size=4096"},
		{1 << 30, CreateOptions{ClusterSize: 2 << 20}, "cluster_size=2M"},
		{1 << 40, CreateOptions{}, ""},
		{64 << 20, CreateOptions{RefcountBits: 1}, "refcount_bits=1"},
		{64 << 20, CreateOptions{RefcountBits: 64}, "refcount_bits=64"},
		{64 << 20, CreateOptions{RefcountBits: 8, ClusterSize: 1024}, "refcount_bits=8,cluster_size=1024"},
		{1 << 20, CreateOptions{BackingFile: "base.raw", BackingFormat: "raw"}, "backing_file=base.raw,backing_fmt=raw"},
		{1 << 20, CreateOptions{ClusterSize: 4096, BackingFile: "base.raw", BackingFormat: "raw"}, "cluster_size=4096,backing_file=base.raw,backing_fmt=raw"},
	}
	e := newTestEnv(t)
	for _, tc := range cases {
		name := fmt.Sprintf("%d-%s", tc.size, tc.qopt)
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "base.raw"), make([]byte, 1<<20), 0o644); err != nil {
				t.Fatal(err)
			}
			ours := filepath.Join(dir, "ours.qcow2")
			theirs := filepath.Join(dir, "theirs.qcow2")
			if err := e.create(ours, tc.size, tc.o); err != nil {
				t.Fatal(err)
			}
			qemuCreate(t, theirs, tc.qopt, int64(tc.size))
			qemuCheck(t, ours)
			a, b := qemuInfo(t, ours), qemuInfo(t, theirs)
			ja, _ := json.Marshal(a)
			jb, _ := json.Marshal(b)
			if !bytes.Equal(ja, jb) {
				t.Fatalf("qemu-img info differs:\nours   %s\ntheirs %s", ja, jb)
			}
			x, _ := os.ReadFile(ours)
			y, _ := os.ReadFile(theirs)
			if !bytes.Equal(x, y) {
				t.Errorf("file differs from qemu-img create's (len %d vs %d, first diff %d)", len(x), len(y), firstDiff(x, y))
			}
		})
	}
	// Refused options.
	for _, o := range []CreateOptions{{ClusterSize: 3000}, {Version: 2, RefcountBits: 8}, {RefcountBits: 3}, {BackingFile: "x"}} {
		err := e.create(filepath.Join(t.TempDir(), "bad.qcow2"), 1<<20, o)
		if err == nil || !strings.Contains(err.Error(), "qcow2") {
			t.Errorf("%+v: err = %v, want a refusal", o, err)
		}
	}
}

// TestQcow2DriverCreateThenWrite: random writes on an image we created,
// with a backing file we name, verified by qemu-img check and compare.
func TestQcow2DriverCreateThenWrite(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	base := filepath.Join(dir, "base.raw")
	if err := os.WriteFile(base, bytes.Repeat([]byte{0x5a}, 3<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, o := range []CreateOptions{
		{ClusterSize: 4096},
		{Version: 2},
		{ClusterSize: 512, RefcountBits: 2},
		{BackingFile: "base.raw", BackingFormat: "raw"},
	} {
		t.Run(fmt.Sprintf("%+v", o), func(t *testing.T) {
			img := filepath.Join(dir, fmt.Sprintf("c%d-%d-%d-%s.qcow2", o.ClusterSize, o.Version, o.RefcountBits, o.BackingFormat))
			e := newTestEnv(t)
			size := int64(4 << 20)
			if err := e.create(img, size, o); err != nil {
				t.Fatal(err)
			}
			ref := make([]byte, size)
			if o.BackingFile != "" {
				copy(ref, bytes.Repeat([]byte{0x5a}, 3<<20))
			}
			n := e.mustOpen(img, false)
			cs := o.ClusterSize
			if cs == 0 {
				cs = 65536
			}
			writeWorkload(t, n, ref, 7, 150, cs)
			checkSame(t, readAll(t, n, 1<<20), ref)
			n.Unref()
			qemuCheck(t, img)
			qemuCompare(t, img, ref)
			// QEMU writes on our image, and we read QEMU's writes.
			qemuIO(t, img, "write -P 0x77 100k 200k")
			copy(ref[100<<10:300<<10], bytes.Repeat([]byte{0x77}, 200<<10))
			qemuCheck(t, img)
			n = e.mustOpen(img, true)
			checkSame(t, readAll(t, n, 1<<20), ref)
			n.Unref()
		})
	}
}
