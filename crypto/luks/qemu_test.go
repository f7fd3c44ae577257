package luks

import (
	"os/exec"
	"strings"
	"testing"
)

// QEMUCreate runs qemu-img create for a LUKS image (fmt luks or qcow2)
// with the secret "abc" as s0. qemu-img 7.2 measures PBKDF2 speed with the
// thread's CPU time and fails with "Unable to get accurate CPU usage" when
// a measurement reads 0 ms (coarse accounting on this kind of machine):
// that one failure is retried.
func QEMUCreate(t *testing.T, fmtName, path, opts, size string) {
	t.Helper()
	var out []byte
	var err error
	for i := 0; i < 20; i++ {
		out, err = exec.Command("qemu-img", "create", "-q", "--object", "secret,id=s0,data=abc", "-f", fmtName, "-o", opts, path, size).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "Unable to get accurate CPU usage") {
			break
		}
	}
	if err != nil {
		t.Fatalf("qemu-img create: %v: %s", err, out)
	}
}
