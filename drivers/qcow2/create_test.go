package qcow2

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
	"github.com/ringblk/ringblk/drivers/raw"
)

func (e *testEnv) create(path string, size int64, o format.CreateOptions) error {
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
		o    format.CreateOptions
		qopt string
	}{
		{1 << 30, format.CreateOptions{}, ""},
		{1<<30 + 512, format.CreateOptions{}, ""},
		{0, format.CreateOptions{}, ""},
		{1 << 20, format.CreateOptions{Version: 2}, "compat=0.10"},
		{1 << 30, format.CreateOptions{ClusterSize: 512}, "cluster_size=512"},
		{1 << 30, format.CreateOptions{ClusterSize: 4096}, "cluster_size=4096"},
		{1 << 30, format.CreateOptions{ClusterSize: 2 << 20}, "cluster_size=2M"},
		{1 << 40, format.CreateOptions{}, ""},
		{64 << 20, format.CreateOptions{RefcountBits: 1}, "refcount_bits=1"},
		{64 << 20, format.CreateOptions{RefcountBits: 64}, "refcount_bits=64"},
		{64 << 20, format.CreateOptions{RefcountBits: 8, ClusterSize: 1024}, "refcount_bits=8,cluster_size=1024"},
		{1 << 20, format.CreateOptions{BackingFile: "base.raw", BackingFormat: "raw"}, "backing_file=base.raw,backing_fmt=raw"},
		{1 << 20, format.CreateOptions{ClusterSize: 4096, BackingFile: "base.raw", BackingFormat: "raw"}, "cluster_size=4096,backing_file=base.raw,backing_fmt=raw"},
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
	for _, o := range []format.CreateOptions{{ClusterSize: 3000}, {Version: 2, RefcountBits: 8}, {RefcountBits: 3}, {BackingFile: "x"}} {
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
	for _, o := range []format.CreateOptions{
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

// sameFiles compares two files chunk by chunk (they may be large and
// sparse) and reports the first differing offset.
func sameFiles(t *testing.T, a, b string) {
	t.Helper()
	fa, err := os.Open(a)
	if err != nil {
		t.Fatal(err)
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		t.Fatal(err)
	}
	defer fb.Close()
	sa, _ := fa.Stat()
	sb, _ := fb.Stat()
	if sa.Size() != sb.Size() {
		t.Errorf("file length %d, qemu-img's %d", sa.Size(), sb.Size())
		return
	}
	x, y := make([]byte, 1<<20), make([]byte, 1<<20)
	for off := int64(0); off < sa.Size(); off += int64(len(x)) {
		n, _ := fa.ReadAt(x, off)
		m, _ := fb.ReadAt(y, off)
		if n != m || !bytes.Equal(x[:n], y[:m]) {
			t.Errorf("file differs from qemu-img create's at %d", off+int64(firstDiff(x[:n], y[:m])))
			return
		}
	}
}

// qemuMapNoOffsets is qemu-img map's classification of img (see
// normalizeQemu) without host offsets.
func qemuMapNoOffsets(t *testing.T, img string) string {
	t.Helper()
	var rs []run
	for _, r := range normalizeQemu(parseQemuMap(t, qemuImg(t, "map", "--output=json", img))) {
		r.Off = -1
		rs = appendRun(rs, r)
	}
	return runsString(rs)
}

// allocatedBytes is the file's allocated size (st_blocks).
func allocatedBytes(t *testing.T, path string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// TestQcow2DriverCreatePrealloc: preallocation=metadata|falloc|full and
// extended_l2=on produce the file qemu-img create produces (same bytes,
// hence the same header, mapping and length) wherever QEMU's placement
// is reproduced; qemu-img check accepts every result; falloc and full
// allocate the data in the file, metadata does not.
func TestQcow2DriverCreatePrealloc(t *testing.T) {
	needQemu(t)
	type tc struct {
		size  int64
		o     format.CreateOptions
		qopt  string
		exact bool // byte-identical to qemu-img's file
	}
	var cases []tc
	for _, m := range []format.Prealloc{format.PreallocMetadata, format.PreallocFalloc, format.PreallocFull} {
		p := "preallocation=" + m.String()
		cases = append(cases,
			tc{3 << 20, format.CreateOptions{Preallocation: m}, p, true},
			tc{3<<20 + 1000, format.CreateOptions{Preallocation: m}, p, true},
			tc{300 << 10, format.CreateOptions{Preallocation: m, ClusterSize: 512}, p + ",cluster_size=512", true},
			tc{300<<10 + 100, format.CreateOptions{Preallocation: m, ClusterSize: 512, RefcountBits: 64}, p + ",cluster_size=512,refcount_bits=64", true},
			tc{10 << 20, format.CreateOptions{Preallocation: m, ClusterSize: 4096}, p + ",cluster_size=4096", true},
			tc{5 << 20, format.CreateOptions{Preallocation: m, ClusterSize: 2 << 20}, p + ",cluster_size=2M", true},
			tc{2 << 20, format.CreateOptions{Preallocation: m, Version: 2}, p + ",compat=0.10", true},
			tc{3 << 20, format.CreateOptions{Preallocation: m, ExtendedL2: true, ClusterSize: 16384}, p + ",extended_l2=on,cluster_size=16k", true},
			tc{1 << 20, format.CreateOptions{Preallocation: m, ExtendedL2: true, ClusterSize: 32768, BackingFile: "base.raw", BackingFormat: "raw"},
				p + ",extended_l2=on,cluster_size=32k,backing_file=base.raw,backing_fmt=raw", true},
		)
	}
	// QEMU grows the refcount table while it preallocates metadata here;
	// we lay the image out like falloc instead (same mapping, different
	// host offsets).
	cases = append(cases, tc{9 << 20, format.CreateOptions{Preallocation: format.PreallocMetadata, ClusterSize: 512}, "preallocation=metadata,cluster_size=512", false})
	cases = append(cases, tc{9 << 20, format.CreateOptions{Preallocation: format.PreallocFalloc, ClusterSize: 512}, "preallocation=falloc,cluster_size=512", true})
	if !testing.Short() {
		cases = append(cases, tc{600 << 20, format.CreateOptions{Preallocation: format.PreallocMetadata}, "preallocation=metadata", true})
	}
	e := newTestEnv(t)
	for _, c := range cases {
		t.Run(fmt.Sprintf("%d-%s", c.size, c.qopt), func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "base.raw"), bytes.Repeat([]byte{0x42}, 1<<20), 0o644); err != nil {
				t.Fatal(err)
			}
			ours := filepath.Join(dir, "ours.qcow2")
			theirs := filepath.Join(dir, "theirs.qcow2")
			if err := e.create(ours, c.size, c.o); err != nil {
				t.Fatal(err)
			}
			qemuCreate(t, theirs, c.qopt, c.size)
			qemuCheck(t, ours)
			a, b := qemuInfo(t, ours), qemuInfo(t, theirs)
			ja, _ := json.Marshal(a)
			jb, _ := json.Marshal(b)
			if !bytes.Equal(ja, jb) {
				t.Errorf("qemu-img info differs:\nours   %s\ntheirs %s", ja, jb)
			}
			if c.exact {
				sameFiles(t, ours, theirs)
				// qemu-img map also reports holes in the file under data
				// (a file-system property); normalizeQemu drops that.
				ma := runsString(normalizeQemu(parseQemuMap(t, qemuImg(t, "map", "--output=json", ours))))
				mb := runsString(normalizeQemu(parseQemuMap(t, qemuImg(t, "map", "--output=json", theirs))))
				if ma != mb {
					t.Errorf("qemu-img map differs:\nours   %s\ntheirs %s", ma, mb)
				}
			} else if ma, mb := qemuMapNoOffsets(t, ours), qemuMapNoOffsets(t, theirs); ma != mb {
				t.Errorf("qemu-img map differs:\nours   %s\ntheirs %s", ma, mb)
			}
			// Every cluster of the disk is allocated in the image.
			im, err := openFile(t, ours, format.Options{})
			if err != nil {
				t.Fatal(err)
			}
			exts, err := im.Map(nil, 0, im.Geometry.Size)
			if err != nil {
				t.Fatal(err)
			}
			for _, x := range exts {
				wantKind := format.ExtentData
				if c.o.ExtendedL2 {
					wantKind = format.ExtentUnallocated // allocated clusters, unallocated subclusters
				}
				if x.Kind != wantKind {
					t.Fatalf("extent %+v: want %v everywhere", x, wantKind)
				}
			}
			// Data allocated in the file: falloc and full, not metadata.
			st, _ := os.Stat(ours)
			cs := int64(im.Geometry.ClusterSize())
			data := (c.size + cs - 1) / cs * cs
			got := allocatedBytes(t, ours)
			if c.o.Preallocation == format.PreallocMetadata && got > st.Size()-data/2 {
				t.Errorf("metadata: %d bytes allocated in a file of %d with %d data bytes", got, st.Size(), data)
			}
			if c.o.Preallocation != format.PreallocMetadata && got < data {
				t.Errorf("%v: %d bytes allocated, want at least the %d data bytes", c.o.Preallocation, got, data)
			}
		})
	}
}

// TestQcow2DriverCreateRefusals: the option combinations qemu-img 7.2
// refuses are refused, with its reason.
func TestQcow2DriverCreateRefusals(t *testing.T) {
	e := newTestEnv(t)
	for _, c := range []struct {
		o    format.CreateOptions
		want string
	}{
		{format.CreateOptions{ExtendedL2: true, Version: 2}, "Extended L2 entries are only supported with compatibility level 1.1 and above"},
		{format.CreateOptions{ExtendedL2: true, ClusterSize: 8192}, "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes"},
		{format.CreateOptions{Preallocation: format.PreallocMetadata, BackingFile: "b", BackingFormat: "raw"}, "Backing file and preallocation can only be used at the same time if extended_l2 is on"},
		{format.CreateOptions{Preallocation: format.PreallocFull + 1}, "preallocation must be"},
	} {
		err := e.create(filepath.Join(t.TempDir(), "bad.qcow2"), 1<<20, c.o)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: err = %v, want %q", c.o, err, c.want)
		}
	}
	for _, s := range []string{"off", "metadata", "falloc", "full"} {
		if p, ok := format.ParsePrealloc(s); !ok || p.String() != s {
			t.Errorf("ParsePrealloc(%q) = %v, %v", s, p, ok)
		}
	}
	if _, ok := format.ParsePrealloc("bogus"); ok {
		t.Error("ParsePrealloc accepted bogus")
	}
}
