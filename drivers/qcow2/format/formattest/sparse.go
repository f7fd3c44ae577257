package formattest

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"sort"
	"testing"

	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// SparseFile is an io.ReaderAt over a few byte chunks in a file that is
// otherwise zeros, so fuzz inputs can describe images with 2 MiB clusters
// or far-away tables in a few hundred bytes.
type SparseFile struct {
	Chunks []SparseChunk // sorted by Off, not overlapping
	Size   int64
}

type SparseChunk struct {
	Off  int64
	Data []byte
}

// DecodeSparse reads records {u32 zero bytes to skip, u16 length, data}.
// The file ends after the last record; a truncated record ends the input.
func DecodeSparse(in []byte) *SparseFile {
	s := &SparseFile{}
	for len(in) >= 6 {
		skip, n := int64(binary.BigEndian.Uint32(in)), int(binary.BigEndian.Uint16(in[4:]))
		in = in[6:]
		n = min(n, len(in))
		s.Size += skip
		if n > 0 {
			s.Chunks = append(s.Chunks, SparseChunk{s.Size, in[:n]})
		}
		s.Size += int64(n)
		in = in[n:]
	}
	return s
}

// EncodeSparse is the inverse: it keeps the bytes of b inside keep (sorted,
// merged ranges) and describes everything else as zeros.
func EncodeSparse(b []byte, keep [][2]int64) []byte {
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

func (s *SparseFile) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("negative offset")
	}
	if off >= s.Size {
		return 0, io.EOF
	}
	n := len(p)
	if int64(n) > s.Size-off {
		n = int(s.Size - off)
	}
	clear(p[:n])
	i := sort.Search(len(s.Chunks), func(i int) bool { return s.Chunks[i].Off+int64(len(s.Chunks[i].Data)) > off })
	for ; i < len(s.Chunks) && s.Chunks[i].Off < off+int64(n); i++ {
		c := s.Chunks[i]
		lo := max(c.Off, off)
		hi := min(c.Off+int64(len(c.Data)), off+int64(n))
		copy(p[lo-off:hi-off], c.Data[lo-c.Off:hi-c.Off])
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// MetadataRanges returns the host ranges of an image's metadata and
// compressed data: what a seed needs to keep. Data clusters are dropped
// (they read as zeros in the seed), which keeps seeds small.
func MetadataRanges(t testing.TB, b []byte) [][2]int64 {
	im, err := format.ReadImage(bytes.NewReader(b), int64(len(b)), format.Options{})
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
		if e&format.OffsetMask != 0 {
			add(int64(e&format.OffsetMask), cs)
		}
	}
	exts, err := im.Map(nil, 0, im.Geometry.Size)
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range exts {
		if x.Kind == format.ExtentCompressed {
			add(x.Compressed.HostOff, x.Compressed.Size())
		}
	}
	sort.Slice(r, func(i, j int) bool { return r[i][0] < r[j][0] })
	return r
}

// FuzzOpts are the caps FuzzQcow2Open runs with: the package limits are
// tested by the catalogue; here they keep each execution small.
var FuzzOpts = format.Options{MaxL1Bytes: 1 << 20, MaxRefcountTableBytes: 1 << 20, MaxSnapshotTableBytes: 1 << 20}
