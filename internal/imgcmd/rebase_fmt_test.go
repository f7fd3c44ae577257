package imgcmd

import (
	"strings"
	"testing"

	"github.com/ringblk/ringblk/internal/cli"
	"github.com/ringblk/ringblk/internal/cli/clitest"
)

// TestRebaseUnsafeRecordsQemuFormat: rebase -u records any format name
// qemu-img 7.2 knows (iotest 031's host_device) and refuses other names
// with qemu-img's words; the recorded name is not followed: opening the
// image over its backing file refuses the format.
func TestRebaseUnsafeRecordsQemuFormat(t *testing.T) {
	clitest.NeedQemu(t)
	t.Chdir(t.TempDir())
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "r.qcow2", "1M")
	if _, errs, code := clitest.Ours(Rebase, "-u", "-b", "/some/backing/file/path", "-F", "host_device", "r.qcow2"); code != 0 {
		t.Fatalf("rebase -u -F host_device: exit %d: %s", code, errs)
	}
	info := clitest.ParseJSON(t, "info", clitest.MustQemu(t, "qemu-img", "info", "--output=json", "r.qcow2"))
	if info["backing-filename-format"] != "host_device" || info["backing-filename"] != "/some/backing/file/path" {
		t.Errorf("recorded backing: %v %v", info["backing-filename"], info["backing-filename-format"])
	}
	if _, errs, code := clitest.Ours(Rebase, "-u", "-b", "x", "-F", "foo", "r.qcow2"); code != 1 || !strings.Contains(errs, "Invalid format name: 'foo'") {
		t.Errorf("rebase -F foo: exit %d %q", code, errs)
	}
	if img, err := cli.OpenBlk("r.qcow2", cli.BlkOptions{Format: "qcow2", ReadOnly: true}); err == nil {
		img.Close()
		t.Error("an image whose backing format is host_device opened over its backing file")
	}
}
