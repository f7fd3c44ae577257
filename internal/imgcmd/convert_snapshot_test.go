package imgcmd

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/internal/cli/clitest"
)

// TestConvertSnapshot: convert -l reads an internal snapshot of the
// source instead of its active disk, in both of qemu-img's spellings;
// an unknown snapshot and a snapshot of concatenated sources are refused
// with qemu-img's words.
func TestConvertSnapshot(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io")
	t.Chdir(t.TempDir())
	if _, stderr, code := clitest.Ours(Create, "-q", "-f", "qcow2", "s.qcow2", "1M"); code != 0 {
		t.Fatal(stderr)
	}
	clitest.MustQemu(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 64k", "s.qcow2")
	if _, stderr, code := clitest.Ours(Snapshot, "-c", "foo", "s.qcow2"); code != 0 {
		t.Fatal(stderr)
	}
	clitest.MustQemu(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x22 0 64k", "s.qcow2")
	for _, l := range []string{"foo", "1", "snapshot.name=foo", "snapshot.id=1", "snapshot.id=1,snapshot.name=foo"} {
		os.Remove("s.raw")
		if _, stderr, code := clitest.Ours(Convert, "-l", l, "-O", "raw", "s.qcow2", "s.raw"); code != 0 {
			t.Fatalf("convert -l %s: exit %d: %s", l, code, stderr)
		}
		got, err := os.ReadFile("s.raw")
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 1<<20 || !bytes.Equal(got[:64<<10], bytes.Repeat([]byte{0x11}, 64<<10)) {
			t.Fatalf("convert -l %s: output is not the snapshot's content", l)
		}
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"-l", "bar", "s.qcow2", "o.raw"}, "Failed to load snapshot: Can't find snapshot"},
		{[]string{"-l", "snapshot.id=1,snapshot.name=bar", "s.qcow2", "o.raw"}, "Failed to load snapshot: Can't find snapshot"},
		{[]string{"-l", "foo", "s.qcow2", "s.qcow2", "o.raw"}, "No support for concatenating multiple snapshot"},
	} {
		_, stderr, code := clitest.Ours(Convert, c.args...)
		if code != 1 || !strings.Contains(stderr, c.want) {
			t.Errorf("convert %v: exit %d, stderr %q, want %q", c.args, code, stderr, c.want)
		}
	}
}
