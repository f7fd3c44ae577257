package imgcmd

import (
	"testing"

	"github.com/ringblk/ringblk/internal/cli/clitest"
)

// TestAmendResizeMessagesMatchQemu: refusals of amend and resize in
// qemu-img's words, run as qemu-img (iotest 061): the driver's error
// alone (no "Could not amend"/"Could not resize" prefix), "Unknown
// compatibility level", and the two-line error and hint of create-only
// keys and backing file changes. Every case is refused, so qemu-img and
// ours run on the same image.
func TestAmendResizeMessagesMatchQemu(t *testing.T) {
	clitest.NeedQemu(t)
	t.Chdir(t.TempDir())
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=0.10", "v2.qcow2", "32M")
	clitest.MustQemu(t, "qemu-img", "snapshot", "-c", "foo", "v2.qcow2")
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "t.qcow2", "64M")
	for _, args := range [][]string{
		{"resize", "v2.qcow2", "64M"},
		{"amend", "-o", "compat=0.42", "t.qcow2"},
		{"amend", "-o", "cluster_size=1k", "t.qcow2"},
		{"amend", "-o", "preallocation=on", "t.qcow2"},
		{"amend", "-o", "backing_file=x.qcow2", "t.qcow2"},
		{"amend", "-o", "compat=0.10,lazy_refcounts=on", "t.qcow2"},
		{"amend", "-o", "lazy_refcounts=on", "v2.qcow2"},
	} {
		qemuAndOurs(t, args...)
	}
}
