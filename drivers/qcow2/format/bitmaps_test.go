package format_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// seedBitmaps returns the testdata image made by qemu-img bitmap --add
// plus a qemu-io write (so the bitmap has a data cluster) and its header.
func seedBitmaps(t *testing.T) ([]byte, *format.Header) {
	t.Helper()
	b := loadImage(t, "bitmap")
	h, err := format.ParseHeader(b)
	if err != nil {
		t.Fatal(err)
	}
	if !h.BitmapsConsistent() {
		t.Fatal("seed image has no consistent bitmaps")
	}
	return b, h
}

// TestBitmapClustersHostile: damaged directories, tables and extension
// fields are *FormatError values of the right class, never panics or a
// cluster list.
func TestBitmapClustersHostile(t *testing.T) {
	b, h := seedBitmaps(t)
	dir := int64(h.Bitmaps.DirectoryOffset)
	table := int64(binary.BigEndian.Uint64(b[dir:]))
	cs := uint64(h.ClusterSize())
	put64 := func(off int64, v uint64) func([]byte) {
		return func(c []byte) { binary.BigEndian.PutUint64(c[off:], v) }
	}
	put32 := func(off int64, v uint32) func([]byte) {
		return func(c []byte) { binary.BigEndian.PutUint32(c[off:], v) }
	}
	cases := []struct {
		name string
		img  func([]byte)
		ext  func(*format.BitmapsExtension)
		want error
	}{
		{"zero bitmaps", nil, func(e *format.BitmapsExtension) { e.Count = 0 }, format.ErrCorrupt},
		{"too many bitmaps", nil, func(e *format.BitmapsExtension) { e.Count = format.MaxBitmaps + 1 }, format.ErrLimit},
		{"reserved", nil, func(e *format.BitmapsExtension) { e.Reserved = 1 }, format.ErrCorrupt},
		{"huge directory", nil, func(e *format.BitmapsExtension) { e.DirectorySize = 1 << 40 }, format.ErrLimit},
		{"directory too small", nil, func(e *format.BitmapsExtension) { e.DirectorySize = 16 }, format.ErrCorrupt},
		{"directory size mismatch", nil, func(e *format.BitmapsExtension) { e.DirectorySize += 8 }, format.ErrCorrupt},
		{"directory unaligned", nil, func(e *format.BitmapsExtension) { e.DirectoryOffset += 512 }, format.ErrCorrupt},
		{"directory in header cluster", nil, func(e *format.BitmapsExtension) { e.DirectoryOffset = 0 }, format.ErrCorrupt},
		{"directory past EOF", nil, func(e *format.BitmapsExtension) { e.DirectoryOffset = 1 << 40 }, format.ErrRange},
		{"second bitmap missing", nil, func(e *format.BitmapsExtension) { e.Count = 2 }, format.ErrCorrupt},
		{"table unaligned", put64(dir, uint64(table)+8), nil, format.ErrCorrupt},
		{"table past EOF", put64(dir, 1<<40), nil, format.ErrRange},
		{"table size zero", put32(dir+8, 0), nil, format.ErrLimit},
		{"table size mismatch", put32(dir+8, 2), nil, format.ErrCorrupt},
		{"table size huge", put32(dir+8, 1<<31), nil, format.ErrLimit},
		{"reserved flags", put32(dir+12, 1<<7), nil, format.ErrCorrupt},
		{"unknown type", func(c []byte) { c[dir+16] = 2 }, nil, format.ErrUnsupported},
		{"granularity", func(c []byte) { c[dir+17] = 40 }, nil, format.ErrCorrupt},
		{"empty name", func(c []byte) { c[dir+18], c[dir+19] = 0, 0 }, nil, format.ErrCorrupt},
		{"extra data past directory", put32(dir+20, 1<<20), nil, format.ErrCorrupt},
		{"entry reserved bits", put64(table, 1<<60), nil, format.ErrCorrupt},
		{"entry offset and all-ones", func(c []byte) { c[table+7] |= 1 }, nil, format.ErrCorrupt},
		{"entry unaligned", put64(table, cs+512), nil, format.ErrCorrupt},
		{"entry in header cluster", put64(table, 512), nil, format.ErrCorrupt},
		{"entry past EOF", put64(table, 1<<50), nil, format.ErrRange},
		{"entry is the directory", put64(table, uint64(dir)), nil, format.ErrCorrupt},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			// One zero cluster more, so the directory can grow in place.
			img := append(append([]byte(nil), b...), make([]byte, cs)...)
			if c.img != nil {
				c.img(img)
			}
			hh := *h
			ext := *h.Bitmaps
			hh.Bitmaps = &ext
			if c.ext != nil {
				c.ext(&ext)
			}
			owned, err := format.BitmapClusters(bytes.NewReader(img), &hh, int64(len(img)))
			var fe *format.FormatError
			if !errors.As(err, &fe) || !errors.Is(err, c.want) {
				t.Fatalf("BitmapClusters = %v, %v; want a *FormatError wrapping %v", owned, err, c.want)
			}
		})
	}
	// An all-ones entry (bit 0, no offset) owns no cluster.
	img := append([]byte(nil), b...)
	binary.BigEndian.PutUint64(img[table:], 1)
	owned, err := format.BitmapClusters(bytes.NewReader(img), h, int64(len(img)))
	if err != nil || len(owned) != 2 {
		t.Fatalf("all-ones entry: %v, %v; want the directory and table clusters", owned, err)
	}
}

// FuzzBitmapDirectory: for any file, BitmapClusters either fails with a
// *FormatError or returns sorted, distinct, cluster-aligned offsets inside
// the file and outside the header cluster. The seed corpus
// (testdata/fuzz/FuzzBitmapDirectory) holds a qemu-img image with 512-byte
// clusters, a bitmap and a data cluster.
func FuzzBitmapDirectory(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := format.ParseHeader(data)
		if err != nil || h.Bitmaps == nil {
			return
		}
		owned, err := format.BitmapClusters(bytes.NewReader(data), h, int64(len(data)))
		if err != nil {
			var fe *format.FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("error %v is not a *FormatError", err)
			}
			return
		}
		cs := h.ClusterSize()
		if int64(len(owned)) > int64(len(data))/cs {
			t.Fatalf("%d clusters in a %d-byte file", len(owned), len(data))
		}
		for i, c := range owned {
			if c < cs || c%cs != 0 || c >= int64(len(data)) || (i > 0 && c <= owned[i-1]) {
				t.Fatalf("cluster %d = %#x in %v", i, c, owned)
			}
		}
	})
}
