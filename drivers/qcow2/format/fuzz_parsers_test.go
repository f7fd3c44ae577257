package format_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"reflect"
	"testing"

	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// The fuzz targets of the parsers that read untrusted bytes and have no
// target of their own above: header and extensions are FuzzQcow2Header,
// the whole metadata FuzzQcow2Open, the bitmap directory
// FuzzBitmapDirectory (bitmaps_test.go).

// fuzzGeometry builds a valid geometry from fuzz bytes.
func fuzzGeometry(cb, flags uint8, fileSize int64) format.Geometry {
	g := format.Geometry{
		ClusterBits:   format.MinClusterBits + uint32(cb)%(format.MaxClusterBits-format.MinClusterBits+1),
		RefcountOrder: uint32(flags>>4) % (format.MaxRefcountOrder + 1),
		Size:          1 << 40,
		FileSize:      max(fileSize, 0),
	}
	g.ExtendedL2 = flags&1 != 0 && g.ClusterBits >= format.MinClusterBitsExtendedL2
	g.ZeroFlag = flags&2 != 0 && !g.ExtendedL2
	return g
}

// FuzzQcow2SnapshotTable: ParseSnapshotTable on any bytes either fails
// with a package error or returns entries that re-encode to a table that
// parses to the same entries; ValidateSnapshot never panics.
func FuzzQcow2SnapshotTable(f *testing.F) {
	b := loadImage(f, "snap")
	im := openBytes(f, b, format.Options{})
	off := im.Header.SnapshotsOffset
	f.Add(b[off:off+uint64(im.SnapshotTableSize)], uint32(len(im.Snapshots)), uint8(16-9), uint8(0x42))
	f.Add([]byte{}, uint32(0), uint8(0), uint8(0))
	f.Fuzz(func(t *testing.T, table []byte, count uint32, cb, flags uint8) {
		count %= 64 // the count is checked against the table's length; keep executions short
		var snaps []format.Snapshot
		var n int64
		var err error
		if a := allocated(func() { snaps, n, err = format.ParseSnapshotTable(table, count, 1<<20) }); a > 64*uint64(len(table))+1<<16 {
			t.Fatalf("ParseSnapshotTable allocated %d bytes for a %d-byte table", a, len(table))
		}
		checkError(t, err)
		if err != nil {
			return
		}
		if n < 0 || n > int64(len(table)) || len(snaps) != int(count) {
			t.Fatalf("%d snapshots in %d bytes, want %d in at most %d", len(snaps), n, count, len(table))
		}
		g := fuzzGeometry(cb, flags, int64(len(table))<<10)
		for i := range snaps {
			checkError(t, format.ValidateSnapshot(&snaps[i], i, &g, format.MaxL1Bytes))
		}
		enc, err := format.AppendSnapshotTable(nil, snaps)
		if err != nil {
			checkError(t, err)
			return
		}
		again, n2, err := format.ParseSnapshotTable(enc, count, 1<<20)
		if err != nil || n2 != int64(len(enc)) || !reflect.DeepEqual(snaps, again) {
			t.Fatalf("re-encoded table parses to %+v (%d bytes), %v; want %+v", again, n2, err, snaps)
		}
	})
}

// FuzzQcow2Entries: the L1, L2, compressed and refcount table entry
// decoders never panic, fail only with package errors, re-encode what
// they accept to the same word, and agree with the read path's fast
// one-cluster mapping.
func FuzzQcow2Entries(f *testing.F) {
	f.Add(uint64(format.EntryCopied|0x50000), uint64(0), uint8(16-9), uint8(2), int64(1<<20))
	f.Add(uint64(format.EntryCompressed|0x50200), uint64(0), uint8(16-9), uint8(2), int64(1<<20))
	f.Add(uint64(0x50000|1), uint64(3), uint8(16-9), uint8(1), int64(0))
	f.Add(uint64(1<<57|0x50000), uint64(1<<33|1), uint8(21-9), uint8(3), int64(1<<30))
	f.Fuzz(func(t *testing.T, e, bitmap uint64, cb, flags uint8, fileSize int64) {
		g := fuzzGeometry(cb, flags, fileSize)
		l2Off, copied, err := g.DecodeL1Entry(e)
		checkError(t, err)
		if err == nil && l2Off != 0 {
			if w, err := g.EncodeL1Entry(l2Off, copied); err != nil || w != e {
				t.Fatalf("L1 %#x decodes to %#x %t, encodes to %#x %v", e, l2Off, copied, w, err)
			}
		}
		// The fast mapping serves standard L2 images only.
		fast, ok := g.OneClusterL2([]uint64{e}, 0, 512)
		if !g.ExtendedL2 && ok != (err == nil && l2Off != 0) || ok && fast != l2Off {
			t.Fatalf("L1 %#x: fast mapping %#x %t, DecodeL1Entry %#x %v", e, fast, ok, l2Off, err)
		}

		le, err := g.DecodeL2Entry(e, bitmap)
		checkError(t, err)
		if err == nil {
			var w uint64
			var werr error
			switch le.Type {
			case format.Compressed:
				w, werr = g.EncodeCompressed(le.Compressed.HostOff, le.Compressed.Size())
			case format.Normal, format.ZeroAlloc, format.ZeroPlain:
				w, werr = g.EncodeL2Entry(le.Type, le.HostOff, le.Copied)
			default:
				w = e // unallocated: COPIED reads as clear whatever it was
			}
			if g.ExtendedL2 && le.Type != format.Compressed && le.Type != format.Unallocated {
				w |= e & format.EntryZero // ignored with extended L2 (extl2.go), so not encoded
			}
			if werr != nil || w != e {
				t.Fatalf("L2 %#x decodes to %+v, encodes to %#x %v", e, le, w, werr)
			}
			for sc := 0; sc < format.Subclusters; sc++ {
				g.SubclusterType(le, sc)
			}
		}
		if !g.ExtendedL2 {
			cs := g.ClusterSize()
			table := make([]byte, cs)
			binary.BigEndian.PutUint64(table, e)
			host, ok := g.DataHost(table, 100)
			if ok != (err == nil && le.Type == format.Normal) || ok && host != le.HostOff+100 {
				t.Fatalf("L2 %#x: fast mapping %#x %t, DecodeL2Entry %+v %v", e, host, ok, le, err)
			}
		}

		if rb, err := g.DecodeRefcountTableEntry(e); err == nil {
			if rb < 0 || rb%g.ClusterSize() != 0 {
				t.Fatalf("refcount table entry %#x decodes to %#x", e, rb)
			}
		} else {
			checkError(t, err)
		}
	})
}

