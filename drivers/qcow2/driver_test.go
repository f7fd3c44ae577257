package qcow2

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
	"github.com/ringblk/ringblk/drivers/raw"
)

// testEnv is a started main Context with a graph, for driver tests.
type testEnv struct {
	t    testing.TB
	main *aio.Context
	g    *block.Graph
}

func newTestEnv(t testing.TB) *testEnv {
	t.Helper()
	c, err := aio.New(aio.Options{Name: "main", Main: true, CPU: aio.NoCPU, Entries: 64, ArenaSize: 1 << 20})
	if err != nil {
		t.Fatalf("aio.New: %v", err)
	}
	if err := c.Start(); err != nil {
		t.Skipf("cannot start a Context (io_uring unavailable?): %v", err)
	}
	t.Cleanup(func() {
		if _, err := c.Stop(); err != nil {
			t.Errorf("stop: %v", err)
		}
	})
	return &testEnv{t: t, main: c, g: block.NewGraph(c)}
}

// fileID identifies a file for backing-chain cycle detection.
func fileID(path string) string {
	st, err := os.Stat(path)
	if err != nil {
		return path
	}
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		return fmt.Sprintf("%d:%d", s.Dev, s.Ino)
	}
	return path
}

// open opens path as a qcow2 node with a test backing opener that resolves
// names relative to the image's directory.
func (e *testEnv) open(path string, readOnly bool) (*block.Node, error) {
	return e.openAt(path, readOnly, 0, nil)
}

func (e *testEnv) openAt(path string, readOnly bool, depth int, chain []string) (*block.Node, error) {
	file, err := raw.NewNode(e.g, path, raw.Options{ReadOnly: readOnly, Locking: raw.LockingOff}, block.Options{})
	if err != nil {
		return nil, err
	}
	dir := filepath.Dir(path)
	opts := DriverOptions{
		ID: fileID(path), Depth: depth, Chain: chain,
		Backing: func(req BackingRequest) (*block.Node, error) {
			p := req.Name
			if !filepath.IsAbs(p) {
				p = filepath.Join(dir, p)
			}
			if req.Format == "raw" {
				return raw.NewNode(e.g, p, raw.Options{ReadOnly: true, Locking: raw.LockingOff}, block.Options{ReadOnly: true})
			}
			return e.openAt(p, true, req.Depth, req.Chain)
		},
	}
	return NewNode(e.g, file, opts, block.Options{ReadOnly: readOnly})
}

func (e *testEnv) mustOpen(path string, readOnly bool) *block.Node {
	e.t.Helper()
	n, err := e.open(path, readOnly)
	if err != nil {
		e.t.Fatalf("open %s: %v", path, err)
	}
	return n
}

// readAll reads the whole virtual disk through the node in chunks of
// chunk bytes.
func readAll(t testing.TB, n *block.Node, chunk int64) []byte {
	t.Helper()
	size, err := n.Length()
	if err != nil {
		t.Fatal(err)
	}
	out := make([]byte, size)
	for off := int64(0); off < size; off += chunk {
		end := min(size, off+chunk)
		if _, err := n.ReadAt(out[off:end], off); err != nil {
			t.Fatalf("read at %d: %v", off, err)
		}
	}
	return out
}

func convertRaw(t *testing.T, img string) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "ref.raw")
	qemuImg(t, "convert", "-O", "raw", img, out)
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func checkSame(t *testing.T, got, want []byte) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("size %d, want %d", len(got), len(want))
	}
	if i := firstDiff(got, want); i >= 0 {
		t.Fatalf("content differs at %d (0x%x): got %02x want %02x", i, i, got[i], want[i])
	}
}

