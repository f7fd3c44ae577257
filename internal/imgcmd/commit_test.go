package imgcmd

import (
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/ringblk/ringblk/internal/cli/clitest"
)

// TestCommitMatchesQemuImg: qemu-img commit 7.2 and ours on two copies of
// base←mid←top: the same exit status and message, the committed-into
// image and the top read the same afterwards, and every image is clean.
func TestCommitMatchesQemuImg(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	t.Chdir(t.TempDir())
	cases := []struct {
		args []string
		into string // the image whose content is compared
	}{
		{nil, "mid"},
		{[]string{"-d"}, "mid"},
		{[]string{"-p"}, "mid"},
		{[]string{"-q", "-b", "%base.qcow2"}, "base"},
		{[]string{"-b", "%mid.qcow2"}, "mid"},
		{[]string{"-b", "nothere.qcow2"}, "base"},
		{[]string{"-b", "%top.qcow2"}, "base"},
	}
	for i, c := range cases {
		t.Run(strings.Join(c.args, "_"), func(t *testing.T) {
			pa, pb := "a"+string(rune('a'+i)), "b"+string(rune('a'+i))
			rebaseChain(t, pa)
			rebaseChain(t, pb)
			// The zero write in the top must reach the base as zeroes.
			for _, p := range []string{pa, pb} {
				if out, _, code := clitest.QemuIO(t, "-f", "qcow2", "-c", "write -z 512k 64k", p+"top.qcow2"); code != 0 {
					t.Fatalf("qemu-io: %s", out)
				}
			}
			with := func(p string) []string {
				a := []string{}
				for _, s := range c.args {
					a = append(a, strings.ReplaceAll(s, "%", p))
				}
				return append(a, p+"top.qcow2")
			}
			cmd := exec.Command("qemu-img", append([]string{"commit"}, with(pa)...)...)
			qb, _ := cmd.CombinedOutput()
			qout, qcode := string(qb), cmd.ProcessState.ExitCode()
			oout, oerr, ocode := clitest.Ours(Commit, with(pb)...)
			if qcode != ocode {
				t.Fatalf("exit %d %q %q; qemu-img: exit %d %q", ocode, oout, oerr, qcode, qout)
			}
			if ocode != 0 {
				msg := strings.TrimPrefix(strings.TrimSuffix(oerr, "\n"), "ringblk: ")
				if !strings.Contains(qout, strings.ReplaceAll(msg, pb, pa)) {
					t.Errorf("error %q; qemu-img said %q", oerr, qout)
				}
			} else if last := func(s string) string { return s[strings.LastIndexByte(s, '\r')+1:] }; last(qout) != last(oout) {
				t.Errorf("stdout %q; qemu-img's %q", oout, qout)
			}
			for _, l := range []string{c.into, "top"} {
				if out, code := clitest.Qemu(t, "qemu-img", "compare", pa+l+".qcow2", pb+l+".qcow2"); code != 0 {
					t.Errorf("%s after commit differs from qemu-img's: %s", l, out)
				}
			}
			if w, g := clitest.MustQemu(t, "qemu-img", "map", "--output=json", pa+"top.qcow2"), clitest.MustQemu(t, "qemu-img", "map", "--output=json", pb+"top.qcow2"); strings.ReplaceAll(w, pa, pb) != g {
				t.Errorf("top's allocation after commit:\n%s\nqemu-img's:\n%s", g, w)
			}
			for _, l := range []string{"base", "mid", "top"} {
				if out, code := clitest.Qemu(t, "qemu-img", "check", pb+l+".qcow2"); code != 0 {
					t.Errorf("qemu-img check %s: exit %d\n%s", l, code, out)
				}
			}
		})
	}
}

// TestCommitBaseRelativeToOverlay: -b may name the base as the chain does,
// relative to the overlay's directory (qemu-img accepts both spellings).
func TestCommitBaseRelativeToOverlay(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	t.Chdir(t.TempDir())
	if err := os.Mkdir("d", 0o755); err != nil {
		t.Fatal(err)
	}
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "d/b.qcow2", "1M")
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", "d/m.qcow2")
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "m.qcow2", "-F", "qcow2", "d/t.qcow2")
	if out, _, code := clitest.QemuIO(t, "-f", "qcow2", "-c", "write -P 9 0 64k", "d/t.qcow2"); code != 0 {
		t.Fatalf("qemu-io: %s", out)
	}
	// A name relative to the working directory is not one of the chain
	// (020): qemu-img resolves -b against the overlay's directory only.
	want, qcode := qemuImgAll(t, "commit", "-b", "d/m.qcow2", "d/t.qcow2")
	if _, errs, code := clitest.Ours(Commit, "-b", "d/m.qcow2", "d/t.qcow2"); code != qcode || strings.TrimPrefix(errs, "ringblk: ") != strings.TrimPrefix(want, "qemu-img: ") {
		t.Errorf("commit -b d/m.qcow2: exit %d %q; qemu-img: exit %d %q", code, errs, qcode, want)
	}
	if out, errs, code := clitest.Ours(Commit, "-q", "-b", "b.qcow2", "d/t.qcow2"); code != 0 || out != "" {
		t.Fatalf("commit -b b.qcow2: exit %d %q %q", code, out, errs)
	}
	if out, _, code := clitest.QemuIO(t, "-f", "qcow2", "-c", "read -P 9 0 64k", "d/b.qcow2"); code != 0 || strings.Contains(out, "Pattern verification failed") {
		t.Errorf("base after commit: %s", out)
	}
}

// TestCommitRateLimit: -r is the commit job's speed limit: 3 MiB committed
// at 1 MiB/s takes at least two seconds (the job allows one burst of
// 100 ms), and the data arrives all the same.
func TestCommitRateLimit(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	t.Chdir(t.TempDir())
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "b.qcow2", "4M")
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", "t.qcow2")
	if out, _, code := clitest.QemuIO(t, "-f", "qcow2", "-c", "write -P 5 0 3M", "t.qcow2"); code != 0 {
		t.Fatalf("qemu-io: %s", out)
	}
	start := time.Now()
	if out, errs, code := clitest.Ours(Commit, "-q", "-r", "1M", "t.qcow2"); code != 0 {
		t.Fatalf("commit -r 1M: exit %d %q %q", code, out, errs)
	}
	if d := time.Since(start); d < 2*time.Second {
		t.Errorf("commit -r 1M of 3 MiB took %v, want at least 2s", d)
	}
	if out, _, code := clitest.QemuIO(t, "-f", "qcow2", "-c", "read -P 5 0 3M", "b.qcow2"); code != 0 || strings.Contains(out, "Pattern verification failed") {
		t.Errorf("base after commit: %s", out)
	}
	if _, errs, code := clitest.Ours(Commit, "-r", "x", "t.qcow2"); code != 1 || !strings.Contains(errs, "Invalid rate limit specified") {
		t.Errorf("commit -r x: exit %d %q", code, errs)
	}
}
