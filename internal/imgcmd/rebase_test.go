package imgcmd

import (
	"os/exec"
	"reflect"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/internal/cli/clitest"
)

// Tests for `ringblk rebase` with qemu-img rebase 7.2 as the oracle.

// rebaseChain makes base←mid←top (4M, qcow2) with distinct data in each
// layer, named with prefix p.
func rebaseChain(t *testing.T, p string) {
	t.Helper()
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", p+"base.qcow2", "4M")
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", p+"base.qcow2", "-F", "qcow2", p+"mid.qcow2", "4M")
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", p+"mid.qcow2", "-F", "qcow2", p+"top.qcow2", "4M")
	// In order, base first: a partial write copies the layers below.
	for _, l := range []struct {
		img  string
		cmds []string
	}{
		{"base.qcow2", []string{"write -P 1 0 1M", "write -P 7 3M 64k"}},
		{"mid.qcow2", []string{"write -P 2 512k 1M", "write -z 3M 4k", "write -P 5 2M 3k"}},
		{"top.qcow2", []string{"write -P 3 1M 256k", "write -P 4 2M 1k"}},
	} {
		img, cmds := l.img, l.cmds
		a := []string{"-f", "qcow2"}
		for _, c := range cmds {
			a = append(a, "-c", c)
		}
		if out, _, code := clitest.QemuIO(t, append(a, p+img)...); code != 0 {
			t.Fatalf("qemu-io on %s: %s", img, out)
		}
	}
}

func backingInfo(t *testing.T, img string) map[string]any {
	t.Helper()
	info := clitest.ParseJSON(t, img, clitest.MustQemu(t, "qemu-img", "info", "--output=json", img))
	m := map[string]any{}
	for _, k := range []string{"backing-filename", "full-backing-filename", "backing-filename-format", "virtual-size", "format-specific"} {
		m[k] = info[k]
	}
	return m
}

// TestRebaseUnsafeMatchesQemuImg: -u (and its refusals) on two copies of
// an overlay: the same exit status, error text and backing fields.
func TestRebaseUnsafeMatchesQemuImg(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	t.Chdir(t.TempDir())
	rebaseChain(t, "")
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "raw", "r.raw", "1M")
	cases := [][]string{
		{"-u", "-b", "base.qcow2", "-F", "qcow2"},
		{"-u", "-b", "other.raw", "-F", "raw"},
		{"-u", "-b", ""},
		{"-u", "-F", "qcow2"},
		{"-u", "-f", "qcow2", "-b", "x.qcow2", "-F", "qcow2"},
		{"-u", "-b", "base.qcow2"},
		{"-u", "-b", "base.qcow2", "-F", "bogus"},
		{"-b", "base.qcow2", "-F", "qcow2", "-f", "raw"},
		{"-b", "nothere.qcow2", "-F", "qcow2"},
		{"-b", "base.qcow2"},
		{},
	}
	for i, args := range cases {
		t.Run(strings.Join(args, "_"), func(t *testing.T) {
			a, b := "a"+string(rune('a'+i))+".qcow2", "b"+string(rune('a'+i))+".qcow2"
			clitest.MustQemu(t, "qemu-img", "convert", "-q", "-O", "qcow2", "-B", "mid.qcow2", "-F", "qcow2", "top.qcow2", a)
			clitest.MustQemu(t, "qemu-img", "convert", "-q", "-O", "qcow2", "-B", "mid.qcow2", "-F", "qcow2", "top.qcow2", b)
			cmd := exec.Command("qemu-img", append(append([]string{"rebase"}, args...), a)...)
			qb, _ := cmd.CombinedOutput()
			qout, qcode := string(qb), cmd.ProcessState.ExitCode()
			oout, oerr, ocode := clitest.Ours(Rebase, append(append([]string{}, args...), b)...)
			if qcode != ocode {
				t.Fatalf("exit %d stdout %q stderr %q; qemu-img: exit %d %q", ocode, oout, oerr, qcode, qout)
			}
			if ocode != 0 {
				msg := strings.TrimPrefix(strings.TrimSuffix(oerr, "\n"), "ringblk: ")
				if strings.Count(oerr, "\n") != 1 || !strings.HasPrefix(oerr, "ringblk: ") || !strings.Contains(qout, strings.ReplaceAll(msg, b, a)) {
					t.Errorf("error %q; qemu-img said %q", oerr, qout)
				}
			}
			if w, g := backingInfo(t, a), backingInfo(t, b); !reflect.DeepEqual(w, g) {
				t.Errorf("after rebase: %v; qemu-img made %v", g, w)
			}
			// A missing new backing file fails both checks alike.
			wout, wcode := clitest.Qemu(t, "qemu-img", "check", a)
			if out, code := clitest.Qemu(t, "qemu-img", "check", b); code != wcode {
				t.Errorf("qemu-img check: exit %d\n%s\non qemu-img's: exit %d\n%s", code, out, wcode, wout)
			}
		})
	}
}