// TestQcow2DriverReadInterop: images built by qemu-img/qemu-io read
// through the block layer are byte-identical to qemu-img convert -O raw.
func TestQcow2DriverReadInterop(t *testing.T) {
	needQemu(t)
	cases := []struct {
		name, opts string
		size       int64
		compress   bool
	}{
		{"default", "", 8 << 20, true},
		{"v2", "compat=0.10", 8 << 20, false},
		{"c512", "cluster_size=512", 1 << 20, true},
		{"c4k", "cluster_size=4096", 6 << 20, true},
		{"c2m", "cluster_size=2M", 32 << 20, true},
		{"rc1", "refcount_bits=1", 4 << 20, false},
		{"extl2", "extended_l2=on", 4 << 20, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			img := filepath.Join(dir, "x.qcow2")
			im := qemuPopulated(t, img, tc.opts, int64(tc.size), tc.compress)
			want := convertRaw(t, img)

			e := newTestEnv(t)
			n := e.mustOpen(img, true)
			defer n.Unref()
			// Twice: cold (L2 misses, coroutine path), then warm (fast path).
			checkSame(t, readAll(t, n, 1<<20), want)
			checkSame(t, readAll(t, n, max(4096+512, im.Geometry.ClusterSize()/4+512)), want)
		})
	}
}

// TestQcow2DriverBackingChain: a 3-level chain (raw ← qcow2 ← qcow2), with
// a partial write in the top overlay and a discard that must hide the
// backing data.
func TestQcow2DriverBackingChain(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	base := filepath.Join(dir, "base.raw")
	mid := filepath.Join(dir, "mid.qcow2")
	top := filepath.Join(dir, "top.qcow2")
	qemuImg(t, "create", "-q", "-f", "raw", base, "3M")
	qemuIO2(t, "raw", base, "write -P 0x55 0 3M")
	qemuImg(t, "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", mid, "4M")
	qemuIO(t, mid, "write -P 0x66 64k 64k", "write -P 0x67 1M 3k")
	qemuImg(t, "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", "-b", "mid.qcow2", "-F", "qcow2", top, "4M")
	qemuIO(t, top, "write -P 0x77 70k 5k", "discard 2M 64k", "write -c -P 0x78 3M 4k")
	want := convertRaw(t, top)

	e := newTestEnv(t)
	n := e.mustOpen(top, true)
	defer n.Unref()
	checkSame(t, readAll(t, n, 1<<20), want)
	checkSame(t, readAll(t, n, 12345), want)
}

func qemuIO2(t *testing.T, format, img string, cmds ...string) {
	t.Helper()
	args := []string{"-f", format}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	out, err := exec.Command("qemu-io", append(args, img)...).CombinedOutput()
	if err != nil || bytes.Contains(out, []byte("failed")) {
		t.Fatalf("qemu-io %q: %v\n%s", cmds, err, out)
	}
}

