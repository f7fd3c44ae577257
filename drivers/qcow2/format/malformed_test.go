package format_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// TestQcow2MalformedCatalogue opens each hostile image and checks the
// specific error: sentinel and the field it names.
func TestQcow2MalformedCatalogue(t *testing.T) {
	for _, c := range hostileImages {
		t.Run(c.Name, func(t *testing.T) {
			orig := loadImage(t, c.Image)
			if _, err := format.ReadImage(bytes.NewReader(orig), int64(len(orig)), format.Options{ReadWrite: c.RW}); err != nil {
				t.Fatalf("unpatched %s: %v", c.Image, err)
			}
			b := c.Patch(t, append([]byte(nil), orig...))
			im, err := format.ReadImage(bytes.NewReader(b), int64(len(b)), format.Options{ReadWrite: c.RW})
			if c.Err == nil {
				if err != nil {
					t.Fatalf("want open, got %v", err)
				}
				// It opened: mapping the whole disk must not panic, and
				// must either work or report a format error.
				if _, err := im.Map(nil, 0, im.Geometry.Size); err != nil {
					var fe *format.FormatError
					if !errors.As(err, &fe) {
						t.Errorf("Map: %v", err)
					}
				}
				return
			}
			var fe *format.FormatError
			if !errors.Is(err, c.Err) || !errors.As(err, &fe) || !fieldIs(fe.Field, c.Field) {
				t.Fatalf("got %v, want %v naming %q", err, c.Err, c.Field)
			}
			t.Log(err)
		})
	}
}

// TestQcow2MalformedL2 covers the catalogue rows that only show when an L2
// table is read: ReadImage succeeds (open is O(L1), not O(L2)), and Map,
// Lookup and ReadAt report the damaged entry.
func TestQcow2MalformedL2(t *testing.T) {
	cases := []struct {
		name  string
		image string
		patch func(*testing.T, []byte) []byte
		off   int64 // guest offset to map
		err   error
	}{
		{"L2 entry unaligned", "base64m", at64(0x40000, format.EntryCopied|0x50200), 0, format.ErrCorrupt},
		{"L2 entry reserved bit 1", "base64m", at64(0x40000, format.EntryCopied|0x50002), 0, format.ErrCorrupt},
		{"L2 entry reserved bit 57", "base64m", at64(0x40000, format.EntryCopied|1<<57|0x50000), 0, format.ErrCorrupt},
		{"L2 entry past EOF", "base64m", at64(0x40008, format.EntryCopied|0x10000000000), 65536, format.ErrCorrupt},
		{"compressed with COPIED", "base64m", at64(0x40000, format.EntryCopied|format.EntryCompressed|0x50000), 0, format.ErrCorrupt},
		{"compressed past EOF", "base64m", at64(0x40000, format.EntryCompressed|0x100000000), 0, format.ErrCorrupt},
		{"compressed in header", "base64m", at64(0x40000, format.EntryCompressed|0x10), 0, format.ErrCorrupt},
		{"zero flag in v2", "v2", func(t *testing.T, b []byte) []byte { return patchL2(t, b, 0, func(e uint64) uint64 { return e | 1 }) }, 0, format.ErrCorrupt},
		{"ext L2 alloc and zero", "ext", func(t *testing.T, b []byte) []byte {
			return patchL2(t, b, 0, func(e uint64) uint64 { return e }, func(bm uint64) uint64 { return bm | bm<<32 })
		}, 0, format.ErrCorrupt},
		{"ext L2 alloc without offset", "ext", func(t *testing.T, b []byte) []byte {
			return patchL2(t, b, 65536, func(uint64) uint64 { return 0 }, func(uint64) uint64 { return 1 })
		}, 65536, format.ErrCorrupt},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := c.patch(t, loadImage(t, c.image))
			im := openBytes(t, b, format.Options{})
			if _, err := im.Map(nil, c.off, 512); !errors.Is(err, c.err) {
				t.Errorf("Map: %v, want %v", err, c.err)
			}
			if _, err := im.Lookup(c.off); !errors.Is(err, c.err) {
				t.Errorf("Lookup: %v, want %v", err, c.err)
			}
			if _, err := im.ReadAt(make([]byte, 512), c.off, nil); !errors.Is(err, c.err) {
				t.Errorf("ReadAt: %v, want %v", err, c.err)
			}
		})
	}

	// A valid descriptor pointing at bytes that are not a deflate stream:
	// the data read fails as corrupt, the mapping itself is fine.
	b := at64(0x40000, format.EntryCompressed|0x50000)(t, loadImage(t, "base64m"))
	im := openBytes(t, b, format.Options{})
	if _, err := im.Map(nil, 0, 65536); err != nil {
		t.Fatalf("Map: %v", err)
	}
	if _, err := im.ReadAt(make([]byte, 4096), 0, nil); !errors.Is(err, format.ErrCorrupt) {
		t.Errorf("garbage compressed data: %v, want ErrCorrupt", err)
	}
}

// patchL2 rewrites the L2 entry (and, with extended L2, the bitmap) of the
// guest cluster at off, found through the image's own metadata.
func patchL2(t *testing.T, b []byte, off int64, entry func(uint64) uint64, bitmap ...func(uint64) uint64) []byte {
	t.Helper()
	im := openBytes(t, b, format.Options{})
	g := &im.Geometry
	l1i, l2i, _ := g.Split(off)
	l2Off := int64(im.L1[l1i] & format.OffsetMask)
	if l2Off == 0 {
		t.Fatalf("guest offset %#x has no L2 table", off)
	}
	p := l2Off + l2i*g.L2EntrySize()
	binary.BigEndian.PutUint64(b[p:], entry(binary.BigEndian.Uint64(b[p:])))
	if len(bitmap) > 0 {
		binary.BigEndian.PutUint64(b[p+8:], bitmap[0](binary.BigEndian.Uint64(b[p+8:])))
	}
	return b
}
