// Package formattest holds the fixtures that the qcow2 format tests and
// the driver tests share: the qemu-img-made images of drivers/qcow2/testdata
// (gen.sh), the hostile-image catalogue, the sparse fuzz-input encoding
// and the comparison with qemu-img map. It is imported by tests only.
package formattest

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// Images lists the images testdata/gen.sh creates.
var Images = []string{
	"v3", "v2", "c512", "c2m", "rc1", "rc64", "lazy", "ext",
	"base", "ovl", "comp", "zstd", "snap", "bitmap", "base64m",
}

// DataPath returns the path of file name in drivers/qcow2/testdata, from
// any package's test directory.
func DataPath(name string) string {
	_, self, _, ok := runtime.Caller(0)
	if !ok {
		panic("formattest: no caller information")
	}
	return filepath.Join(filepath.Dir(self), "..", "..", "testdata", name)
}

// Load returns the decompressed bytes of testdata/NAME.qcow2.gz.
func Load(t testing.TB, name string) []byte {
	t.Helper()
	f, err := os.Open(DataPath(name + ".qcow2.gz"))
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

// Open runs ReadImage on b and fails t on an error.
func Open(t testing.TB, b []byte, opts format.Options) *format.Image {
	t.Helper()
	im, err := format.ReadImage(bytes.NewReader(b), int64(len(b)), opts)
	if err != nil {
		t.Fatalf("ReadImage: %v", err)
	}
	return im
}

// QemuMapEntry is one element of `qemu-img map --output=json`.
type QemuMapEntry struct {
	Start   int64  `json:"start"`
	Length  int64  `json:"length"`
	Depth   int    `json:"depth"`
	Present bool   `json:"present"`
	Zero    bool   `json:"zero"`
	Data    bool   `json:"data"`
	Offset  *int64 `json:"offset"`
}

func ParseQemuMap(t testing.TB, b []byte) []QemuMapEntry {
	t.Helper()
	var m []QemuMapEntry
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("qemu-img map json: %v\n%s", err, b)
	}
	return m
}

// Run is the normalized form both mappings are compared in: a class, and
// a host offset (-1 when the run has none).
type Run struct {
	Start, Length int64
	Class         string
	Off           int64
}

func (r Run) String() string {
	if r.Off < 0 {
		return fmt.Sprintf("[%#x+%#x %s]", r.Start, r.Length, r.Class)
	}
	return fmt.Sprintf("[%#x+%#x %s @%#x]", r.Start, r.Length, r.Class, r.Off)
}

// AppendRun merges adjacent runs of the same class whose host offsets are
// contiguous (or both absent), so that both sides' merging rules agree.
func AppendRun(rs []Run, r Run) []Run {
	if r.Length == 0 {
		return rs
	}
	if n := len(rs); n > 0 {
		l := &rs[n-1]
		if l.Class == r.Class && l.Start+l.Length == r.Start &&
			((l.Off < 0 && r.Off < 0) || (l.Off >= 0 && r.Off == l.Off+l.Length)) {
			l.Length += r.Length
			return rs
		}
	}
	return append(rs, r)
}

// NormalizeQemu classifies QEMU's runs for the top image: not present at
// depth 0 means unallocated here; data with an offset is data, data
// without one is compressed (QEMU reports no offset for those); zero is
// zero. QEMU also sets zero:true on data runs whose host range is a hole
// in the file; that is a property of the file system, not of the qcow2
// metadata, so it is ignored for data runs.
func NormalizeQemu(m []QemuMapEntry) []Run {
	var rs []Run
	for _, e := range m {
		r := Run{Start: e.Start, Length: e.Length, Off: -1}
		switch {
		case !e.Present || e.Depth > 0:
			r.Class = "unallocated"
		case e.Data && e.Offset != nil:
			r.Class, r.Off = "data", *e.Offset
		case e.Data:
			r.Class = "compressed"
		case e.Zero:
			r.Class = "zero"
			if e.Offset != nil {
				r.Off = *e.Offset
			}
		default:
			r.Class = "unknown"
		}
		rs = AppendRun(rs, r)
	}
	return rs
}

// NormalizeOurs is NormalizeQemu for our extents.
func NormalizeOurs(exts []format.Extent) []Run {
	var rs []Run
	for _, x := range exts {
		r := Run{Start: x.GuestOff, Length: x.Len, Off: -1}
		switch x.Kind {
		case format.ExtentUnallocated:
			r.Class = "unallocated"
		case format.ExtentZero:
			r.Class = "zero"
			if x.HostOff != 0 {
				r.Off = x.HostOff
			}
		case format.ExtentData:
			r.Class, r.Off = "data", x.HostOff
		case format.ExtentCompressed:
			r.Class = "compressed"
		}
		rs = AppendRun(rs, r)
	}
	return rs
}

// RunsString prints runs one a line.
func RunsString(rs []Run) string {
	var sb strings.Builder
	for _, r := range rs {
		sb.WriteString(r.String())
		sb.WriteString("\n")
	}
	return sb.String()
}

// CompareMaps fails t unless our extents for the whole disk classify every
// byte as qemu-img map does.
func CompareMaps(t testing.TB, exts []format.Extent, qemuJSON []byte) {
	t.Helper()
	want := NormalizeQemu(ParseQemuMap(t, qemuJSON))
	got := NormalizeOurs(exts)
	if RunsString(got) != RunsString(want) {
		t.Errorf("mapping differs from qemu-img map\nours:\n%sqemu-img:\n%s", RunsString(got), RunsString(want))
	}
}
