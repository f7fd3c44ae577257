package imgcmd

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/internal/cli/clitest"
)

// Tests for map beside qemu-img map 7.2: same bytes on stdout for the
// same images, in both output formats.

// makeMapImages builds, in the current directory, images covering every
// kind of range: a sparse raw file, qcow2 data, zero (plain and
// preallocated), unallocated and compressed clusters, a qcow2 chain, a
// qcow2 over a raw backing file and over a shorter backing file.
func makeMapImages(t *testing.T) []string {
	t.Helper()
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "raw", "sparse.raw", "4M")
	clitest.MustQemu(t, "qemu-io", "-f", "raw", "-c", "write -P 1 64k 128k", "-c", "write -P 2 1M 4k", "sparse.raw")

	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "base.qcow2", "4M")
	clitest.MustQemu(t, "qemu-io", "-f", "qcow2", "-c", "write -P 1 0 128k", "-c", "write -z 256k 64k", "-c", "write -P 3 2M 64k", "base.qcow2")
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2")
	clitest.MustQemu(t, "qemu-io", "-f", "qcow2", "-c", "write -P 5 64k 64k", "-c", "write -z 2M 32k", "-c", "write -P 6 3M 256k", "top.qcow2")

	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "zalloc.qcow2", "1M")
	clitest.MustQemu(t, "qemu-io", "-f", "qcow2", "-c", "write -P 1 0 256k", "zalloc.qcow2")
	clitest.MustQemu(t, "qemu-io", "-f", "qcow2", "-c", "write -z 0 128k", "zalloc.qcow2")

	clitest.MustQemu(t, "qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", "sparse.raw", "comp.qcow2")

	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "raw", "short.raw", "1M")
	clitest.MustQemu(t, "qemu-io", "-f", "raw", "-c", "write -P 9 0 8k", "short.raw")
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "short.raw", "-F", "raw", "overraw.qcow2", "3M")
	clitest.MustQemu(t, "qemu-io", "-f", "qcow2", "-c", "write -P 1 512k 64k", "-c", "write -z 2M 128k", "overraw.qcow2")

	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", "small.qcow2", "2M")
	clitest.MustQemu(t, "qemu-io", "-f", "qcow2", "-c", "write -P 1 4k 12k", "-c", "write -P 2 100k 40k", "small.qcow2")
	// Clusters allocated in reverse guest order: adjacent data runs whose
	// host ranges are not contiguous stay separate entries.
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "reversed.qcow2", "1M")
	clitest.MustQemu(t, "qemu-io", "-f", "qcow2", "-c", "write -P 1 192k 64k", "-c", "write -P 2 128k 64k", "-c", "write -P 3 64k 64k", "reversed.qcow2")
	// Preallocated metadata: data clusters over holes of the file read as
	// zeros (QEMU asks the file: "zero": true, "data": true), and only the
	// written cluster is listed by the human output.
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "preallocation=metadata", "prealloc.qcow2", "1M")
	clitest.MustQemu(t, "qemu-io", "-f", "qcow2", "-c", "write -P 1 64k 64k", "prealloc.qcow2")
	return []string{"sparse.raw", "base.qcow2", "top.qcow2", "zalloc.qcow2", "comp.qcow2", "overraw.qcow2", "small.qcow2", "reversed.qcow2", "prealloc.qcow2"}
}

func TestMapMatchesQemu(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	t.Chdir(t.TempDir())
	imgs := makeMapImages(t)
	for _, img := range imgs {
		for _, args := range [][]string{
			{"--output=json", img},
			{"--output=human", img},
			{"--output=json", "--start-offset=70k", "--max-length=1M", img},
			{"--output=json", "--start-offset", "100k", "--max-length", "50k", img},
			{"--output=json", "--start-offset=8M", img},
			{"--output=json", "-U", "--max-length=0", img},
		} {
			want, wcode := clitest.Qemu(t, "qemu-img", append([]string{"map"}, args...)...)
			got, errOut, code := clitest.Ours(Map, args...)
			if code != wcode {
				t.Errorf("map %v: exit %d, qemu-img exits %d (stderr %q)", args, code, wcode, errOut)
			}
			if got != want {
				t.Errorf("map %v:\n got: %s\nwant: %s", args, got, want)
			}
		}
	}
	// The compressed image has data without a host offset: the human
	// format cannot show it, and says so.
	_, errOut, code := clitest.Ours(Map, "comp.qcow2")
	if code != 1 || !strings.Contains(errOut, "compressed clusters") {
		t.Errorf("human map of compressed image: exit %d, %q", code, errOut)
	}
}

