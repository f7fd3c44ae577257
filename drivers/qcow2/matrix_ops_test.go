package qcow2

import (
	"fmt"
	"path/filepath"
	"slices"
	"testing"

	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// opEnv is one case of TestQcow2MatrixQemuOpsOnOurImage: an image made
// and written by ringblk (optionally over a base image also made by
// ringblk), and the model of its content.
type opEnv struct {
	t       *testing.T
	e       *testEnv
	dir     string
	img     string // the image under test
	base    string // its backing file ("" without one)
	m       *mModel
	baseM   *mModel
	o       format.CreateOptions
	cs      int64
	seed    uint64
	discard bool // discard allowed (not on a version 2 overlay)
}

// write reopens path read-write through the driver, runs a random
// workload against m, checks it reads back, closes it, and checks that
// qemu-img check exits 0 and qemu-img compare matches m (§5.3 item 7).
func (x *opEnv) write(path string, m *mModel, discard bool) {
	t := x.t
	t.Helper()
	x.seed++
	n := x.e.mustOpen(path, false)
	m.verify(t, n)
	mWorkload(t, n, m, x.seed, 60, x.cs, discard)
	m.verify(t, n)
	n.Unref()
	qemuCheckClean(t, path)
	m.qemuCompare(t, path)
}

// checked runs a qemu-img command, then check (exit 0) and a compare of
// the image against the model.
func (x *opEnv) checked(args ...string) {
	x.t.Helper()
	qemuImg(x.t, args...)
	qemuCheckClean(x.t, x.img)
	x.m.qemuCompare(x.t, x.img)
}

type qemuOp struct {
	name    string
	backing bool // needs the image to have a backing file
	v3only  bool
	reduced bool
	run     func(x *opEnv)
}

var qemuOps = []qemuOp{
	{name: "resize-grow", reduced: true, run: func(x *opEnv) {
		old := x.m.size
		x.m.resize(old + 10<<30)
		x.checked("resize", "-f", "qcow2", x.img, "+10G")
		x.m.addWindow(old-2*x.cs, 4*x.cs)
		x.m.addWindow(x.m.size-(1<<20), 1<<20)
		if vs := mQemuInfo(x.t, x.img).VirtualSize; vs != x.m.size {
			x.t.Fatalf("virtual-size %d after resize +10G, want %d", vs, x.m.size)
		}
	}},
	{name: "resize-shrink", run: func(x *opEnv) {
		// Into the middle window, not cluster-aligned.
		to := x.m.size/2/x.cs*x.cs + x.cs/2 + 512
		if x.cs == 512 {
			to = x.m.size/2 + 1024
		}
		x.m.resize(to)
		x.checked("resize", "-f", "qcow2", "--shrink", x.img, fmt.Sprint(to))
	}},
	{name: "snapshot", reduced: true, run: func(x *opEnv) {
		t := x.t
		x.checked("snapshot", "-c", "s1", x.img)
		snap := x.m.clone()
		x.write(x.img, x.m, x.discard) // writes after QEMU's snapshot
		x.m = snap
		x.checked("snapshot", "-a", "s1", x.img)
		x.write(x.img, x.m, x.discard) // writes after QEMU's apply
		x.checked("snapshot", "-d", "s1", x.img)
		if s := mQemuInfo(t, x.img).Snapshots; len(s) != 0 {
			t.Fatalf("snapshots after -d: %+v", s)
		}
	}},
	{name: "amend-refcount_bits=8", reduced: true, run: func(x *opEnv) {
		if x.o.Version == 2 {
			// compat=0.10 needs refcount_bits=16: amend to 1.1 first.
			x.checked("amend", "-o", "compat=1.1", x.img)
		}
		x.checked("amend", "-o", "refcount_bits=8", x.img)
		if rb := mQemuInfo(x.t, x.img).FormatSpecific.Data.RefcountBits; rb != 8 {
			x.t.Fatalf("refcount-bits %d after amend", rb)
		}
	}},
	{name: "amend-compat=0.10", v3only: true, run: func(x *opEnv) {
		opt := "compat=0.10"
		if x.o.RefcountBits != 0 && x.o.RefcountBits != 16 {
			opt += ",refcount_bits=16" // version 2 has 16-bit refcounts only
		}
		x.checked("amend", "-o", opt, x.img)
		if c := mQemuInfo(x.t, x.img).FormatSpecific.Data.Compat; c != "0.10" {
			x.t.Fatalf("compat %q after amend", c)
		}
		x.discard = x.base == ""
	}},
	{name: "amend-lazy_refcounts=on", v3only: true, run: func(x *opEnv) {
		x.checked("amend", "-o", "lazy_refcounts=on", x.img)
		if !mQemuInfo(x.t, x.img).FormatSpecific.Data.LazyRefcounts {
			x.t.Fatal("lazy-refcounts off after amend")
		}
	}},
	{name: "rebase", backing: true, run: func(x *opEnv) {
		t := x.t
		nb := filepath.Join(x.dir, "newbase.qcow2")
		if err := x.e.create(nb, x.m.size, format.CreateOptions{ClusterSize: x.o.ClusterSize, Version: x.o.Version}); err != nil {
			t.Fatal(err)
		}
		nbM := modelFor(x.m.size, x.cs)
		x.seed++
		n := x.e.mustOpen(nb, false)
		mWorkload(t, n, nbM, x.seed, 60, x.cs, true)
		n.Unref()
		// Safe mode: QEMU copies into the overlay whatever differs, so
		// the guest content stays.
		x.checked("rebase", "-f", "qcow2", "-b", "newbase.qcow2", "-F", "qcow2", x.img)
		if b := mQemuInfo(t, x.img).BackingFilename; b != "newbase.qcow2" {
			t.Fatalf("backing file %q after rebase", b)
		}
		x.base = nb
	}},
	{name: "commit", backing: true, reduced: true, run: func(x *opEnv) {
		t := x.t
		x.checked("commit", "-f", "qcow2", x.img)
		qemuCheckClean(t, x.base)
		x.baseM = x.m.clone()
		x.baseM.qemuCompare(t, x.base)
		im, err := openFile(t, x.img, format.Options{})
		if err != nil {
			t.Fatal(err)
		}
		exts, err := im.Map(nil, 0, im.Geometry.Size)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range exts {
			if e.Kind == format.ExtentData || e.Kind == format.ExtentCompressed {
				t.Fatalf("top still maps data after commit: %+v", e)
			}
		}
		// Our writes into the committed base (top reads through it).
		x.write(x.base, x.baseM, true)
		x.m = x.baseM.clone()
	}},
	{name: "convert", run: func(x *opEnv) {
		t := x.t
		cp := filepath.Join(x.dir, "copy.qcow2")
		qemuImg(t, "convert", "-f", "qcow2", "-O", "qcow2", x.img, cp)
		if code, out := qemuExit(t, "compare", x.img, cp); code != 0 {
			t.Fatalf("qemu-img compare ours copy: exit %d\n%s", code, out)
		}
		qemuCheckClean(t, cp)
		x.m.qemuCompare(t, cp)
		im, err := openFile(t, cp, format.Options{})
		if err != nil {
			t.Fatal(err)
		}
		// convert makes 64 KiB clusters whatever the source had.
		x.img, x.base, x.discard, x.cs = cp, "", true, im.Geometry.ClusterSize()
	}},
}

// TestQcow2MatrixQemuOpsOnOurImage: §5.3 items 6 and 7. An image made by
// Create and written by the driver (random writes, write-zeroes,
// discards, a compressed cluster; over a base image also made and written
// by ringblk for rebase and commit) goes through one QEMU structural
// operation: qemu-img resize +10G, resize --shrink, snapshot -c/-a/-d,
// amend -o refcount_bits=8, compat=0.10, lazy_refcounts=on, rebase -b
// newbase -F qcow2, commit, convert -O qcow2. After each, qemu-img check
// exits 0 and the content matches the model; then the driver reopens the
// result read-write, writes randomly, and check and compare still pass.
// Every op runs on a 1 GiB default image and a 64 MiB + 512 B image with
// 4 KiB clusters and 2-bit refcounts; some on version 2, extended-L2,
// lazy-refcount, 512 B/64-bit-refcount, preallocated, empty (size 0) and
// 1 TiB images.
func TestQcow2MatrixQemuOpsOnOurImage(t *testing.T) {
	needQemu(t)
	all := []string(nil)
	variants := []struct {
		name    string
		size    int64
		o       format.CreateOptions
		ops     []string // nil: every op
		reduced bool
	}{
		{"v3", 1 << 30, format.CreateOptions{}, all, true},
		{"c4k-rc2", 64<<20 + 512, format.CreateOptions{ClusterSize: 4096, RefcountBits: 2}, all, false},
		{"v2", 256 << 20, format.CreateOptions{Version: 2}, []string{"resize-grow", "resize-shrink", "snapshot", "rebase", "commit", "convert"}, false},
		{"extl2-c32k", 256 << 20, format.CreateOptions{ExtendedL2: true, ClusterSize: 32768}, []string{"resize-grow", "snapshot", "commit"}, false},
		{"lazy", 256 << 20, format.CreateOptions{LazyRefcounts: true}, []string{"snapshot", "amend-refcount_bits=8", "amend-compat=0.10"}, false},
		{"c512-rc64", 64 << 20, format.CreateOptions{ClusterSize: 512, RefcountBits: 64}, []string{"snapshot", "amend-refcount_bits=8", "commit"}, false},
		{"empty", 0, format.CreateOptions{}, []string{"resize-grow"}, false},
		{"1TiB", 1 << 40, format.CreateOptions{}, []string{"resize-grow", "snapshot", "commit"}, false},
		{"prealloc-meta-c16k", 64 << 20, format.CreateOptions{ClusterSize: 16384, Preallocation: format.PreallocMetadata}, []string{"resize-grow", "snapshot", "amend-compat=0.10"}, false},
	}
	for vi, v := range variants {
		for oi, op := range qemuOps {
			if mReduced() && !(v.reduced && op.reduced) {
				continue
			}
			if v.ops != nil && !slices.Contains(v.ops, op.name) || op.v3only && v.o.Version == 2 {
				continue
			}
			t.Run(v.name+"/"+op.name, func(t *testing.T) {
				dir := t.TempDir()
				x := &opEnv{t: t, e: newTestEnv(t), dir: dir, img: filepath.Join(dir, "ours.qcow2"), o: v.o,
					cs: max(v.o.ClusterSize, 512), seed: uint64(vi*100 + oi*10)}
				if v.o.ClusterSize == 0 {
					x.cs = 65536
				}
				x.discard = !(op.backing && v.o.Version == 2)
				x.m = modelFor(v.size, x.cs)
				o := v.o
				if op.backing {
					x.base = filepath.Join(dir, "base.qcow2")
					if err := x.e.create(x.base, v.size, v.o); err != nil {
						t.Fatal(err)
					}
					x.write(x.base, x.m, true)
					o.BackingFile, o.BackingFormat = "base.qcow2", "qcow2"
				}
				if err := x.e.create(x.img, v.size, o); err != nil {
					t.Fatal(err)
				}
				if v.size > 0 { // an empty disk has nothing to write
					n := x.e.mustOpen(x.img, false)
					comp := fill(0x2c, x.cs)
					copy(comp, "a compressed cluster written by ringblk")
					if _, err := n.WriteCompressed(comp, 2*x.cs); err != nil {
						t.Fatal(err)
					}
					x.m.set(2*x.cs, comp)
					n.Unref()
					x.write(x.img, x.m, x.discard)
				}
				op.run(x)
				x.write(x.img, x.m, x.discard)
			})
		}
	}
}
