package clitest

import (
	"os/exec"
	"strings"
	"testing"
)

// QEMUCreateLUKS runs qemu-img create for a LUKS-encrypted image (fmt
// "luks", or "qcow2" with encrypt.* options) with the secret "abc" as
// object s0. qemu-img 7.2 measures PBKDF2 speed with the thread's CPU
// time and fails with "Unable to get accurate CPU usage" when a
// measurement reads 0 ms (coarse accounting on a loaded or virtual
// machine): that one failure is retried.
func QEMUCreateLUKS(t testing.TB, fmtName, path, opts, size string, extra ...string) {
	t.Helper()
	var out []byte
	var err error
	args := append([]string{"create", "-q", "--object", "secret,id=s0,data=abc", "-f", fmtName, "-o", opts}, extra...)
	args = append(args, path, size)
	for i := 0; i < 30; i++ {
		out, err = exec.Command("qemu-img", args...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "Unable to get accurate CPU usage") {
			break
		}
	}
	if err != nil {
		t.Fatalf("qemu-img create: %v: %s", err, out)
	}
}
