package qcow2

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// Interop tests: images made by qemu-img/qemu-io 7.2 at test time, read by
// this package, with qemu-img map and qemu-io read -P as the oracles.

// qemuIO runs commands in one qemu-io invocation; it fails the test if
// qemu-io fails or reports a pattern mismatch.
func qemuIO(t *testing.T, img string, cmds ...string) {
	t.Helper()
	args := []string{"-f", "qcow2"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	out, err := exec.Command("qemu-io", append(args, img)...).CombinedOutput()
	if err != nil || bytes.Contains(out, []byte("failed")) {
		t.Fatalf("qemu-io %q: %v\n%s", cmds, err, out)
	}
}

// qemuCreate makes a qcow2 image at img with qemu-img create -o opts.
func qemuCreate(t *testing.T, img, opts string, size int64) {
	t.Helper()
	args := []string{"create", "-q", "-f", "qcow2"}
	if opts != "" {
		args = append(args, "-o", opts)
	}
	qemuImg(t, append(args, img, fmt.Sprint(size))...)
}

// qemuPopulated makes a qcow2 image with qemu-img create -o opts, writes
// opsFor's workload into it with qemu-io, and returns its parsed metadata.
func qemuPopulated(t *testing.T, img, opts string, size int64, compress bool) *format.Image {
	t.Helper()
	qemuCreate(t, img, opts, size)
	im, err := openFile(t, img, format.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var cmds []string
	for _, o := range opsFor(&im.Geometry, compress) {
		cmds = append(cmds, o.qemu())
	}
	qemuIO(t, img, cmds...)
	return im
}

// op is one qemu-io operation and its effect on guest content.
type op struct {
	cmd     string // write, zero (write -z), zerou (write -z -u), discard, compress (write -c)
	off, n  int64
	pattern byte
}

func (o op) qemu() string {
	switch o.cmd {
	case "write":
		return fmt.Sprintf("write -P 0x%02x %d %d", o.pattern, o.off, o.n)
	case "compress":
		return fmt.Sprintf("write -c -P 0x%02x %d %d", o.pattern, o.off, o.n)
	case "zero":
		return fmt.Sprintf("write -z %d %d", o.off, o.n)
	case "zerou":
		return fmt.Sprintf("write -z -u %d %d", o.off, o.n)
	}
	return fmt.Sprintf("discard %d %d", o.off, o.n)
}

// apply writes the op's effect on [base, base+len(buf)) into buf. In a v3
// image a discard reads as zeros (QEMU sets the zero flag, even over a
// backing file); without a backing file it reads as zeros in v2 too.
func (o op) apply(buf []byte, base int64) {
	lo, hi := max(o.off, base), min(o.off+o.n, base+int64(len(buf)))
	if lo >= hi {
		return
	}
	v := o.pattern
	if o.cmd != "write" && o.cmd != "compress" {
		v = 0
	}
	for i := lo; i < hi; i++ {
		buf[i-base] = v
	}
}

// opsFor builds writes at cluster, subcluster and L2-table boundaries for
// a geometry: full and partial clusters, zero writes over allocated and
// unallocated clusters (whole: zero-alloc; -u: unmapped; partial: zeros
// written), discards, and a partial last cluster.
func opsFor(g *format.Geometry, compress bool) []op {
	cs := g.ClusterSize()
	sub := min(cs/4, 4096)
	ops := []op{
		{"write", 0, cs, 0x11},
		{"write", cs + cs/4, sub, 0x12},
		{"write", 3*cs - 1024, 2048, 0x13},
		{"write", 4 * cs, cs, 0x15}, {"zero", 4 * cs, cs, 0},
		{"zero", 6 * cs, cs, 0},
		{"zero", cs + cs/4 + sub/2, 512, 0},
		{"write", 8 * cs, 2 * cs, 0x16}, {"discard", 8 * cs, cs, 0},
		{"write", 11 * cs, cs, 0x17}, {"zerou", 11 * cs, cs, 0},
		{"write", g.Size - 1536, 1536, 0x19},
	}
	if g.ExtendedL2 {
		sc := g.SubclusterSize()
		ops = append(ops,
			op{"write", 15*cs + sc, sc / 2, 0x1a},                         // partial subcluster
			op{"write", 16*cs + 3*sc - 512, sc + 1024, 0x1b},              // across subclusters
			op{"zero", 16*cs + 10*sc, 2 * sc, 0},                          // zero subclusters
			op{"write", 17 * cs, cs, 0x1c}, op{"zero", 17*cs + sc, sc, 0}, // zero inside an allocated cluster
		)
	}
	if cov := g.L1Coverage(); g.Size >= cov+2*cs {
		ops = append(ops, op{"write", cov - cs/2 - 512, cs + 1024, 0x14}) // across an L2 table boundary
	}
	if compress {
		ops = append(ops, op{"compress", 13 * cs, cs, 0x18}, op{"compress", 14 * cs, cs, 0x18})
	}
	return ops
}

// windows returns the guest ranges the ops touch, with a margin, merged.
func windows(ops []op, size int64) [][2]int64 {
	var ws [][2]int64
	for _, o := range ops {
		lo, hi := max(0, o.off-2048), min(size, o.off+o.n+2048)
		merged := false
		for i := range ws {
			if lo <= ws[i][1] && hi >= ws[i][0] {
				ws[i] = [2]int64{min(lo, ws[i][0]), max(hi, ws[i][1])}
				merged = true
				break
			}
		}
		if !merged {
			ws = append(ws, [2]int64{lo, hi})
		}
	}
	return ws
}

// readPattern returns qemu-io commands that verify buf (at guest offset
// base) run by run of equal bytes.
func readPattern(buf []byte, base int64) []string {
	var cmds []string
	for i := 0; i < len(buf); {
		j := i
		for j < len(buf) && buf[j] == buf[i] {
			j++
		}
		cmds = append(cmds, fmt.Sprintf("read -P 0x%02x %d %d", buf[i], base+int64(i), j-i))
		i = j
	}
	return cmds
}

// imageReader reads an Image's guest data as an io.ReaderAt (for use as a
// backing file).
type imageReader struct{ im *format.Image }

func (r imageReader) ReadAt(p []byte, off int64) (int, error) { return r.im.ReadAt(p, off, nil) }

type combo struct {
	name     string
	opts     string
	size     int64
	backing  bool // with a backing file holding pattern 0x55
	compress bool // include write -c (zlib images only: content is checked)
	zstd     bool
}

func TestQcow2InteropQemuImages(t *testing.T) {
	needQemu(t)
	combos := []combo{
		{name: "default", opts: "", size: 600 << 20, compress: true},
		{name: "v2", opts: "compat=0.10", size: 600 << 20},
		{name: "c512", opts: "cluster_size=512", size: 100 << 10, compress: true},
		{name: "c4k", opts: "cluster_size=4096", size: 5 << 20, compress: true},
		{name: "c2m", opts: "cluster_size=2M", size: 64 << 20, compress: true},
		{name: "c2m-l2-boundary", opts: "cluster_size=2M", size: 512<<30 + 8<<20},
		{name: "rc1", opts: "refcount_bits=1", size: 64 << 20},
		{name: "rc2", opts: "refcount_bits=2", size: 64 << 20},
		{name: "rc8", opts: "refcount_bits=8", size: 64 << 20},
		{name: "rc32", opts: "refcount_bits=32", size: 64 << 20},
		{name: "rc64", opts: "refcount_bits=64", size: 64 << 20},
		{name: "lazy", opts: "lazy_refcounts=on", size: 64 << 20},
		{name: "extl2", opts: "extended_l2=on", size: 300 << 20, compress: true},
		{name: "extl2-16k", opts: "extended_l2=on,cluster_size=16k", size: 20 << 20},
		{name: "extl2-2m", opts: "extended_l2=on,cluster_size=2M", size: 64 << 20},
		{name: "zstd", opts: "compression_type=zstd", size: 64 << 20, compress: true, zstd: true},
		{name: "prealloc-metadata", opts: "preallocation=metadata", size: 16 << 20},
		{name: "prealloc-falloc", opts: "preallocation=falloc", size: 16 << 20},
		{name: "backing", opts: "", size: 64 << 20, backing: true},
		{name: "backing-v2", opts: "compat=0.10", size: 64 << 20, backing: true},
		{name: "backing-extl2", opts: "extended_l2=on", size: 64 << 20, backing: true},
	}
	for _, c := range combos {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			img := filepath.Join(dir, "img.qcow2")
			args := []string{"create", "-q", "-f", "qcow2"}
			if c.opts != "" {
				args = append(args, "-o", c.opts)
			}
			var baseOps []op
			if c.backing {
				base := filepath.Join(dir, "base.qcow2")
				qemuImg(t, "create", "-q", "-f", "qcow2", base, fmt.Sprint(c.size))
				baseOps = []op{{"write", 0, 2 << 20, 0x55}, {"write", c.size - 70000, 70000, 0x56}}
				cmds := make([]string, len(baseOps))
				for i, o := range baseOps {
					cmds[i] = o.qemu()
				}
				qemuIO(t, base, cmds...)
				args = append(args, "-b", "base.qcow2", "-F", "qcow2")
			}
			qemuImg(t, append(args, img, fmt.Sprint(c.size))...)

			im, err := openFile(t, img, format.Options{})
			if err != nil {
				t.Fatalf("fresh image: %v", err)
			}
			g := im.Geometry
			ops := opsFor(&g, c.compress)
			if c.backing && im.Header.Version == 2 {
				// v2 overlays cannot zero-unmap (ENOTSUP); a discard does
				// nothing there (qemu-io prints success, the opsFor model
				// would expect zeros).
				var keep []op
				for _, o := range ops {
					if o.cmd != "discard" && o.cmd != "zerou" {
						keep = append(keep, o)
					}
				}
				ops = keep
			}
			cmds := make([]string, len(ops))
			for i, o := range ops {
				cmds[i] = o.qemu()
			}
			qemuIO(t, img, cmds...)

			im, err = openFile(t, img, format.Options{ReadWrite: true})
			if err != nil {
				t.Fatalf("ReadImage after qemu-io: %v", err)
			}
			// 1. Mapping of the whole disk against qemu-img map.
			exts, err := im.Map(nil, 0, im.Geometry.Size)
			if err != nil {
				t.Fatalf("Map: %v", err)
			}
			compareMaps(t, exts, qemuImg(t, "map", "--output=json", img))

			// 2. Content of every touched range against the op model, with
			// qemu-io read -P confirming the model on QEMU's side.
			var backing *format.Image
			if c.backing {
				if backing, err = openFile(t, filepath.Join(dir, "base.qcow2"), format.Options{}); err != nil {
					t.Fatal(err)
				}
			}
			var verify []string
			for _, w := range windows(append(append([]op(nil), baseOps...), ops...), im.Geometry.Size) {
				want := make([]byte, w[1]-w[0])
				for _, o := range baseOps {
					o.apply(want, w[0])
				}
				for _, o := range ops {
					o.apply(want, w[0])
				}
				verify = append(verify, readPattern(want, w[0])...)
				got := make([]byte, len(want))
				var rerr error
				if backing != nil {
					_, rerr = im.ReadAt(got, w[0], imageReader{backing})
				} else {
					_, rerr = im.ReadAt(got, w[0], nil)
				}
				if rerr != nil {
					t.Fatalf("ReadAt %#x+%#x: %v", w[0], len(got), rerr)
				}
				if i := firstDiff(got, want); i >= 0 {
					t.Errorf("guest byte %#x: got %#x, want %#x", w[0]+int64(i), got[i], want[i])
				}
			}
			qemuIO(t, img, verify...)
		})
	}
}

