package format_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// TestCheckDataFileName: plain paths pass, anything QEMU would read as
// an option tree or a protocol is refused (the data file name comes from
// an untrusted image, like a backing name).
func TestCheckDataFileName(t *testing.T) {
	for _, c := range []struct {
		name string
		err  error
	}{
		{"t.qcow2.data", nil},
		{"/srv/images/disk.raw", nil},
		{"../data/disk.raw", nil},
		{"./a:b", nil},
		{"/srv/a:b", nil},
		{"", format.ErrCorrupt},
		{"a\x00b", format.ErrCorrupt},
		{strings.Repeat("a", format.MaxDataFileNameLen+1), format.ErrLimit},
		{`json:{"driver":"file","filename":"/etc/shadow"}`, format.ErrUnsupported},
		{"nbd:evil.example:10809", format.ErrUnsupported},
		{"nbd://evil.example/x", format.ErrUnsupported},
		{"file:/etc/shadow", format.ErrUnsupported},
		{"blkdebug:conf:img", format.ErrUnsupported},
	} {
		err := format.CheckDataFileName(c.name)
		if (c.err == nil) != (err == nil) || c.err != nil && !errors.Is(err, c.err) {
			t.Errorf("%q: %v, want %v", c.name, err, c.err)
		}
	}
}

// TestDataFileOffsetZero: with an external data file, an L2 entry with
// offset 0 and COPIED maps guest data to offset 0 of the data file (QEMU's
// rule); without COPIED, or without a data file, it is unallocated. The
// encoder writes such entries only for data file images.
func TestDataFileOffsetZero(t *testing.T) {
	g := format.Geometry{ClusterBits: 16, ZeroFlag: true, Size: 1 << 30, FileSize: 1 << 20}
	ext := g
	ext.ExternalData = true
	for _, c := range []struct {
		g    format.Geometry
		e    uint64
		want format.ClusterType
	}{
		{ext, format.EntryCopied, format.Normal},
		{ext, 0, format.Unallocated},
		{ext, format.EntryZero | format.EntryCopied, format.ZeroPlain},
		{g, format.EntryCopied, format.Unallocated},
	} {
		le, err := c.g.DecodeL2Entry(c.e, 0)
		if err != nil || le.Type != c.want || le.HostOff != 0 {
			t.Errorf("external %v, entry %#x: %+v %v, want type %v", c.g.ExternalData, c.e, le, err, c.want)
		}
	}
	if e, err := ext.EncodeL2Entry(format.Normal, 0, true); err != nil || e != format.EntryCopied {
		t.Errorf("encode normal at 0 with a data file: %#x %v", e, err)
	}
	if _, err := g.EncodeL2Entry(format.Normal, 0, true); err == nil {
		t.Error("encode normal at 0 without a data file succeeded")
	}
	// Data offsets are in the data file: not checked against the qcow2
	// file's size; compressed clusters cannot exist there.
	if le, err := ext.DecodeL2Entry(format.EntryCopied|1<<29, 0); err != nil || le.Type != format.Normal {
		t.Errorf("data cluster past the qcow2 file's end: %+v %v", le, err)
	}
	if _, err := g.DecodeL2Entry(format.EntryCopied|1<<29, 0); err == nil {
		t.Error("without a data file a cluster past the end must be corrupt")
	}
	if _, err := ext.DecodeL2Entry(format.EntryCompressed|1<<20, 0); !errors.Is(err, format.ErrCorrupt) {
		t.Errorf("compressed entry with a data file: %v, want corrupt", err)
	}
}

// TestDataFileLayout: create options set the bit, the extension and the
// raw flag, with qemu-img's refusals.
func TestDataFileLayout(t *testing.T) {
	h, err := format.Layout(1<<20, format.CreateOptions{DataFile: "d.raw", DataFileRaw: true})
	if err != nil || !h.HasDataFile() || !h.DataFileRaw() || h.DataFile != "d.raw" {
		t.Fatalf("layout: %+v %v", h, err)
	}
	b, err := h.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	p, err := format.ParseHeader(b)
	if err != nil || p.DataFile != "d.raw" || !p.DataFileRaw() {
		t.Fatalf("round trip: %+v %v", p, err)
	}
	for _, c := range []struct {
		o    format.CreateOptions
		want string
	}{
		{format.CreateOptions{DataFileRaw: true}, "data-file-raw requires data-file"},
		{format.CreateOptions{DataFile: "d", DataFileRaw: true, BackingFile: "b", BackingFormat: "raw"}, "Backing file and data-file-raw cannot be used at the same time"},
		{format.CreateOptions{DataFile: "d", Version: 2}, "External data files are only supported with compatibility level 1.1"},
	} {
		if _, err := format.Layout(1<<20, c.o); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", c.o, err, c.want)
		}
	}
}

// FuzzDataFileName: CheckDataFileName never panics, and a name it allows
// survives a header round trip unchanged and is allowed again after it.
func FuzzDataFileName(f *testing.F) {
	for _, s := range []string{"d.raw", "json:{}", "nbd:a:1", "/a:b", "a\x00", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		if format.CheckDataFileName(name) != nil {
			return
		}
		h, err := format.Layout(1<<20, format.CreateOptions{DataFile: name})
		if err != nil {
			return
		}
		b, err := h.MarshalBinary()
		if err != nil {
			return // too long for the header cluster
		}
		p, err := format.ParseHeader(b)
		if err != nil {
			t.Fatalf("%q: %v", name, err)
		}
		if p.DataFile != name || format.CheckDataFileName(p.DataFile) != nil {
			t.Fatalf("%q came back as %q", name, p.DataFile)
		}
	})
}
