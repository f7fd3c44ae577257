package format_test

import (
	"errors"
	"testing"

	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// featureTable replaces the header extensions of a testdata v3 first
// cluster with one feature name table holding data, then the end marker.
func featureTable(t *testing.T, data []byte) []byte {
	t.Helper()
	b := firstCluster(t, "v3")
	if hl := int(b[100])<<24 | int(b[101])<<16 | int(b[102])<<8 | int(b[103]); hl != 112 {
		t.Fatalf("header length %d", hl)
	}
	clear(b[112:])
	put32(b, 112, format.ExtFeatureTable)
	put32(b, 116, uint32(len(data)))
	copy(b[120:], data)
	return b
}

func entry(typ, bit byte, name string) []byte {
	e := make([]byte, 48)
	e[0], e[1] = typ, bit
	copy(e[2:], name)
	return e
}

// TestQcow2UnknownFeaturesQEMUText: the unknown incompatible bits are
// listed as qemu-img 7.2 lists them (iotest 036): the table's names in
// table order up to the first unnamed entry, a short last entry read as
// zero padded, then the bits left as one hex mask.
func TestQcow2UnknownFeaturesQEMUText(t *testing.T) {
	cat := func(es ...[]byte) (b []byte) {
		for _, e := range es {
			b = append(b, e...)
		}
		return b
	}
	cases := []struct {
		bits  uint64
		table []byte
		want  string
	}{
		{1 << 63, nil, "Unknown incompatible feature: 8000000000000000"},
		// A 14-byte table: one partial entry, still a name.
		{1 << 63, []byte("\x00\x3fTest feature"), "Test feature"},
		{7 << 61, []byte("\x00\x3dTest feature"), "Test feature, Unknown incompatible feature: c000000000000000"},
		{7 << 61, cat(entry(0, 61, "test1"), entry(0, 62, "test2")), "test1, test2, Unknown incompatible feature: 8000000000000000"},
		// Other types and bits not set are skipped.
		{7 << 61, cat(entry(1, 61, "test1"), entry(0, 62, "test2"), entry(2, 63, "test3"), entry(0, 60, "test4")),
			"test2, Unknown incompatible feature: a000000000000000"},
		// The walk stops at an entry without a name.
		{7 << 61, cat(entry(0, 61, "a"), entry(0, 1, ""), entry(0, 62, "b")), "a, Unknown incompatible feature: c000000000000000"},
	}
	for i, c := range cases {
		b := firstCluster(t, "v3")
		if c.table != nil {
			b = featureTable(t, c.table)
		}
		put64(b, 72, c.bits)
		_, err := format.ParseHeader(b)
		var fe *format.FeatureError
		if !errors.As(err, &fe) || !errors.Is(err, format.ErrUnsupported) {
			t.Fatalf("case %d: got %v", i, err)
		}
		var plain *format.FormatError
		if !errors.As(err, &plain) || plain.Field != "incompatible_features" {
			t.Fatalf("case %d: not a FormatError: %v", i, err)
		}
		if got := fe.QEMUText(); got != c.want {
			t.Errorf("case %d: %q, want %q", i, got, c.want)
		}
	}
}

// TestQcow2SecondBackingFormatWins: a second backing format extension
// replaces the first, as QEMU reads it (iotest 114); other known
// extensions twice stay refused.
func TestQcow2SecondBackingFormatWins(t *testing.T) {
	ext := func(magic uint32, data string) []byte {
		b := make([]byte, 8, 8+len(data)+7)
		put32(b, 0, magic)
		put32(b, 4, uint32(len(data)))
		b = append(b, data...)
		for len(b)%8 != 0 {
			b = append(b, 0)
		}
		return b
	}
	b := firstCluster(t, "v3")
	clear(b[112:])
	copy(b[112:], append(ext(format.ExtBackingFormat, "qcow2"), ext(format.ExtBackingFormat, "foo")...))
	h, err := format.ParseHeader(b)
	if err != nil {
		t.Fatalf("two backing format extensions: %v", err)
	}
	if h.BackingFormat != "foo" {
		t.Fatalf("backing format %q; want the second, foo", h.BackingFormat)
	}
	clear(b[112:])
	copy(b[112:], append(ext(format.ExtDataFile, "a"), ext(format.ExtDataFile, "b")...))
	if _, err := format.ParseHeader(b); !errors.Is(err, format.ErrCorrupt) {
		t.Fatalf("data file extension twice: %v", err)
	}
}
