package imgcmd

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/internal/cli/clitest"
)

// Tests for create, info and check against qemu-img 7.2 as the oracle.
// Each test runs in its own temporary directory (t.Chdir) and names
// images relatively, so "filename" is the same string for both tools.

// TestInfoMatchesQemu: info --output=json equals qemu-img info's JSON key
// for key, and the human output equals it line for line. actual-size is
// compared exactly too: both tools stat the same, unchanging file.
func TestInfoMatchesQemu(t *testing.T) {
	clitest.NeedQemu(t)
	t.Chdir(t.TempDir())
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "def.qcow2", "64M")
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=512", "c512.qcow2", "16M")
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=0.10", "v2.qcow2", "1G")
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "refcount_bits=1", "rc1.qcow2", "3G")
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "def.qcow2", "-F", "qcow2", "top.qcow2")
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "raw", "r.raw", "10M")
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "r.raw", "-F", "raw", "overraw.qcow2", "20M")
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "snap.qcow2", "1536M")
	clitest.MustQemu(t, "qemu-img", "snapshot", "-c", "first", "snap.qcow2")
	clitest.MustQemu(t, "qemu-img", "snapshot", "-c", "second", "snap.qcow2")
	// A name longer than the TAG column pushes the rest of its row right.
	clitest.MustQemu(t, "qemu-img", "snapshot", "-c", "a-snapshot-name-longer-than-the-column", "snap.qcow2")
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "preallocation=metadata", "prealloc.qcow2", "40M")
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=0.10", "v2snap.qcow2", "1G")
	clitest.MustQemu(t, "qemu-img", "snapshot", "-c", "old-style", "v2snap.qcow2")
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", "lazy.qcow2", "1M")
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "extended_l2=on", "xl2.qcow2", "1M")
	imgs := []string{"lazy.qcow2", "xl2.qcow2"}
	if _, code := clitest.Qemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "compression_type=zstd", "zstd.qcow2", "1M"); code == 0 {
		imgs = append(imgs, "zstd.qcow2")
	}
	if err := os.Mkdir("sub", 0o755); err != nil {
		t.Fatal(err)
	}
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "sub/base.qcow2", "1M")
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "sub/top.qcow2")
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "sub/top.qcow2", "-F", "qcow2", "chain3.qcow2")
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "overraw.qcow2", "-F", "qcow2", "chainraw.qcow2")
	imgs = append(imgs, "chain3.qcow2", "chainraw.qcow2")

	imgs = append(imgs, "def.qcow2", "c512.qcow2", "v2.qcow2", "rc1.qcow2", "top.qcow2", "r.raw", "overraw.qcow2", "snap.qcow2", "sub/top.qcow2", "prealloc.qcow2", "v2snap.qcow2")
	for _, img := range imgs {
		for _, withF := range []bool{false, true} {
			args := []string{"--output=json"}
			if withF {
				format := "qcow2"
				if strings.HasSuffix(img, ".raw") {
					format = "raw"
				}
				args = append(args, "-f", format)
			}
			args = append(args, img)
			want := clitest.MustQemu(t, "qemu-img", append([]string{"info"}, args...)...)
			got, stderr, code := clitest.Ours(Info, args...)
			if code != 0 {
				t.Fatalf("info %v: exit %d: %s", args, code, stderr)
			}
			clitest.DiffMaps(t, img, clitest.ParseJSON(t, "qemu-img info "+img, want), clitest.ParseJSON(t, "info "+img, got))

			want = clitest.MustQemu(t, "qemu-img", "info", img)
			got, _, _ = clitest.Ours(Info, img)
			if got != want {
				t.Errorf("info %s (human):\n%s\nqemu-img info:\n%s", img, got, want)
			}
			want = clitest.MustQemu(t, "qemu-img", "info", "-U", img)
			got, _, _ = clitest.Ours(Info, "-U", img)
			if got != want {
				t.Errorf("info -U %s (human):\n%s\nqemu-img info -U:\n%s", img, got, want)
			}
		}
		// --backing-chain: a JSON array, top first, and blocks of text.
		want := clitest.MustQemu(t, "qemu-img", "info", "--backing-chain", "--output=json", img)
		got, stderr, code := clitest.Ours(Info, "--backing-chain", "--output=json", img)
		if code != 0 {
			t.Fatalf("info --backing-chain %s: exit %d: %s", img, code, stderr)
		}
		var wl, gl []map[string]any
		if err := json.Unmarshal([]byte(want), &wl); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal([]byte(got), &gl); err != nil {
			t.Fatalf("info --backing-chain %s: %v\n%s", img, err, got)
		}
		if len(wl) != len(gl) {
			t.Errorf("info --backing-chain %s: %d images, qemu-img %d", img, len(gl), len(wl))
		} else {
			for i := range wl {
				clitest.DiffMaps(t, img+" chain", wl[i], gl[i])
			}
		}
		want = clitest.MustQemu(t, "qemu-img", "info", "--backing-chain", img)
		if got, _, _ = clitest.Ours(Info, "--backing-chain", img); got != want {
			t.Errorf("info --backing-chain %s (human):\n%s\nqemu-img:\n%s", img, got, want)
		}
	}
}

