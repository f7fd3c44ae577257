package qcow2

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
	"github.com/ringblk/ringblk/drivers/raw"
)

// The rows of the qemu-img 7.2 interop matrix (qcow2.md §5.2–§5.4) that
// the other tests of this package do not cover; see the comment of each
// test for its row. Virtual disks are 64 MiB to 11 GiB, but only a few MiB
// are written: the expected content is a sparse model (matrix_model_test.go).

// mReduced: run the reduced subset (under -short and the race detector).
func mReduced() bool { return testing.Short() || raceEnabled }

// stdWindows are the windows of a disk the matrix writes in: the start
// (where opsFor writes too), the middle, the end, and around the first L2
// table boundary when the disk is larger than one L2 table's coverage.
func stdWindows(size, cs int64) [][2]int64 {
	w := max(2<<20, 4*cs)
	ws := [][2]int64{{0, w}, {size/2/cs*cs - 2*cs, 4 * cs}, {size - w/2, w / 2}}
	if cov := cs * cs / 8; cov+2*cs < size {
		ws = append(ws, [2]int64{cov - 2*cs, 4 * cs})
	}
	return ws
}

func modelFor(size, cs int64) *mModel { return newMModel(size, stdWindows(size, cs)...) }

// TestQcow2MatrixQemuImages: §5.2 rows 3 (cluster_size=16k, 128k), 4
// (refcount_bits=2, 4, 8, 32), 12 (preallocation=full, falloc at 256M)
// through the block driver, and the checks of §5.2 item 2 that no other
// test makes (qemu-img info corrupt:false and dirty-flag:false, and a QEMU
// write with overlap-check=all afterwards) for rows 1 and 2 too. Each
// image is made and written by qemu-img/qemu-io (full and partial
// clusters, write -z, -z -u, -c, discard), read read-only by the driver
// and compared with qemu-img convert's output; then a random workload of
// writes, write-zeroes, discards and flushes goes through the driver and
// the image must pass qemu-img check (exit 0), qemu-img compare against
// the model, and read back through the driver.
func TestQcow2MatrixQemuImages(t *testing.T) {
	needQemu(t)
	rows := []struct {
		name, opts string
		size       int64
		compress   bool
		reduced    bool // part of the reduced subset
	}{
		{"row1-default", "", 1 << 30, true, true},
		{"row2-v2", "compat=0.10", 1 << 30, false, false},
		{"row3-c16k", "cluster_size=16k", 256 << 20, true, true},
		{"row3-c128k", "cluster_size=128k", 1 << 30, true, false},
		{"row4-rc2", "refcount_bits=2", 64 << 20, true, false},
		{"row4-rc4", "refcount_bits=4", 64 << 20, true, true},
		{"row4-rc8", "refcount_bits=8", 64 << 20, false, false},
		{"row4-rc32", "refcount_bits=32", 256 << 20, false, false},
		{"row12-falloc", "preallocation=falloc", 256 << 20, false, false},
		{"row12-full", "preallocation=full", 256 << 20, false, false},
	}
	for i, r := range rows {
		if mReduced() && !r.reduced {
			continue
		}
		t.Run(r.name, func(t *testing.T) {
			img := filepath.Join(t.TempDir(), "x.qcow2")
			im := qemuPopulated(t, img, r.opts, r.size, r.compress)
			cs := im.Geometry.ClusterSize()
			m := modelFor(r.size, cs)
			for _, w := range windows(opsFor(&im.Geometry, r.compress), r.size) {
				m.addWindow(w[0], w[1]-w[0])
			}
			m.loadFromImage(t, img)

			e := newTestEnv(t)
			n := e.mustOpen(img, true)
			m.verify(t, n)
			n.Unref()

			n = e.mustOpen(img, false)
			mWorkload(t, n, m, uint64(100+i), 120, cs, true)
			m.verify(t, n)
			n.Unref()
			m.qemuHealthy(t, img)

			n = e.mustOpen(img, true)
			m.verify(t, n)
			n.Unref()
		})
	}
}

