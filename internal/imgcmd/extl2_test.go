package imgcmd

import (
	"strings"
	"testing"

	"github.com/ringblk/ringblk/internal/cli/clitest"
)

// TestCreateExtL2SmallClusterAfterLine: extended_l2=on with clusters
// below 16 KiB (or a v2 image) is refused by the qcow2 driver, so
// qemu-img prints its "Formatting" line first (iotest 271).
func TestCreateExtL2SmallClusterAfterLine(t *testing.T) {
	clitest.NeedQemu(t)
	t.Chdir(t.TempDir())
	for _, o := range []string{"extended_l2=on,cluster_size=8k", "extended_l2=on,compat=0.10"} {
		want, wcode := clitest.Qemu(t, "qemu-img", "create", "-f", "qcow2", "-o", o, "t.qcow2", "1M")
		got, stderr, code := clitest.Ours(Create, "-f", "qcow2", "-o", o, "t.qcow2", "1M")
		if code != wcode || got != want || !strings.Contains(stderr, "Extended L2 entries are only supported") {
			t.Errorf("%s: exit %d (qemu-img %d), stdout %q (qemu-img %q), stderr %q", o, code, wcode, got, want, stderr)
		}
	}
}
