package qcow2

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/ringblk/ringblk/block"
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

// TestQcow2ZstdCompressedWriteRefused: a compressed write to a zstd image
// is refused (the encoder writes deflate only) and changes nothing.
func TestQcow2ZstdCompressedWriteRefused(t *testing.T) {
	needQemu(t)
	img := filepath.Join(t.TempDir(), "z.qcow2")
	qemuCreate(t, img, "compression_type=zstd", 1<<20)
	before, _ := os.ReadFile(img)
	e := newTestEnv(t)
	n := e.mustOpen(img, false)
	_, err := n.WriteCompressed(bytes.Repeat([]byte{1}, 65536), 0)
	n.Unref()
	if !block.IsKind(err, block.Unsupported) {
		t.Errorf("compressed write to a zstd image: %v, want Unsupported", err)
	}
	after, _ := os.ReadFile(img)
	if !bytes.Equal(before, after) {
		t.Error("refused compressed write changed the image")
	}
}