// TestQcow2MatrixCompressedOverwrite: §5.2 row 8. An image made by
// qemu-img convert -c (zlib; several compressed clusters share host
// sectors) is overwritten by the driver: partial writes into compressed
// clusters (COW from the inflated data), whole-cluster writes, write-zeroes
// and discards over them. qemu-img check exits 0 (so the shared host
// clusters' refcounts were decremented exactly), it counts the untouched
// compressed clusters only, and the content matches the model.
func TestQcow2MatrixCompressedOverwrite(t *testing.T) {
	needQemu(t)
	for _, cs := range []int64{65536, 4096} {
		if mReduced() && cs != 65536 {
			continue
		}
		t.Run(fmt.Sprint(cs), func(t *testing.T) {
			dir := t.TempDir()
			size := int64(64 << 20)
			src := filepath.Join(dir, "src.raw")
			m := newMModel(size, [2]int64{0, 64 * cs})
			for c := int64(0); c < 64; c++ {
				b := make([]byte, cs)
				for j := range b {
					b[j] = "compressible text "[(j+int(c))%18] + byte(c&3)
				}
				m.set(c*cs, b)
			}
			m.writeRaw(t, src)
			img := filepath.Join(dir, "c.qcow2")
			qemuImg(t, "convert", "-c", "-f", "raw", "-O", "qcow2", "-o", fmt.Sprintf("cluster_size=%d", cs), src, img)
			before := qemuCheckResult(t, img)
			if before.CompressedClusters != 64 {
				t.Fatalf("qemu-img convert -c made %d compressed clusters, want 64", before.CompressedClusters)
			}
			e := newTestEnv(t)
			n := e.mustOpen(img, false)
			touched := 0
			for c := int64(0); c < 64; c += 3 {
				off := c * cs
				var err error
				switch c % 4 {
				case 0: // partial write: COW from the compressed cluster
					p := fill(byte(0x90+c), 1000)
					_, err = n.WriteAt(p, off+cs/3)
					m.set(off+cs/3, p)
				case 1: // whole cluster
					p := fill(byte(0xa0+c), cs)
					_, err = n.WriteAt(p, off)
					m.set(off, p)
				case 2:
					err = n.WriteZeroes(off, cs, block.MayUnmap)
					m.zero(off, cs)
				case 3:
					err = n.Discard(off, cs)
					m.zero(off, cs)
				}
				if err != nil {
					t.Fatalf("cluster %d: %v", c, err)
				}
				touched++
			}
			// A write across two compressed clusters.
			p := fill(0x5e, 3000)
			if _, err := n.WriteAt(p, 41*cs-1500); err != nil {
				t.Fatal(err)
			}
			m.set(41*cs-1500, p)
			touched += 2
			m.verify(t, n)
			n.Unref()
			qemuCheckClean(t, img)
			if q := qemuCheckResult(t, img); q.CompressedClusters != int64(64-touched) {
				t.Errorf("qemu-img check counts %d compressed clusters, want %d", q.CompressedClusters, 64-touched)
			}
			m.qemuHealthy(t, img)
		})
	}
}

// TestQcow2MatrixChainWritesTop: §5.2 row 10. A 3-level chain base ←
// mid ← top made by qemu-img; the driver reads through depth 2 and its
// writes (COW from the lower layers included) go to the top only: base
// and mid are byte-identical files afterwards, and the top passes check
// and compare.
func TestQcow2MatrixChainWritesTop(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	size := int64(256 << 20)
	base, mid, top := filepath.Join(dir, "base.qcow2"), filepath.Join(dir, "mid.qcow2"), filepath.Join(dir, "top.qcow2")
	qemuCreate(t, base, "", size)
	qemuIO(t, base, "write -P 0x51 0 1M", "write -P 0x52 128M 192k", "write -c -P 0x53 2M 64k")
	qemuImg(t, "create", "-q", "-f", "qcow2", "-o", "cluster_size=16k", "-b", "base.qcow2", "-F", "qcow2", mid, fmt.Sprint(size))
	qemuIO(t, mid, "write -P 0x61 512k 100k", "write -P 0x62 128M 3k", "discard 1M 64k")
	qemuImg(t, "create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", "-b", "mid.qcow2", "-F", "qcow2", top, fmt.Sprint(size))
	qemuIO(t, top, "write -P 0x71 700k 5k", "write -z 128M 1k")
	m := modelFor(size, 65536)
	m.addWindow(128<<20-64<<10, 512<<10)
	m.addWindow(2<<20, 64<<10)
	m.loadFromImage(t, top)
	sum := func(p string) [32]byte {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return sha256.Sum256(b)
	}
	sb, sm := sum(base), sum(mid)
	e := newTestEnv(t)
	n := e.mustOpen(top, false)
	m.verify(t, n)
	mWorkload(t, n, m, 7, 100, 4096, true)
	m.verify(t, n)
	n.Unref()
	if sum(base) != sb || sum(mid) != sm {
		t.Fatal("a write to the top image changed a backing file")
	}
	qemuCheckClean(t, base)
	qemuCheckClean(t, mid)
	m.qemuHealthy(t, top)
}