// TestCreateMatchesQemu: images from create pass qemu-img check and have
// the same qemu-img info (except filename) as qemu-img create's with the
// same options; the "Formatting" line is the same too.
func TestCreateMatchesQemu(t *testing.T) {
	clitest.NeedQemu(t)
	t.Chdir(t.TempDir())
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "base.qcow2", "48M")
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "raw", "base.raw", "5M")
	cases := [][]string{
		{"-f", "qcow2", "IMG", "64M"},
		{"-f", "qcow2", "-o", "cluster_size=512", "IMG", "16M"},
		{"-f", "qcow2", "-o", "compat=0.10", "IMG", "1G"},
		{"-f", "qcow2", "-o", "compat=v2", "IMG", "1G"},
		{"-f", "qcow2", "-o", "compat=v3,refcount_bits=1", "IMG", "2G"},
		{"-f", "qcow2", "-o", "cluster_size=2M,refcount_bits=64", "IMG", "10G"},
		{"-f", "qcow2", "-o", "preallocation=off,lazy_refcounts=off,extended_l2=off", "IMG", "1M"},
		{"-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "IMG"},
		{"-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "IMG", "100M"},
		{"-f", "qcow2", "-o", "backing_file=base.raw,backing_fmt=raw", "IMG"},
		{"-f", "raw", "IMG", "10M"},
		{"IMG", "1G"},
		{"-f", "raw", "-o", "preallocation=falloc", "IMG", "1M"},
		{"-f", "raw", "-o", "preallocation=full", "IMG", "64k"},
	}
	for i, c := range cases {
		ext := ".raw"
		if c[1] == "qcow2" {
			ext = ".qcow2"
		}
		theirs, mine := "q"+string(rune('a'+i))+ext, "o"+string(rune('a'+i))+ext
		sub := func(name string) []string {
			out := make([]string, len(c))
			for j, a := range c {
				out[j] = strings.ReplaceAll(a, "IMG", name)
			}
			return out
		}
		want := clitest.MustQemu(t, "qemu-img", append([]string{"create"}, sub(theirs)...)...)
		got, stderr, code := clitest.Ours(Create, sub(mine)...)
		if code != 0 && strings.Contains(stderr, "io_uring") {
			t.Skipf("no io_uring here: %s", stderr)
		}
		if code != 0 {
			t.Errorf("create %v: exit %d: %s", c, code, stderr)
			continue
		}
		if strings.ReplaceAll(want, theirs, mine) != got {
			t.Errorf("create %v prints\n%s qemu-img prints\n%s", c, got, want)
		}
		format := "raw"
		if ext == ".qcow2" {
			format = "qcow2"
			if out, code := clitest.Qemu(t, "qemu-img", "check", "-f", "qcow2", mine); code != 0 {
				t.Errorf("create %v: qemu-img check: exit %d\n%s", c, code, out)
			}
		}
		wi := clitest.ParseJSON(t, "info", clitest.MustQemu(t, "qemu-img", "info", "--output=json", "-f", format, theirs))
		gi := clitest.ParseJSON(t, "info", clitest.MustQemu(t, "qemu-img", "info", "--output=json", "-f", format, mine))
		// actual-size is what the file system allocated: equal for qcow2
		// (same layout, same writes), but for raw preallocation=full the
		// file system may allocate differently, so only qcow2 compares it.
		skip := []string{"filename"}
		if format == "raw" {
			skip = append(skip, "actual-size")
		}
		clitest.DiffMaps(t, "qemu-img info of create "+strings.Join(c, " "), wi, gi, skip...)
		if format == "qcow2" {
			wb, _ := os.ReadFile(theirs)
			gb, _ := os.ReadFile(mine)
			if !bytes.Equal(wb, gb) {
				t.Errorf("create %v: image bytes differ from qemu-img's", c)
			}
		}
	}
	// -q prints nothing.
	if out, _, code := clitest.Ours(Create, "-q", "-f", "qcow2", "quiet.qcow2", "1M"); code != 0 || out != "" {
		t.Errorf("create -q: exit %d, output %q", code, out)
	}
}

// TestCheckMatchesQemu: check's JSON, human output and exit code equal
// qemu-img check's on clean images, a leaking one and a corrupted one.
func TestCheckMatchesQemu(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	t.Chdir(t.TempDir())
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "clean.qcow2", "64M")
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=512,refcount_bits=1", "small.qcow2", "4M")
	clitest.MustQemu(t, "qemu-io", "-c", "write -P 0x11 0 300k", "-c", "write -P 0x22 1M 4k", "small.qcow2")
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=0.10", "v2.qcow2", "8M")
	clitest.MustQemu(t, "qemu-io", "-c", "write -P 0x33 64k 200k", "v2.qcow2")
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "comp.qcow2", "8M")
	clitest.MustQemu(t, "qemu-io", "-c", "write -c -P 0x55 0 64k", "-c", "write -c -P 0x56 128k 64k", "-c", "write -P 0x57 64k 64k", "comp.qcow2")

	// A fresh 64k-cluster image written at 0..128k: refcount table at
	// 0x10000, refcount block at 0x20000 (16-bit), L1 at 0x30000, L2 at
	// 0x40000 mapping guest 0 → 0x50000 and 64k → 0x60000.
	patched := func(name string, patch func(b []byte)) {
		clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", name, "64M")
		clitest.MustQemu(t, "qemu-io", "-c", "write -P 0x44 0 128k", name)
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		patch(b)
		if err := os.WriteFile(name, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	patched("leak.qcow2", func(b []byte) { binary.BigEndian.PutUint64(b[0x40008:], 0) })
	patched("corrupt.qcow2", func(b []byte) { binary.BigEndian.PutUint16(b[0x20000+2*5:], 0) })
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "raw", "r.raw", "1M")

	for _, tc := range []struct {
		img  string
		code int
	}{{"clean.qcow2", 0}, {"small.qcow2", 0}, {"v2.qcow2", 0}, {"comp.qcow2", 0}, {"leak.qcow2", 3}, {"corrupt.qcow2", 2}} {
		want, wcode := clitest.Qemu(t, "qemu-img", "check", "--output=json", tc.img)
		if wcode != tc.code {
			t.Fatalf("%s: qemu-img check exit %d, the test expected %d", tc.img, wcode, tc.code)
		}
		got, stderr, code := clitest.Ours(Check, "--output=json", tc.img)
		if code != wcode {
			t.Errorf("check %s: exit %d, qemu-img %d (%s)", tc.img, code, wcode, stderr)
		}
		clitest.DiffMaps(t, "check "+tc.img, clitest.ParseJSON(t, "qemu-img check", want), clitest.ParseJSON(t, "check", got))

		want, _ = clitest.Qemu(t, "qemu-img", "check", tc.img)
		got, _, _ = clitest.Ours(Check, tc.img)
		if got != want {
			t.Errorf("check %s (human):\n%s\nqemu-img check:\n%s", tc.img, got, want)
		}
		if out, _, code := clitest.Ours(Check, "-q", tc.img); out != "" || code != wcode {
			t.Errorf("check -q %s: exit %d, output %q", tc.img, code, out)
		}
	}
	_, wcode := clitest.Qemu(t, "qemu-img", "check", "-f", "raw", "r.raw")
	for _, args := range [][]string{{"r.raw"}, {"-f", "raw", "r.raw"}, {"--output=json", "r.raw"}} {
		_, stderr, code := clitest.Ours(Check, args...)
		if code != wcode || stderr != "ringblk: This image format does not support checks\n" {
			t.Errorf("check %v: exit %d (qemu-img %d), stderr %q", args, code, wcode, stderr)
		}
	}
}

