package imgcmd

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/internal/cli/clitest"
)

// Legacy AES qcow2 images in the qemu-img commands (aes.go,
// drivers/qcow2/aes.go).

// TestAESCreateInfoAsQemuImg: create -o encryption=on and -o
// encrypt.format=aes print qemu-img 7.2's Formatting lines; info prints the
// same as qemu-img's, human and JSON, for the image ringblk made and for
// one qemu-img made; what qemu-io writes ringblk reads and the reverse.
func TestAESCreateInfoAsQemuImg(t *testing.T) {
	clitest.NeedQemu(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	for _, c := range []struct{ opts, line string }{
		{"encryption=on,encrypt.key-secret=s0", "fmt=qcow2 encryption=on encrypt.key-secret=s0 cluster_size=65536 extended_l2=off compression_type=zlib size=4194304 lazy_refcounts=off refcount_bits=16"},
		{"encrypt.format=aes,encrypt.key-secret=s0,compat=0.10", "fmt=qcow2 encrypt.format=aes encrypt.key-secret=s0 cluster_size=65536 extended_l2=off compression_type=zlib size=4194304 compat=0.10 lazy_refcounts=off refcount_bits=16"},
	} {
		ours, theirs := filepath.Join(dir, "o.qcow2"), filepath.Join(dir, "q.qcow2")
		out, errs, code := clitest.Ours(Create, "--object", sec0, "-f", "qcow2", "-o", c.opts, ours, "4M")
		if code != 0 || !strings.Contains(out, c.line) {
			t.Fatalf("create %s: exit %d %s\n%s", c.opts, code, errs, out)
		}
		clitest.MustQemu(t, "qemu-img", "create", "-q", "--object", sec0, "-f", "qcow2", "-o", c.opts, theirs, "4M")
		for _, p := range []string{ours, theirs} {
			for _, form := range []string{"human", "json"} {
				want := clitest.MustQemu(t, "qemu-img", "info", "--output="+form, p)
				got, errs, code := clitest.Ours(Info, "--output="+form, p)
				if code != 0 || got != want {
					t.Errorf("%s %s: exit %d %s\nwant:\n%s\ngot:\n%s", c.opts, form, code, errs, want, got)
				}
			}
		}
		if o, e, code := clitest.QemuIO(t, "--object", sec0, "--image-opts", luksSpec("qcow2", theirs), "-c", "write -P 0x6b 1000448 70000"); code != 0 {
			t.Fatalf("qemu-io write: %s %s", o, e)
		}
		if o, e, code := clitest.Ours(ioRun, "--object", sec0, "--image-opts", luksSpec("qcow2", theirs), "-c", "read -P 0x6b 1000448 70000", "-c", "read -P 0 0 1000448"); code != 0 || strings.Contains(o, "failed") {
			t.Fatalf("our read of qemu-io's write: %s %s", o, e)
		}
		if o, e, code := clitest.Ours(ioRun, "--object", sec0, "--image-opts", luksSpec("qcow2", ours), "-c", "write -P 0x6c 1000448 70000"); code != 0 || strings.Contains(o, "failed") {
			t.Fatalf("our write: %s %s", o, e)
		}
		if o, e, code := clitest.QemuIO(t, "--object", sec0, "--image-opts", luksSpec("qcow2", ours), "-c", "read -P 0x6c 1000448 70000", "-c", "read -P 0 0 1000448"); code != 0 || strings.Contains(o, "failed") {
			t.Fatalf("qemu-io read of our write: %s %s", o, e)
		}
		os.Remove(ours)
		os.Remove(theirs)
	}
}

// TestAESMeasure: measure with legacy AES options prints qemu-img's
// figures (those of a plain image: AES stores nothing).
func TestAESMeasure(t *testing.T) {
	clitest.NeedQemu(t, "qemu-img")
	for _, o := range []string{"encryption=on", "encrypt.format=aes,encrypt.key-secret=s0,cluster_size=4096"} {
		args := []string{"--object", sec0, "-O", "qcow2", "-o", o, "--size", "1G"}
		want := clitest.MustQemu(t, "qemu-img", append([]string{"measure"}, args...)...)
		got, errs, code := clitest.Ours(Measure, args...)
		if code != 0 || got != want {
			t.Errorf("measure -o %s: exit %d %s\nwant:\n%s\ngot:\n%s", o, code, errs, want, got)
		}
	}
}

// TestAESRefusals: qemu-img 7.2's words for an AES create without its
// key secret, for convert -c to an encrypted target (no target made), and
// for an open for I/O without the key.
func TestAESRefusals(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "a.qcow2")
	_, errs, code := clitest.Ours(Create, "-f", "qcow2", "-o", "encryption=on", img, "1M")
	if code != 1 || !strings.Contains(errs, img+": Parameter 'encrypt.key-secret' is required for cipher") {
		t.Fatalf("no key-secret: exit %d %s", code, errs)
	}
	src := filepath.Join(dir, "s.raw")
	if err := os.WriteFile(src, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "c.qcow2")
	for _, o := range []string{"encryption=on,encrypt.key-secret=s0", "encrypt.format=luks,encrypt.key-secret=s0"} {
		_, errs, code = clitest.Ours(Convert, "--object", sec0, "-c", "-O", "qcow2", "-o", o, src, dst)
		if code != 1 || !strings.Contains(errs, "Compression and encryption not supported at the same time") {
			t.Fatalf("convert -c -o %s: exit %d %s", o, code, errs)
		}
		if _, err := os.Stat(dst); err == nil {
			t.Fatalf("convert -c -o %s created its target", o)
		}
	}
	if _, errs, code := clitest.Ours(Create, "-q", "--object", sec0, "-f", "qcow2", "-o", "encryption=on,encrypt.key-secret=s0", img, "1M"); code != 0 {
		t.Fatalf("create: %s", errs)
	}
	o, e, code := clitest.Ours(ioRun, "-c", "read 0 512", img)
	if code == 0 || !strings.Contains(o+e, "Parameter 'encrypt.key-secret' is required for cipher") {
		t.Fatalf("open without the key: exit %d %s %s", code, o, e)
	}
}