// bitmapFixture makes a 64 MiB image written by qemu-io with one
// persistent bitmap added by qemu-img bitmap --add (qcow2.md §5.2 row 14)
// and its model.
func bitmapFixture(t *testing.T) (string, *mModel) {
	t.Helper()
	img := filepath.Join(t.TempDir(), "bm.qcow2")
	size := int64(64 << 20)
	qemuCreate(t, img, "", size)
	qemuIO(t, img, "write -P 0x41 0 256k")
	qemuImg(t, "bitmap", "--add", img, "b0")
	if a := autoclearOf(t, img); a&format.AutoclearBitmaps == 0 {
		t.Fatalf("qemu-img bitmap --add left autoclear %#x", a)
	}
	if bm := mQemuInfo(t, img).FormatSpecific.Data.Bitmaps; len(bm) != 1 || bm[0].Name != "b0" {
		t.Fatalf("qemu-img info bitmaps %+v", bm)
	}
	m := modelFor(size, 65536)
	m.loadFromImage(t, img)
	return img, m
}

// bitmapWrite: a read-only open changes nothing; the driver keeps
// autoclear bit 0 set through its writes (the bitmaps are maintained:
// in_use on disk from the first write, stored at close), and the content
// is the model's.
func bitmapWrite(t *testing.T, img string, m *mModel) {
	t.Helper()
	e := newTestEnv(t)
	n := e.mustOpen(img, true)
	m.verify(t, n)
	n.Unref()
	if a := autoclearOf(t, img); a&format.AutoclearBitmaps == 0 {
		t.Fatalf("read-only open changed autoclear to %#x", a)
	}
	n = e.mustOpen(img, false)
	p := fill(0x42, 4096)
	if _, err := n.WriteAt(p, 8192); err != nil {
		t.Fatal(err)
	}
	m.set(8192, p)
	if a := autoclearOf(t, img); a&format.AutoclearBitmaps == 0 {
		t.Errorf("autoclear %#x after the first write returned", a)
	}
	if out := string(qemuImg(t, "info", "-U", img)); !strings.Contains(out, "in-use") {
		t.Errorf("bitmap not in use on disk after the first write:\n%s", out)
	}
	mWorkload(t, n, m, 14, 40, 65536, true)
	n.Unref()
	if a := autoclearOf(t, img); a&format.AutoclearBitmaps == 0 {
		t.Fatalf("autoclear %#x after close", a)
	}
	m.qemuCompare(t, img)
}

// bitmapClusters counts the host clusters the bitmaps extension of img
// owns: the directory, each bitmap table, and each bitmap data cluster
// the tables point to.
func bitmapClusters(t *testing.T, img string) int64 {
	t.Helper()
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	h, err := format.ParseHeader(b)
	if err != nil {
		t.Fatal(err)
	}
	if h.Bitmaps == nil {
		t.Fatal("no bitmaps extension")
	}
	cs := uint64(h.ClusterSize())
	up := func(n uint64) int64 { return int64((n + cs - 1) / cs) }
	be := binary.BigEndian
	dir := b[h.Bitmaps.DirectoryOffset : h.Bitmaps.DirectoryOffset+h.Bitmaps.DirectorySize]
	count := up(h.Bitmaps.DirectorySize)
	for i := uint32(0); i < h.Bitmaps.Count; i++ {
		tableOff, tableSize := be.Uint64(dir), uint64(be.Uint32(dir[8:]))
		nameSize, extraSize := uint64(be.Uint16(dir[18:])), uint64(be.Uint32(dir[20:]))
		count += up(tableSize * 8)
		for j := uint64(0); j < tableSize; j++ {
			if e := be.Uint64(b[tableOff+8*j:]) & format.OffsetMask; e != 0 {
				count++
			}
		}
		dir = dir[(24+extraSize+nameSize+7)&^7:]
	}
	return count
}

