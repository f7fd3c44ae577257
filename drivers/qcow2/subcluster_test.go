package qcow2

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// l2Entries returns the first n (entry, bitmap) pairs of the first L2
// table of an extended-L2 image file.
func l2Entries(t *testing.T, path string, n int) [][2]uint64 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	h, err := format.ParseHeader(b)
	if err != nil {
		t.Fatal(err)
	}
	l2 := binary.BigEndian.Uint64(b[h.L1Offset:]) & format.OffsetMask
	out := make([][2]uint64, n)
	if l2 == 0 {
		return out
	}
	for i := range out {
		p := b[l2+uint64(i)*16:]
		out[i] = [2]uint64{binary.BigEndian.Uint64(p), binary.BigEndian.Uint64(p[8:])}
	}
	return out
}

// TestQcow2SubclusterMetadataLikeQemu: the same writes, write-zeroes and
// discards applied by qemu-io and by this driver to extended-L2 images
// leave the same subcluster bitmaps, the same clusters with and without a
// host cluster, and the same content; qemu-img check accepts both.
func TestQcow2SubclusterMetadataLikeQemu(t *testing.T) {
	needQemu(t)
	type zop struct {
		kind      byte // 'w' write, 'z' write-zeroes, 'u' write-zeroes with unmap, 'd' discard
		off, size int64
	}
	k := int64(1024)
	ops := []zop{
		{'w', 0, 64 * k}, {'w', 64 * k, 64 * k}, {'w', 128 * k, 64 * k}, // whole clusters
		{'w', 192*k + 3*k, 1 * k},   // cluster 3: inside subcluster 1
		{'w', 256*k + 2*k, 5 * k},   // cluster 4: subclusters 1..3, partial tail
		{'w', 256*k + 30*k, 4 * k},  // cluster 4 again (COPIED): more subclusters in place
		{'d', 0, 64 * k},            // whole-cluster discard
		{'z', 64 * k, 64 * k},       // whole-cluster zero, keeps the host cluster
		{'u', 128 * k, 64 * k},      // whole-cluster zero with unmap
		{'z', 192*k + 8*k, 4 * k},   // whole subclusters of cluster 3
		{'z', 320 * k, 3 * k},       // cluster 5: one whole subcluster, one partial
		{'d', 384*k + 2*k, 2 * k},   // partial discard: ignored
		{'z', 448*k + 1*k, 1 * k},   // cluster 7: partial subcluster
		{'w', 64*k + 5*k, 2 * k},    // into the all-zero cluster that kept its host cluster
		{'w', 128*k + 63*k, 1 * k},  // into the unmapped all-zero cluster
		{'z', 256*k + 2*k, 2 * k},   // cluster 4: allocated subcluster zeroed whole
		{'w', 512*k + 10*k, 40 * k}, // cluster 8: many subclusters, both ends partial
	}
	for _, backing := range []bool{false, true} {
		t.Run(fmt.Sprintf("backing=%v", backing), func(t *testing.T) {
			dir := t.TempDir()
			size := int64(1 << 20)
			base := filepath.Join(dir, "base.raw")
			baseData := bytes.Repeat([]byte{0x11, 0x22, 0x33}, int(size/3)+1)[:size]
			if err := os.WriteFile(base, baseData, 0o644); err != nil {
				t.Fatal(err)
			}
			opts := "extended_l2=on"
			if backing {
				opts += ",backing_file=base.raw,backing_fmt=raw"
			}
			ours, theirs := filepath.Join(dir, "ours.qcow2"), filepath.Join(dir, "theirs.qcow2")
			qemuCreate(t, ours, opts, size)
			qemuCreate(t, theirs, opts, size)
			var cmds []string
			e := newTestEnv(t)
			n := e.mustOpen(ours, false)
			for i, o := range ops {
				var err error
				switch o.kind {
				case 'w':
					buf := bytes.Repeat([]byte{byte(0x40 + i)}, int(o.size))
					_, err = n.WriteAt(buf, o.off)
					cmds = append(cmds, fmt.Sprintf("write -P %d %d %d", 0x40+i, o.off, o.size))
				case 'z':
					err = n.WriteZeroes(o.off, o.size, 0)
					cmds = append(cmds, fmt.Sprintf("write -z %d %d", o.off, o.size))
				case 'u':
					err = n.WriteZeroes(o.off, o.size, block.MayUnmap)
					cmds = append(cmds, fmt.Sprintf("write -z -u %d %d", o.off, o.size))
				case 'd':
					err = n.Discard(o.off, o.size)
					cmds = append(cmds, fmt.Sprintf("discard %d %d", o.off, o.size))
				}
				if err != nil {
					t.Fatalf("op %d %c %d+%d: %v", i, o.kind, o.off, o.size, err)
				}
			}
			got := readAll(t, n, 256<<10)
			n.Unref()
			qemuIO(t, theirs, cmds...)
			qemuCheck(t, ours)
			qemuCheck(t, theirs)
			a, b := l2Entries(t, ours, 16), l2Entries(t, theirs, 16)
			for i := range a {
				ha, hb := a[i][0]&format.OffsetMask != 0, b[i][0]&format.OffsetMask != 0
				if a[i][1] != b[i][1] || ha != hb || a[i][0]&format.EntryCopied != b[i][0]&format.EntryCopied {
					t.Errorf("cluster %d: entry %#x bitmap %#x, qemu-io made %#x bitmap %#x", i, a[i][0], a[i][1], b[i][0], b[i][1])
				}
			}
			rawOut := filepath.Join(dir, "theirs.raw")
			qemuImg(t, "convert", "-O", "raw", theirs, rawOut)
			want, err := os.ReadFile(rawOut)
			if err != nil {
				t.Fatal(err)
			}
			checkSame(t, got, want)
			ma := qemuMapNoOffsets(t, ours)
			mb := qemuMapNoOffsets(t, theirs)
			if ma != mb {
				t.Errorf("qemu-img map differs:\nours\n%stheirs\n%s", ma, mb)
			}
		})
	}
}

