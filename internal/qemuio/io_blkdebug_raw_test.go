package qemuio

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/internal/cli"
	"github.com/ringblk/ringblk/internal/cli/clitest"
)

// TestBlkdebugOverRawAsQemuIO is the regression test of a blkdebug
// filter over a raw image that injected nothing: ringblk's raw format was
// the file node itself, so nothing raised read_aio or write_aio (QEMU's
// raw format raises them on its file before each read and write), and a
// "blkdebug:CONFIG:IMAGE" name opened the filter with no format above it
// at all. Each image form and command must fail, or not, as qemu-io 7.2
// does, with the same first line and exit status.
func TestBlkdebugOverRawAsQemuIO(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io", "qemu-img")
	dir := t.TempDir()
	img := filepath.Join(dir, "r.img")
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "raw", img, "1M")
	rd := filepath.Join(dir, "rd.conf")
	wr := filepath.Join(dir, "wr.conf")
	if err := os.WriteFile(rd, []byte("[inject-error]\nevent = \"read_aio\"\nerrno = \"5\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(wr, []byte("[inject-error]\nevent = \"write_aio\"\nerrno = \"28\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	forms := map[string]func(cfg string) []string{
		"probed": func(cfg string) []string { return []string{"blkdebug:" + cfg + ":" + img} },
		"-f raw": func(cfg string) []string { return []string{"-f", "raw", "blkdebug:" + cfg + ":" + img} },
		"raw over blkdebug": func(cfg string) []string {
			return []string{"--image-opts", "driver=raw,file.driver=blkdebug,file.config=" + cfg + ",file.image.filename=" + img}
		},
		// No format above the filter: nothing raises the events, in
		// QEMU as here.
		"blkdebug alone": func(cfg string) []string {
			return []string{"--image-opts", "driver=blkdebug,config=" + cfg + ",image.filename=" + img}
		},
	}
	cmds := []struct{ cmd, cfg string }{
		{"read 0 512", rd}, {"write 0 512", rd}, {"write 0 512", wr}, {"read 0 512", wr},
		{"write -z 0 512", wr}, {"aio_read 0 4k", rd},
	}
	first := func(out string) string {
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, "read ") || strings.HasPrefix(l, "wrote ") || strings.Contains(l, "failed:") {
				return l
			}
		}
		return out
	}
	failures := 0
	for name, form := range forms {
		for _, c := range cmds {
			args := append([]string{"-c", c.cmd}, form(c.cfg)...)
			qo, qe, qc := clitest.QemuIO(t, args...)
			saved := cli.Prog
			cli.Prog = "qemu-io"
			ro, re, rc := ioRun("", args...)
			cli.Prog = saved
			want, got := first(qo+qe), first(ro+re)
			if want != got || qc != rc {
				t.Errorf("%s, %q with %s: ringblk %q (exit %d), qemu-io %q (exit %d)", name, c.cmd, filepath.Base(c.cfg), got, rc, want, qc)
			}
			if strings.Contains(want, "failed:") {
				failures++
			}
		}
	}
	if failures == 0 {
		t.Fatal("qemu-io failed nothing: the configurations inject no error")
	}
}

// TestInfoOnBlkdebugNodeAsQemuIO: qemu-io's info on an image whose top
// node is a blkdebug filter panicked (it took every image that was not
// raw or a protocol for qcow2); QEMU names the filter as the format.
// Through a "blkdebug:" name the probed format is on top, as in QEMU.
func TestInfoOnBlkdebugNodeAsQemuIO(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io", "qemu-img")
	dir := t.TempDir()
	img := filepath.Join(dir, "q.qcow2")
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "1M")
	for _, args := range [][]string{
		{"-c", "info", "--image-opts", "driver=blkdebug,image.filename=" + img},
		{"-c", "info", "blkdebug::" + img},
	} {
		qo, _, qc := clitest.QemuIO(t, args...)
		saved := cli.Prog
		cli.Prog = "qemu-io"
		ro, _, rc := ioRun("", args...)
		cli.Prog = saved
		if qo != ro || qc != rc {
			t.Errorf("%q: ringblk (exit %d):\n%s\nqemu-io (exit %d):\n%s", args, rc, ro, qc, qo)
		}
	}
}