// TestQcow2MatrixBitmapAutoclear: §5.2 row 14 (images with a bitmap added
// by qemu-img bitmap --add). After the driver's writes and close the
// bitmap is still listed, consistent, qemu-img check is clean, and QEMU's
// own write and check still work.
func TestQcow2MatrixBitmapAutoclear(t *testing.T) {
	needQemu(t)
	img, m := bitmapFixture(t)
	bitmapWrite(t, img, m)
	qemuCheckClean(t, img)
	if bm := mQemuInfo(t, img).FormatSpecific.Data.Bitmaps; len(bm) != 1 || bm[0].Name != "b0" {
		t.Fatalf("qemu-img info bitmaps %+v", bm)
	}
	if code, out := qemuExit(t, "check", img); code != 0 || strings.Contains(out, "inconsistent") {
		t.Fatalf("qemu-img check: exit %d\n%s", code, out)
	}
	qemuIO(t, img, "write -P 0x43 1M 64k")
	m.set(1<<20, fill(0x43, 64<<10))
	qemuCheckClean(t, img)
	m.qemuCompare(t, img)
}

// TestQcow2MatrixBitmapAutoclearCheckClean: qcow2.md §5.2 row 14 asks
// that qemu-img check be clean (exit 0) after the driver's writes to an
// image with persistent bitmaps: the bitmap clusters it rewrote at close
// are accounted for and the old ones freed.
func TestQcow2MatrixBitmapAutoclearCheckClean(t *testing.T) {
	needQemu(t)
	img, m := bitmapFixture(t)
	bitmapWrite(t, img, m)
	qemuCheckClean(t, img)
	compareCheck(t, img)
}

func autoclearOf(t *testing.T, path string) uint64 {
	t.Helper()
	h, err := format.ParseHeader(headerCluster(t, path))
	if err != nil {
		t.Fatal(err)
	}
	return h.AutoclearFeatures
}

// TestQcow2MatrixRefusedImages: §5.2 row 15 through the block driver. An
// image with an external data file, and a LUKS-encrypted image opened
// without its key secret, fail to open (read-only and read-write) with an
// Unsupported error that names the feature, and the image files are left
// unchanged.
func TestQcow2MatrixRefusedImages(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	df := filepath.Join(dir, "df.qcow2")
	luks := filepath.Join(dir, "luks.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", "-o", "data_file="+filepath.Join(dir, "df.data"), df, "64M")
	type refused struct {
		path, word string
		sentinel   error
	}
	// Without a data file opener (this test's open gives none) an image
	// with an external data file is refused (datafile.go).
	cases := []refused{{df, "data file", format.ErrUnsupported}}
	if !mReduced() { // making a LUKS image costs seconds of key derivation
		createLUKS(t, luks, "64M")
		cases = append(cases, refused{luks, "encrypt", ErrKeySecretRequired})
	}
	e := newTestEnv(t)
	for _, c := range cases {
		before, _ := os.ReadFile(c.path)
		for _, ro := range []bool{true, false} {
			n, err := e.open(c.path, ro)
			if err == nil {
				n.Unref()
				t.Errorf("%s (read-only %v): opened", filepath.Base(c.path), ro)
				continue
			}
			if !block.IsKind(err, block.Unsupported) || !errors.Is(err, c.sentinel) ||
				!strings.Contains(strings.ToLower(err.Error()), c.word) {
				t.Errorf("%s (read-only %v): %v; want Unsupported naming %q", filepath.Base(c.path), ro, err, c.word)
			}
		}
		if after, _ := os.ReadFile(c.path); !bytes.Equal(before, after) {
			t.Errorf("%s: refused open changed the file", filepath.Base(c.path))
		}
	}
}

// openDirect opens img with the file node in cache=none (O_DIRECT).
func openDirect(t *testing.T, e *testEnv, img string, ro bool) *block.Node {
	t.Helper()
	file, err := raw.NewNode(e.g, img, raw.Options{ReadOnly: ro, Cache: raw.CacheNone, Locking: raw.LockingOff}, block.Options{})
	if err != nil {
		t.Fatalf("open %s with cache=none: %v", img, err)
	}
	n, err := NewNode(e.g, file, DriverOptions{}, block.Options{ReadOnly: ro})
	if err != nil {
		t.Fatalf("qcow2 over cache=none (read-only %v): %v", ro, err)
	}
	return n
}

