package format

import (
	"bytes"

	"github.com/klauspost/compress/flate"
	"github.com/klauspost/compress/zstd"
)

// Compressor compresses whole clusters the way QEMU 7.2 writes them, so
// that QEMU reads them and the output is about as small as qemu-img's:
//
//   - zlib (type 0): a raw deflate stream (no zlib header) whose
//     back-references reach at most 4 KiB back, because QEMU inflates with
//     a 4 KiB window (windowBits -12) and rejects anything farther.
//     klauspost's flate writer with a 4 KiB window limit; its matcher is
//     its level-5 one, close to zlib's default level 6 in size.
//   - zstd (type 1): one zstd frame per cluster, at zstd's default level
//     (klauspost's SpeedDefault), without a content checksum, as
//     QEMU's ZSTD_compressStream2(ZSTD_e_end) call writes it.
//
// A cluster is stored compressed only when the result is at most
// len(src)-1 bytes (QEMU compresses into a cluster_size-1 buffer and
// writes the cluster plain when that does not fit). A Compressor is not
// safe for concurrent use.
type Compressor struct {
	typ uint8
	out bytes.Buffer // zlib output
	zb  []byte       // zstd output
	fw  *flate.Writer
	zw  *zstd.Encoder
}

// qemuZlibWindow is the deflate window QEMU's zlib decompressor accepts.
const qemuZlibWindow = 4096

// NewCompressor returns a Compressor for compression type typ.
func NewCompressor(typ uint8) (*Compressor, error) {
	c := &Compressor{typ: typ}
	var err error
	switch typ {
	case CompressionZlib:
		c.fw, err = flate.NewWriterWindow(&c.out, qemuZlibWindow)
	case CompressionZstd:
		c.zw, err = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault),
			zstd.WithEncoderConcurrency(1), zstd.WithEncoderCRC(false),
			zstd.WithLowerEncoderMem(true))
	default:
		return nil, Unsupported("compression_type", uint64(typ), "unknown compression type")
	}
	if err != nil {
		return nil, Unsupported("compression_type", uint64(typ), "compressor: "+err.Error())
	}
	return c, nil
}

// Compress returns src (one whole cluster) compressed, or nil when the
// compressed form would not be smaller than len(src) bytes (store the
// cluster plain then). The result is valid until the next call.
func (c *Compressor) Compress(src []byte) ([]byte, error) {
	var b []byte
	switch c.typ {
	case CompressionZlib:
		c.out.Reset()
		c.fw.Reset(&c.out)
		if _, err := c.fw.Write(src); err != nil {
			return nil, err
		}
		if err := c.fw.Close(); err != nil {
			return nil, err
		}
		b = c.out.Bytes()
	case CompressionZstd:
		c.zb = c.zw.EncodeAll(src, c.zb[:0])
		b = c.zb
	}
	if len(b) > len(src)-1 {
		return nil, nil
	}
	return b, nil
}