// TestAESCommitKeepsEncryption: commit re-creates the emptied AES top
// image; it must stay AES-encrypted (info says so, and a partial write
// through it with its key reads back in qemu-io next to the committed
// data from the base).
func TestAESCommitKeepsEncryption(t *testing.T) {
	clitest.NeedQemu(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	base, top := filepath.Join(dir, "b.qcow2"), filepath.Join(dir, "t.qcow2")
	if _, e, code := clitest.Ours(Create, "--object", sec0, "-q", "-f", "qcow2", "-o", "encryption=on,encrypt.key-secret=s0", base, "1M"); code != 0 {
		t.Fatal(e)
	}
	if _, e, code := clitest.Ours(Create, "--object", sec0, "-q", "-f", "qcow2", "-o", "encryption=on,encrypt.key-secret=s0", "-b", base, "-F", "qcow2", top); code != 0 {
		t.Fatalf("create over an encrypted backing file: %s", e)
	}
	spec := "driver=qcow2,file.filename=" + top + ",encrypt.key-secret=s0,backing.encrypt.key-secret=s0"
	if o, e, code := clitest.QemuIO(t, "--object", sec0, "--image-opts", spec, "-c", "write -P 0x9 0 1M"); code != 0 {
		t.Fatal(o, e)
	}
	if o, e, code := clitest.Ours(Commit, "--object", sec0, "--image-opts", spec); code != 0 {
		t.Fatalf("commit: %s %s", o, e)
	}
	info := clitest.MustQemu(t, "qemu-img", "info", top)
	if !strings.Contains(info, "encrypted: yes") || !strings.Contains(info, "format: aes") {
		t.Fatalf("the emptied top lost its encryption:\n%s", info)
	}
	if o, e, code := clitest.Ours(ioRun, "--object", sec0, "--image-opts", spec, "-c", "write -P 0xa 1024 512"); code != 0 || strings.Contains(o, "failed") {
		t.Fatalf("write through the emptied top: %s %s", o, e)
	}
	if o, e, code := clitest.QemuIO(t, "--object", sec0, "--image-opts", spec, "-c", "read -P 0x9 0 1024", "-c", "read -P 0xa 1024 512", "-c", "read -P 0x9 1536 1047040"); code != 0 || strings.Contains(o, "failed") {
		t.Fatalf("read through the emptied top: %s %s", o, e)
	}
}
