package qemuio

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/internal/cli/clitest"
)

// TestIOWritethroughCrash: with --cache writethrough each write is
// followed by the node's flush, so a kill right after it (iotest 039)
// leaves the write's L2 entry on disk. On a lazy-refcounts image the
// crash must look exactly as qemu-io's: the dirty bit set, the data
// cluster's refcount missing (only it: the L2 table's refcount went out
// when the table was allocated), the data readable; the lazy-refcounts
// runtime option turns lazy mode on for an image without the bit and off
// for one with it.
func TestIOWritethroughCrash(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	dir := t.TempDir()
	for _, c := range []struct {
		name, create string
		pre          []string
	}{
		{"lazy", "compat=1.1,lazy_refcounts=on", nil},
		{"eager", "compat=1.1,lazy_refcounts=off", nil},
		{"reopen-on", "compat=1.1,lazy_refcounts=off", []string{"-c", "reopen -o lazy-refcounts=on"}},
		{"reopen-off", "compat=1.1,lazy_refcounts=on", []string{"-c", "reopen -o lazy-refcounts=off"}},
	} {
		var checks [2]string
		for i, prog := range []string{"qemu", "ours"} {
			img := filepath.Join(dir, c.name+"-"+prog+".qcow2")
			clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", c.create, img, "128M")
			args := append([]string{"--cache", "writethrough", "-f", "qcow2"}, c.pre...)
			args = append(args, "-c", "write -P 0x5a 0 512", "-c", "sigraise 9", img)
			if prog == "qemu" {
				clitest.QemuIO(t, args...)
			} else {
				runAsProcess(t, args...)
			}
			out, _ := clitest.Qemu(t, "qemu-img", "check", img)
			checks[i] = strings.ReplaceAll(out, img, "IMG")
			if o, _, code := clitest.QemuIO(t, "-r", "-f", "qcow2", "-c", "read -P 0x5a 0 512", img); code != 0 || strings.Contains(o, "failed") {
				t.Errorf("%s (%s): the write is lost after the kill: %s", c.name, prog, o)
			}
		}
		if checks[0] != checks[1] {
			t.Errorf("%s: qemu-img check after the kill differs:\nqemu-io:\n%s\nours:\n%s", c.name, checks[0], checks[1])
		}
	}
}