// TestQcow2DriverBackingRefused: no opener, no format, a cycle.
func TestQcow2DriverBackingRefused(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	a := filepath.Join(dir, "a.qcow2")
	b := filepath.Join(dir, "b.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", a, "1M")
	qemuImg(t, "create", "-q", "-f", "qcow2", "-b", "a.qcow2", "-F", "qcow2", b, "1M")
	// Make a point back at b: a cycle.
	qemuImg(t, "rebase", "-u", "-b", "b.qcow2", "-F", "qcow2", a)
	e := newTestEnv(t)
	_, err := e.open(b, true)
	if err == nil || !block.IsKind(err, block.InvalidFormat) {
		t.Fatalf("cycle: err = %v, want InvalidFormat", err)
	}
	// No opener.
	file, err := raw.NewNode(e.g, b, raw.Options{ReadOnly: true, Locking: raw.LockingOff}, block.Options{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = NewNode(e.g, file, DriverOptions{}, block.Options{ReadOnly: true})
	if !block.IsKind(err, block.Unsupported) {
		t.Fatalf("no opener: err = %v, want Unsupported", err)
	}
	var be *block.Error
	if !errors.As(err, &be) {
		t.Fatalf("not a *block.Error: %T", err)
	}
}

// writeWorkload applies a seeded random mix of writes (partial, unaligned,
// multi-cluster) to the node and to ref, flushing now and then.
func writeWorkload(t *testing.T, n *block.Node, ref []byte, seed uint64, ops int, cs int64) {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))
	size := int64(len(ref))
	for i := 0; i < ops; i++ {
		var off, ln int64
		switch rng.IntN(4) {
		case 0: // whole clusters
			off = rng.Int64N(size/cs) * cs
			ln = min(size-off, cs*(1+rng.Int64N(3)))
		case 1: // sector aligned, inside a cluster or across two
			off = rng.Int64N(size/512) * 512
			ln = min(size-off, 512*(1+rng.Int64N(2*cs/512)))
		default: // arbitrary bytes
			off = rng.Int64N(size)
			ln = min(size-off, 1+rng.Int64N(2*cs))
		}
		switch rng.IntN(10) {
		case 0: // discard: whole clusters read as zeros afterwards
			if err := n.Discard(off, ln); err != nil {
				t.Fatalf("op %d: discard %d+%d: %v", i, off, ln, err)
			}
			for c := (off + cs - 1) / cs * cs; c < off+ln; c += cs {
				if c+cs <= off+ln || off+ln == size {
					clear(ref[c:min(c+cs, size)])
				}
			}
			continue
		case 1: // write zeroes, with or without unmap
			var fl block.Flags
			if rng.IntN(2) == 0 {
				fl = block.MayUnmap
			}
			if err := n.WriteZeroes(off, ln, fl); err != nil {
				t.Fatalf("op %d: write-zeroes %d+%d: %v", i, off, ln, err)
			}
			clear(ref[off : off+ln])
			continue
		}
		buf := make([]byte, ln)
		for j := range buf {
			buf[j] = byte(i*7 + j>>9)
		}
		if _, err := n.WriteAt(buf, off); err != nil {
			t.Fatalf("op %d: write %d+%d: %v", i, off, ln, err)
		}
		copy(ref[off:], buf)
		if rng.IntN(16) == 0 {
			if err := n.Flush(); err != nil {
				t.Fatalf("flush: %v", err)
			}
		}
	}
}

func qemuCheck(t *testing.T, img string) {
	t.Helper()
	out, err := exec.Command("qemu-img", "check", img).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img check %s: %v\n%s", img, err, out)
	}
}

func qemuCompare(t *testing.T, img string, ref []byte) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "ref.raw")
	if err := os.WriteFile(p, ref, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("qemu-img", "compare", "-f", "qcow2", "-F", "raw", img, p).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img compare: %v\n%s", err, out)
	}
}

// TestQcow2DriverWriteInterop: random writes through the block layer on
// qemu-img images (with the read-interop content already in them); the
// result passes qemu-img check and equals a raw reference by qemu-img
// compare, and reads back identically through the driver.
func TestQcow2DriverWriteInterop(t *testing.T) {
	needQemu(t)
	cases := []struct {
		name, opts string
		size       int64
		compress   bool
		ops        int
	}{
		{"default", "", 8 << 20, true, 150},
		{"v2", "compat=0.10", 8 << 20, false, 100},
		{"c512", "cluster_size=512", 1 << 20, true, 200},
		{"c4k", "cluster_size=4096", 6 << 20, true, 200},
		{"c2m", "cluster_size=2M", 40 << 20, true, 20},
		{"rc1", "refcount_bits=1", 4 << 20, false, 100},
		{"rc64", "refcount_bits=64", 4 << 20, false, 100},
		{"lazy", "lazy_refcounts=on", 4 << 20, false, 60},
		{"prealloc-metadata", "preallocation=metadata,cluster_size=4096", 4 << 20, false, 80},
		{"prealloc-falloc", "preallocation=falloc", 4 << 20, false, 60},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			img := filepath.Join(dir, "x.qcow2")
			im := qemuPopulated(t, img, tc.opts, int64(tc.size), tc.compress)
			ref := convertRaw(t, img)

			e := newTestEnv(t)
			n := e.mustOpen(img, false)
			writeWorkload(t, n, ref, uint64(i+1), tc.ops, im.Geometry.ClusterSize())
			checkSame(t, readAll(t, n, 1<<20), ref)
			n.Unref()
			qemuCheck(t, img)
			qemuCompare(t, img, ref)
		})
	}
}