// directDir is a directory on a file system that supports O_DIRECT.
func directDir(t *testing.T) string {
	t.Helper()
	for _, base := range []string{os.TempDir(), "/var/tmp"} {
		d, err := os.MkdirTemp(base, "qcow2matrix-")
		if err != nil {
			continue
		}
		fd, err := syscall.Open(filepath.Join(d, "probe"), syscall.O_CREAT|syscall.O_RDWR|syscall.O_DIRECT, 0o644)
		if err == nil {
			syscall.Close(fd)
			t.Cleanup(func() { os.RemoveAll(d) })
			return d
		}
		os.RemoveAll(d)
	}
	t.Skip("no file system here accepts O_DIRECT (tmpfs?); row 16 needs one")
	return ""
}

// TestQcow2MatrixODirect: §5.2 row 16. Fresh images (whose EOF is not
// cluster-aligned, and for some not even sector-aligned) and images
// written by qemu-io, opened over a cache=none file node: read-only reads
// match qemu-img convert, read-write random workloads (the first
// allocations land at the unaligned EOF; L1 and refcount updates are
// sub-sector writes) pass check and compare. Images made by Create too.
func TestQcow2MatrixODirect(t *testing.T) {
	needQemu(t)
	cases := []struct {
		name, opts string
		size       int64
		populate   bool
		ours       *format.CreateOptions
		reduced    bool
	}{
		{"fresh-default", "", 1 << 30, false, nil, true},
		{"fresh-c2m", "cluster_size=2M", 1 << 30, false, nil, false},
		{"fresh-c512", "cluster_size=512", 64 << 20, false, nil, false},
		{"fresh-v2", "compat=0.10", 1<<30 + 512, false, nil, false},
		{"written-default", "", 1 << 30, true, nil, true},
		{"written-c16k", "cluster_size=16k", 256 << 20, true, nil, false},
		{"written-extl2", "extended_l2=on", 256 << 20, true, nil, false},
		{"ours-default", "", 1<<30 + 512, false, &format.CreateOptions{}, false},
		{"ours-c4k-rc64", "", 64 << 20, false, &format.CreateOptions{ClusterSize: 4096, RefcountBits: 64}, true},
	}
	dir := directDir(t)
	for i, c := range cases {
		if mReduced() && !c.reduced {
			continue
		}
		t.Run(c.name, func(t *testing.T) {
			img := filepath.Join(dir, fmt.Sprintf("d%d.qcow2", i))
			e := newTestEnv(t)
			var cs int64
			switch {
			case c.ours != nil:
				if err := e.create(img, c.size, *c.ours); err != nil {
					t.Fatal(err)
				}
			case c.populate:
				qemuPopulated(t, img, c.opts, c.size, true)
			default:
				qemuCreate(t, img, c.opts, c.size)
			}
			im, err := openFile(t, img, format.Options{})
			if err != nil {
				t.Fatal(err)
			}
			cs = im.Geometry.ClusterSize()
			if st, _ := os.Stat(img); cs > 512 && st.Size()%cs == 0 {
				t.Fatalf("EOF %d is cluster-aligned; row 16 wants an unaligned one", st.Size())
			}
			m := modelFor(c.size, cs)
			if c.populate {
				for _, w := range windows(opsFor(&im.Geometry, true), c.size) {
					m.addWindow(w[0], w[1]-w[0])
				}
			}
			m.loadFromImage(t, img)
			n := openDirect(t, e, img, true)
			m.verify(t, n)
			n.Unref()
			n = openDirect(t, e, img, false)
			mWorkload(t, n, m, uint64(16+i), 100, cs, true)
			m.verify(t, n)
			n.Unref()
			qemuCheckClean(t, img)
			m.qemuCompare(t, img)
			n = openDirect(t, e, img, true)
			m.verify(t, n)
			n.Unref()
		})
	}
}

