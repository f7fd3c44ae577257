package imgcmd

import (
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/internal/cli/clitest"
)

// Tests for `ringblk amend` with qemu-img amend 7.2 as the oracle: the
// same -o options on two identical images, then the exit status, qemu-img
// info's format-specific fields and virtual size, and the guest data must
// agree, and qemu-img check must find our image clean.

type amendSetup struct {
	name    string
	create  []string // qemu-img create options (before FILE SIZE)
	backing bool     // an overlay over a filled base image
	io      []string // qemu-io commands run on the new image
}

func (s amendSetup) make(t *testing.T, img string) {
	t.Helper()
	args := append([]string{"create", "-q", "-f", "qcow2"}, s.create...)
	if s.backing {
		args = append(args, "-b", "base.qcow2", "-F", "qcow2")
	}
	clitest.MustQemu(t, "qemu-img", append(args, img, "2M")...)
	if len(s.io) > 0 {
		a := []string{"-f", "qcow2"}
		for _, c := range s.io {
			a = append(a, "-c", c)
		}
		if out, _, code := clitest.QemuIO(t, append(a, img)...); code != 0 {
			t.Fatalf("qemu-io on %s: %s", img, out)
		}
	}
}

func amendInfo(t *testing.T, img string) (any, any) {
	t.Helper()
	info := clitest.ParseJSON(t, img, clitest.MustQemu(t, "qemu-img", "info", "--output=json", img))
	return info["format-specific"], info["virtual-size"]
}

func TestAmendMatchesQemuImg(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	t.Chdir(t.TempDir())
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "base.qcow2", "2M")
	if out, _, code := clitest.QemuIO(t, "-f", "qcow2", "-c", "write -P 0x42 0 2M", "base.qcow2"); code != 0 {
		t.Fatalf("qemu-io: %s", out)
	}
	data := []string{"write -P 1 0 64k", "write -z 64k 64k", "write -z -u 128k 64k", "write -P 2 1M 100k"}
	plain := amendSetup{name: "plain", io: data}
	overlay := amendSetup{name: "overlay", backing: true, io: data}
	v2 := amendSetup{name: "v2", create: []string{"-o", "compat=0.10"}, io: []string{"write -P 3 0 64k"}}
	lazy := amendSetup{name: "lazy", create: []string{"-o", "lazy_refcounts=on"}, io: data}
	cases := []struct {
		setup amendSetup
		args  []string
	}{
		{plain, []string{"-o", "compat=0.10"}},
		{plain, []string{"-f", "qcow2", "-o", "compat=v2"}},
		{overlay, []string{"-o", "compat=0.10"}},
		{lazy, []string{"-o", "compat=0.10"}},
		{lazy, []string{"-o", "lazy_refcounts=off"}},
		{plain, []string{"-o", "lazy_refcounts=on"}},
		{plain, []string{"-o", "lazy_refcounts=on", "-o", "lazy_refcounts=off"}},
		{v2, []string{"-o", "compat=1.1"}},
		{v2, []string{"-o", "compat=v3,lazy_refcounts=on"}},
		{v2, []string{"-o", "lazy_refcounts=on"}},
		{plain, []string{"-o", "size=3M"}},
		{plain, []string{"-o", "size=0"}},
		{plain, []string{"-o", "size=2M,compat=0.10"}},
		{plain, []string{"-q", "-o", "refcount_bits=16"}},
		{plain, []string{"-o", "refcount_bits=1"}},
		{plain, []string{"-o", "refcount_bits=64"}},
		{overlay, []string{"-o", "refcount_bits=2,lazy_refcounts=on"}},
		{v2, []string{"-o", "compat=1.1,refcount_bits=8"}},
		{plain, []string{"-o", "refcount_bits=8,compat=0.10"}},
		{overlay, []string{"-o", "backing_file=base.qcow2,backing_fmt=qcow2"}},
		{overlay, []string{"-o", "backing_file=other.qcow2"}},
		{plain, []string{"-o", "backing_file=base.qcow2"}},
		{plain, []string{"-o", "compat=0.10,lazy_refcounts=on"}},
		{plain, []string{"-o", "lazy_refcounts=maybe"}},
		{plain, []string{"-o", "compat=2"}},
		{plain, []string{"-o", "compat"}},
		{plain, []string{"-o", "cluster_size=4k"}},
		{plain, []string{"-o", "bogus=1"}},
		{plain, []string{"-o", "size=1x"}},
		{plain, nil},
	}
	for i, c := range cases {
		name := c.setup.name + "_" + strings.Join(c.args, "_")
		t.Run(name, func(t *testing.T) {
			a, b := "a"+string(rune('a'+i))+".qcow2", "b"+string(rune('a'+i))+".qcow2"
			c.setup.make(t, a)
			c.setup.make(t, b)
			qout, qcode := clitest.Qemu(t, "qemu-img", append(append([]string{"amend"}, c.args...), a)...)
			oout, oerr, ocode := clitest.Ours(Amend, append(append([]string{}, c.args...), b)...)
			if qcode != ocode || qout != oout {
				t.Fatalf("exit %d stdout %q stderr %q; qemu-img: exit %d stdout %q", ocode, oout, oerr, qcode, qout)
			}
			if ocode != 0 && (strings.Count(oerr, "\n") != 1 || !strings.HasPrefix(oerr, "ringblk: ")) {
				t.Errorf("error is not one 'ringblk: ' line: %q", oerr)
			}
			wf, ws := amendInfo(t, a)
			gf, gs := amendInfo(t, b)
			if !reflect.DeepEqual(wf, gf) || ws != gs {
				t.Errorf("after amend: %v size %v; qemu-img made %v size %v", gf, gs, wf, ws)
			}
			if out, code := clitest.Qemu(t, "qemu-img", "check", b); code != 0 {
				t.Errorf("qemu-img check after our amend: exit %d\n%s", code, out)
			}
			if out, code := clitest.Qemu(t, "qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", a, b); code != 0 {
				t.Errorf("guest data differs from qemu-img's result: %s", out)
			}
		})
	}
}