func hasCompressed(t *testing.T, im *format.Image, w [2]int64) bool {
	exts, err := im.Map(nil, w[0], w[1]-w[0])
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range exts {
		if x.Kind == format.ExtentCompressed {
			return true
		}
	}
	return false
}

func firstDiff(a, b []byte) int {
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

// TestQcow2InteropConvertCompressed reads clusters compressed by qemu-img
// convert -c, including data with back-references farther than 4 KiB and
// a partial last cluster, and compares with the raw source.
func TestQcow2InteropConvertCompressed(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	rng := rand.New(rand.NewSource(4))
	src := make([]byte, 1<<20+3*512)
	block := make([]byte, 8192)
	rng.Read(block)
	for i := 0; i < 8; i++ { // 8 KiB random block repeated: far back-references
		copy(src[i*8192:], block)
	}
	for i := 200 << 10; i < 300<<10; i++ { // text-like data
		src[i] = "qcow2 compressed cluster "[i%25]
	}
	rng.Read(src[512<<10 : 520<<10]) // incompressible: stored uncompressed
	copy(src[len(src)-1000:], bytes.Repeat([]byte{0x42}, 1000))
	raw := filepath.Join(dir, "src.raw")
	if err := os.WriteFile(raw, src, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, cs := range []string{"512", "4k", "64k", "2M"} {
		t.Run(cs, func(t *testing.T) {
			img := filepath.Join(dir, "c"+cs+".qcow2")
			qemuImg(t, "convert", "-c", "-f", "raw", "-O", "qcow2", "-o", "cluster_size="+cs, raw, img)
			im, err := openFile(t, img, format.Options{ReadWrite: true})
			if err != nil {
				t.Fatal(err)
			}
			exts, err := im.Map(nil, 0, im.Geometry.Size)
			if err != nil {
				t.Fatal(err)
			}
			ncomp := 0
			for _, x := range exts {
				if x.Kind == format.ExtentCompressed {
					ncomp++
				}
			}
			if ncomp == 0 {
				t.Errorf("no compressed extents")
			}
			compareMaps(t, exts, qemuImg(t, "map", "--output=json", img))
			got := make([]byte, im.Geometry.Size)
			if _, err := im.ReadAt(got, 0, nil); err != nil {
				t.Fatal(err)
			}
			if i := firstDiff(got[:len(src)], src); i >= 0 {
				t.Fatalf("byte %#x: got %#x want %#x", i, got[i], src[i])
			}
		})
	}
}

// TestQcow2InteropSnapshots compares the snapshot table with qemu-img info
// and each snapshot's content with qemu-img convert -l.
func TestQcow2InteropSnapshots(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "s.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", img, "1M")
	qemuIO(t, img, "write -P 0x01 0 64k")
	qemuImg(t, "snapshot", "-c", "first", img)
	qemuIO(t, img, "write -P 0x02 4k 4k", "write -P 0x03 512k 8k")
	qemuImg(t, "snapshot", "-c", "a-much-longer-snapshot-name-to-shift-alignment", img)
	qemuIO(t, img, "write -P 0x04 0 4k", "discard 512k 4k")
	qemuImg(t, "snapshot", "-c", "third", img)
	qemuImg(t, "snapshot", "-d", "first", img)
	qemuIO(t, img, "write -P 0x05 8k 4k")

	im, err := openFile(t, img, format.Options{ReadWrite: true})
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		Snapshots []struct {
			ID          string  `json:"id"`
			Name        string  `json:"name"`
			VMStateSize uint64  `json:"vm-state-size"`
			DateSec     uint32  `json:"date-sec"`
			DateNsec    uint32  `json:"date-nsec"`
			VMClockSec  uint64  `json:"vm-clock-sec"`
			VMClockNsec uint64  `json:"vm-clock-nsec"`
			Icount      *uint64 `json:"icount"`
		} `json:"snapshots"`
	}
	if err := json.Unmarshal(qemuImg(t, "info", "--output=json", img), &info); err != nil {
		t.Fatal(err)
	}
	if len(info.Snapshots) != 2 || len(im.Snapshots) != 2 {
		t.Fatalf("qemu-img: %d snapshots, ours %d", len(info.Snapshots), len(im.Snapshots))
	}
	for i, q := range info.Snapshots {
		s := im.Snapshots[i]
		if s.ID != q.ID || s.Name != q.Name || s.VMStateSize != q.VMStateSize || s.DateSec != q.DateSec ||
			s.DateNsec != q.DateNsec || s.VMClockNsec != q.VMClockSec*1e9+q.VMClockNsec ||
			(q.Icount != nil && s.Icount != *q.Icount) || s.DiskSize != 1<<20 {
			t.Errorf("snapshot %d: ours %+v, qemu-img %+v", i, s, q)
		}
		// Content of the snapshot: our view of its L1 against convert -l.
		out := filepath.Join(dir, q.Name+".raw")
		qemuImg(t, "convert", "-l", "snapshot.name="+q.Name, "-O", "raw", img, out)
		want, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		sv, err := im.Snapshot(i)
		if err != nil {
			t.Fatal(err)
		}
		got := make([]byte, sv.Geometry.Size)
		if _, err := sv.ReadAt(got, 0, nil); err != nil {
			t.Fatal(err)
		}
		if i := firstDiff(got, want); i >= 0 || len(got) != len(want) {
			t.Errorf("snapshot %q content differs at %#x", q.Name, i)
		}
	}
	// The table re-encodes to QEMU's bytes.
	raw, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	enc, err := format.AppendSnapshotTable(nil, im.Snapshots)
	if err != nil {
		t.Fatal(err)
	}
	off := im.Header.SnapshotsOffset
	if !bytes.Equal(enc, raw[off:off+uint64(len(enc))]) || int64(len(enc)) != im.SnapshotTableSize {
		t.Errorf("snapshot table re-encoding differs from QEMU's")
	}
}

