package qcow2

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/ringblk/ringblk/block"
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
			im, err := openFile(t, img, Options{})
			if err != nil {
				t.Fatal(err)
			}
			exts, err := im.Map(nil, 0, im.Geometry.Size)
			if err != nil {
				t.Fatal(err)
			}
			compressed := 0
			for _, x := range exts {
				if x.Kind == ExtentCompressed {
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

// TestQcow2ZstdHostile: damaged zstd clusters are ErrCorrupt, never a
// panic or a partial success.
func TestQcow2ZstdHostile(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	raw := filepath.Join(dir, "src.raw")
	if err := os.WriteFile(raw, bytes.Repeat([]byte("qcow2 zstd cluster "), 4000), 0o644); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "z.qcow2")
	qemuImg(t, "convert", "-O", "qcow2", "-c", "-o", "compression_type=zstd", raw, img)
	im, err := openFile(t, img, Options{})
	if err != nil {
		t.Fatal(err)
	}
	le, err := im.Lookup(0)
	if err != nil || le.Type != Compressed {
		t.Fatalf("cluster 0: %+v, %v; want compressed", le, err)
	}
	file, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	c := le.Compressed
	stored := file[c.HostOff : c.HostOff+c.Size()]
	n, err := zstdFrameLen(stored)
	if err != nil {
		t.Fatal(err)
	}
	// The frame alone, then zero padding (the sectors may also hold the
	// next compressed cluster, which a longer dst would decode too).
	good := append(append([]byte(nil), stored[:n]...), make([]byte, 100)...)
	var zh zstd.Header
	if err := zh.Decode(good); err != nil {
		t.Fatal(err)
	}
	cs := int(im.Geometry.ClusterSize())
	dst := make([]byte, cs)
	if err := DecompressCluster(dst, good, CompressionZstd); err != nil {
		t.Fatalf("intact cluster: %v", err)
	}
	want := append([]byte(nil), dst...)
	mutate := map[string]func(b []byte) []byte{
		"truncated":      func(b []byte) []byte { return b[:n-1] },
		"bad magic":      func(b []byte) []byte { b[0] ^= 0xff; return b },
		"empty":          func(b []byte) []byte { return b[:0] },
		"reserved block": func(b []byte) []byte { b[zh.HeaderSize] |= 6; return b },
		"flipped bytes": func(b []byte) []byte {
			for i := 8; i < len(b); i += 7 {
				b[i] ^= 0x5a
			}
			return b
		},
	}
	for name, f := range mutate {
		b := f(append([]byte(nil), good...))
		err := DecompressCluster(dst, b, CompressionZstd)
		if err == nil && !bytes.Equal(dst, want) {
			t.Errorf("%s: no error but wrong content", name)
		}
		if err != nil && !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: %v, want ErrCorrupt", name, err)
		}
		if name != "flipped bytes" && err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// A frame that inflates to more than a cluster (here: a cluster of
	// 4 KiB asked for from a 64 KiB frame) is refused, as is one that
	// inflates to less.
	if err := DecompressCluster(make([]byte, 4096), good, CompressionZstd); !errors.Is(err, ErrCorrupt) {
		t.Errorf("frame larger than the cluster: %v, want ErrCorrupt", err)
	}
	if err := DecompressCluster(make([]byte, 2*cs), good, CompressionZstd); !errors.Is(err, ErrCorrupt) {
		t.Errorf("frame smaller than the cluster: %v, want ErrCorrupt", err)
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
