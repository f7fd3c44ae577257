package imgcmd

import (
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/internal/cli/clitest"
)

// check -r against qemu-img check -r: the same damaged image in two
// directories under the same name, repaired by each tool; stdout, stderr
// (but for the program name) and the exit code must be equal, and the
// repaired images must check the same and hold the same guest data.

// patchImage applies raw edits to an image file: refcounts (16-bit, in
// the first refcount block) and 8-byte words.
type patchImage struct {
	refcounts map[int64]uint16
	words     map[int64]uint64
}

func (p patchImage) apply(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	rt := binary.BigEndian.Uint64(b[48:])
	rb := binary.BigEndian.Uint64(b[rt:])
	for c, v := range p.refcounts {
		binary.BigEndian.PutUint16(b[int64(rb)+2*c:], v)
	}
	for off, v := range p.words {
		binary.BigEndian.PutUint64(b[off:], v)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestCheckRepairMatchesQemu covers leaks, a refcount of 0 (a rebuild
// with -r all, a failure with -r leaks), wrong COPIED flags, a refcount
// too low under a snapshot, and a dirty lazy-refcount image left by
// qemu-io, in human and JSON output.
func TestCheckRepairMatchesQemu(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	root := t.TempDir()
	t.Chdir(root)
	type tc struct {
		name  string
		setup []string // qemu-io / qemu-img steps after create: "io ..." or "img ..."
		patch patchImage
	}
	// The base image: header 0, refcount table 1, refcount block 2, L1 3,
	// L2 4, data 5 (guest 0), 6 and 7 (guest 1M, 1M+64k).
	cases := []tc{
		{name: "leaks", patch: patchImage{refcounts: map[int64]uint16{5: 2, 7: 3, 3: 2}}},
		{name: "unreferenced", patch: patchImage{words: map[int64]uint64{0x40000 + 17*8: 0}}},
		{name: "refcount-zero", patch: patchImage{refcounts: map[int64]uint16{5: 0, 6: 5}}},
		{name: "copied", patch: patchImage{words: map[int64]uint64{0x30000: 0x40000, 0x40000 + 16*8: 0x60000}}},
		{name: "snapshot-low", setup: []string{"img snapshot -c s1"}, patch: patchImage{refcounts: map[int64]uint16{6: 1}}},
		{name: "lazy-dirty", setup: []string{"crash"}},
	}
	for _, c := range cases {
		for _, mode := range []string{"leaks", "all"} {
			for _, output := range []string{"human", "json"} {
				name := c.name + "/" + mode + "/" + output
				base := filepath.Join(root, strings.ReplaceAll(name, "/", "-"))
				for _, d := range []string{"q", "o", "orig"} {
					if err := os.MkdirAll(filepath.Join(base, d), 0o755); err != nil {
						t.Fatal(err)
					}
				}
				orig := filepath.Join(base, "orig", "img.qcow2")
				opts := ""
				if c.name == "lazy-dirty" {
					opts = "lazy_refcounts=on"
				}
				args := []string{"create", "-q", "-f", "qcow2"}
				if opts != "" {
					args = append(args, "-o", opts)
				}
				clitest.MustQemu(t, "qemu-img", append(args, orig, "16M")...)
				if c.name == "lazy-dirty" {
					// abort(3) after a flush: dirty, refcounts not written.
					exec.Command("qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 64k", "-c", "write -P 0x22 1M 128k", "-c", "flush", "-c", "abort", orig).Run()
				} else {
					clitest.MustQemu(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 64k", "-c", "write -P 0x22 1M 128k", orig)
				}
				for _, s := range c.setup {
					if f := strings.Fields(s); f[0] == "img" {
						clitest.MustQemu(t, "qemu-img", append(f[1:], orig)...)
					}
				}
				c.patch.apply(t, orig)
				raw, err := os.ReadFile(orig)
				if err != nil {
					t.Fatal(err)
				}
				for _, d := range []string{"q", "o"} {
					if err := os.WriteFile(filepath.Join(base, d, "img.qcow2"), raw, 0o644); err != nil {
						t.Fatal(err)
					}
				}

				rargs := []string{"check", "-r", mode, "--output=" + output, "img.qcow2"}
				cmd := exec.Command("qemu-img", rargs...)
				cmd.Dir = filepath.Join(base, "q")
				var qo, qe strings.Builder
				cmd.Stdout, cmd.Stderr = &qo, &qe
				qcode := 0
				if err := cmd.Run(); err != nil {
					ee, ok := err.(*exec.ExitError)
					if !ok {
						t.Fatal(err)
					}
					qcode = ee.ExitCode()
				}

				if err := os.Chdir(filepath.Join(base, "o")); err != nil {
					t.Fatal(err)
				}
				out, stderr, code := clitest.Ours(Check, rargs[1:]...)
				if err := os.Chdir(root); err != nil {
					t.Fatal(err)
				}

				wantErr := strings.ReplaceAll(qe.String(), "qemu-img: ", "ringblk: ")
				if code != qcode || out != qo.String() || stderr != wantErr {
					t.Errorf("%s: exit %d, qemu-img %d\nstdout:\n%s\nqemu-img stdout:\n%s\nstderr:\n%s\nqemu-img stderr:\n%s",
						name, code, qcode, out, qo.String(), stderr, wantErr)
					continue
				}
				// The repaired images check the same way, and the data did
				// not change.
				ours := filepath.Join(base, "o", "img.qcow2")
				theirs := filepath.Join(base, "q", "img.qcow2")
				oj, ocode := clitest.Qemu(t, "qemu-img", "check", "--output=json", ours)
				qj, qc := clitest.Qemu(t, "qemu-img", "check", "--output=json", theirs)
				if c.name == "lazy-dirty" && mode == "leaks" {
					// qemu-img clears the dirty bit when it closes the
					// image even though its repair failed; we leave the
					// image dirty, so the next read-write open repairs it.
					if ocode != 2 || qc != 2 {
						t.Errorf("%s: after a failed repair qemu-img check exits %d (qemu-img's image %d), want 2", name, ocode, qc)
					}
					continue
				}
				oj = strings.Replace(oj, ours, theirs, 1)
				if ocode != qc || oj != qj {
					t.Errorf("%s: check after repair exit %d:\n%s\nqemu-img's image, exit %d:\n%s", name, ocode, oj, qc, qj)
				}
				if qcode == 0 {
					if ocode != 0 {
						t.Errorf("%s: qemu-img check exits %d after our repair", name, ocode)
					}
					if o, c := clitest.Qemu(t, "qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", orig, ours); c != 0 {
						t.Errorf("%s: guest data changed by the repair (exit %d):\n%s", name, c, o)
					}
				}
			}
		}
	}
}

// TestCheckRepairRefusals: -r with -U, -r on raw, a bad -r value.
func TestCheckRepairRefusals(t *testing.T) {
	clitest.NeedQemu(t)
	t.Chdir(t.TempDir())
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "a.qcow2", "1M")
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "raw", "r.raw", "1M")
	for _, args := range [][]string{
		{"-r", "all", "-U", "a.qcow2"},
		{"-r", "leaks", "-f", "raw", "r.raw"},
		{"-r", "bogus", "a.qcow2"},
	} {
		_, wcode := clitest.Qemu(t, "qemu-img", append([]string{"check"}, args...)...)
		out, stderr, code := clitest.Ours(Check, args...)
		if code != wcode || out != "" || !strings.HasPrefix(stderr, "ringblk: ") || strings.Count(stderr, "\n") != 1 {
			t.Errorf("check %q: exit %d (qemu-img %d), stdout %q, stderr %q", args, code, wcode, out, stderr)
		}
	}
}

// TestCreateLazyRefcounts: create -o lazy_refcounts=on prints qemu-img's
// line and makes qemu-img's file; with compat=0.10 it is refused with
// qemu-img's message.
func TestCreateLazyRefcounts(t *testing.T) {
	clitest.NeedQemu(t)
	t.Chdir(t.TempDir())
	for _, v := range []string{"on", "off"} {
		want := clitest.MustQemu(t, "qemu-img", "create", "-f", "qcow2", "-o", "lazy_refcounts="+v, "q.qcow2", "16M")
		got, stderr, code := clitest.Ours(Create, "-f", "qcow2", "-o", "lazy_refcounts="+v, "o.qcow2", "16M")
		if code != 0 || got != strings.Replace(want, "q.qcow2", "o.qcow2", 1) {
			t.Errorf("lazy_refcounts=%s: exit %d, stdout %q (qemu-img %q), stderr %q", v, code, got, want, stderr)
		}
		a, _ := os.ReadFile("o.qcow2")
		b, _ := os.ReadFile("q.qcow2")
		if string(a) != string(b) {
			t.Errorf("lazy_refcounts=%s: the image differs from qemu-img's", v)
		}
	}
	_, stderr, code := clitest.Ours(Create, "-f", "qcow2", "-o", "compat=0.10,lazy_refcounts=on", "v2.qcow2", "16M")
	if code != 1 || !strings.Contains(stderr, "Lazy refcounts only supported with compatibility level 1.1 and above (use version=v3 or greater)") {
		t.Errorf("compat=0.10,lazy_refcounts=on: exit %d, stderr %q", code, stderr)
	}
	_, stderr, code = clitest.Ours(Create, "-f", "qcow2", "-o", "lazy_refcounts=maybe", "x.qcow2", "16M")
	if code != 1 || !strings.Contains(stderr, "Parameter 'lazy_refcounts' expects 'on' or 'off'") {
		t.Errorf("lazy_refcounts=maybe: exit %d, stderr %q", code, stderr)
	}
}