// TestQcow2MatrixOurCompressedBackrefs: §5.4 with ringblk's encoder. An
// 8 KiB block of random bytes repeated 8 times (64 KiB; the repeats are
// 8 KiB back-references, out of QEMU's 4 KiB zlib window) and an 8 KiB
// block of low-entropy random bytes repeated to fill the cluster, plus a
// cluster whose tail is a pattern, are written with WriteCompressed on
// 64 KiB, 4 KiB and 2 MiB cluster images. QEMU reads every byte
// (qemu-img compare against the model, qemu-io read -P on the pattern
// runs), check exits 0, and the low-entropy clusters really are stored
// compressed (qemu-img check's compressed-clusters and map agree).
func TestQcow2MatrixOurCompressedBackrefs(t *testing.T) {
	needQemu(t)
	for _, cs := range []int64{65536, 4096, 2 << 20} {
		if mReduced() && cs != 65536 {
			continue
		}
		t.Run(fmt.Sprint(cs), func(t *testing.T) {
			img := filepath.Join(t.TempDir(), "w.qcow2")
			size := int64(64 << 20)
			e := newTestEnv(t)
			if err := e.create(img, size, format.CreateOptions{ClusterSize: cs}); err != nil {
				t.Fatal(err)
			}
			rng := rand.New(rand.NewPCG(54, uint64(cs)))
			random8k := make([]byte, 8192)
			for i := range random8k {
				random8k[i] = byte(rng.IntN(256))
			}
			low8k := make([]byte, 8192)
			for i := range low8k {
				low8k[i] = []byte("ACGT")[rng.IntN(4)]
			}
			repeat := func(b []byte) []byte { return bytes.Repeat(b, int(max(1, cs/int64(len(b)))))[:cs] }
			tail := append([]byte(nil), repeat(low8k)...)
			copy(tail[cs/2:], fill(0x5c, cs/2))

			m := newMModel(size, [2]int64{0, 8 * cs}, [2]int64{size - 2*cs, 2 * cs})
			n := e.mustOpen(img, false)
			writes := []struct {
				off int64
				b   []byte
			}{{0, repeat(random8k)}, {cs, repeat(low8k)}, {3 * cs, tail}, {5 * cs, repeat(random8k)}, {size - cs, repeat(low8k)}}
			for _, w := range writes {
				if _, err := n.WriteCompressed(w.b, w.off); err != nil {
					t.Fatalf("compressed write at %d: %v", w.off, err)
				}
				m.set(w.off, w.b)
			}
			m.verify(t, n)
			n.Unref()
			qemuCheckClean(t, img)
			m.qemuCompare(t, img)
			qemuIO(t, img, fmt.Sprintf("read -P 0x5c %d %d", 3*cs+cs/2, cs/2), fmt.Sprintf("read -P 0 %d %d", 6*cs, 2*cs))
			// The low-entropy clusters (cs, 3cs, size-cs) must be
			// compressed; the random ones are compressed only where the
			// encoder found it worth it.
			im, err := openFile(t, img, format.Options{})
			if err != nil {
				t.Fatal(err)
			}
			exts, err := im.Map(nil, 0, size)
			if err != nil {
				t.Fatal(err)
			}
			compareMaps(t, exts, qemuImg(t, "map", "--output=json", img))
			var ncomp int64
			for _, x := range exts {
				if x.Kind == format.ExtentCompressed {
					ncomp += (x.Len + cs - 1) / cs
				}
			}
			t.Logf("%d of 5 clusters stored compressed (the two random-block ones only if the encoder gained)", ncomp)
			for _, off := range []int64{cs, 3 * cs, size - cs} {
				if !hasCompressed(t, im, [2]int64{off, off + cs}) {
					t.Errorf("cluster at %d (low entropy) not stored compressed", off)
				}
			}
			if q := qemuCheckResult(t, img); q.CompressedClusters != ncomp {
				t.Errorf("qemu-img check: %d compressed clusters, our map %d", q.CompressedClusters, ncomp)
			}
			// QEMU overwrites part of one compressed cluster; we read it.
			qemuIO(t, img, fmt.Sprintf("write -P 0x3e %d 512", cs+512))
			m.set(cs+512, fill(0x3e, 512))
			qemuCheckClean(t, img)
			n = e.mustOpen(img, true)
			m.verify(t, n)
			n.Unref()
		})
	}
}

// createLUKS makes a LUKS-encrypted qcow2 image with qemu-img. QEMU's PBKDF
// benchmark sometimes fails on a loaded machine ("Unable to get accurate
// CPU usage"): it tries again then.
func createLUKS(t *testing.T, path, size string) {
	t.Helper()
	for try := 0; ; try++ {
		code, out := qemuExit(t, "create", "-q", "-f", "qcow2", "--object", "secret,id=sec0,data=123456",
			"-o", "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10", path, size)
		if code == 0 {
			return
		}
		if try == 4 || !strings.Contains(out, "accurate CPU usage") {
			t.Fatalf("qemu-img create (LUKS): exit %d\n%s", code, out)
		}
	}
}