// TestQcow2InteropRefused checks images qemu-img can make that this layer
// must refuse, or accept only read-only (and that a LUKS image is read).
func TestQcow2InteropRefused(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	path := func(n string) string { return filepath.Join(dir, n) }

	// External data files are read since issue 22 (datafile_test.go);
	// the format layer reads such an image and names its data file.
	qemuImg(t, "create", "-q", "-f", "qcow2", "-o", "data_file="+path("x.data"), path("df.qcow2"), "1M")
	if im, err := openFile(t, path("df.qcow2"), format.Options{}); err != nil || !im.Header.HasDataFile() || im.Header.DataFile != path("x.data") {
		t.Errorf("external data file: %v", err)
	}
	// LUKS is read since issue 22 (the format layer reads the image; the
	// driver needs the key): crypto_test.go.
	createLUKS(t, path("luks.qcow2"), "1M")
	if im, err := openFile(t, path("luks.qcow2"), format.Options{}); err != nil || im.Header.CryptMethod != format.CryptLUKS {
		t.Errorf("LUKS: %v", err)
	}
	qemuImg(t, "create", "-q", "-f", "qcow2", "-u", "-b",
		`json:{"driver":"raw","file":{"driver":"file","filename":"/etc/hostname"}}`, "-F", "raw", path("json.qcow2"), "1M")
	if _, err := openFile(t, path("json.qcow2"), format.Options{}); !errors.Is(err, format.ErrUnsupported) {
		t.Errorf("json: backing: %v", err)
	}
	// A crash with lazy refcounts leaves the dirty bit: read-only is fine,
	// read-write is refused (qcow2.md §5.2 row 5).
	qemuImg(t, "create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", path("lazy.qcow2"), "1M")
	exec.Command("qemu-io", "-f", "qcow2", "-c", "write -P 0x33 0 64k", "-c", "abort", path("lazy.qcow2")).Run()
	im, err := openFile(t, path("lazy.qcow2"), format.Options{})
	if err != nil {
		t.Fatalf("dirty image read-only: %v", err)
	}
	if im.Header.IncompatibleFeatures&format.IncompatDirty == 0 {
		t.Fatalf("qemu-io abort did not leave the dirty bit")
	}
	if _, err := openFile(t, path("lazy.qcow2"), format.Options{ReadWrite: true}); !errors.Is(err, format.ErrUnsupported) {
		t.Errorf("dirty image read-write: %v", err)
	}
	// Bitmaps: the autoclear bit is set and must be cleared by a writer
	// that does not maintain bitmaps; the directory is inside the file.
	qemuImg(t, "create", "-q", "-f", "qcow2", path("bm.qcow2"), "1M")
	qemuImg(t, "bitmap", "--add", path("bm.qcow2"), "b0")
	qemuImg(t, "bitmap", "--add", path("bm.qcow2"), "b1")
	im, err = openFile(t, path("bm.qcow2"), format.Options{ReadWrite: true})
	if err != nil {
		t.Fatal(err)
	}
	if !im.Header.BitmapsConsistent() || im.Header.Bitmaps.Count != 2 || im.Header.AutoclearToClear(0) != format.AutoclearBitmaps {
		t.Errorf("bitmaps: %+v autoclear %#x", im.Header.Bitmaps, im.Header.AutoclearFeatures)
	}
}
