package qcow2

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"slices"
	"strconv"
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

// TestQcow2DriverBitmapsDroppedAndFreed: the first write drops the
// bitmaps extension and, after the flush, every bitmap cluster is free:
// qemu-img check is clean, and the format layer's check agrees.
func TestQcow2DriverBitmapsDroppedAndFreed(t *testing.T) {
	needQemu(t)
	_, _, path := seedBitmaps(t)
	e := newTestEnv(t)
	n := e.mustOpen(path, false)
	if _, err := n.WriteAt(fill(0x5a, 4096), 1<<20); err != nil {
		t.Fatal(err)
	}
	h, err := format.ParseHeader(headerCluster(t, path))
	if err != nil {
		t.Fatal(err)
	}
	if h.Bitmaps != nil || h.AutoclearFeatures&format.AutoclearBitmaps != 0 {
		t.Fatalf("after the first write: bitmaps %+v, autoclear %#x", h.Bitmaps, h.AutoclearFeatures)
	}
	n.Unref()
	qemuCheckClean(t, path)
	compareCheck(t, path)
	if bm := mQemuInfo(t, path).FormatSpecific.Data.Bitmaps; len(bm) != 0 {
		t.Fatalf("qemu-img info still lists bitmaps %+v", bm)
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
// with at most leaks. And explicitly: the autoclear bit is durably clear
// before the extension is removed, and no bitmap cluster's refcount
// changes before the removal is durable (R2), so no state has a trusted
// extension or a live reference to a freed bitmap cluster.
func TestQcow2DriverBitmapsCrashStates(t *testing.T) {
	needQemu(t)
	b, h, _ := seedBitmaps(t)
	owned, err := format.BitmapClusters(bytes.NewReader(b), h, int64(len(b)))
	if err != nil {
		t.Fatal(err)
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
	if _, err := n.WriteAt(fill(0x5a, 4096), 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := n.Flush(); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	log := append([]recOp(nil), f.log...)
	f.mu.Unlock()
	n.Unref()

	geo := h.Geometry(0)
	refcounts := func(img []byte) []uint64 {
		rcs := make([]uint64, len(owned))
		for i, c := range owned {
			ti, bi := geo.RefcountIndex(c)
			rb := int64(binary.BigEndian.Uint64(img[int64(h.RefcountTableOffset)+ti*8:]))
			v, err := format.RefcountGet(img[rb:rb+h.ClusterSize()], h.RefcountOrder, bi)
			if err != nil {
				t.Fatal(err)
			}
			rcs[i] = v
		}
		return rcs
	}
	parse := func(img []byte) *format.Header {
		hh, err := format.ParseHeader(img)
		if err != nil {
			t.Fatalf("header: %v", err)
		}
		return hh
	}
	base := refcounts(b)
	cur := append([]byte(nil), b...)
	durable := append([]byte(nil), b...) // cur as of the last flush
	sawRemoval, sawFree := false, false
	dir := t.TempDir()
	states := 0
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
			continue
		}
		// Torn variants of this write on top of the state before it.
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
		ch, dh := parse(cur), parse(durable)
		if ch.Bitmaps == nil && !sawRemoval {
			sawRemoval = true
			if dh.AutoclearFeatures&format.AutoclearBitmaps != 0 {
				t.Fatalf("write %d removes the bitmaps extension before the cleared autoclear bit is durable", i)
			}
		}
		if rcs := refcounts(cur); !slices.Equal(rcs, base) {
			sawFree = true
			if dh.Bitmaps != nil {
				t.Fatalf("write %d changes bitmap cluster refcounts %v -> %v before the extension's removal is durable", i, base, rcs)
			}
		}
		check(cur, "after write "+strconv.Itoa(i))
	}
	if !sawRemoval || !sawFree {
		t.Fatalf("removal %v, frees %v: the write did not drop and free the bitmaps", sawRemoval, sawFree)
	}
	if rcs := refcounts(cur); !slices.Equal(rcs, make([]uint64, len(owned))) {
		t.Fatalf("bitmap cluster refcounts at the end %v, want all 0", rcs)
	}
	t.Logf("%d file ops, %d states checked", len(log), states)
}
