package format_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// dirHeader is a 1 GiB, 64 KiB-cluster header whose bitmaps extension
// describes a directory of n bytes with count entries at 0x100000.
func dirHeader(count uint32, n int) *format.Header {
	return &format.Header{
		Version: 3, ClusterBits: 16, Size: 1 << 30, AutoclearFeatures: format.AutoclearBitmaps,
		Bitmaps: &format.BitmapsExtension{Count: count, DirectorySize: uint64(n), DirectoryOffset: 0x100000},
	}
}

const dirFileSize = 64 << 20

func twoEntries() []format.BitmapEntry {
	return []format.BitmapEntry{
		{Name: "a", Flags: format.BitmapAuto, GranularityBits: 16, TableOffset: 0x200000, TableSize: 1},
		{Name: "second", Flags: format.BitmapInUse, GranularityBits: 9, TableOffset: 0x300000, TableSize: 4},
	}
}

// TestBitmapDirectoryRoundTrip: encoding then parsing gives the entries
// back, flags and all.
func TestBitmapDirectoryRoundTrip(t *testing.T) {
	ents := twoEntries()
	ents[1].ExtraData = []byte{1, 2, 3}
	ents[1].Flags |= format.BitmapExtraDataCompatible
	dir, err := format.AppendBitmapDirectory(nil, ents)
	if err != nil {
		t.Fatal(err)
	}
	if len(dir)%8 != 0 || uint64(len(dir)) != format.BitmapDirectoryEntrySize(&ents[0])+format.BitmapDirectoryEntrySize(&ents[1]) {
		t.Fatalf("directory of %d bytes", len(dir))
	}
	got, err := format.ParseBitmapDirectory(dir, dirHeader(2, len(dir)), dirFileSize)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Name != "a" || !got[0].Auto() || got[0].InUse() || got[1].Name != "second" ||
		!got[1].InUse() || got[1].Granularity() != 512 || !bytes.Equal(got[1].ExtraData, []byte{1, 2, 3}) || !got[1].Usable() == false {
		t.Fatalf("parsed %+v", got)
	}
	if got[1].Usable() || !got[0].Usable() {
		t.Fatal("in-use entry usable, or clean entry not")
	}
	if f := got[1].FlagNames(); len(f) != 1 || f[0] != "in-use" {
		t.Fatalf("flag names %v", f)
	}
}

// TestBitmapDirectoryHostile: each damaged directory is refused with a
// *FormatError of the right class that names what is wrong.
func TestBitmapDirectoryHostile(t *testing.T) {
	be := binary.BigEndian
	enc := func(e []format.BitmapEntry) []byte {
		d, err := format.AppendBitmapDirectory(nil, e)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	base := enc(twoEntries())
	e0 := uint64(24 + 8) // "a" padded: entry 1 starts at 32
	cases := []struct {
		name   string
		mod    func(d []byte) []byte
		count  uint32
		want   error
		reason string
	}{
		{"duplicate names", func(d []byte) []byte {
			e := twoEntries()
			e[1].Name = "a"
			e[1].TableSize = 1
			raw := enc(e[:1])
			raw2 := append([]byte(nil), raw...)
			be.PutUint64(raw2[0:], 0x300000)
			return append(raw, raw2...)
		}, 2, format.ErrCorrupt, "duplicate"},
		{"tables overlap", func(d []byte) []byte { be.PutUint64(d[e0:], 0x200000); return d }, 2, format.ErrCorrupt, "overlap"},
		{"table is the directory", func(d []byte) []byte { be.PutUint64(d[0:], 0x100000); return d }, 2, format.ErrCorrupt, "overlap"},
		{"padding not zero", func(d []byte) []byte { d[27] = 'x'; return d }, 2, format.ErrCorrupt, "padding"},
		{"name size zero", func(d []byte) []byte { be.PutUint16(d[18:], 0); return d }, 2, format.ErrCorrupt, "name size"},
		{"name size over 1023", func(d []byte) []byte { be.PutUint16(d[18:], 1024); return d }, 2, format.ErrCorrupt, "name size"},
		{"extra data huge", func(d []byte) []byte { be.PutUint32(d[20:], 1<<30); return d }, 2, format.ErrLimit, "extra data"},
		{"table size vs disk", func(d []byte) []byte { be.PutUint32(d[8:], 2); return d }, 2, format.ErrCorrupt, "disk size"},
		{"granularity too small", func(d []byte) []byte { d[17] = 8; return d }, 2, format.ErrCorrupt, "granularity"},
		{"granularity too big", func(d []byte) []byte { d[17] = 32; return d }, 2, format.ErrCorrupt, "granularity"},
		{"reserved flag", func(d []byte) []byte { d[15] |= 8; return d }, 2, format.ErrCorrupt, "reserved"},
		{"type", func(d []byte) []byte { d[16] = 0; return d }, 2, format.ErrUnsupported, "type"},
		{"table unaligned", func(d []byte) []byte { be.PutUint64(d[0:], 0x200008); return d }, 2, format.ErrCorrupt, "aligned"},
		{"table past EOF", func(d []byte) []byte { be.PutUint64(d[0:], dirFileSize); return d }, 2, format.ErrRange, "end of the file"},
		{"more bytes than entries", func(d []byte) []byte { return append(d, make([]byte, 8)...) }, 2, format.ErrCorrupt, "does not match"},
		{"fewer entries than count", func(d []byte) []byte { return d }, 3, format.ErrCorrupt, "too small"},
		{"entry past the directory", func(d []byte) []byte { return d[:56] }, 2, format.ErrCorrupt, "past the end"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := c.mod(append([]byte(nil), base...))
			_, err := format.ParseBitmapDirectory(d, dirHeader(c.count, len(d)), dirFileSize)
			var fe *format.FormatError
			if !errors.As(err, &fe) || !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.reason) {
				t.Fatalf("err = %v; want a *FormatError wrapping %v mentioning %q", err, c.want, c.reason)
			}
		})
	}
	// A bitmap too large for memory: 2^61 bytes at 512-byte granularity.
	h := dirHeader(1, 32)
	h.Size = 1 << 61
	e := []format.BitmapEntry{{Name: "a", GranularityBits: 9, TableOffset: 0x200000, TableSize: 1}}
	if _, err := format.ParseBitmapDirectory(enc(e), h, dirFileSize); !errors.Is(err, format.ErrLimit) {
		t.Fatalf("huge bitmap: %v", err)
	}
	// The encoder refuses what the parser would.
	for _, bad := range [][]format.BitmapEntry{
		nil,
		{{Name: "", GranularityBits: 16, TableSize: 1}},
		{{Name: strings.Repeat("n", 1024), GranularityBits: 16, TableSize: 1}},
		{{Name: "a", GranularityBits: 16, TableSize: 1}, {Name: "a", GranularityBits: 16, TableSize: 1}},
		{{Name: "a", GranularityBits: 40, TableSize: 1}},
		{{Name: "a", GranularityBits: 16, TableSize: 0}},
		{{Name: "a", Flags: 1 << 5, GranularityBits: 16, TableSize: 1}},
	} {
		if _, err := format.AppendBitmapDirectory(nil, bad); err == nil {
			t.Errorf("AppendBitmapDirectory(%+v) succeeded", bad)
		}
	}
}

