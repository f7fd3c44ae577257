package imgcmd

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/internal/cli"
	"github.com/ringblk/ringblk/internal/cli/clitest"
)

// TestCommitEmptyInPlace: commit empties FILE through its own node: the
// blkdebug filter of a blkdebug: name sees the emptying's events, so an
// error injected at each step fails the command with qemu-img's "Failed
// to empty" (after the data reached the base, and not at the base's
// flush: the filter is the top image's only), and leaves an image the
// next read-write open repairs to a clean one (iotest 098). Without an
// error FILE ends as QEMU leaves it: four clusters, nothing allocated.
func TestCommitEmptyInPlace(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	t.Chdir(t.TempDir())
	setup := func() {
		t.Helper()
		clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "b.qcow2", "64M")
		clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", "t.qcow2", "64M")
		clitest.MustQemu(t, "qemu-io", "-f", "qcow2", "-c", "write -P 9 0 64k", "t.qcow2")
	}
	for _, ev := range []string{"l1_update", "empty_image_prepare", "reftable_update", "refblock_alloc"} {
		setup()
		if err := os.WriteFile("bd.conf", []byte(fmt.Sprintf("[inject-error]\nevent = %q\n", ev)), 0o644); err != nil {
			t.Fatal(err)
		}
		_, errs, code := clitest.Ours(Commit, "-q", "blkdebug:bd.conf:t.qcow2")
		if code != 1 || !strings.Contains(errs, "Failed to empty blkdebug:bd.conf:t.qcow2: Input/output error") {
			t.Errorf("%s: exit %d, stderr %q, want Failed to empty", ev, code, errs)
		}
		if out, _, code := clitest.QemuIO(t, "-f", "qcow2", "-c", "read -P 9 0 64k", "b.qcow2"); code != 0 || strings.Contains(out, "failed") {
			t.Errorf("%s: the base lacks the committed data: %s", ev, out)
		}
		img, err := cli.OpenBlk("t.qcow2", cli.BlkOptions{Format: "qcow2", NoBacking: true}) // repairs
		if err != nil {
			t.Fatalf("%s: open after the failed emptying: %v", ev, err)
		}
		img.Close()
		if out, code := clitest.Qemu(t, "qemu-img", "check", "t.qcow2"); code != 0 {
			t.Errorf("%s: qemu-img check after the repairing open: exit %d\n%s", ev, code, out)
		}
	}
	setup()
	if _, errs, code := clitest.Ours(Commit, "-q", "t.qcow2"); code != 0 {
		t.Fatalf("commit: %s", errs)
	}
	if st, err := os.Stat("t.qcow2"); err != nil || st.Size() != 4<<16 {
		t.Errorf("emptied image: %v, size %d, want 4 clusters", err, st.Size())
	}
	if out, code := clitest.Qemu(t, "qemu-img", "check", "t.qcow2"); code != 0 {
		t.Errorf("qemu-img check of the emptied image: exit %d\n%s", code, out)
	}
	if out, _ := clitest.Qemu(t, "qemu-img", "map", "--output=json", "t.qcow2"); strings.Contains(out, `"depth": 0, "present": true`) {
		t.Errorf("the emptied image still maps clusters: %s", out)
	}
}