// TestMapBackingDepth checks the chain walk itself: ranges the top does
// not allocate report the depth of the image that does.
func TestMapBackingDepth(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	t.Chdir(t.TempDir())
	makeMapImages(t)
	out, _, code := clitest.Ours(Map, "--output=json", "top.qcow2")
	if code != 0 {
		t.Fatalf("map: exit %d", code)
	}
	depths := map[int64]bool{}
	for _, e := range parseMapJSON(t, out) {
		depths[int64(e["depth"].(float64))] = true
	}
	if !depths[0] || !depths[1] {
		t.Errorf("map of a two-image chain reports depths %v, want 0 and 1", depths)
	}
}

func TestMapBadArguments(t *testing.T) {
	clitest.NeedQemu(t)
	t.Chdir(t.TempDir())
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "raw", "r.raw", "1M")
	for _, args := range [][]string{
		{"--bogus", "r.raw"},
		{"-z", "r.raw"},
		{"--start-offset=1x", "r.raw"},
		{"--max-length=-1", "r.raw"},
		{"--output=xml", "r.raw"},
		{},
		{"r.raw", "r.raw"},
		{"missing.raw"},
		{"-f", "qcow2", "r.raw"},
		{"-f", "vmdk", "r.raw"},
	} {
		_, qcode := clitest.Qemu(t, "qemu-img", append([]string{"map"}, args...)...)
		stdout, stderr, code := clitest.Ours(Map, args...)
		checkOneLineError(t, "map", args, stdout, stderr, code, qcode)
	}
}

// checkOneLineError asserts a failed command's conventions: the exit
// code qemu-img gives (1 for bad arguments), one "ringblk: " line on
// stderr, nothing that looks like a Go panic.
func checkOneLineError(t *testing.T, cmd string, args []string, stdout, stderr string, code, want int) {
	t.Helper()
	if code != want || code == 0 {
		t.Errorf("%s %v: exit %d, want %d (qemu-img)", cmd, args, code, want)
	}
	if !strings.HasPrefix(stderr, "ringblk: ") || strings.Count(stderr, "\n") != 1 {
		t.Errorf("%s %v: stderr is not one 'ringblk: ' line: %q", cmd, args, stderr)
	}
	if strings.Contains(stderr, "goroutine") || strings.Contains(stderr, "panic") {
		t.Errorf("%s %v: stack trace on stderr: %q", cmd, args, stderr)
	}
	if stdout != "" {
		t.Errorf("%s %v: printed %q on stdout before failing", cmd, args, stdout)
	}
}

func parseMapJSON(t *testing.T, s string) []map[string]any {
	t.Helper()
	var v []map[string]any
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatalf("bad map JSON: %v\n%s", err, s)
	}
	return v
}

// allocation is an image's map with host offsets dropped and equal
// neighbours merged: what two images with the same allocation share even
// when their clusters sit at different host offsets.
func allocation(t *testing.T, img string) string {
	t.Helper()
	entries := parseMapJSON(t, clitest.MustQemu(t, "qemu-img", "map", "--output=json", img))
	type run struct {
		start, length, depth float64
		present, zero, data  bool
	}
	var runs []run
	for _, e := range entries {
		r := run{e["start"].(float64), e["length"].(float64), e["depth"].(float64), e["present"].(bool), e["zero"].(bool), e["data"].(bool)}
		if n := len(runs); n > 0 {
			p := &runs[n-1]
			if p.depth == r.depth && p.present == r.present && p.zero == r.zero && p.data == r.data && p.start+p.length == r.start {
				p.length += r.length
				continue
			}
		}
		runs = append(runs, r)
	}
	var b strings.Builder
	for _, r := range runs {
		fmt.Fprintf(&b, "%v+%v depth=%v present=%v zero=%v data=%v\n", r.start, r.length, r.depth, r.present, r.zero, r.data)
	}
	return b.String()
}

