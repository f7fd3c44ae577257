package format_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

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
	im, err := openFile(t, img, format.Options{})
	if err != nil {
		t.Fatal(err)
	}
	le, err := im.Lookup(0)
	if err != nil || le.Type != format.Compressed {
		t.Fatalf("cluster 0: %+v, %v; want compressed", le, err)
	}
	file, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	c := le.Compressed
	stored := file[c.HostOff : c.HostOff+c.Size()]
	n, err := format.ZstdFrameLen(stored)
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
	if err := format.DecompressCluster(dst, good, format.CompressionZstd); err != nil {
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
		err := format.DecompressCluster(dst, b, format.CompressionZstd)
		if err == nil && !bytes.Equal(dst, want) {
			t.Errorf("%s: no error but wrong content", name)
		}
		if err != nil && !errors.Is(err, format.ErrCorrupt) {
			t.Errorf("%s: %v, want ErrCorrupt", name, err)
		}
		if name != "flipped bytes" && err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// A frame that inflates to more than a cluster (here: a cluster of
	// 4 KiB asked for from a 64 KiB frame) is refused, as is one that
	// inflates to less.
	if err := format.DecompressCluster(make([]byte, 4096), good, format.CompressionZstd); !errors.Is(err, format.ErrCorrupt) {
		t.Errorf("frame larger than the cluster: %v, want ErrCorrupt", err)
	}
	if err := format.DecompressCluster(make([]byte, 2*cs), good, format.CompressionZstd); !errors.Is(err, format.ErrCorrupt) {
		t.Errorf("frame smaller than the cluster: %v, want ErrCorrupt", err)
	}
}
