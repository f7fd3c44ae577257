package qcow2

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"reflect"
	"runtime"
	"sort"
	"testing"
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
	var fe *FormatError
	if errors.As(err, &fe) {
		n := 0
		for _, s := range []error{ErrNotQcow2, ErrUnsupported, ErrCorrupt, ErrLimit, ErrRange} {
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
		cs, err := ParsePrefix(b)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(trimZeros(b[:min(int(cs), len(b))]))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var h *Header
		var err error
		if n := allocated(func() { h, err = ParseHeader(data) }); n > 8<<20 {
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
			if !errors.Is(err, ErrLimit) {
				t.Fatalf("MarshalBinary of a parsed header: %v", err)
			}
			return
		}
		h2, err := ParseHeader(enc)
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

// sparseFile is an io.ReaderAt over a few byte chunks in a file that is
// otherwise zeros, so fuzz inputs can describe images with 2 MiB clusters
// or far-away tables in a few hundred bytes.
type sparseFile struct {
	chunks []sparseChunk // sorted by off, not overlapping
	size   int64
}

type sparseChunk struct {
	off  int64
	data []byte
}

// decodeSparse reads records {u32 zero bytes to skip, u16 length, data}.
// The file ends after the last record; a truncated record ends the input.
func decodeSparse(in []byte) *sparseFile {
	s := &sparseFile{}
	for len(in) >= 6 {
		skip, n := int64(binary.BigEndian.Uint32(in)), int(binary.BigEndian.Uint16(in[4:]))
		in = in[6:]
		n = min(n, len(in))
		s.size += skip
		if n > 0 {
			s.chunks = append(s.chunks, sparseChunk{s.size, in[:n]})
		}
		s.size += int64(n)
		in = in[n:]
	}
	return s
}

// encodeSparse is the inverse: it keeps the bytes of b inside keep (sorted,
// merged ranges) and describes everything else as zeros.
func encodeSparse(b []byte, keep [][2]int64) []byte {
	var out []byte
	var pos int64
	rec := func(skip int64, data []byte) {
		for skip > 0xffffffff {
			out = binary.BigEndian.AppendUint32(out, 0xffffffff)
			out = binary.BigEndian.AppendUint16(out, 0)
			skip -= 0xffffffff
		}
		out = binary.BigEndian.AppendUint32(out, uint32(skip))
		out = binary.BigEndian.AppendUint16(out, uint16(len(data)))
		out = append(out, data...)
	}
	for _, r := range keep {
		start, end := max(r[0], pos), min(r[1], int64(len(b)))
		for start < end {
			// Skip zero runs inside kept ranges too.
			for start < end && b[start] == 0 {
				start++
			}
			stop := start
			for stop < end && stop-start < 0xffff && !(b[stop] == 0 && stop+8 <= end && bytes.Count(b[stop:stop+8], []byte{0}) == 8) {
				stop++
			}
			if stop > start {
				rec(start-pos, b[start:stop])
				pos = stop
			}
			start = stop
		}
	}
	rec(int64(len(b))-pos, nil) // the file size
	return out
}

func (s *sparseFile) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("negative offset")
	}
	if off >= s.size {
		return 0, io.EOF
	}
	n := len(p)
	if int64(n) > s.size-off {
		n = int(s.size - off)
	}
	clear(p[:n])
	i := sort.Search(len(s.chunks), func(i int) bool { return s.chunks[i].off+int64(len(s.chunks[i].data)) > off })
	for ; i < len(s.chunks) && s.chunks[i].off < off+int64(n); i++ {
		c := s.chunks[i]
		lo := max(c.off, off)
		hi := min(c.off+int64(len(c.data)), off+int64(n))
		copy(p[lo-off:hi-off], c.data[lo-c.off:hi-c.off])
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// metadataRanges returns the host ranges of an image's metadata and
// compressed data: what a seed needs to keep. Data clusters are dropped
// (they read as zeros in the seed), which keeps seeds small.
func metadataRanges(t testing.TB, b []byte) [][2]int64 {
	im, err := ReadImage(bytes.NewReader(b), int64(len(b)), Options{})
	if err != nil {
		t.Fatal(err)
	}
	h, cs := im.Header, im.Geometry.ClusterSize()
	r := [][2]int64{{0, cs}}
	add := func(off, n int64) {
		if n > 0 {
			r = append(r, [2]int64{off, off + n})
		}
	}
	add(int64(h.L1Offset), int64(h.L1Entries)*8)
	add(int64(h.RefcountTableOffset), int64(h.RefcountTableClusters)*cs)
	add(int64(h.SnapshotsOffset), im.SnapshotTableSize)
	for _, s := range im.Snapshots {
		add(int64(s.L1Offset), int64(s.L1Entries)*8)
	}
	for _, e := range im.RefcountTable {
		if e != 0 {
			add(int64(e), cs)
		}
	}
	for _, e := range im.L1 {
		if e&OffsetMask != 0 {
			add(int64(e&OffsetMask), cs)
		}
	}
	exts, err := im.Map(nil, 0, im.Geometry.Size)
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range exts {
		if x.Kind == ExtentCompressed {
			add(x.Compressed.HostOff, x.Compressed.Size())
		}
	}
	sort.Slice(r, func(i, j int) bool { return r[i][0] < r[j][0] })
	return r
}

// fuzzOpts are the caps FuzzQcow2Open runs with: the package limits are
// tested by the catalogue; here they keep each execution small.
var fuzzOpts = Options{MaxL1Bytes: 1 << 20, MaxRefcountTableBytes: 1 << 20, MaxSnapshotTableBytes: 1 << 20}

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
		orig := loadImage(f, c.image)
		keep := metadataRanges(f, orig)
		p := c.patch(&testing.T{}, append([]byte(nil), orig...))
		f.Add(encodeSparse(p, keep), uint8(0))
	}
	f.Fuzz(func(t *testing.T, data []byte, flags uint8) {
		file := decodeSparse(data)
		opts := fuzzOpts
		opts.ReadWrite = flags&1 != 0
		var im *Image
		var err error
		n := allocated(func() { im, err = ReadImage(file, file.size, opts) })
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
		dst := make([]Extent, 0, 16)
		for _, r := range ranges {
			var exts []Extent
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
				case ExtentData:
					if x.HostOff < g.ClusterSize() || x.HostOff >= im.FileSize+g.ClusterSize() {
						t.Fatalf("data extent %+v outside the file", x)
					}
				case ExtentCompressed:
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
	if s.size != int64(len(b)) {
		t.Fatalf("size %d want %d", s.size, len(b))
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
	im, err := ReadImage(s, s.size, Options{ReadWrite: true})
	if err != nil {
		t.Fatal(err)
	}
	ref := openBytes(t, b, Options{})
	e1, err1 := im.Map(nil, 0, im.Geometry.Size)
	e2, err2 := ref.Map(nil, 0, ref.Geometry.Size)
	if err1 != nil || err2 != nil || !reflect.DeepEqual(e1, e2) {
		t.Errorf("sparse seed maps differently: %v %v", err1, err2)
	}
}
