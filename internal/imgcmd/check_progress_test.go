package imgcmd

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/internal/cli/clitest"
)

// TestCheckProgress: check -p reports progress on stderr, rising to 100%,
// and leaves stdout exactly as without -p (JSON stays parseable); -q
// silences it.
func TestCheckProgress(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	img := filepath.Join(t.TempDir(), "p.qcow2")
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", img, "256M")
	clitest.MustQemu(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 8M", "-c", "write -P 0x22 128M 4M", img)

	plainOut, _, plainCode := clitest.Ours(Check, "--output=json", img)
	out, errOut, code := clitest.Ours(Check, "-p", "--output=json", img)
	if code != 0 || plainCode != 0 {
		t.Fatalf("exit %d with -p, %d without", code, plainCode)
	}
	if out != plainOut {
		t.Errorf("stdout with -p differs:\n%s\nwithout:\n%s", out, plainOut)
	}
	var last string
	n := 0
	for _, f := range strings.FieldsFunc(errOut, func(r rune) bool { return r == '\r' || r == '\n' }) {
		if f = strings.TrimSpace(f); f != "" {
			last = f
			n++
		}
	}
	if n < 3 || last != "(100.00/100%)" {
		t.Errorf("progress on stderr: %d lines, last %q; want several, ending at (100.00/100%%)\n%q", n, last, errOut)
	}
	if _, errQ, _ := clitest.Ours(Check, "-p", "-q", img); errQ != "" {
		t.Errorf("check -p -q printed %q on stderr", errQ)
	}
}
