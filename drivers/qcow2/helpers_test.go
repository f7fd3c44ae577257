package qcow2

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// testImages lists the images testdata/gen.sh creates.
var testImages = []string{
	"v3", "v2", "c512", "c2m", "rc1", "rc64", "lazy", "ext",
	"base", "ovl", "comp", "zstd", "snap", "bitmap", "base64m",
}

// loadImage returns the decompressed bytes of testdata/NAME.qcow2.gz.
func loadImage(t testing.TB, name string) []byte {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", name+".qcow2.gz"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func openBytes(t testing.TB, b []byte, opts Options) *Image {
	t.Helper()
	im, err := ReadImage(bytes.NewReader(b), int64(len(b)), opts)
	if err != nil {
		t.Fatalf("ReadImage: %v", err)
	}
	return im
}

// qemuMapEntry is one element of `qemu-img map --output=json`.
type qemuMapEntry struct {
	Start   int64  `json:"start"`
	Length  int64  `json:"length"`
	Depth   int    `json:"depth"`
	Present bool   `json:"present"`
	Zero    bool   `json:"zero"`
	Data    bool   `json:"data"`
	Offset  *int64 `json:"offset"`
}

func parseQemuMap(t testing.TB, b []byte) []qemuMapEntry {
	t.Helper()
	var m []qemuMapEntry
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("qemu-img map json: %v\n%s", err, b)
	}
	return m
}

// run is the normalized form both mappings are compared in: a class, and
// a host offset (-1 when the run has none).
type run struct {
	start, length int64
	class         string
	off           int64
}

func (r run) String() string {
	if r.off < 0 {
		return fmt.Sprintf("[%#x+%#x %s]", r.start, r.length, r.class)
	}
	return fmt.Sprintf("[%#x+%#x %s @%#x]", r.start, r.length, r.class, r.off)
}

// appendRun merges adjacent runs of the same class whose host offsets are
// contiguous (or both absent), so that both sides' merging rules agree.
func appendRun(rs []run, r run) []run {
	if r.length == 0 {
		return rs
	}
	if n := len(rs); n > 0 {
		l := &rs[n-1]
		if l.class == r.class && l.start+l.length == r.start &&
			((l.off < 0 && r.off < 0) || (l.off >= 0 && r.off == l.off+l.length)) {
			l.length += r.length
			return rs
		}
	}
	return append(rs, r)
}

// normalizeQemu classifies QEMU's runs for the top image: not present at
// depth 0 means unallocated here; data with an offset is data, data
// without one is compressed (QEMU reports no offset for those); zero is
// zero. QEMU also sets zero:true on data runs whose host range is a hole
// in the file; that is a property of the file system, not of the qcow2
// metadata, so it is ignored for data runs.
func normalizeQemu(m []qemuMapEntry) []run {
	var rs []run
	for _, e := range m {
		r := run{start: e.Start, length: e.Length, off: -1}
		switch {
		case !e.Present || e.Depth > 0:
			r.class = "unallocated"
		case e.Data && e.Offset != nil:
			r.class, r.off = "data", *e.Offset
		case e.Data:
			r.class = "compressed"
		case e.Zero:
			r.class = "zero"
			if e.Offset != nil {
				r.off = *e.Offset
			}
		default:
			r.class = "unknown"
		}
		rs = appendRun(rs, r)
	}
	return rs
}

func normalizeOurs(exts []Extent) []run {
	var rs []run
	for _, x := range exts {
		r := run{start: x.GuestOff, length: x.Len, off: -1}
		switch x.Kind {
		case ExtentUnallocated:
			r.class = "unallocated"
		case ExtentZero:
			r.class = "zero"
			if x.HostOff != 0 {
				r.off = x.HostOff
			}
		case ExtentData:
			r.class, r.off = "data", x.HostOff
		case ExtentCompressed:
			r.class = "compressed"
		}
		rs = appendRun(rs, r)
	}
	return rs
}

func runsString(rs []run) string {
	var sb strings.Builder
	for _, r := range rs {
		sb.WriteString(r.String())
		sb.WriteString("\n")
	}
	return sb.String()
}

// compareMaps fails t unless our extents for the whole disk classify every
// byte as qemu-img map does.
func compareMaps(t testing.TB, exts []Extent, qemuJSON []byte) {
	t.Helper()
	want := normalizeQemu(parseQemuMap(t, qemuJSON))
	got := normalizeOurs(exts)
	if runsString(got) != runsString(want) {
		t.Errorf("mapping differs from qemu-img map\nours:\n%sqemu-img:\n%s", runsString(got), runsString(want))
	}
}
