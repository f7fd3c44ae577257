package format

import (
	"encoding/binary"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// zstd-compressed clusters (compression type 1).
//
// QEMU stores one zstd frame per compressed cluster, without recording its
// exact length: the descriptor's length is rounded up to whole sectors, so
// the bytes after the frame are padding or the start of the next
// compressed cluster. QEMU decompresses as a stream until the cluster is
// full and fails when the frame is not finished by then. We find the end
// of each frame by walking its block headers (so the trailing bytes are
// never fed to the decoder) and decode frames until exactly one cluster
// came out; more output, less output or a malformed frame is ErrCorrupt.
//
// Memory is bounded by the cluster: the decoder's window and output are
// capped at MaxClusterSize, and DecodeAll may not grow dst.

var (
	zstdOnce sync.Once
	zstdDec  *zstd.Decoder
	zstdErr  error
)

func zstdDecoder() (*zstd.Decoder, error) {
	zstdOnce.Do(func() {
		zstdDec, zstdErr = zstd.NewReader(nil,
			zstd.WithDecoderConcurrency(1),
			zstd.WithDecoderMaxMemory(uint64(1)<<MaxClusterBits),
			zstd.WithDecoderMaxWindow(uint64(1)<<MaxClusterBits),
			zstd.WithDecodeAllCapLimit(true))
	})
	return zstdDec, zstdErr
}

func zstdCorrupt(n int, reason string) error {
	return &FormatError{Field: "compressed_cluster", Value: uint64(n), Reason: "zstd: " + reason, Err: ErrCorrupt}
}

// zstdFrameLen returns the length of the zstd frame at the start of src
// (RFC 8878 §3.1.1): the frame header, the blocks up to the last one, and
// the optional 4-byte checksum. Skippable frames are refused (QEMU never
// writes them).
func zstdFrameLen(src []byte) (int, error) {
	if len(src) < 5 {
		return 0, zstdCorrupt(len(src), "frame header cut short")
	}
	var h zstd.Header
	if err := h.Decode(src); err != nil {
		return 0, zstdCorrupt(len(src), "bad frame header: "+err.Error())
	}
	if h.Skippable {
		return 0, zstdCorrupt(len(src), "skippable frame")
	}
	checksum := src[4]&0x04 != 0 // Content_Checksum_flag of the frame header descriptor
	n := h.HeaderSize
	for {
		if n+3 > len(src) {
			return 0, zstdCorrupt(len(src), "frame runs past the compressed cluster")
		}
		bh := uint32(src[n]) | uint32(src[n+1])<<8 | uint32(src[n+2])<<16
		last, typ, size := bh&1 != 0, (bh>>1)&3, int(bh>>3)
		n += 3
		switch typ {
		case 0, 2: // raw, compressed
			n += size
		case 1: // RLE: one byte repeated
			n++
		default:
			return 0, zstdCorrupt(len(src), "reserved block type")
		}
		if n > len(src) {
			return 0, zstdCorrupt(len(src), "frame runs past the compressed cluster")
		}
		if last {
			break
		}
	}
	if checksum {
		n += 4
		if n > len(src) {
			return 0, zstdCorrupt(len(src), "frame checksum runs past the compressed cluster")
		}
	}
	return n, nil
}

// decompressZstd inflates one zstd-compressed cluster from src into dst
// (len(dst) is the cluster size).
func decompressZstd(dst, src []byte) error {
	dec, err := zstdDecoder()
	if err != nil {
		return Unsupported("compression_type", CompressionZstd, "zstd decoder: "+err.Error())
	}
	done := 0
	for done < len(dst) {
		if len(src) < 4 || binary.LittleEndian.Uint32(src) != 0xfd2fb528 {
			return zstdCorrupt(len(src), "compressed data ends before the cluster is full")
		}
		n, err := zstdFrameLen(src)
		if err != nil {
			return err
		}
		out, err := dec.DecodeAll(src[:n], dst[done:done:len(dst)])
		if err != nil {
			return zstdCorrupt(n, "frame does not decode into the cluster: "+err.Error())
		}
		if len(out) > 0 && &out[0] != &dst[done] {
			return zstdCorrupt(n, "frame larger than the cluster")
		}
		if len(out) == 0 {
			return zstdCorrupt(n, "empty frame")
		}
		done += len(out)
		src = src[n:]
	}
	return nil
}
