package qcow2

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// TestQcow2ZstdReadInterop: images compressed by qemu-img convert -c -o
// compression_type=zstd (several cluster sizes, compressed clusters
// sharing sectors) read through the driver exactly as qemu-img convert
// -O raw reads them.
func TestQcow2ZstdReadInterop(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	size := 4 << 20
	src := make([]byte, size)
	rng := rand.New(rand.NewPCG(7, 7))
	t.Logf("seed 7")
	for off := 0; off < size; {
		n := 1 + rng.IntN(5000)
		b := byte(rng.IntN(8)) // compressible runs
		if rng.IntN(4) == 0 {
			for i := off; i < min(off+n, size); i++ {
				src[i] = byte(rng.Uint32()) // incompressible stretch
			}
		} else {
			for i := off; i < min(off+n, size); i++ {
				src[i] = b
			}
		}
		off += n
	}
	clear(src[1<<20 : 1<<20+200<<10]) // a hole
	raw := filepath.Join(dir, "src.raw")
	if err := os.WriteFile(raw, src, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, cs := range []string{"4096", "65536", "2M"} {
		t.Run(cs, func(t *testing.T) {
			img := filepath.Join(dir, "z"+cs+".qcow2")
			qemuImg(t, "convert", "-O", "qcow2", "-c", "-o", "compression_type=zstd,cluster_size="+cs, raw, img)
			im, err := openFile(t, img, format.Options{})
			if err != nil {
				t.Fatal(err)
			}
			exts, err := im.Map(nil, 0, im.Geometry.Size)
			if err != nil {
				t.Fatal(err)
			}
			compressed := 0
			for _, x := range exts {
				if x.Kind == format.ExtentCompressed {
					compressed++
				}
			}
			if compressed == 0 {
				t.Fatal("qemu-img wrote no compressed cluster")
			}
			// Through the format layer...
			got := make([]byte, size)
			if _, err := im.ReadAt(got, 0, nil); err != nil {
				t.Fatal(err)
			}
			checkSame(t, got, src)
			// ... and through the driver.
			e := newTestEnv(t)
			n := e.mustOpen(img, true)
			checkSame(t, readAll(t, n, 100000), src)
			n.Unref()
		})
	}
}

// TestQcow2ZstdCompressedWrites: compressed writes to a zstd image store
// zstd frames QEMU reads (iotest 287): qemu-img check is clean, qemu-img
// compare and qemu-io read -P see the data, qemu-img check counts the
// clusters as compressed, and a cluster that does not compress is stored
// plain.
func TestQcow2ZstdCompressedWrites(t *testing.T) {
	needQemu(t)
	img := filepath.Join(t.TempDir(), "z.qcow2")
	qemuCreate(t, img, "compression_type=zstd", 1<<20)
	e := newTestEnv(t)
	n := e.mustOpen(img, false)
	ref := make([]byte, 1<<20)
	copy(ref[65536:], bytes.Repeat([]byte{0xac}, 65536))
	copy(ref[2*65536:], textLike(2*65536, 3))
	x := uint32(5)
	for i := 4 * 65536; i < 5*65536; i++ { // noise: stored plain
		x = x*1664525 + 1013904223
		ref[i] = byte(x >> 24)
	}
	if _, err := n.WriteCompressed(ref[65536:5*65536], 65536); err != nil {
		t.Fatalf("compressed write to a zstd image: %v", err)
	}
	if err := n.Unref(); err != nil {
		t.Fatal(err)
	}
	qemuCheck(t, img)
	qemuCompare(t, img, ref)
	qemuIO(t, img, "read -P 0xac 64k 64k")
	if q := qemuCheckResult(t, img); q.CompressedClusters != 3 {
		t.Errorf("compressed clusters %d, want 3 (the noise cluster is stored plain)", q.CompressedClusters)
	}
}