// TestRebaseSafeKeepsContent: rebasing top from mid onto base, or onto
// nothing, keeps what the guest reads (compared with a raw copy made
// before), records the new backing file, and leaves the image clean.
func TestRebaseSafeKeepsContent(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	t.Chdir(t.TempDir())
	rebaseChain(t, "")
	clitest.MustQemu(t, "qemu-img", "convert", "-q", "-O", "raw", "top.qcow2", "orig.raw")
	clitest.MustQemu(t, "qemu-img", "convert", "-q", "-O", "qcow2", "-B", "mid.qcow2", "-F", "qcow2", "top.qcow2", "top2.qcow2")
	clitest.MustQemu(t, "qemu-img", "convert", "-q", "-O", "qcow2", "-B", "mid.qcow2", "-F", "qcow2", "top.qcow2", "q.qcow2")
	for _, c := range []struct {
		img  string
		args []string
		want string
	}{
		{"top.qcow2", []string{"-b", "base.qcow2", "-F", "qcow2"}, "base.qcow2"},
		{"top2.qcow2", []string{"-p", "-b", ""}, ""},
	} {
		if out, errs, code := clitest.Ours(Rebase, append(c.args, c.img)...); code != 0 {
			t.Fatalf("rebase %v: exit %d %s%s", c.args, code, out, errs)
		}
		if out, code := clitest.Qemu(t, "qemu-img", "compare", "-F", "raw", c.img, "orig.raw"); code != 0 {
			t.Errorf("rebase %v changed the content: %s", c.args, out)
		}
		if got := backingInfo(t, c.img)["backing-filename"]; (c.want == "" && got != nil) || (c.want != "" && got != c.want) {
			t.Errorf("rebase %v: backing file %v, want %q", c.args, got, c.want)
		}
		if out, code := clitest.Qemu(t, "qemu-img", "check", c.img); code != 0 {
			t.Errorf("qemu-img check: exit %d\n%s", code, out)
		}
	}
	// qemu-img's safe rebase onto base writes the same allocation.
	clitest.MustQemu(t, "qemu-img", "rebase", "-b", "base.qcow2", "-F", "qcow2", "q.qcow2")
	w, g := clitest.MustQemu(t, "qemu-img", "map", "--output=json", "q.qcow2"), clitest.MustQemu(t, "qemu-img", "map", "--output=json", "top.qcow2")
	if w != g {
		t.Errorf("allocation after rebase:\n%s\nqemu-img's:\n%s", g, w)
	}
}

// TestRebaseSafeOutsideChain: a safe rebase onto a file that is not in the
// old chain (no prefix: every unallocated range is read and compared)
// keeps the content and writes the same clusters as qemu-img rebase.
func TestRebaseSafeOutsideChain(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	t.Chdir(t.TempDir())
	rebaseChain(t, "")
	clitest.MustQemu(t, "qemu-img", "convert", "-q", "-O", "raw", "top.qcow2", "orig.raw")
	clitest.MustQemu(t, "qemu-img", "convert", "-q", "-O", "qcow2", "mid.qcow2", "other.qcow2")
	if out, _, code := clitest.QemuIO(t, "-f", "qcow2", "-c", "write -P 8 600k 5k", "-c", "write -z 3M 64k", "other.qcow2"); code != 0 {
		t.Fatalf("qemu-io: %s", out)
	}
	for _, p := range []string{"a", "b"} {
		clitest.MustQemu(t, "qemu-img", "convert", "-q", "-O", "qcow2", "-B", "mid.qcow2", "-F", "qcow2", "top.qcow2", p+".qcow2")
	}
	clitest.MustQemu(t, "qemu-img", "rebase", "-b", "other.qcow2", "-F", "qcow2", "a.qcow2")
	if out, errs, code := clitest.Ours(Rebase, "-b", "other.qcow2", "-F", "qcow2", "b.qcow2"); code != 0 {
		t.Fatalf("rebase: exit %d %s%s", code, out, errs)
	}
	if out, code := clitest.Qemu(t, "qemu-img", "compare", "-F", "raw", "b.qcow2", "orig.raw"); code != 0 {
		t.Errorf("rebase changed the content: %s", out)
	}
	if w, g := clitest.MustQemu(t, "qemu-img", "map", "--output=json", "a.qcow2"), clitest.MustQemu(t, "qemu-img", "map", "--output=json", "b.qcow2"); strings.ReplaceAll(w, "a.qcow2", "b.qcow2") != g {
		t.Errorf("allocation after rebase:\n%s\nqemu-img's:\n%s", g, w)
	}
}