// TestQcow2SubclusterWriteInterop: random writes, write-zeroes and
// discards through the block layer on extended-L2 images (made by
// qemu-img and by Create, with and without a backing file) read back
// byte for byte in qemu-img compare, pass qemu-img check, and QEMU's own
// writes afterwards read back through the driver.
func TestQcow2SubclusterWriteInterop(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	size := int64(3 << 20)
	base := filepath.Join(dir, "base.raw")
	baseData := bytes.Repeat([]byte{0x5a, 0xa5, 0x3c}, int(size/3)+1)[:size-512]
	if err := os.WriteFile(base, baseData, 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		cs       int64
		backing  bool
		ours     bool // made by Create
		prealloc format.Prealloc
	}{
		{65536, false, false, format.PreallocOff}, {65536, true, false, format.PreallocOff}, {16384, true, true, format.PreallocOff},
		{32768, false, true, format.PreallocOff}, {2 << 20, true, false, format.PreallocOff},
		// Every cluster allocated and COPIED, every subcluster unallocated:
		// writes complete subclusters in place.
		{65536, true, true, format.PreallocMetadata}, {32768, false, true, format.PreallocFalloc},
	}
	for i, c := range cases {
		t.Run(fmt.Sprintf("cs=%d,backing=%v,create=%v,prealloc=%v", c.cs, c.backing, c.ours, c.prealloc), func(t *testing.T) {
			img := filepath.Join(dir, fmt.Sprintf("x%d.qcow2", i))
			e := newTestEnv(t)
			o := format.CreateOptions{ClusterSize: c.cs, ExtendedL2: true, Preallocation: c.prealloc}
			if c.backing {
				o.BackingFile, o.BackingFormat = "base.raw", "raw"
			}
			if c.ours {
				if err := e.create(img, size, o); err != nil {
					t.Fatal(err)
				}
			} else {
				opts := fmt.Sprintf("extended_l2=on,cluster_size=%d", c.cs)
				if c.backing {
					opts += ",backing_file=base.raw,backing_fmt=raw"
				}
				qemuCreate(t, img, opts, size)
			}
			ref := make([]byte, size)
			if c.backing {
				copy(ref, baseData)
			}
			n := e.mustOpen(img, false)
			writeWorkload(t, n, ref, uint64(11+i), 200, c.cs)
			checkSame(t, readAll(t, n, 1<<20), ref)
			n.Unref()
			qemuCheck(t, img)
			qemuCompare(t, img, ref)
			// An image written by QEMU, read by us.
			qemuIO(t, img, "write -P 0x77 100k 3k", "write -z 1000k 70k", "discard 2M 128k")
			copy(ref[100<<10:103<<10], bytes.Repeat([]byte{0x77}, 3<<10))
			clear(ref[1000<<10 : 1070<<10])
			if c.cs <= 128<<10 {
				clear(ref[2<<20 : 2<<20+128<<10])
			}
			qemuCheck(t, img)
			n = e.mustOpen(img, true)
			checkSame(t, readAll(t, n, 1<<20), ref)
			n.Unref()
		})
	}
}