// TestQcow2DriverWriteBacking: partial writes into an overlay COW from the
// backing file.
func TestQcow2DriverWriteBacking(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	base := filepath.Join(dir, "base.qcow2")
	top := filepath.Join(dir, "top.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", base, "4M")
	qemuIO(t, base, "write -P 0x55 0 3M", "write -c -P 0x56 3M 64k")
	qemuImg(t, "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", top, "5M")
	ref := convertRaw(t, top)
	e := newTestEnv(t)
	n := e.mustOpen(top, false)
	writeWorkload(t, n, ref, 42, 120, 65536)
	checkSame(t, readAll(t, n, 1<<20), ref)
	n.Unref()
	qemuCheck(t, top)
	qemuCompare(t, top, ref)
}

// TestQcow2DriverRefcountTableGrowth: enough allocation to outgrow the
// one-cluster refcount table (512-byte clusters: 4 MiB with 32-bit
// refcounts, 2 MiB with 64-bit ones), more than once.
func TestQcow2DriverRefcountTableGrowth(t *testing.T) {
	needQemu(t)
	for _, opts := range []string{"cluster_size=512,refcount_bits=32", "cluster_size=512,refcount_bits=64"} {
		img := filepath.Join(t.TempDir(), "g.qcow2")
		size := int64(6 << 20)
		qemuImg(t, "create", "-q", "-f", "qcow2", "-o", opts, img, fmt.Sprint(size))
		e := newTestEnv(t)
		n := e.mustOpen(img, false)
		ref := make([]byte, size)
		chunk := make([]byte, 256<<10)
		for off := int64(0); off < 5<<20; off += int64(len(chunk)) {
			for i := range chunk {
				chunk[i] = byte(off>>18) + byte(i>>9)
			}
			if _, err := n.WriteAt(chunk, off); err != nil {
				t.Fatalf("%s: write at %d: %v", opts, off, err)
			}
			copy(ref[off:], chunk)
		}
		writeWorkload(t, n, ref, 99, 60, 512)
		checkSame(t, readAll(t, n, 1<<20), ref)
		n.Unref()
		qemuCheck(t, img)
		qemuCompare(t, img, ref)
		compareCheck(t, img)
		im, err := openFile(t, img, format.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if im.Header.RefcountTableClusters < 2 {
			t.Errorf("%s: refcount table still %d cluster(s)", opts, im.Header.RefcountTableClusters)
		}
		t.Logf("%s: refcount table %d clusters at %#x", opts, im.Header.RefcountTableClusters, im.Header.RefcountTableOffset)
	}
}

// TestQcow2DriverWriteAfterSnapshot: writes after qemu-img snapshot -c copy
// the shared L2 tables and data clusters (COPIED clear) instead of writing
// in place; qemu-img check stays clean and snapshot -a restores the
// snapshot's data.
func TestQcow2DriverWriteAfterSnapshot(t *testing.T) {
	needQemu(t)
	img := filepath.Join(t.TempDir(), "s.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", img, "2M")
	qemuIO(t, img, "write -P 0x31 0 512k", "write -c -P 0x32 1M 64k")
	before := convertRaw(t, img)
	qemuImg(t, "snapshot", "-c", "s1", img)
	e := newTestEnv(t)
	n := e.mustOpen(img, false)
	ref := append([]byte(nil), before...)
	writeWorkload(t, n, ref, 5, 80, 4096)
	checkSame(t, readAll(t, n, 1<<20), ref)
	n.Unref()
	qemuCheck(t, img)
	qemuCompare(t, img, ref)
	qemuImg(t, "snapshot", "-a", "s1", img)
	qemuCheck(t, img)
	checkSame(t, convertRaw(t, img), before)
}

// TestQcow2DriverGrow: Truncate grows the disk, moving the L1 table when
// it is too small; the data stays, the new space reads as zeros and can be
// written; qemu-img check and info agree.
func TestQcow2DriverGrow(t *testing.T) {
	needQemu(t)
	for _, opts := range []string{"cluster_size=512", "cluster_size=65536"} {
		img := filepath.Join(t.TempDir(), "r.qcow2")
		qemuImg(t, "create", "-q", "-f", "qcow2", "-o", opts, img, "1M")
		qemuIO(t, img, "write -P 0x21 0 100k", "write -P 0x22 1000k 24k")
		e := newTestEnv(t)
		n := e.mustOpen(img, false)
		newSize := int64(5<<20 + 512)
		if err := n.Truncate(newSize); err != nil {
			t.Fatalf("%s: grow: %v", opts, err)
		}
		// (Shrinking: shrink_test.go.)
		if l, _ := n.Length(); l != newSize {
			t.Fatalf("%s: length %d after grow", opts, l)
		}
		ref := make([]byte, newSize)
		copy(ref, convertRawPrefix(t, img, 1<<20))
		writeWorkload(t, n, ref, 17, 60, 512)
		checkSame(t, readAll(t, n, 1<<20), ref)
		n.Unref()
		qemuCheck(t, img)
		qemuCompare(t, img, ref)
		if vs := qemuInfo(t, img)["virtual-size"].(float64); int64(vs) != newSize {
			t.Errorf("%s: virtual-size %v", opts, vs)
		}
	}
}

// convertRawPrefix is the first n bytes of the image as raw (before the
// node reopens it, the file holds the old size).
func convertRawPrefix(t *testing.T, img string, n int64) []byte {
	t.Helper()
	b := convertRaw(t, img)
	return b[:min(n, int64(len(b)))]
}

// TestQcow2DriverODirect: the file node opened with cache=none (O_DIRECT:
// the block layer pads and read-modify-writes the driver's small metadata
// writes); random writes and reads still give a clean, identical image.
func TestQcow2DriverODirect(t *testing.T) {
	needQemu(t)
	dir, err := os.MkdirTemp("/var/tmp", "qcow2direct-")
	if err != nil {
		t.Skip(err)
	}
	defer os.RemoveAll(dir)
	img := filepath.Join(dir, "d.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", img, "4M")
	e := newTestEnv(t)
	file, err := raw.NewNode(e.g, img, raw.Options{Cache: raw.CacheNone, Locking: raw.LockingOff}, block.Options{})
	if err != nil {
		t.Skipf("O_DIRECT unavailable here: %v", err)
	}
	n, err := NewNode(e.g, file, DriverOptions{}, block.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ref := make([]byte, 4<<20)
	writeWorkload(t, n, ref, 23, 80, 4096)
	checkSame(t, readAll(t, n, 1<<20), ref)
	n.Unref()
	qemuCheck(t, img)
	qemuCompare(t, img, ref)
}

// TestQcow2DriverWriteCompressed: clusters written compressed by the
// driver read back through QEMU (qemu-io read -P, qemu-img compare) and
// pass qemu-img check, including data with repeats more than 4 KiB apart
// (the case Go's LZ77 output would break, qcow2.md §5.4); incompressible
// clusters are stored normally; overwriting a compressed cluster frees it.
func TestQcow2DriverWriteCompressed(t *testing.T) {
	needQemu(t)
	img := filepath.Join(t.TempDir(), "c.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", "-o", "cluster_size=65536", img, "4M")
	e := newTestEnv(t)
	n := e.mustOpen(img, false)
	ref := make([]byte, 4<<20)
	rng := rand.New(rand.NewPCG(1, 2))
	block8k := make([]byte, 8192)
	for i := range block8k {
		block8k[i] = 0x41 * byte(rng.IntN(4)) // compressible, no short repeats
	}
	rep := bytes.Repeat(block8k, 8) // 64 KiB, repeats 8 KiB apart
	pat := bytes.Repeat([]byte{0x11, 0x22, 0x33, 0x11}, 16384)
	noise := make([]byte, 65536)
	for i := range noise {
		noise[i] = byte(rng.IntN(256))
	}
	for _, w := range []struct {
		off int64
		b   []byte
	}{{0, pat}, {65536, rep}, {3 << 20, noise}, {1 << 20, append(append([]byte(nil), pat...), pat...)}} {
		if _, err := n.WriteCompressed(w.b, w.off); err != nil {
			t.Fatalf("compressed write at %d: %v", w.off, err)
		}
		copy(ref[w.off:], w.b)
	}
	if _, err := n.WriteCompressed(pat[:4096], 0); !block.IsKind(err, block.OutOfBounds) {
		t.Errorf("partial cluster: %v, want EINVAL", err)
	}
	checkSame(t, readAll(t, n, 1<<20), ref)
	n.Unref()
	qemuCheck(t, img)
	qemuCompare(t, img, ref)
	q := qemuCheckResult(t, img)
	if q.CompressedClusters != 4 {
		t.Errorf("compressed clusters %d, want 4 (the noise cluster is stored plain)", q.CompressedClusters)
	}
	// Overwrite one compressed cluster partly: COW from the compressed data.
	n = e.mustOpen(img, false)
	if _, err := n.WriteAt(bytes.Repeat([]byte{0x99}, 1000), 65536+5000); err != nil {
		t.Fatal(err)
	}
	copy(ref[65536+5000:], bytes.Repeat([]byte{0x99}, 1000))
	n.Unref()
	qemuCheck(t, img)
	qemuCompare(t, img, ref)
}

// TestQcow2DriverV2Backing: in a version 2 overlay (no zero flag) discard
// succeeds and changes nothing (the overlay's data stays, as QEMU 7.2's
// iotest 290 expects; dropping it would show the backing file) and
// write-zeroes writes real zeros that hide the backing data; in a version
// 3 overlay discard sets the zero flag.
func TestQcow2DriverV2Backing(t *testing.T) {
	needQemu(t)
	for _, compat := range []string{"0.10", "1.1"} {
		dir := t.TempDir()
		base := filepath.Join(dir, "base.raw")
		top := filepath.Join(dir, "top.qcow2")
		if err := os.WriteFile(base, bytes.Repeat([]byte{0x5b}, 1<<20), 0o644); err != nil {
			t.Fatal(err)
		}
		qemuImg(t, "create", "-q", "-f", "qcow2", "-o", "compat="+compat, "-b", "base.raw", "-F", "raw", top, "1M")
		ref := bytes.Repeat([]byte{0x5b}, 1<<20)
		e := newTestEnv(t)
		n := e.mustOpen(top, false)
		if _, err := n.WriteAt(bytes.Repeat([]byte{0x01}, 64<<10), 64<<10); err != nil {
			t.Fatal(err)
		}
		copy(ref[64<<10:], bytes.Repeat([]byte{0x01}, 64<<10))
		err := n.Discard(0, 128<<10)
		if err != nil {
			t.Fatalf("compat=%s: discard over a backing file: %v", compat, err)
		}
		if compat != "0.10" {
			clear(ref[:128<<10])
		}
		if err := n.WriteZeroes(200<<10, 100<<10, block.MayUnmap); err != nil {
			t.Fatal(err)
		}
		clear(ref[200<<10 : 300<<10])
		checkSame(t, readAll(t, n, 1<<20), ref)
		n.Unref()
		qemuCheck(t, top)
		qemuCompare(t, top, ref)
	}
}