// TestBadArguments: every mistake is one "ringblk: …" line naming the
// cause, exit 1, nothing on stdout.
func TestBadArguments(t *testing.T) {
	t.Chdir(t.TempDir())
	if err := os.WriteFile("r.raw", make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile("bad.qcow2", []byte("QFI\xfb\x00\x00\x00\x09garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A qcow2 image that names itself as its backing file (create does
	// not open the backing file when it is given a size).
	_, stderr, code := clitest.Ours(Create, "-q", "-f", "qcow2", "-b", "loop.qcow2", "-F", "qcow2", "loop.qcow2", "1M")
	loopOK := code == 0
	if !loopOK {
		t.Logf("cannot create a qcow2 image here (no io_uring?), skipping the loop case: %s", stderr)
	}
	type fn = func([]string, io.Writer, io.Writer) int
	for _, tc := range []struct {
		name string
		f    fn
		args []string
		want string
	}{
		{"create", Create, []string{"--bogus", "x", "1M"}, "'--bogus'"},
		{"create", Create, []string{"-z", "x", "1M"}, "'z'"},
		{"create", Create, []string{"x", "12Q"}, "'12Q'"},
		{"create", Create, []string{"-f", "qcow2", "x"}, "needs a size"},
		{"create", Create, []string{"-f", "vmdk", "x", "1M"}, "'vmdk'"},
		{"create", Create, []string{}, "file name"},
		{"create", Create, []string{"-f"}, "'f'"},
		{"create", Create, []string{"-f", "qcow2", "-o", "cluster_size=1000", "x", "1M"}, "1000"},
		{"create", Create, []string{"-f", "qcow2", "-o", "compat=2.0", "x", "1M"}, "2.0"},
		{"create", Create, []string{"-f", "qcow2", "-o", "refcount_bits=3", "x", "1M"}, "'3'"},
		{"create", Create, []string{"-f", "qcow2", "-o", "compat=0.10,refcount_bits=1", "x", "1M"}, "compatibility"},
		{"create", Create, []string{"-f", "qcow2", "-o", "nosuch=1", "x", "1M"}, "'nosuch'"},
		{"create", Create, []string{"-f", "qcow2", "-b", "r.raw", "x"}, "without backing format"},
		{"create", Create, []string{"-f", "qcow2", "-b", "missing", "-F", "raw", "x"}, "missing"},
		{"create", Create, []string{"-o", "preallocation=metadata", "x", "1M"}, "metadata"},
		{"create", Create, []string{"nodir/x", "1M"}, "nodir/x"},
		{"info", Info, []string{"missing.qcow2"}, "'missing.qcow2'"},
		{"info", Info, []string{"--output=xml", "r.raw"}, "--output"},
		{"info", Info, []string{"-f", "vdi", "r.raw"}, "'vdi'"},
		{"info", Info, []string{"-f", "qcow2", "r.raw"}, "'r.raw'"},
		{"info", Info, []string{"bad.qcow2"}, "'bad.qcow2'"},
		{"info", Info, []string{}, "one image"},
		{"info", Info, []string{"--backing-chain", "loop.qcow2"}, "loop"},
		{"info", Info, []string{"r.raw", "r.raw"}, "one image"},
		{"check", Check, []string{"missing.qcow2"}, "'missing.qcow2'"},
		{"check", Check, []string{"-r", "all", "bad.qcow2"}, "'bad.qcow2'"},
		{"check", Check, []string{"-r", "bogus", "bad.qcow2"}, "bogus"},
		{"check", Check, []string{"--output", "yaml", "r.raw"}, "--output"},
		{"check", Check, []string{"bad.qcow2"}, "'bad.qcow2'"},
		{"check", Check, []string{"-x", "bad.qcow2"}, "'x'"},
	} {
		if !loopOK && strings.Contains(strings.Join(tc.args, " "), "loop.qcow2") {
			continue
		}
		out, stderr, code := clitest.Ours(tc.f, tc.args...)
		lines := strings.Split(strings.TrimSuffix(stderr, "\n"), "\n")
		// qemu-img create prints its "Formatting" line before it fails
		// to create the file.
		if tc.name == "create" && strings.HasPrefix(out, "Formatting '") {
			out = ""
		}
		if code != 1 || out != "" || len(lines) != 1 || !strings.HasPrefix(stderr, "ringblk: ") || !strings.Contains(stderr, tc.want) {
			t.Errorf("%s %q: exit %d, stdout %q, stderr %q (want one line with %q, exit 1)", tc.name, tc.args, code, out, stderr, tc.want)
		}
	}
	for _, tc := range []struct {
		f    fn
		want string
	}{{Create, "usage: ringblk create"}, {Info, "usage: ringblk info"}, {Check, "usage: ringblk check"}} {
		for _, h := range []string{"--help", "-h"} {
			out, stderr, code := clitest.Ours(tc.f, h)
			if code != 0 || !strings.HasPrefix(out, tc.want) || stderr != "" {
				t.Errorf("%s %s: exit %d, stdout %q, stderr %q", tc.want, h, code, out, stderr)
			}
		}
	}
}
