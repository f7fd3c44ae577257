package format_test

import (
	"encoding/binary"
	"errors"
	"testing"

	"github.com/ringblk/ringblk/drivers/qcow2/format"
	"github.com/ringblk/ringblk/drivers/qcow2/format/formattest"
)

// TestQcow2ReadImageMemoryBound opens an image whose L1 table has the
// maximum size the package allows (32 MiB, all zeros, in a sparse file):
// ReadImage reads it with a bounded allocation, and a caller cap refuses
// it before allocating anything near that size.
func TestQcow2ReadImageMemoryBound(t *testing.T) {
	b := loadImage(t, "base64m")
	hdr := append([]byte(nil), b[:0x40000]...) // header, reftable, refblock, L1
	const l1Off = 16 << 20
	binary.BigEndian.PutUint32(hdr[36:], format.MaxL1Bytes/8)
	binary.BigEndian.PutUint64(hdr[40:], l1Off)
	f := &formattest.SparseFile{Chunks: []formattest.SparseChunk{{Off: 0, Data: hdr}}, Size: l1Off + format.MaxL1Bytes}

	var err error
	var im *format.Image
	n := allocated(func() { im, err = format.ReadImage(f, f.Size, format.Options{}) })
	if err != nil {
		t.Fatal(err)
	}
	if len(im.L1) != format.MaxL1Bytes/8 {
		t.Fatalf("L1 has %d entries", len(im.L1))
	}
	// The raw table and the decoded table, plus the first cluster and the
	// refcount table: about 2 × 32 MiB.
	if n > 2*format.MaxL1Bytes+4<<20 {
		t.Errorf("ReadImage allocated %d bytes for a %d-byte L1", n, format.MaxL1Bytes)
	}
	n = allocated(func() { _, err = format.ReadImage(f, f.Size, format.Options{MaxL1Bytes: 1 << 20}) })
	if !errors.Is(err, format.ErrLimit) {
		t.Fatalf("capped L1: %v", err)
	}
	if n > 1<<20 {
		t.Errorf("refusing the L1 allocated %d bytes", n)
	}
	// One entry more than the package limit is refused by the header check.
	binary.BigEndian.PutUint32(hdr[36:], format.MaxL1Bytes/8+1)
	f.Size += 8
	n = allocated(func() { _, err = format.ReadImage(f, f.Size, format.Options{}) })
	if !errors.Is(err, format.ErrLimit) || n > 1<<20 {
		t.Errorf("L1 above the limit: %v after %d bytes", err, n)
	}
}
