package qemuio

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/internal/cli/clitest"
)

// TestIOLuksOpenErrorsMatchQemuIO: opening LUKS images (raw and qcow2)
// without a key, with the wrong one, or naming a secret that does not
// exist fails with qemu-io's exact line and exit status; the right key
// reads what qemu-io wrote.
func TestIOLuksOpenErrorsMatchQemuIO(t *testing.T) {
	clitest.NeedQemu(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	l, q := filepath.Join(dir, "e.luks"), filepath.Join(dir, "e.qcow2")
	clitest.QEMUCreateLUKS(t, "luks", l, "key-secret=s0,iter-time=10", "1M")
	clitest.QEMUCreateLUKS(t, "qcow2", q, "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10", "1M")
	good := "secret,id=s0,data=abc"
	clitest.QemuIO(t, "--object", good, "--image-opts", "driver=luks,key-secret=s0,file.filename="+l, "-c", "write -P 0x21 0 64k")
	clitest.QemuIO(t, "--object", good, "--image-opts", "driver=qcow2,encrypt.key-secret=s0,file.filename="+q, "-c", "write -P 0x21 0 64k")
	cases := [][]string{
		{"-f", "luks", l, "-c", "read 0 512"},
		{"-f", "qcow2", q, "-c", "read 0 512"},
		{q, "-c", "read 0 512"},
		{"--object", "secret,id=s0,data=abd", "--image-opts", "driver=luks,key-secret=s0,file.filename=" + l, "-c", "read 0 512"},
		{"--object", "secret,id=s0,data=abd", "--image-opts", "driver=qcow2,encrypt.key-secret=s0,file.filename=" + q, "-c", "read 0 512"},
		{"--object", "secret,id=s1,data=abc", "--image-opts", "driver=luks,key-secret=s0,file.filename=" + l, "-c", "read 0 512"},
		{"--object", good, "--image-opts", "driver=luks,key-secret=s0,file.filename=" + l, "-c", "read -P 0x21 0 64k"},
		{"--object", good, "--image-opts", "driver=qcow2,encrypt.key-secret=s0,file.filename=" + q, "-c", "read -P 0x21 0 64k"},
	}
	for _, args := range cases {
		wout, werr, wcode := clitest.QemuIO(t, args...)
		gout, gerr, gcode := ioRun("", args...)
		// The program name differs (qemu-io, ringblk): compare what follows.
		_, werrMsg, _ := strings.Cut(strings.TrimSpace(werr), ": ")
		_, gerrMsg, _ := strings.Cut(strings.TrimSpace(gerr), ": ")
		if gcode != wcode || gerrMsg != werrMsg || strings.Contains(gout, "failed") != strings.Contains(wout, "failed") {
			t.Errorf("%v: exit %d (qemu-io %d)\nqemu-io: %s%s\nours: %s%s", args, gcode, wcode, wout, werr, gout, gerr)
		}
	}
}
