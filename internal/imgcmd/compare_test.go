package imgcmd

import (
	"testing"

	"github.com/ringblk/ringblk/internal/cli/clitest"
)

// Tests for compare beside qemu-img compare 7.2: the same message and the
// same exit code for the same pair of images.

func TestCompareMatchesQemu(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	t.Chdir(t.TempDir())
	makeMapImages(t)
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "raw", "a.raw", "1M")
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "raw", "b.raw", "1M")
	clitest.MustQemu(t, "qemu-io", "-f", "raw", "-c", "write -P 7 1000 1", "b.raw")
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "raw", "b2.raw", "1M")
	clitest.MustQemu(t, "qemu-io", "-f", "raw", "-c", "write -P 7 1000 1", "-c", "write -P 8 3000 1", "b2.raw")
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "c.qcow2", "1M")
	clitest.MustQemu(t, "qemu-io", "-f", "qcow2", "-c", "write -P 7 70000 1", "c.qcow2")
	// Larger images: zero beyond the common part, or not.
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "raw", "d.raw", "2M")
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "raw", "e.raw", "2M")
	clitest.MustQemu(t, "qemu-io", "-f", "raw", "-c", "write -P 7 1000 1", "-c", "write -P 1 1500000 1", "e.raw")
	// A qcow2 copy of a raw image, and one with a single byte changed.
	clitest.MustQemu(t, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", "sparse.raw", "sparse.qcow2")
	clitest.MustQemu(t, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", "sparse.raw", "changed.qcow2")
	clitest.MustQemu(t, "qemu-io", "-f", "qcow2", "-c", "write -P 3 2000000 1", "changed.qcow2")
	clitest.MustQemu(t, "qemu-img", "convert", "-f", "qcow2", "-O", "qcow2", "top.qcow2", "flat.qcow2")

	for _, args := range [][]string{
		{"a.raw", "a.raw"},
		{"a.raw", "b.raw"},
		{"b.raw", "b2.raw"},
		{"a.raw", "c.qcow2"},
		{"c.qcow2", "a.raw"},
		{"a.raw", "d.raw"},
		{"d.raw", "a.raw"},
		{"-s", "a.raw", "d.raw"},
		{"b.raw", "e.raw"},
		{"e.raw", "b.raw"},
		{"-q", "a.raw", "b.raw"},
		{"-q", "a.raw", "a.raw"},
		{"-s", "b.raw", "b.raw"},
		{"sparse.raw", "sparse.qcow2"},
		{"-f", "raw", "-F", "qcow2", "sparse.raw", "sparse.qcow2"},
		{"-s", "sparse.raw", "sparse.qcow2"},
		{"sparse.raw", "comp.qcow2"},
		{"-s", "sparse.qcow2", "comp.qcow2"},
		{"-s", "sparse.qcow2", "sparse.qcow2"},
		{"sparse.qcow2", "changed.qcow2"},
		{"top.qcow2", "flat.qcow2"},
		{"-U", "top.qcow2", "base.qcow2"},
		{"overraw.qcow2", "top.qcow2"},
		{"zalloc.qcow2", "zalloc.qcow2"},
		{"-p", "a.raw", "a.raw"},
		{"-p", "a.raw", "b.raw"},
		{"-p", "-q", "a.raw", "a.raw"},
	} {
		want, wcode := clitest.Qemu(t, "qemu-img", append([]string{"compare"}, args...)...)
		got, errOut, code := clitest.Ours(Compare, args...)
		if code != wcode {
			t.Errorf("compare %v: exit %d, qemu-img exits %d (stderr %q)", args, code, wcode, errOut)
		}
		if got != want {
			t.Errorf("compare %v:\n got: %q\nwant: %q", args, got, want)
		}
	}
}

func TestCompareBadArguments(t *testing.T) {
	clitest.NeedQemu(t)
	t.Chdir(t.TempDir())
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "raw", "r.raw", "1M")
	for _, args := range [][]string{
		{"-z", "r.raw", "r.raw"},
		{"--bogus", "r.raw", "r.raw"},
		{"r.raw"},
		{"r.raw", "r.raw", "r.raw"},
		{"r.raw", "missing.raw"},          // qemu-img: exit 2
		{"-f", "qcow2", "r.raw", "r.raw"}, // wrong format: exit 2
		{"-T", "bogus", "r.raw", "r.raw"}, // exit 2
	} {
		_, qcode := clitest.Qemu(t, "qemu-img", append([]string{"compare"}, args...)...)
		stdout, stderr, code := clitest.Ours(Compare, args...)
		checkOneLineError(t, "compare", args, stdout, stderr, code, qcode)
	}
}