// TestBitmapTableEntries: all-zeros, all-ones and data entries decode;
// reserved bits, both an offset and bit 0, unaligned and out-of-file
// offsets are refused.
func TestBitmapTableEntries(t *testing.T) {
	const cs, fs = 65536, 1 << 20
	for _, c := range []struct {
		v    uint64
		want format.BitmapTableEntry
		err  error
	}{
		{0, format.BitmapTableEntry{}, nil},
		{1, format.BitmapTableEntry{AllOnes: true}, nil},
		{0x20000, format.BitmapTableEntry{Offset: 0x20000}, nil},
		{0x20001, format.BitmapTableEntry{}, format.ErrCorrupt},
		{1 << 60, format.BitmapTableEntry{}, format.ErrCorrupt},
		{1 << 4, format.BitmapTableEntry{}, format.ErrCorrupt},
		{0x20200, format.BitmapTableEntry{}, format.ErrCorrupt},
		{0x200, format.BitmapTableEntry{}, format.ErrCorrupt},
		{fs, format.BitmapTableEntry{}, format.ErrRange},
	} {
		got, err := format.ParseBitmapTableEntry(c.v, cs, fs)
		if !errors.Is(err, c.err) || (c.err == nil && got != c.want) {
			t.Errorf("entry %#x: %+v, %v; want %+v, %v", c.v, got, err, c.want, c.err)
		}
	}
	if _, err := format.ParseBitmapTable(make([]byte, 7), cs, fs); !errors.Is(err, format.ErrCorrupt) {
		t.Errorf("7-byte table: %v", err)
	}
}

// FuzzBitmapDirectoryParse: ParseBitmapDirectory on any bytes and count
// either fails with a *FormatError or returns entries that encode back to
// exactly the same bytes (when they carry no padding surprises, which the
// parser refuses) with distinct names and tables inside the file.
func FuzzBitmapDirectoryParse(f *testing.F) {
	d, _ := format.AppendBitmapDirectory(nil, twoEntries())
	f.Add(d, uint32(2), uint8(16))
	f.Add(d[:32], uint32(1), uint8(9))
	f.Fuzz(func(t *testing.T, dir []byte, count uint32, cb uint8) {
		if len(dir) > 1<<16 {
			return
		}
		h := dirHeader(count, len(dir))
		h.ClusterBits = uint32(9 + cb%13)
		ents, err := format.ParseBitmapDirectory(dir, h, dirFileSize)
		if err != nil {
			var fe *format.FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("error %v is not a *FormatError", err)
			}
			return
		}
		back, err := format.AppendBitmapDirectory(nil, ents)
		if err != nil || !bytes.Equal(back, dir) {
			t.Fatalf("re-encoding %+v: %v\n%x\n%x", ents, err, back, dir)
		}
		names := map[string]bool{}
		for _, e := range ents {
			if names[e.Name] || e.TableOffset == 0 || e.TableOffset+uint64(e.TableSize)*8 > dirFileSize {
				t.Fatalf("entry %+v", e)
			}
			names[e.Name] = true
		}
	})
}

// FuzzBitmapTable: ParseBitmapTable never panics; entries it accepts are
// zero, all-ones or an aligned offset inside the file.
func FuzzBitmapTable(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, uint8(16))
	f.Fuzz(func(t *testing.T, b []byte, cb uint8) {
		cs := uint64(1) << (9 + cb%13)
		ents, err := format.ParseBitmapTable(b, cs, dirFileSize)
		if err != nil {
			return
		}
		for _, e := range ents {
			if e.Offset != 0 && (e.AllOnes || e.Offset%cs != 0 || e.Offset < cs || e.Offset >= dirFileSize) {
				t.Fatalf("entry %+v", e)
			}
		}
	})
}
