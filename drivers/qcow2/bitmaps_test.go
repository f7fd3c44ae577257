package qcow2

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// seedBitmaps returns the testdata image made by qemu-img bitmap --add
// plus a qemu-io write (so the bitmap has a data cluster), its header and
// its file path.
func seedBitmaps(t *testing.T) ([]byte, *format.Header, string) {
	t.Helper()
	b := loadImage(t, "bitmap")
	h, err := format.ParseHeader(b)
	if err != nil {
		t.Fatal(err)
	}
	if !h.BitmapsConsistent() {
		t.Fatal("seed image has no consistent bitmaps")
	}
	path := filepath.Join(t.TempDir(), "bm.qcow2")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return b, h, path
}

// TestBitmapClustersQemuImage: on a qemu-made image the parser returns
// the directory cluster, the table cluster and the data cluster, sorted,
// aligned and distinct, and as many as the independent count in
// matrix_test.go.
func TestBitmapClustersQemuImage(t *testing.T) {
	b, h, path := seedBitmaps(t)
	owned, err := format.BitmapClusters(bytes.NewReader(b), h, int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	if want := bitmapClusters(t, path); int64(len(owned)) != want || want < 3 {
		t.Fatalf("BitmapClusters = %v, want %d clusters (at least 3)", owned, want)
	}
	cs := h.ClusterSize()
	for i, c := range owned {
		if c < cs || c%cs != 0 || c >= int64(len(b)) || (i > 0 && c <= owned[i-1]) {
			t.Fatalf("cluster %d = %#x in %v", i, c, owned)
		}
	}
	if !slices.Contains(owned, int64(h.Bitmaps.DirectoryOffset)) {
		t.Fatalf("directory cluster %#x missing from %v", h.Bitmaps.DirectoryOffset, owned)
	}
}

// TestQcow2DriverBitmapsDamagedKept: when the bitmap directory does not
// parse, or a bitmap cluster is also our metadata, the driver clears the
// autoclear bit but keeps the extension and frees nothing: qemu-img check
// finds leaks at most (exactly the bitmaps' clusters), no corruption.
func TestQcow2DriverBitmapsDamagedKept(t *testing.T) {
	needQemu(t)
	b, h, _ := seedBitmaps(t)
	dir := int64(h.Bitmaps.DirectoryOffset)
	table := int64(binary.BigEndian.Uint64(b[dir:]))
	cases := []struct {
		name string
		mod  func([]byte)
	}{
		{"unknown bitmap type", func(c []byte) { c[dir+16] = 7 }},
		{"data cluster is the L1 table", func(c []byte) { binary.BigEndian.PutUint64(c[table:], h.L1Offset) }},
		{"data cluster is a refcount block", func(c []byte) {
			binary.BigEndian.PutUint64(c[table:], binary.BigEndian.Uint64(c[h.RefcountTableOffset:]))
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			img := append([]byte(nil), b...)
			c.mod(img)
			path := filepath.Join(t.TempDir(), "d.qcow2")
			if err := os.WriteFile(path, img, 0o644); err != nil {
				t.Fatal(err)
			}
			e := newTestEnv(t)
			n := e.mustOpen(path, false)
			if _, err := n.WriteAt(fill(0x5a, 4096), 1<<20); err != nil {
				t.Fatal(err)
			}
			if err := n.Flush(); err != nil {
				t.Fatal(err)
			}
			n.Unref()
			after, err := format.ParseHeader(headerCluster(t, path))
			if err != nil {
				t.Fatal(err)
			}
			if after.AutoclearFeatures&format.AutoclearBitmaps != 0 || after.Bitmaps == nil || *after.Bitmaps != *h.Bitmaps {
				t.Fatalf("autoclear %#x, bitmaps %+v; want bit 0 clear and the extension unchanged", after.AutoclearFeatures, after.Bitmaps)
			}
			q := qemuCheckResult(t, path)
			// The seed's bitmap owns 3 clusters (directory, table, data);
			// with the data entry redirected to our metadata, the old data
			// cluster has no reference at all: 3 leaks either way.
			want := int64(3)
			if q.Corruptions != 0 || q.CheckErrors != 0 || q.Leaks != want {
				t.Fatalf("qemu-img check %+v; want %d leaks and nothing else", q, want)
			}
		})
	}
}

// TestQcow2DriverBitmapsCrashStates replays the file writes of a first
// write plus flush onto the qemu-made image, stopping after each one,
// whole or torn at 512-byte sectors. Every state passes qemu-img check
// with at most leaks. And explicitly (R13): until a directory that marks
// the bitmap in_use is durable, nothing but the header cluster, refcount
// blocks and free clusters is written, so no crash state pairs changed
// guest data with a bitmap that looks consistent. The last state shows
// the bitmap in use to qemu-img info, as a kill -9 would leave it.
func TestQcow2DriverBitmapsCrashStates(t *testing.T) {
	needQemu(t)
	b, h, _ := seedBitmaps(t)
	e := newTestEnv(t)
	f := &recFile{data: append([]byte(nil), b...)}
	fn, err := e.g.Open(f, block.Options{})
	if err != nil {
		t.Fatal(err)
	}
	n, err := NewNode(e.g, fn, DriverOptions{}, block.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.WriteAt(fill(0x5a, 4096), 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := n.Flush(); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	log := append([]recOp(nil), f.log...)
	f.mu.Unlock()

	geo := h.Geometry(0)
	cs := h.ClusterSize()
	inUse := func(img []byte) bool {
		hh, err := format.ParseHeader(img)
		if err != nil || !hh.BitmapsConsistent() {
			return false
		}
		ents, err := format.ReadBitmapDirectory(bytes.NewReader(img), hh, int64(len(img)))
		return err == nil && len(ents) == 1 && ents[0].InUse()
	}
	// allowed reports whether a write at off may precede the durable
	// in_use mark: header cluster, refcount blocks, or a cluster free in
	// the durable image.
	allowed := func(durable []byte, off int64) bool {
		c := off / cs * cs
		if c == 0 || c >= int64(len(durable)) {
			return true
		}
		for i := int64(0); i < int64(h.RefcountTableClusters)*cs/8; i++ {
			if int64(binary.BigEndian.Uint64(durable[int64(h.RefcountTableOffset)+i*8:])) == c {
				return true
			}
		}
		ti, bi := geo.RefcountIndex(c)
		rb := int64(binary.BigEndian.Uint64(durable[int64(h.RefcountTableOffset)+ti*8:]))
		if rb == 0 {
			return true
		}
		v, err := format.RefcountGet(durable[rb:rb+cs], h.RefcountOrder, bi)
		return err == nil && v == 0
	}
	cur := append([]byte(nil), b...)
	durable := append([]byte(nil), b...) // cur as of the last flush
	dir := t.TempDir()
	states, sawMark := 0, false
	check := func(img []byte, what string) {
		t.Helper()
		states++
		p := filepath.Join(dir, "s.qcow2")
		if err := os.WriteFile(p, img, 0o644); err != nil {
			t.Fatal(err)
		}
		if code, out := qemuExit(t, "check", p); code != 0 && code != 3 {
			t.Fatalf("%s: qemu-img check exit %d\n%s", what, code, out)
		}
		if q := qemuCheckResult(t, p); q.Corruptions != 0 || q.CheckErrors != 0 {
			t.Fatalf("%s: qemu-img check %+v", what, q)
		}
	}
	check(cur, "before the write")
	for i, op := range log {
		if op.flush {
			durable = append(durable[:0], cur...)
			sawMark = sawMark || inUse(durable)
			continue
		}
		if !sawMark && !allowed(durable, op.off) {
			t.Fatalf("write %d at %#x reaches a used cluster before the in_use mark is durable", i, op.off)
		}
		sectors := (op.off+int64(len(op.b))+511)/512 - op.off/512
		if sectors > 1 && sectors <= 4 {
			for mask := 1; mask < 1<<sectors-1; mask++ {
				img := append([]byte(nil), cur...)
				for s := int64(0); s < sectors; s++ {
					if mask&(1<<s) == 0 {
						continue
					}
					lo := max(op.off, (op.off/512+s)*512)
					hi := min(op.off+int64(len(op.b)), (op.off/512+s+1)*512)
					copy(img[lo:], op.b[lo-op.off:hi-op.off])
				}
				check(img, "torn write "+strconv.Itoa(i))
			}
		}
		if end := op.off + int64(len(op.b)); end > int64(len(cur)) {
			cur = append(cur, make([]byte, end-int64(len(cur)))...)
		}
		copy(cur[op.off:], op.b)
		check(cur, "after write "+strconv.Itoa(i))
	}
	if !sawMark || !inUse(cur) {
		t.Fatalf("the bitmap was never durably in use (mark %v, final %v)", sawMark, inUse(cur))
	}
	p := filepath.Join(dir, "final.qcow2")
	if err := os.WriteFile(p, cur, 0o644); err != nil {
		t.Fatal(err)
	}
	if out := string(qemuImg(t, "info", p)); !strings.Contains(out, "in-use") {
		t.Fatalf("qemu-img info of the crash state:\n%s", out)
	}
	n.Unref()
	t.Logf("%d file ops, %d states checked", len(log), states)
}

// storedDirty reports the state of bitmap b0 in image img as a reader
// that follows the format would see it: ok false when the bitmaps are not
// trusted (bit clear, no extension), inUse, and whether guest offset off
// is dirty.
func storedDirty(t *testing.T, img []byte, off int64) (ok, inUse, dirty bool) {
	t.Helper()
	h, err := format.ParseHeader(img)
	if err != nil {
		t.Fatalf("header: %v", err)
	}
	if !h.BitmapsConsistent() {
		return false, false, false
	}
	r := bytes.NewReader(img)
	ents, err := format.ReadBitmapDirectory(r, h, int64(len(img)))
	if err != nil || len(ents) != 1 {
		t.Fatalf("directory: %v %+v", err, ents)
	}
	e := ents[0]
	cs := h.ClusterSize()
	bit := off >> e.GranularityBits
	j := bit / (cs * 8)
	tb := make([]byte, 8)
	if err := format.ReadFull(r, tb, int64(e.TableOffset)+j*8); err != nil {
		t.Fatal(err)
	}
	te, err := format.ParseBitmapTableEntry(binary.BigEndian.Uint64(tb), uint64(cs), int64(len(img)))
	if err != nil {
		t.Fatalf("table entry: %v", err)
	}
	switch {
	case te.AllOnes:
		return true, e.InUse(), true
	case te.Offset == 0:
		return true, e.InUse(), false
	}
	in := bit % (cs * 8)
	var b [1]byte
	if err := format.ReadFull(r, b[:], int64(te.Offset)+in/8); err != nil {
		t.Fatal(err)
	}
	return true, e.InUse(), b[0]&(1<<(in%8)) != 0
}

// TestQcow2DriverBitmapsStoreCrashStates: the store at close, replayed
// write by write (whole and torn at sectors) on top of the state after a
// write and flush. Every state is qemu-img check clean but for leaks, and
// in every state the bitmap is either in use (the session's mark) or
// consistent and holding the write: never consistent without it (R13).
func TestQcow2DriverBitmapsStoreCrashStates(t *testing.T) {
	needQemu(t)
	b, _, _ := seedBitmaps(t)
	const at = 3 << 20
	if ok, inUse, dirty := storedDirty(t, b, at); !ok || inUse || dirty {
		t.Fatalf("seed: ok %v in use %v dirty %v", ok, inUse, dirty)
	}
	e := newTestEnv(t)
	f := &recFile{data: append([]byte(nil), b...)}
	fn, err := e.g.Open(f, block.Options{})
	if err != nil {
		t.Fatal(err)
	}
	n, err := NewNode(e.g, fn, DriverOptions{}, block.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.WriteAt(fill(0x5a, 4096), at); err != nil {
		t.Fatal(err)
	}
	if err := n.Flush(); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	before := append([]byte(nil), f.data...)
	start := len(f.log)
	f.mu.Unlock()
	n.Unref()
	f.mu.Lock()
	log := append([]recOp(nil), f.log[start:]...)
	f.mu.Unlock()
	if ok, inUse, _ := storedDirty(t, before, at); !ok || !inUse {
		t.Fatalf("before close: ok %v, in use %v", ok, inUse)
	}
	dir := t.TempDir()
	states, sawStored := 0, false
	check := func(img []byte, what string) {
		t.Helper()
		states++
		ok, inUse, dirty := storedDirty(t, img, at)
		if ok && !inUse && !dirty {
			t.Fatalf("%s: the bitmap is consistent but misses the write", what)
		}
		sawStored = sawStored || ok && !inUse
		p := filepath.Join(dir, "s.qcow2")
		if err := os.WriteFile(p, img, 0o644); err != nil {
			t.Fatal(err)
		}
		if q := qemuCheckResult(t, p); q.Corruptions != 0 || q.CheckErrors != 0 {
			t.Fatalf("%s: qemu-img check %+v", what, q)
		}
	}
	cur := before
	for i, op := range log {
		if op.flush {
			continue
		}
		sectors := (op.off+int64(len(op.b))+511)/512 - op.off/512
		if sectors > 1 && sectors <= 4 {
			for mask := 1; mask < 1<<sectors-1; mask++ {
				img := append([]byte(nil), cur...)
				for s := int64(0); s < sectors; s++ {
					if mask&(1<<s) == 0 {
						continue
					}
					lo := max(op.off, (op.off/512+s)*512)
					hi := min(op.off+int64(len(op.b)), (op.off/512+s+1)*512)
					if hi > int64(len(img)) {
						img = append(img, make([]byte, hi-int64(len(img)))...)
					}
					copy(img[lo:], op.b[lo-op.off:hi-op.off])
				}
				check(img, "torn write "+strconv.Itoa(i))
			}
		}
		if end := op.off + int64(len(op.b)); end > int64(len(cur)) {
			cur = append(cur, make([]byte, end-int64(len(cur)))...)
		}
		copy(cur[op.off:], op.b)
		check(cur, "after write "+strconv.Itoa(i))
	}
	if ok, inUse, dirty := storedDirty(t, cur, at); !sawStored || !ok || inUse || !dirty {
		t.Fatalf("after close: ok %v in use %v dirty %v", ok, inUse, dirty)
	}
	t.Logf("%d file ops, %d states checked", len(log), states)
}
