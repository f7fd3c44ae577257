package format_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"reflect"
	"runtime"
	"testing"

	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// allocated returns how many bytes f allocated (process-wide; the fuzz
// worker runs one input at a time, so the figure is this input's).
func allocated(f func()) uint64 {
	var a, b runtime.MemStats
	runtime.ReadMemStats(&a)
	f()
	runtime.ReadMemStats(&b)
	return b.TotalAlloc - a.TotalAlloc
}

// checkError fails unless err is nil, a *FormatError wrapping one of the
// package sentinels, or an I/O error from the reader.
func checkError(t *testing.T, err error) {
	t.Helper()
	if err == nil {
		return
	}
	var fe *format.FormatError
	if errors.As(err, &fe) {
		n := 0
		for _, s := range []error{format.ErrNotQcow2, format.ErrUnsupported, format.ErrCorrupt, format.ErrLimit, format.ErrRange} {
			if errors.Is(err, s) {
				n++
			}
		}
		if n != 1 || fe.Field == "" || fe.Reason == "" {
			t.Fatalf("malformed FormatError %#v", fe)
		}
		return
	}
	t.Fatalf("error outside the package's classes: %v", err)
}

// trimZeros drops trailing zero bytes: ParseHeader reads missing bytes as
// zero, so the trimmed header is equivalent and a smaller seed.
func trimZeros(b []byte) []byte { return bytes.TrimRight(b, "\x00") }

// FuzzQcow2Header: no panic, bounded allocation, and
// parse → encode → parse gives the same header, with the second encoding
// byte-identical to the first.
func FuzzQcow2Header(f *testing.F) {
	for _, name := range testImages {
		b := loadImage(f, name)
		cs, err := format.ParsePrefix(b)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(trimZeros(b[:min(int(cs), len(b))]))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var h *format.Header
		var err error
		if n := allocated(func() { h, err = format.ParseHeader(data) }); n > 8<<20 {
			t.Fatalf("ParseHeader allocated %d bytes", n)
		}
		checkError(t, err)
		if err != nil {
			return
		}
		enc, err := h.MarshalBinary()
		if err != nil {
			// The one legitimate failure: our layout (end marker, then the
			// name) does not fit where the original squeezed it in.
			if !errors.Is(err, format.ErrLimit) {
				t.Fatalf("MarshalBinary of a parsed header: %v", err)
			}
			return
		}
		h2, err := format.ParseHeader(enc)
		if err != nil {
			t.Fatalf("re-parse: %v", err)
		}
		a, b := *h, *h2
		a.BackingFileOffset, a.BackingFileSize, b.BackingFileOffset, b.BackingFileSize = 0, 0, 0, 0
		if !reflect.DeepEqual(a, b) {
			t.Fatalf("parse→encode→parse changed the header\n%+v\n%+v", a, b)
		}
		enc2, err := h2.MarshalBinary()
		if err != nil || !bytes.Equal(enc, enc2) {
			t.Fatalf("second encoding differs: %v", err)
		}
	})
}