// FuzzQcow2Refcounts: RefcountGet and RefcountSet on any block, order and
// index never panic or touch bytes outside the entry they name; a value
// that fits is read back.
func FuzzQcow2Refcounts(f *testing.F) {
	f.Add(make([]byte, 512), uint8(4), int64(3), uint64(1))
	f.Add([]byte{0xff, 0x0f}, uint8(0), int64(9), uint64(1))
	f.Add(make([]byte, 64), uint8(6), int64(7), uint64(1<<63))
	f.Fuzz(func(t *testing.T, block []byte, order uint8, i int64, v uint64) {
		o := uint32(order % 8) // 7 is out of range: must be an error
		before := append([]byte(nil), block...)
		_, gerr := format.RefcountGet(block, o, i)
		err := format.RefcountSet(block, o, i, v)
		if err != nil {
			checkError(t, err)
			if !bytes.Equal(before, block) {
				t.Fatalf("failed RefcountSet(order %d, %d, %d) changed the block", o, i, v)
			}
			return
		}
		if gerr != nil {
			t.Fatalf("RefcountSet(order %d, %d) worked where RefcountGet failed: %v", o, i, gerr)
		}
		if got, err := format.RefcountGet(block, o, i); err != nil || got != v {
			t.Fatalf("order %d entry %d: set %d, got %d %v", o, i, v, got, err)
		}
		// Every other entry is unchanged.
		bits := int64(1) << o
		for j := int64(0); j < int64(len(block))*8/bits; j++ {
			if j == i {
				continue
			}
			a, err1 := format.RefcountGet(before, o, j)
			b, err2 := format.RefcountGet(block, o, j)
			if err1 != nil || err2 != nil || a != b {
				t.Fatalf("order %d: setting entry %d changed entry %d from %d to %d", o, i, j, a, b)
			}
		}
	})
}

// FuzzQcow2Decompress: DecompressCluster on any bytes fills the cluster
// or fails as corrupt or unsupported, with bounded allocation.
func FuzzQcow2Decompress(f *testing.F) {
	f.Add([]byte{0x03, 0x00}, uint8(format.CompressionZlib), uint8(12-9))
	f.Add([]byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x58, 0x01, 0x00, 0x00}, uint8(format.CompressionZstd), uint8(12-9))
	f.Fuzz(func(t *testing.T, src []byte, typ, cb uint8) {
		cs := 1 << (9 + cb%4) // up to 4 KiB clusters: keeps executions short
		dst := make([]byte, cs)
		var err error
		if a := allocated(func() { err = format.DecompressCluster(dst, src, typ%3) }); a > 8<<20 {
			t.Fatalf("DecompressCluster allocated %d bytes", a)
		}
		if err != nil && !errors.Is(err, format.ErrCorrupt) && !errors.Is(err, format.ErrUnsupported) {
			t.Fatalf("DecompressCluster: %v", err)
		}
	})
}

// FuzzQcow2ParseOptions: any -o list parses or fails with an
// *OptionError; never both help and an error.
func FuzzQcow2ParseOptions(f *testing.F) {
	for _, s := range []string{"cluster_size=4k,compat=0.10", "lazy_refcounts,nofoo", "help", "backing_file=a,,b,backing_fmt=raw", "size=0.5M", ","} {
		f.Add(s, uint8(0))
	}
	f.Fuzz(func(t *testing.T, list string, use uint8) {
		o, help, err := format.ParseOptions([]string{list}, format.OptionUse(use%3))
		var oe *format.OptionError
		switch {
		case help && (err != nil || o != nil):
			t.Fatalf("%q: help with %v, %v", list, o, err)
		case err != nil && !errors.As(err, &oe):
			t.Fatalf("%q: %v is not an *OptionError", list, err)
		case err == nil && !help && o == nil:
			t.Fatalf("%q: no options and no error", list)
		}
	})
}
