package imgcmd

import (
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/internal/cli/clitest"
)

// TestDDMatchesQemu: qemu-img dd's copies (159, 160, 170): the same
// output image (qemu-img compare, and the same virtual size), the same
// messages and exit status, for block sizes, counts and skips.
func TestDDMatchesQemu(t *testing.T) {
	clitest.NeedQemu(t, "qemu-img", "qemu-io")
	t.Chdir(t.TempDir())
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "src.qcow2", "256k")
	clitest.MustQemu(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0xa 0 64k", "-c", "write -P 0xb 200k 3", "src.qcow2")
	for _, c := range [][]string{
		{"-f", "qcow2", "-O", "raw", "bs=5"},
		{"-f", "qcow2", "-O", "qcow2", "bs=64k"},
		{"-f", "qcow2", "-O", "raw", "bs=512", "count=100"},
		{"-f", "qcow2", "-O", "qcow2", "bs=1k", "skip=300", "count=200"},
		{"-f", "qcow2", "-O", "raw", "bs=64k", "skip=5"},
		{"-f", "qcow2", "-O", "raw", "bs=1000", "skip=3"},
		{"-f", "qcow2", "bs=0"},
		{"-f", "qcow2", "bs=x"},
		{"-f", "qcow2", "foo=1"},
		{"-f", "qcow2", "bs"},
		{"-O", "bogus"},
		{},
	} {
		outFmt := "raw"
		for i, a := range c {
			if a == "-O" {
				outFmt = c[i+1]
			}
		}
		args := func(out string) []string {
			return append(append([]string{}, c...), "if=src.qcow2", "of="+out)
		}
		if len(c) == 1 && c[0] == "-O" || len(c) == 0 {
			args = func(out string) []string { return append(append([]string{}, c...), "of="+out) }
		}
		os.Remove("ours.img")
		os.Remove("theirs.img")
		o, e, code := runAsQemuImg(t, append([]string{"dd"}, args("ours.img")...)...)
		qo, qcode := qemuImgAll(t, append([]string{"dd"}, args("theirs.img")...)...)
		if code != qcode {
			t.Errorf("dd %v: exit %d, qemu-img %d (%s%s / %s)", c, code, qcode, o, e, qo)
		}
		if got, want := o+e, qo; got != want {
			t.Errorf("dd %v: output %q, qemu-img %q", c, got, want)
		}
		if qcode != 0 {
			continue
		}
		if out, ccode := clitest.Qemu(t, "qemu-img", "compare", "-f", outFmt, "-F", outFmt, "ours.img", "theirs.img"); ccode != 0 {
			t.Errorf("dd %v: outputs differ: %s", c, out)
		}
		oi := clitest.ParseJSON(t, "info", clitest.MustQemu(t, "qemu-img", "info", "--output=json", "-f", outFmt, "ours.img"))
		ti := clitest.ParseJSON(t, "info", clitest.MustQemu(t, "qemu-img", "info", "--output=json", "-f", outFmt, "theirs.img"))
		if oi["virtual-size"] != ti["virtual-size"] {
			t.Errorf("dd %v: virtual size %v, qemu-img's %v", c, oi["virtual-size"], ti["virtual-size"])
		}
	}
}

// TestImageOptsAndJSONNames: info, map and check take json: filenames
// and --image-opts naming a format over a file (089, 110, 279), and name
// what they refuse.
func TestImageOptsAndJSONNames(t *testing.T) {
	clitest.NeedQemu(t, "qemu-img")
	t.Chdir(t.TempDir())
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "a.qcow2", "1M")
	for _, args := range [][]string{
		{"info", `json:{'driver': 'qcow2', 'file': {'driver': 'file', 'filename': 'a.qcow2'}}`},
		{"info", `json:{"driver":"qcow2","file.filename":"a.qcow2"}`},
		{"info", "--image-opts", "driver=qcow2,file.driver=file,file.filename=a.qcow2"},
		{"map", "--image-opts", "driver=qcow2,file.filename=a.qcow2"},
		{"check", `json:{"file.filename":"a.qcow2"}`},
	} {
		o, e, code := clitest.RunRingblk(t, nil, args...)
		qo, qcode := clitest.Qemu(t, "qemu-img", args...)
		if code != qcode || code != 0 {
			t.Errorf("%v: exit %d, qemu-img %d (%s%s / %s)", args, code, qcode, o, e, qo)
			continue
		}
		if o != qo {
			t.Errorf("%v: output differs\nours:\n%s\nqemu-img:\n%s", args, o, qo)
		}
	}
	// A tree with a filter opens whole (TestInfoThroughFilterTree); a
	// driver ringblk lacks is refused by name.
	if _, e, code := clitest.RunRingblk(t, nil, "info", `json:{"driver":"qcow2","file":{"driver":"vvfat","dir":"."}}`); code != 1 || !strings.Contains(e, "'vvfat'") {
		t.Errorf("info of a vvfat json: filename: exit %d, %q; want a refusal naming the driver", code, e)
	}
}

// qemuImgAll runs qemu-img and returns stdout and stderr together, and
// the exit status.
func qemuImgAll(t *testing.T, args ...string) (string, int) {
	t.Helper()
	out, err := exec.Command("qemu-img", args...).CombinedOutput()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		return string(out), ee.ExitCode()
	case err != nil:
		t.Fatal(err)
	}
	return string(out), 0
}
