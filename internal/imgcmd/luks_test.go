package imgcmd

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/internal/cli/clitest"
	"github.com/ringblk/ringblk/internal/qemuio"
)

const sec0 = "secret,id=s0,data=abc"

func ioRun(args []string, stdout, stderr io.Writer) int {
	return qemuio.Run(args, strings.NewReader(""), stdout, stderr)
}

func luksSpec(fmtName, path string) string {
	key := "encrypt.key-secret"
	if fmtName == "luks" {
		key = "key-secret"
	}
	return "driver=" + fmtName + "," + key + "=s0,file.filename=" + path
}

// TestLuksInfoAsQemuImg: qemu-img info and ours print the same, human and
// JSON, for LUKS images qemu-img 7.2 made: raw aes-256-xts-plain64, raw
// aes-128-cbc-essiv:sha256 with sha1, and a qcow2 image with LUKS.
func TestLuksInfoAsQemuImg(t *testing.T) {
	clitest.NeedQemu(t, "qemu-img")
	dir := t.TempDir()
	imgs := []struct{ fmt, opts string }{
		{"luks", "key-secret=s0,iter-time=10"},
		{"luks", "key-secret=s0,iter-time=10,cipher-alg=aes-128,cipher-mode=cbc,ivgen-alg=essiv,hash-alg=sha1"},
		{"qcow2", "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10"},
	}
	for i, im := range imgs {
		p := filepath.Join(dir, "i"+string(rune('0'+i))+"."+im.fmt)
		clitest.QEMUCreateLUKS(t, im.fmt, p, im.opts, "4M")
		for _, out := range []string{"human", "json"} {
			want := clitest.MustQemu(t, "qemu-img", "info", "--output="+out, p)
			got, errs, code := clitest.Ours(Info, "--output="+out, p)
			if code != 0 || got != want {
				t.Errorf("%s %s: exit %d %s\nwant:\n%s\ngot:\n%s", im.opts, out, code, errs, want, got)
			}
		}
	}
}

