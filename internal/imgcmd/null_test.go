package imgcmd

import (
	"bytes"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/internal/cli/clitest"
)

// TestNullFormatMatchesQemu: a null image, named the ways qemu-img names
// one (-f null-co null-co://, a null-co:// name alone, a json: null-co
// filename), gives qemu-img's output and exit code in info, map, measure
// and compare; convert copies it into a sparse image of its size.
func TestNullFormatMatchesQemu(t *testing.T) {
	clitest.NeedQemu(t)
	t.Chdir(t.TempDir())
	names := [][]string{
		{"-f", "null-co", "null-co://"},
		{"null-co://"},
		{`json:{"driver":"null-co","size":1048576}`},
		{`json:{"size":"4M","driver":"null-co"}`},
	}
	cmds := [][]string{
		{"info"}, {"info", "--output=json"}, {"map"}, {"map", "--output=json"},
		{"measure", "-O", "qcow2"}, {"measure", "-O", "raw", "--output=json"},
	}
	runs := map[string]func([]string, io.Writer, io.Writer) int{"info": Info, "map": Map, "measure": Measure}
	for _, name := range names {
		for _, c := range cmds {
			args := append(append([]string{}, c[1:]...), name...)
			want, wcode := clitest.Qemu(t, "qemu-img", append([]string{c[0]}, args...)...)
			got, stderr, code := clitest.Ours(runs[c[0]], args...)
			if code != wcode || got != want {
				t.Errorf("%s %v: exit %d (qemu-img %d), stderr %q\n%s\nqemu-img:\n%s", c[0], args, code, wcode, stderr, got, want)
			}
		}
		args := append(append([]string{}, name...), name...)
		if name[0] == "-f" {
			args = []string{"-f", "null-co", "-F", "null", name[2], name[2]}
		}
		want, wcode := clitest.Qemu(t, "qemu-img", append([]string{"compare"}, qemuNullArgs(args)...)...)
		got, stderr, code := clitest.Ours(Compare, args...)
		if code != wcode || code != 0 || got != want {
			t.Errorf("compare %v: exit %d (qemu-img %d), stderr %q, stdout %q", args, code, wcode, stderr, got)
		}
	}

	// convert: a sparse raw copy of the null image's size.
	src := `json:{"driver":"null-co","size":2097152}`
	if _, stderr, code := clitest.Ours(Convert, "-O", "raw", src, "n.raw"); code != 0 {
		t.Fatalf("convert %s: exit %d: %s", src, code, stderr)
	}
	clitest.MustQemu(t, "qemu-img", "convert", "-O", "raw", src, "q.raw")
	mine, err := os.ReadFile("n.raw")
	if err != nil {
		t.Fatal(err)
	}
	theirs, err := os.ReadFile("q.raw")
	if err != nil {
		t.Fatal(err)
	}
	if len(mine) != 2<<20 || !bytes.Equal(mine, theirs) {
		t.Errorf("convert of a 2 MiB null image: %d bytes, qemu-img's %d, equal %v", len(mine), len(theirs), bytes.Equal(mine, theirs))
	}
	// Sparse but for the first block, which qemu-img's file driver
	// writes when it creates a raw image.
	if st, qst := blocksOf(t, "n.raw"), blocksOf(t, "q.raw"); st != qst {
		t.Errorf("convert of a null image: %d bytes allocated, qemu-img's output %d", st, qst)
	}
}

// qemuNullArgs spells our "-F null" as qemu-img's "-F null-co".
func qemuNullArgs(args []string) []string {
	out := append([]string{}, args...)
	for i, a := range out {
		if a == "null" && i > 0 && (out[i-1] == "-f" || out[i-1] == "-F") {
			out[i] = "null-co"
		}
	}
	return out
}

func blocksOf(t *testing.T, path string) int64 {
	t.Helper()
	img, err := openImage(path, "raw")
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	return img.blocks
}

// TestNullFormatRefused: the commands that work on an image file refuse
// the null format in one clear line (check with qemu-img's exit code 63).
func TestNullFormatRefused(t *testing.T) {
	t.Chdir(t.TempDir())
	for _, c := range []struct {
		cmd  string
		args []string
		code int
		want string
	}{
		{"create", []string{"-f", "null", "n.img", "1M"}, 1, "null format stores nothing"},
		{"resize", []string{"-f", "null-co", "null-co://", "2G"}, 1, "null format"},
		{"snapshot", []string{"-f", "null", "-l", "null-co://"}, 1, "null format"},
		{"amend", []string{"-f", "null", "-o", "lazy_refcounts=on", "null-co://"}, 1, "amend supports qcow2"},
		{"check", []string{"-f", "null-co", "null-co://"}, 63, "does not support checks"},
		{"convert", []string{"-O", "null", "null-co://", "out.img"}, 1, "null format stores nothing"},
		{"info", []string{`json:{"driver":"qcow2","size":1}`}, 1, `A block device must be specified for "file"`},
		{"info", []string{"-f", "raw", `json:{"driver":"null-co"}`}, 1, "null-co filename with -f raw"},
	} {
		_, stderr, code := clitest.RunRingblk(t, nil, append([]string{c.cmd}, c.args...)...)
		if code != c.code || strings.Count(stderr, "\n") != 1 || !strings.HasPrefix(stderr, "ringblk: ") || !strings.Contains(stderr, c.want) {
			t.Errorf("ringblk %s %v: exit %d, stderr %q; want exit %d and one line with %q", c.cmd, c.args, code, stderr, c.code, c.want)
		}
	}
}