// TestQcow2SubclusterHotPathAllocs: on an extended-L2 image, a cached
// read and an in-place write to allocated subclusters allocate nothing,
// and a write to an unallocated subcluster of an allocated cluster does
// not take the in-place path (it allocates the subcluster first).
func TestQcow2SubclusterHotPathAllocs(t *testing.T) {
	needQemu(t)
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	img := filepath.Join(t.TempDir(), "x.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", "-o", "extended_l2=on", img, "4M")
	qemuIO(t, img, "write -P 0x11 0 64k", "write -P 0x22 64k 8k")
	e := newTestEnv(t)
	n := e.mustOpen(img, false)
	defer n.Unref()
	buf := make([]byte, 4096)
	if _, err := n.WriteAt(buf, 0); err != nil { // header ready (R10)
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		op   block.Op
		off  int64
	}{{"read", block.OpRead, 62000}, {"write-in-place", block.OpWrite, 66000}} {
		allocs, err := submitAllocs(e, n, tc.op, tc.off, buf)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if allocs != 0 {
			t.Errorf("%s: %v allocations per request, want 0", tc.name, allocs)
		}
	}
	// 72k..76k lies in an unallocated subcluster of cluster 1: the write
	// must mark it allocated, so the data is visible after reopening.
	if _, err := n.WriteAt(bytes.Repeat([]byte{0x99}, 4096), 72<<10); err != nil {
		t.Fatal(err)
	}
	if err := n.Flush(); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4096)
	if _, err := n.ReadAt(got, 72<<10); err != nil || !bytes.Equal(got, bytes.Repeat([]byte{0x99}, 4096)) {
		t.Fatalf("read back after a write to an unallocated subcluster: %v, %x...", err, got[:8])
	}
	// 2 KiB subclusters: qemu-io allocated 0..3, this write 4 and 5.
	if bm := l2Entries(t, img, 2)[1][1]; bm != scMask(0, 5) {
		t.Errorf("cluster 1 bitmap %#x, want %#x", bm, scMask(0, 5))
	}
}

// TestQcow2SubclusterConcurrentWrites: many writes in flight at once to
// disjoint, subcluster-unaligned pieces of the same clusters of an
// extended-L2 overlay (some pieces land in allocated subclusters and take
// the in-place path while others complete neighbouring subclusters from
// the backing file), mixed with reads. Every byte ends up as written or as
// the backing file had it, and qemu-img check accepts the image.
func TestQcow2SubclusterConcurrentWrites(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	size := int64(2 << 20)
	baseData := bytes.Repeat([]byte{0x5a, 0x01, 0xc3}, int(size/3)+1)[:size]
	if err := os.WriteFile(filepath.Join(dir, "base.raw"), baseData, 0o644); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "x.qcow2")
	qemuCreate(t, img, "extended_l2=on,cluster_size=32k,backing_file=base.raw,backing_fmt=raw", size)
	ref := append([]byte(nil), baseData...)
	e := newTestEnv(t)
	n := e.mustOpen(img, false)
	rng := rand.New(rand.NewPCG(5, 5))
	t.Log("seed 5")
	cs := int64(32 << 10)
	for round := 0; round < 6; round++ {
		base := rng.Int64N(size/cs-4) * cs
		piece := int64(300 + rng.IntN(900))
		var offs []int64
		for off := base; off+piece <= base+4*cs; off += piece + int64(rng.IntN(200)) {
			offs = append(offs, off)
		}
		rng.Shuffle(len(offs), func(i, j int) { offs[i], offs[j] = offs[j], offs[i] })
		bufs := make([][]byte, len(offs))
		for i, off := range offs {
			bufs[i] = bytes.Repeat([]byte{byte(round*37 + i + 1)}, int(piece))
			copy(ref[off:], bufs[i])
		}
		rbuf := make([]byte, 4*cs)
		cd := &countDone{}
		e.main.Run(func() {
			pool := e.g.Pool(e.main)
			for i, off := range offs {
				r := pool.Get()
				r.Op, r.Off = block.OpWrite, off
				r.SetBuf(bufs[i])
				n.Submit(r, cd)
				if i%5 == 0 {
					r := pool.Get()
					r.Op, r.Off = block.OpRead, base
					r.SetBuf(rbuf)
					n.Submit(r, cd)
				}
			}
			want := len(offs) + (len(offs)+4)/5
			e.main.WaitWhile(func() bool { return cd.n < want })
		})
		if len(cd.errs) > 0 {
			t.Fatalf("round %d: %v", round, cd.errs[0])
		}
	}
	checkSame(t, readAll(t, n, 1<<20), ref)
	n.Unref()
	qemuCheck(t, img)
	qemuCompare(t, img, ref)
}