// TestLuksCreateForQemu: images ringblk creates (-f luks, and qcow2 with
// encrypt.format=luks) print qemu-img's Formatting line, open in qemu-io
// with the secret, refuse the wrong one in QEMU's words, and pass
// qemu-img check.
func TestLuksCreateForQemu(t *testing.T) {
	clitest.NeedQemu(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	for _, c := range []struct{ fmt, opts, line string }{
		{"luks", "key-secret=s0,iter-time=10", "fmt=luks size=4194304 key-secret=s0 iter-time=10"},
		{"luks", "key-secret=s0,cipher-alg=aes-128,cipher-mode=cbc,ivgen-alg=essiv,iter-time=10",
			"fmt=luks size=4194304 key-secret=s0 cipher-alg=aes-128 cipher-mode=cbc ivgen-alg=essiv iter-time=10"},
		{"qcow2", "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10",
			"fmt=qcow2 encrypt.format=luks encrypt.key-secret=s0 encrypt.iter-time=10 cluster_size=65536"},
	} {
		p := filepath.Join(dir, "c."+c.fmt)
		out, errs, code := clitest.Ours(Create, "--object", sec0, "-f", c.fmt, "-o", c.opts, p, "4M")
		if code != 0 || !strings.Contains(out, c.line) {
			t.Fatalf("create %s: exit %d %s\n%s", c.opts, code, errs, out)
		}
		spec := luksSpec(c.fmt, p)
		if o, e, code := clitest.QemuIO(t, "--object", sec0, "--image-opts", spec, "-c", "write -P 0x6b 1000448 70000"); code != 0 {
			t.Fatalf("qemu-io write: %s %s", o, e)
		}
		if o, e, code := clitest.Ours(ioRun, "--object", sec0, "--image-opts", spec, "-c", "read -P 0x6b 1000448 70000"); code != 0 || strings.Contains(o, "failed") {
			t.Fatalf("our read of qemu-io's write: %s %s", o, e)
		}
		o, e, _ := clitest.QemuIO(t, "--object", "secret,id=s0,data=abd", "--image-opts", spec, "-c", "read 0 512")
		if !strings.Contains(o+e, "Invalid password, cannot unlock any keyslot") {
			t.Fatalf("wrong password: %s %s", o, e)
		}
		if c.fmt == "qcow2" {
			chk := clitest.MustQemu(t, "qemu-img", "check", "--object", sec0, "--image-opts", spec)
			if !strings.Contains(chk, "No errors were found") {
				t.Fatalf("qemu-img check: %s", chk)
			}
		}
	}
	// No secret: QEMU's words, after the Formatting line.
	_, errs, code := clitest.Ours(Create, "-f", "luks", "-o", "iter-time=10", filepath.Join(dir, "n.luks"), "1M")
	if code != 1 || !strings.Contains(errs, "Parameter 'key-secret' is required for cipher") {
		t.Fatalf("no key-secret: exit %d %s", code, errs)
	}
}

// TestLuksCommitKeepsEncryption: commit re-creates the emptied top image;
// it must keep the top's LUKS header and key slot, so the top still opens
// with its secret and reads the committed data through its base.
func TestLuksCommitKeepsEncryption(t *testing.T) {
	clitest.NeedQemu(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	base, top := filepath.Join(dir, "b.qcow2"), filepath.Join(dir, "t.qcow2")
	s1 := "secret,id=s1,data=xyz"
	if _, e, code := clitest.Ours(Create, "--object", sec0, "-q", "-f", "qcow2", "-o", "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10", base, "1M"); code != 0 {
		t.Fatal(e)
	}
	if _, e, code := clitest.Ours(Create, "--object", s1, "-q", "-f", "qcow2", "-o", "encrypt.format=luks,encrypt.key-secret=s1,encrypt.iter-time=10", "-b", base, "-F", "qcow2", top); code != 0 {
		t.Fatalf("create over an encrypted backing file: %s", e)
	}
	spec := "driver=qcow2,file.filename=" + top + ",encrypt.key-secret=s1,backing.encrypt.key-secret=s0"
	if o, e, code := clitest.QemuIO(t, "--object", sec0, "--object", s1, "--image-opts", spec, "-c", "write -P 0x9 0 1M"); code != 0 {
		t.Fatal(o, e)
	}
	if o, e, code := clitest.Ours(Commit, "--object", sec0, "--object", s1, "--image-opts", spec); code != 0 {
		t.Fatalf("commit: %s %s", o, e)
	}
	info := clitest.MustQemu(t, "qemu-img", "info", top)
	if !strings.Contains(info, "encrypted: yes") {
		t.Fatalf("the emptied top lost its encryption:\n%s", info)
	}
	if o, e, code := clitest.QemuIO(t, "--object", sec0, "--object", s1, "--image-opts", spec, "-c", "read -P 0x9 0 1M"); code != 0 || strings.Contains(o, "failed") {
		t.Fatalf("read through the emptied top: %s %s", o, e)
	}
	if o, e, code := clitest.QemuIO(t, "--object", sec0, "--image-opts", "driver=qcow2,file.filename="+base+",encrypt.key-secret=s0", "-c", "read -P 0x9 0 1M"); code != 0 || strings.Contains(o, "failed") {
		t.Fatalf("read of the base: %s %s", o, e)
	}
}

// TestLuksConvert: convert from an encrypted source (--image-opts) to
// raw, and from raw to -O luks and to an encrypted qcow2 (with
// preallocation=metadata, so nothing reads as zero by accident): qemu-img
// compare finds each identical to the source.
func TestLuksConvert(t *testing.T) {
	clitest.NeedQemu(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	src := filepath.Join(dir, "s.raw")
	data := make([]byte, 1<<20)
	for i := range data {
		data[i] = byte(i / 4096)
	}
	copy(data[300000:], make([]byte, 200000)) // a zero run
	os.WriteFile(src, data, 0o644)
	l := filepath.Join(dir, "l.luks")
	if o, e, code := clitest.Ours(Convert, "--object", sec0, "-O", "luks", "-o", "key-secret=s0,iter-time=10", src, l); code != 0 {
		t.Fatalf("convert to luks: %s %s", o, e)
	}
	q := filepath.Join(dir, "q.qcow2")
	if o, e, code := clitest.Ours(Convert, "--object", sec0, "-O", "qcow2", "-o", "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10,preallocation=metadata", src, q); code != 0 {
		t.Fatalf("convert to encrypted qcow2: %s %s", o, e)
	}
	back := filepath.Join(dir, "back.raw")
	if o, e, code := clitest.Ours(Convert, "--object", sec0, "--image-opts", luksSpec("qcow2", q), "-O", "raw", back); code != 0 {
		t.Fatalf("convert from encrypted qcow2: %s %s", o, e)
	}
	for _, spec := range []string{luksSpec("luks", l), luksSpec("qcow2", q), "driver=raw,file.filename=" + back} {
		out := clitest.MustQemu(t, "qemu-img", "compare", "--object", sec0, "--image-opts", spec, "driver=raw,file.filename="+src)
		if !strings.Contains(out, "Images are identical") {
			t.Fatalf("%s: %s", spec, out)
		}
	}
}

// TestLuksMeasureAsQemuImg: measure with LUKS target options (qcow2
// encrypt.*, -O luks) gives qemu-img's figures.
func TestLuksMeasureAsQemuImg(t *testing.T) {
	clitest.NeedQemu(t, "qemu-img")
	// Each qemu-img run derives keys for a second or so: one output
	// format per case.
	for _, c := range []struct {
		out  string
		args []string
	}{
		{"human", []string{"-O", "qcow2", "--size", "1G", "-o", "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10"}},
		{"json", []string{"-O", "qcow2", "--size", "100M", "-o", "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10,encrypt.cipher-alg=aes-128,cluster_size=4096"}},
		{"human", []string{"-O", "luks", "--size", "3M", "-o", "key-secret=s0,cipher-alg=aes-128,cipher-mode=cbc,ivgen-alg=essiv,iter-time=10"}},
	} {
		{
			out, args := c.out, c.args
			a := append([]string{"measure", "--object", sec0, "--output=" + out}, args...)
			// qemu-img derives a key to measure, and may fail its
			// PBKDF2 timing on a loaded machine: retry that one failure.
			var want string
			for i := 0; i < 30; i++ {
				var o, e bytes.Buffer
				cmd := exec.Command("qemu-img", a...)
				cmd.Stdout, cmd.Stderr = &o, &e
				err := cmd.Run()
				want = o.String()
				if err == nil || !strings.Contains(e.String(), "Unable to get accurate CPU usage") {
					break
				}
			}
			got, errs, code := clitest.Ours(Measure, a[1:]...)
			if code != 0 || got != want {
				t.Errorf("%v: exit %d %s\nwant:\n%s\ngot:\n%s", args, code, errs, want, got)
			}
		}
	}
}

// TestLuksAmendKeySlots: amend adds a password in a chosen slot and in
// the first free one, erases slots by secret, and refuses what QEMU
// refuses; qemu-io opens the image with exactly the secrets left.
func TestLuksAmendKeySlots(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	for _, f := range []string{"luks", "qcow2"} {
		p := filepath.Join(t.TempDir(), "a."+f)
		pr := ""
		if f == "qcow2" {
			pr = "encrypt."
		}
		opts := pr + "key-secret=s0," + pr + "iter-time=10"
		if f == "qcow2" {
			opts += ",encrypt.format=luks"
		}
		if _, e, code := clitest.Ours(Create, "--object", sec0, "-q", "-f", f, "-o", opts, p, "1M"); code != 0 {
			t.Fatal(e)
		}
		objs := []string{"--object", sec0, "--object", "secret,id=s1,data=one", "--object", "secret,id=s2,data=two"}
		amend := func(spec string, o ...string) (string, int) {
			args := append(append([]string{}, objs...), "--image-opts", "driver="+f+",file.filename="+p+","+pr+"key-secret="+spec)
			for _, x := range o {
				if x == "--force" {
					args = append(args, x)
				} else {
					args = append(args, "-o", x)
				}
			}
			_, e, code := clitest.Ours(Amend, args...)
			return e, code
		}
		opens := func(id string) bool {
			_, _, code := clitest.QemuIO(t, append(append([]string{}, objs...), "--image-opts", "driver="+f+",file.filename="+p+","+pr+"key-secret="+id, "-c", "read 0 512")...)
			return code == 0
		}
		if e, code := amend("s0", pr+"state=active,"+pr+"new-secret=s1,"+pr+"iter-time=10,"+pr+"keyslot=3"); code != 0 {
			t.Fatalf("%s add slot 3: %s", f, e)
		}
		if e, code := amend("s1", pr+"state=active,"+pr+"new-secret=s2,"+pr+"iter-time=10"); code != 0 {
			t.Fatalf("%s add: %s", f, e)
		}
		if !opens("s0") || !opens("s1") || !opens("s2") {
			t.Fatalf("%s: a secret does not open the image after adding", f)
		}
		if e, _ := amend("s1", pr+"state=active,"+pr+"new-secret=s2,"+pr+"keyslot=3"); !strings.Contains(e, "Refusing to overwrite active keyslot 3 - please erase it first") {
			t.Fatalf("%s overwrite: %s", f, e)
		}
		if e, code := amend("s1", pr+"state=inactive,"+pr+"old-secret=s0"); code != 0 {
			t.Fatalf("%s erase s0: %s", f, e)
		}
		if opens("s0") || !opens("s1") {
			t.Fatalf("%s: erasing s0 left the wrong secrets", f)
		}
		if e, _ := amend("s1", pr+"state=inactive,"+pr+"old-secret=s0"); !strings.Contains(e, "No keyslots match given (old) password for erase operation") {
			t.Fatalf("%s erase again: %s", f, e)
		}
		if e, code := amend("s2", pr+"state=inactive,"+pr+"keyslot=3"); code != 0 {
			t.Fatalf("%s erase slot 3: %s", f, e)
		}
		if e, _ := amend("s2", pr+"state=inactive,"+pr+"old-secret=s2"); !strings.Contains(e, "All the active keyslots match the (old) password") {
			t.Fatalf("%s erase the last: %s", f, e)
		}
		if !opens("s2") || opens("s1") {
			t.Fatalf("%s: only s2 should open the image", f)
		}
	}
}

// TestLuksMapResize: map of an encrypted qcow2 image shows no host
// offsets (JSON) and refuses the human table, as qemu-img; resize grows
// a raw LUKS volume (file = payload offset + size) and an encrypted qcow2
// image named by --image-opts.
func TestLuksMapResize(t *testing.T) {
	clitest.NeedQemu(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	q, l := filepath.Join(dir, "m.qcow2"), filepath.Join(dir, "m.luks")
	clitest.Ours(Create, "--object", sec0, "-q", "-f", "qcow2", "-o", "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10", q, "1M")
	clitest.Ours(Create, "--object", sec0, "-q", "-f", "luks", "-o", "key-secret=s0,iter-time=10", l, "1M")
	clitest.QemuIO(t, "--object", sec0, "--image-opts", luksSpec("qcow2", q), "-c", "write 0 64k")
	for _, out := range []string{"human", "json"} {
		args := []string{"map", "--output=" + out, "--object", sec0, "--image-opts", luksSpec("qcow2", q)}
		want, wcode := clitest.Qemu(t, "qemu-img", args...)
		got, errs, code := clitest.Ours(Map, args[1:]...)
		if got != want || code != wcode {
			t.Errorf("map %s: exit %d (want %d) %s\nwant:\n%s\ngot:\n%s", out, code, wcode, errs, want, got)
		}
	}
	for _, c := range []struct{ fmt, path string }{{"luks", l}, {"qcow2", q}} {
		if o, e, code := clitest.Ours(Resize, "--object", sec0, "--image-opts", luksSpec(c.fmt, c.path), "3M"); code != 0 {
			t.Fatalf("resize %s: %s %s", c.fmt, o, e)
		}
		info := clitest.MustQemu(t, "qemu-img", "info", c.path)
		if !strings.Contains(info, "virtual size: 3 MiB (3145728 bytes)") {
			t.Fatalf("after resize %s:\n%s", c.fmt, info)
		}
	}
}

// TestQcow2EncryptCreateOnMain: creating an encrypted qcow2 image takes
// its graph references on the main Context (with the race or invariants
// tag a reference taken elsewhere fails the graph's check); no QEMU needed.
func TestQcow2EncryptCreateOnMain(t *testing.T) {
	p := filepath.Join(t.TempDir(), "e.qcow2")
	_, errs, code := clitest.Ours(Create, "--object", sec0, "-f", "qcow2", "-o",
		"encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10", p, "1M")
	if code != 0 {
		t.Fatalf("create: exit %d %s", code, errs)
	}
	got, errs, code := clitest.Ours(Info, "--output=json", p)
	if code != 0 || !strings.Contains(got, `"encrypted": true`) {
		t.Fatalf("info: exit %d %s\n%s", code, errs, got)
	}
}

// TestCheckEncryptedAsQemu: qemu-img check opens an encrypted image with
// its key: without one (or with a wrong one) the check fails in qemu-img's
// words, exit 1, instead of checking the metadata anyway; with the key
// (--image-opts) check and check -r leaks/all run, the repairs too (the
// key reached the read-write open). Raw LUKS has no check (63) once open.
func TestCheckEncryptedAsQemu(t *testing.T) {
	clitest.NeedQemu(t, "qemu-img")
	t.Chdir(t.TempDir())
	// Made by our create: qemu-img's spends seconds timing its key
	// derivation (the images are read by qemu-img below all the same).
	for _, c := range [][]string{
		{"--object", sec0, "-q", "-f", "qcow2", "-o", "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10", "e.qcow2", "4M"},
		{"--object", sec0, "-q", "-f", "luks", "-o", "key-secret=s0,iter-time=10", "l.luks", "1M"},
	} {
		if _, e, code := clitest.Ours(Create, c...); code != 0 {
			t.Fatalf("create %v: exit %d: %s", c, code, e)
		}
	}
	wrong := "secret,id=s0,data=abd"
	for _, args := range [][]string{
		{"check", "e.qcow2"},
		{"check", "-r", "all", "e.qcow2"},
		{"check", "--object", sec0, "--image-opts", luksSpec("qcow2", "e.qcow2")},
		{"check", "--object", sec0, "--output=json", "--image-opts", luksSpec("qcow2", "e.qcow2")},
		{"check", "-r", "leaks", "--object", sec0, "--image-opts", luksSpec("qcow2", "e.qcow2")},
		{"check", "-r", "all", "--object", sec0, "--image-opts", luksSpec("qcow2", "e.qcow2")},
		{"check", "--object", wrong, "--image-opts", luksSpec("qcow2", "e.qcow2")},
		{"check", "l.luks"},
		{"check", "--object", sec0, "--image-opts", luksSpec("luks", "l.luks")},
	} {
		qemuAndOurs(t, args...)
	}
}