// TestAmendRefusals: refused amends (a refcount width with compat=0.10,
// backing file changes, as in qemu-img) fail in one line and change
// nothing.
func TestAmendRefusals(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	t.Chdir(t.TempDir())
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "r.qcow2", "2M")
	if out, _, code := clitest.QemuIO(t, "-f", "qcow2", "-c", "write -P 9 1M 64k", "r.qcow2"); code != 0 {
		t.Fatalf("qemu-io: %s", out)
	}
	before, err := os.ReadFile("r.qcow2")
	if err != nil {
		t.Fatal(err)
	}
	for opts, want := range map[string]string{
		"compat=0.10,refcount_bits=8":  "Refcount widths other than 16 bits require compatibility level 1.1 or above",
		"backing_file=x.qcow2":         "backing file",
		"backing_fmt=raw":              "Cannot amend the backing file",
		"compat=1.1,refcount_bits=128": "power of two",
	} {
		out, errs, code := clitest.Ours(Amend, "-o", opts, "r.qcow2")
		if code != 1 || out != "" || !strings.Contains(errs, want) || strings.Count(errs, "\n") != 1 {
			t.Errorf("-o %s: exit %d stdout %q stderr %q (want %q)", opts, code, out, errs, want)
		}
	}
	after, err := os.ReadFile("r.qcow2")
	if err != nil {
		t.Fatal(err)
	}
	if string(before) != string(after) {
		t.Error("a refused amend changed the image file")
	}
}

// TestAmendProgress: -p shows the start and the end; -q silences it.
func TestAmendProgress(t *testing.T) {
	clitest.NeedQemu(t)
	t.Chdir(t.TempDir())
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "p.qcow2", "1M")
	out, errs, code := clitest.Ours(Amend, "-p", "-o", "compat=0.10", "p.qcow2")
	if code != 0 || !strings.HasPrefix(out, "    (0.00/100%)\r") || !strings.HasSuffix(out, "    (100.00/100%)\r\n") {
		t.Errorf("-p: exit %d stdout %q stderr %q", code, out, errs)
	}
	out, errs, code = clitest.Ours(Amend, "-p", "-q", "-o", "compat=1.1", "p.qcow2")
	if code != 0 || out != "" || errs != "" {
		t.Errorf("-p -q: exit %d stdout %q stderr %q", code, out, errs)
	}
}

// TestAmendBadArguments: one line on stderr, exit status 1.
func TestAmendBadArguments(t *testing.T) {
	t.Chdir(t.TempDir())
	if err := os.WriteFile("r.raw", make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	for name, args := range map[string][]string{
		"no options":     {"r.raw"},
		"no file":        {"-o", "compat=1.1"},
		"two files":      {"-o", "compat=1.1", "r.raw", "s.raw"},
		"unknown option": {"-x", "-o", "compat=1.1", "r.raw"},
		"missing file":   {"-o", "compat=1.1", "nonexist.qcow2"},
		"raw":            {"-f", "raw", "-o", "size=2M", "r.raw"},
		"probed raw":     {"-o", "size=2M", "r.raw"},
		"wrong format":   {"-f", "qcow2", "-o", "compat=1.1", "r.raw"},
		"unknown format": {"-f", "vmdk", "-o", "compat=1.1", "r.raw"},
		"empty list":     {"-o", "", "r.raw"},
		"empty item":     {"-o", "compat=1.1,,", "r.raw"},
		"bad cache":      {"-t", "bogus", "-o", "compat=1.1", "r.raw"},
	} {
		out, errs, code := clitest.Ours(Amend, args...)
		if code != 1 || out != "" || strings.Count(errs, "\n") != 1 || !strings.HasPrefix(errs, "ringblk: ") ||
			strings.Contains(errs, "goroutine") {
			t.Errorf("%s %v: exit %d stdout %q stderr %q", name, args, code, out, errs)
		}
	}
}

// TestAmendHelp: --help prints the usage; -o help lists the keys.
func TestAmendHelp(t *testing.T) {
	out, errs, code := clitest.Ours(Amend, "--help")
	if code != 0 || errs != "" || !strings.HasPrefix(out, "usage: ringblk amend ") {
		t.Errorf("amend --help: exit %d stderr %q stdout %q", code, errs, out)
	}
	out, errs, code = clitest.Ours(Amend, "-o", "help", "x.qcow2")
	if code != 0 || errs != "" || !strings.HasPrefix(out, "Amend options for 'qcow2':") || !strings.Contains(out, "lazy_refcounts") {
		t.Errorf("amend -o help: exit %d stderr %q stdout %q", code, errs, out)
	}
}