// TestRebaseSafeWithinShorterChain: new_base ← old_base ← overlay where
// old_base is shorter than the overlay (iotest 024's last case). Rebasing
// onto new_base (in the old chain: the prefix shortcut) must still copy
// the zeroes the overlay read past old_base's end, where new_base has
// data.
func TestRebaseSafeWithinShorterChain(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	t.Chdir(t.TempDir())
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "new.qcow2", "320k")
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "new.qcow2", "-F", "qcow2", "old.qcow2", "256k")
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "old.qcow2", "-F", "qcow2", "ov.qcow2", "320k")
	for _, c := range [][]string{{"write -P 0x11 0 320k", "new.qcow2"}, {"write -P 0x22 0 256k", "old.qcow2"}} {
		if out, _, code := clitest.QemuIO(t, "-f", "qcow2", "-c", c[0], c[1]); code != 0 {
			t.Fatalf("qemu-io: %s", out)
		}
	}
	if out, errs, code := clitest.Ours(Rebase, "-b", "new.qcow2", "-F", "qcow2", "ov.qcow2"); code != 0 {
		t.Fatalf("rebase: exit %d %s%s", code, out, errs)
	}
	for _, c := range []string{"read -P 0x22 0 256k", "read -P 0 256k 64k"} {
		if out, _, code := clitest.QemuIO(t, "-f", "qcow2", "-c", c, "ov.qcow2"); code != 0 || strings.Contains(out, "Pattern verification failed") {
			t.Errorf("%s after rebase: %s", c, out)
		}
	}
}

// TestRebaseSafeWritesZeroClusters: where the old chain reads zeros and
// the new backing file does not, safe rebase keeps the zeros as a zero
// write, as qemu-img rebase 7.2 does: the qcow2 v3 top gets zero clusters,
// not data clusters of zeros, so qemu-img map shows the same for both
// (QEMU's iotest 252).
func TestRebaseSafeWritesZeroClusters(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	t.Chdir(t.TempDir())
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "new.qcow2", "384k")
	clitest.MustQemu(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 64k", "-c", "write -P 0x11 128k 64k", "-c", "write -P 0x11 256k 64k", "new.qcow2")
	for _, img := range []string{"q.qcow2", "o.qcow2"} {
		clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "384k")
		clitest.MustQemu(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x22 0 128k", "-c", "write -P 0x11 128k 128k", img)
	}
	clitest.MustQemu(t, "qemu-img", "rebase", "-b", "new.qcow2", "-F", "qcow2", "q.qcow2")
	if out, errs, code := clitest.Ours(Rebase, "-b", "new.qcow2", "-F", "qcow2", "o.qcow2"); code != 0 {
		t.Fatalf("rebase: exit %d %q %q", code, out, errs)
	}
	qm, _ := clitest.Qemu(t, "qemu-img", "map", "--output=json", "q.qcow2")
	om, _ := clitest.Qemu(t, "qemu-img", "map", "--output=json", "o.qcow2")
	if qm != om {
		t.Errorf("map after our rebase:\n%s\nqemu-img's:\n%s", om, qm)
	}
	if out, code := clitest.Qemu(t, "qemu-img", "compare", "q.qcow2", "o.qcow2"); code != 0 {
		t.Errorf("compare: %s", out)
	}
}