// dataRanges lists the [start, end) ranges qemu-img map reports as data.
func dataRanges(t *testing.T, img string) [][2]int64 {
	t.Helper()
	var out [][2]int64
	for _, e := range parseMapJSON(t, clitest.MustQemu(t, "qemu-img", "map", "--output=json", img)) {
		if e["data"].(bool) {
			s := int64(e["start"].(float64))
			out = append(out, [2]int64{s, s + int64(e["length"].(float64))})
		}
	}
	return out
}

// TestImageToolsHelp: --help and -h print the command's usage on stdout
// and exit 0 (cmd/ringblk's TestImageToolsRegistered checks that main
// registers them under their qemu-img names).
func TestImageToolsHelp(t *testing.T) {
	for name, f := range map[string]func([]string, io.Writer, io.Writer) int{
		"map": Map, "compare": Compare, "convert": Convert, "measure": Measure,
	} {
		for _, h := range []string{"--help", "-h"} {
			stdout, stderr, code := clitest.Ours(f, h)
			if code != 0 || stderr != "" || !strings.HasPrefix(stdout, "usage: ringblk "+name+" ") {
				t.Errorf("%s %s: exit %d, stderr %q, stdout %.40q", name, h, code, stderr, stdout)
			}
		}
	}
}

// TestMapThroughFilterTree: an image named by an option tree with a
// filter (blkdebug over qcow2 over a file) maps as the image below the
// filter, the same bytes as qemu-img map prints for it (iotest 204).
func TestMapThroughFilterTree(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	t.Chdir(t.TempDir())
	makeMapImages(t)
	for _, output := range []string{"json", "human"} {
		opts := "driver=blkdebug,image.driver=qcow2,image.file.driver=file,image.file.filename=top.qcow2,align=4k"
		args := []string{"--output=" + output, "--image-opts", opts}
		want, wcode := clitest.Qemu(t, "qemu-img", append([]string{"map"}, args...)...)
		got, errOut, code := clitest.Ours(Map, args...)
		if code != wcode || got != want {
			t.Errorf("map %v: exit %d (qemu-img %d), stderr %q\n got: %s\nwant: %s", args, code, wcode, errOut, got, want)
		}
	}
}

// TestInfoThroughFilterTree: info on a json: name whose qcow2 image sits
// on a blkdebug filter opens the whole tree and shows what qemu-img info
// shows (iotest 110): every line but the image's json: name, which both
// render from the options in their own order.
func TestInfoThroughFilterTree(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	t.Chdir(t.TempDir())
	makeMapImages(t)
	dropName := func(s string) string {
		if !strings.HasPrefix(s, "image: json:{") {
			return "(no json: image name) " + s
		}
		_, rest, _ := strings.Cut(s, "\n")
		return rest
	}
	clitest.MustQemu(t, "qemu-img", "convert", "-O", "qcow2", "top.qcow2", "copy.qcow2")
	for _, name := range []string{
		`json:{"driver": "qcow2", "file": {"driver": "blkdebug", "image": {"driver": "file", "filename": "top.qcow2"}, "set-state": [{"event": "read_aio", "new_state": 42}]}}`,
		// A quorum of two files: no directory for the backing name.
		`json:{"driver": "qcow2", "file": {"driver": "quorum", "vote-threshold": 1, "children": [{"driver": "file", "filename": "top.qcow2"}, {"driver": "file", "filename": "top.qcow2"}]}}`,
	} {
		want, wcode := clitest.Qemu(t, "qemu-img", "info", "-U", name)
		got, errOut, code := clitest.Ours(Info, "-U", name)
		if code != wcode || dropName(got) != dropName(want) {
			t.Errorf("info %s: exit %d (qemu-img %d), stderr %q\n got: %s\nwant: %s", name, code, wcode, errOut, got, want)
		}
	}
}
