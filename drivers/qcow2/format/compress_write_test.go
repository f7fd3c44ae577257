package format_test

import (
	"bytes"
	"errors"
	"syscall"
	"testing"

	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// TestQcow2CompressRoundTrip: clusters from the Compressor decompress to
// themselves (zlib and zstd); an incompressible cluster comes back nil
// (stored plain); a compressed cluster cut short (iotest 214's shortened
// size field) fails as ErrCorrupt that is also EIO, QEMU's error for it.
func TestQcow2CompressRoundTrip(t *testing.T) {
	const cs = 65536
	plain := bytes.Repeat([]byte("ringblk compressed cluster, "), cs/28+1)[:cs]
	noise := make([]byte, cs)
	x := uint32(1)
	for i := range noise {
		x = x*1664525 + 1013904223
		noise[i] = byte(x >> 24)
	}
	for _, typ := range []uint8{format.CompressionZlib, format.CompressionZstd} {
		c, err := format.NewCompressor(typ)
		if err != nil {
			t.Fatal(err)
		}
		out, err := c.Compress(plain)
		if err != nil || out == nil || len(out) > cs/4 {
			t.Fatalf("type %d: compressed %d bytes, err %v; want a few KiB", typ, len(out), err)
		}
		out = append([]byte(nil), out...)
		got := make([]byte, cs)
		if err := format.DecompressCluster(got, append(out, 0, 0, 0), typ); err != nil || !bytes.Equal(got, plain) {
			t.Fatalf("type %d: round trip: %v", typ, err)
		}
		err = format.DecompressCluster(got, out[:len(out)/2], typ)
		if !errors.Is(err, format.ErrCorrupt) || !errors.Is(err, syscall.EIO) {
			t.Errorf("type %d: a cluster cut short: %v, want ErrCorrupt and EIO", typ, err)
		}
		if b, err := c.Compress(noise); b != nil || err != nil {
			t.Errorf("type %d: noise compressed to %d bytes (err %v), want nil: store it plain", typ, len(b), err)
		}
	}
}
