package imgcmd

import (
	"testing"

	"github.com/ringblk/ringblk/internal/cli/clitest"
)

// Tests for measure beside qemu-img measure 7.2: the same numbers, in
// the same human and JSON output, for new images of several sizes and
// cluster sizes and for existing raw and qcow2 images.

func TestMeasureMatchesQemu(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	t.Chdir(t.TempDir())
	imgs := makeMapImages(t)
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=0.10", "v2.qcow2", "5M")
	clitest.MustQemu(t, "qemu-io", "-f", "qcow2", "-c", "write -P 1 0 1M", "v2.qcow2")
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "raw", "odd.raw", "1000")
	imgs = append(imgs, "v2.qcow2", "odd.raw")

	var cases [][]string
	for _, size := range []string{"0", "1000", "1M", "1G", "100G", "7T"} {
		for _, o := range []string{"", "cluster_size=512", "cluster_size=4k", "cluster_size=2M,refcount_bits=1",
			"compat=0.10", "refcount_bits=64", "extended_l2=on", "preallocation=full", "backing_file=x"} {
			args := []string{"--size", size, "-O", "qcow2"}
			if o != "" {
				args = append(args, "-o", o)
			}
			cases = append(cases, args, append([]string{"--output=json"}, args...))
		}
		cases = append(cases, []string{"--size", size}, []string{"--size", size, "--output=json"})
	}
	for _, img := range imgs {
		for _, o := range []string{"", "cluster_size=4k", "cluster_size=512", "compat=0.10", "preallocation=falloc", "backing_file=x", "refcount_bits=1"} {
			args := []string{"-O", "qcow2", img}
			if o != "" {
				args = append([]string{"-o", o}, args...)
			}
			cases = append(cases, args, append([]string{"--output=json"}, args...))
		}
		cases = append(cases, []string{"--output=json", img}, []string{"-O", "raw", img})
	}
	cases = append(cases, []string{"-O", "qcow2", "-o", "cluster_size=512", "--size", "1P"})

	for _, args := range cases {
		want, wcode := clitest.Qemu(t, "qemu-img", append([]string{"measure"}, args...)...)
		got, errOut, code := clitest.Ours(Measure, args...)
		if code != wcode {
			t.Errorf("measure %v: exit %d, qemu-img exits %d (stderr %q)", args, code, wcode, errOut)
		}
		if got != want {
			t.Errorf("measure %v:\n got: %q\nwant: %q", args, got, want)
		}
	}
}

func TestMeasureBadArguments(t *testing.T) {
	clitest.NeedQemu(t)
	t.Chdir(t.TempDir())
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "raw", "r.raw", "1M")
	for _, args := range [][]string{
		{},
		{"--size", "1G", "r.raw"},
		{"--size", "1X"},
		{"--size", "1G", "-O", "vmdk"},
		{"--size", "1G", "-O", "qcow2", "-o", "cluster_size=3k"},
		{"--size", "1G", "-O", "qcow2", "-o", "foo=3"},
		{"--output=xml", "--size", "1G"},
		{"missing.raw"},
		{"-f", "qcow2", "r.raw"},
	} {
		_, qcode := clitest.Qemu(t, "qemu-img", append([]string{"measure"}, args...)...)
		stdout, stderr, code := clitest.Ours(Measure, args...)
		checkOneLineError(t, "measure", args, stdout, stderr, code, qcode)
	}
	// qemu-img measure answers an unknown option with its general help
	// and exit 0; the operator commands all treat it as a mistake (exit 1).
	for _, args := range [][]string{{"--bogus", "--size", "1G"}, {"-z", "--size", "1G"}} {
		stdout, stderr, code := clitest.Ours(Measure, args...)
		checkOneLineError(t, "measure", args, stdout, stderr, code, 1)
	}
}
