package format

import (
	"bytes"
	"compress/flate"
	"errors"
	"io"
	"syscall"
)

// DecompressCluster inflates one compressed cluster from src into dst
// (len(dst) is the cluster size). Like QEMU, it stops after exactly
// len(dst) bytes and ignores whatever follows in src (the tail of the last
// sector may hold the start of another compressed cluster); a stream that
// ends early or is malformed is ErrCorrupt.
//
// zlib clusters are raw deflate streams (no zlib header). QEMU writes them
// with a 4 KiB window; Go's reader accepts any window, so it reads QEMU's
// output, but Go's writer must not be used to produce clusters for QEMU
// (qcow2.md §0 item 6). zstd clusters are zstd frames (zstd.go).
//
// A cluster that does not decompress is ErrCorrupt that is also
// syscall.EIO: QEMU fails such a read with EIO and nothing else (iotest
// 214: a descriptor whose size field was cut short), so qemu-io and
// qemu-img word it "Input/output error" as QEMU's do.
func DecompressCluster(dst, src []byte, compressionType uint8) error {
	err := decompressCluster(dst, src, compressionType)
	var fe *FormatError
	if errors.As(err, &fe) && fe.Err == ErrCorrupt {
		fe.Err = errors.Join(ErrCorrupt, syscall.EIO)
	}
	return err
}

func decompressCluster(dst, src []byte, compressionType uint8) error {
	switch compressionType {
	case CompressionZlib:
		fr := flate.NewReader(bytes.NewReader(src))
		_, err := io.ReadFull(fr, dst)
		fr.Close()
		if err != nil {
			return &FormatError{Field: "compressed_cluster", Value: uint64(len(src)),
				Reason: "compressed data does not inflate to a full cluster: " + err.Error(), Err: ErrCorrupt}
		}
		return nil
	case CompressionZstd:
		return decompressZstd(dst, src) // zstd.go
	}
	return Unsupported("compression_type", uint64(compressionType), "unknown compression type")
}