// FuzzQcow2Open: ReadImage, mapping a few ranges and reading some guest
// data of a fuzzed image must not panic, must return only the package's
// errors, must keep allocation bounded, and mappings must be well formed.
func FuzzQcow2Open(f *testing.F) {
	for _, name := range testImages {
		b := loadImage(f, name)
		keep := metadataRanges(f, b)
		f.Add(encodeSparse(b, keep), uint8(0))
		f.Add(encodeSparse(b, keep), uint8(1))
	}
	for _, c := range hostileImages {
		orig := loadImage(f, c.Image)
		keep := metadataRanges(f, orig)
		p := c.Patch(&testing.T{}, append([]byte(nil), orig...))
		f.Add(encodeSparse(p, keep), uint8(0))
	}
	f.Fuzz(func(t *testing.T, data []byte, flags uint8) {
		file := decodeSparse(data)
		opts := fuzzOpts
		opts.ReadWrite = flags&1 != 0
		var im *format.Image
		var err error
		n := allocated(func() { im, err = format.ReadImage(file, file.Size, opts) })
		// With 1 MiB caps: the first cluster (2 MiB), L1 and refcount
		// table (read buffer plus decoded copy: 4 MiB), the snapshot table
		// (1 MiB of bytes, strings, and at most 1 MiB/40 entries of ~150
		// bytes: 6 MiB), and the overlap check (offsets: 2 MiB, regions:
		// 2 MiB). 24 MiB leaves slack; the package limits without caps
		// would allow ~200 MiB.
		if budget := uint64(24 << 20); n > budget {
			t.Fatalf("ReadImage allocated %d bytes (budget %d)", n, budget)
		}
		checkError(t, err)
		if err != nil {
			return
		}
		g := &im.Geometry
		size := g.Size
		ranges := [][2]int64{{0, min(size, 256<<10)}, {max(0, size-5000), min(size, 5000)}, {size / 3, min(size-size/3, 70000)}}
		if len(data) >= 8 {
			off := int64(binary.BigEndian.Uint64(data[len(data)-8:])&0x7fffffffffffffff) % max(size, 1)
			ranges = append(ranges, [2]int64{off, min(size-off, 1<<16)})
		}
		dst := make([]format.Extent, 0, 16)
		for _, r := range ranges {
			var exts []format.Extent
			n := allocated(func() { exts, err = im.Map(dst[:0], r[0], r[1]) })
			if cs := uint64(g.ClusterSize()); n > (uint64(r[1])/uint64(g.L1Coverage())+2)*cs+1<<20 {
				t.Fatalf("Map allocated %d bytes", n)
			}
			checkError(t, err)
			if err != nil {
				continue
			}
			checkExtents(t, exts, r[0], r[1])
			for _, x := range exts {
				switch x.Kind {
				case format.ExtentData:
					if x.HostOff < g.ClusterSize() || x.HostOff >= im.FileSize+g.ClusterSize() {
						t.Fatalf("data extent %+v outside the file", x)
					}
				case format.ExtentCompressed:
					if x.Compressed.Size() > 2*g.ClusterSize() || x.GuestOff/g.ClusterSize() != (x.GuestOff+x.Len-1)/g.ClusterSize() {
						t.Fatalf("compressed extent %+v", x)
					}
				}
			}
		}
		buf := make([]byte, min(size, 128<<10))
		_, err = im.ReadAt(buf, 0, nil)
		checkError(t, err)
	})
}

// TestQcow2SparseEncoding checks the fuzz input encoding on a real image:
// the metadata kept by a seed reads back identically, dropped data reads
// as zeros, and the file size is preserved.
func TestQcow2SparseEncoding(t *testing.T) {
	b := loadImage(t, "c2m")
	keep := metadataRanges(t, b)
	enc := encodeSparse(b, keep)
	s := decodeSparse(enc)
	if s.Size != int64(len(b)) {
		t.Fatalf("size %d want %d", s.Size, len(b))
	}
	if len(enc) > 8<<10 {
		t.Errorf("seed for a 2 MiB-cluster image is %d bytes", len(enc))
	}
	got := make([]byte, len(b))
	if _, err := s.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	for _, r := range keep {
		if !bytes.Equal(got[r[0]:min(r[1], int64(len(b)))], b[r[0]:min(r[1], int64(len(b)))]) {
			t.Fatalf("kept range %#x..%#x differs", r[0], r[1])
		}
	}
	im, err := format.ReadImage(s, s.Size, format.Options{ReadWrite: true})
	if err != nil {
		t.Fatal(err)
	}
	ref := openBytes(t, b, format.Options{})
	e1, err1 := im.Map(nil, 0, im.Geometry.Size)
	e2, err2 := ref.Map(nil, 0, ref.Geometry.Size)
	if err1 != nil || err2 != nil || !reflect.DeepEqual(e1, e2) {
		t.Errorf("sparse seed maps differently: %v %v", err1, err2)
	}
}
