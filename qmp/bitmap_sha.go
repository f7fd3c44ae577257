package qmp

import (
	"crypto/sha256"
	"encoding/hex"

	"github.com/ringblk/ringblk/bitmap"
)

// bitmapSHA256 is x-debug-block-dirty-bitmap-sha256's digest, comparable
// with QEMU's: the SHA-256 of the bitmap's bits as QEMU keeps them in its
// last level, 64-bit words of granules (bit i of the bitmap is bit i%64 of
// word i/64), little-endian, at least one word. That is the serialized
// form (bitmap/serialize.go) padded with zero bits to a whole word, so two
// bitmaps of the same size, granularity and bits give QEMU's digest.
func bitmapSHA256(b *bitmap.Bitmap) string {
	words := max((b.Bits()+63)/64, 1)
	h := sha256.New()
	var buf [4096]byte
	for w := int64(0); w < words; w += int64(len(buf) / 8) {
		n := min(int64(len(buf)/8), words-w)
		b.SerializePart(buf[:n*8], w*64)
		h.Write(buf[:n*8])
	}
	return hex.EncodeToString(h.Sum(nil))
}
