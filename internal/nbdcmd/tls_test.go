package nbdcmd

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/internal/cli/clitest"

	"github.com/ringblk/ringblk/internal/nbdtest"
)

// TestNbdCmdTLS: qemu-nbd's TLS options. With --object tls-creds-x509 and
// --tls-creds, qemu-io (QEMU's TLS client) writes and nbdinfo (libnbd's)
// reads over TLS with client certificates; a plaintext client is refused.
func TestNbdCmdTLS(t *testing.T) {
	needCmd(t, "qemu-io", "nbdinfo")
	dir := t.TempDir()
	img := filepath.Join(dir, "a.raw")
	os.WriteFile(img, nil, 0o644)
	os.Truncate(img, 4<<20) // sparse: the map shows the write
	certs := nbdtest.CertDir(t)
	sock := filepath.Join(dir, "s")
	startNbd(t, sock, "-t", "-e", "0", "--object", "tls-creds-x509,id=tls0,dir="+certs+",endpoint=server", "--tls-creds", "tls0", "-x", "d", img)
	obj := "tls-creds-x509,id=c0,endpoint=client,dir=" + certs
	opts := "driver=nbd,server.type=unix,server.path=" + sock + ",export=d,tls-creds=c0,tls-hostname=localhost"
	if out, err := exec.Command("qemu-io", "--object", obj, "--image-opts", "-c", "write -P 0x3c 1M 1M", "-c", "flush", opts).CombinedOutput(); err != nil {
		t.Fatalf("qemu-io over TLS: %v\n%s", err, out)
	}
	out, err := exec.Command("nbdinfo", "--map", "nbds+unix:///d?socket="+sock+"&tls-certificates="+certs).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "1048576     1048576    0  data") {
		t.Fatalf("nbdinfo --map over TLS: %v\n%s", err, out)
	}
	if out, err := exec.Command("nbdinfo", "nbd+unix:///d?socket="+sock).CombinedOutput(); err == nil {
		t.Fatalf("plaintext nbdinfo succeeded against --tls-creds:\n%s", out)
	}
	f, _ := os.ReadFile(img)
	if f[1<<20] != 0x3c || f[2<<20-1] != 0x3c {
		t.Fatal("the image does not hold the TLS client's write")
	}
}

func TestNbdCmdTLSErrors(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "a.raw")
	os.WriteFile(img, make([]byte, 1<<20), 0o644)
	empty := t.TempDir()
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"nbd", "--tls-creds", "tls0", img}, "No TLS credentials with id 'tls0'"},
		{[]string{"nbd", "--object", "tls-creds-psk,id=p,dir=" + empty + ",endpoint=server", img}, "only tls-creds-x509"},
		{[]string{"nbd", "--object", "tls-creds-x509,id=t,dir=" + empty, "--tls-creds", "t", img}, "server endpoint"},
		{[]string{"nbd", "--object", "tls-creds-x509,id=t,dir=" + empty + ",endpoint=server,verify-peer=maybe", img}, "verify-peer"},
		{[]string{"nbd", "--object", "tls-creds-x509,dir=" + empty + ",endpoint=server", img}, "'id' is missing"},
		{[]string{"nbd", "--tls-authz", "a0", img}, "--tls-authz is not supported"},
		{[]string{"nbd", "-k", filepath.Join(dir, "s"), "--object", "tls-creds-x509,id=t,dir=" + empty + ",endpoint=server", "--tls-creds", "t", img}, "Failed to load TLS credentials 't'"},
	} {
		_, stderr, code := clitest.RunRingblk(t, nil, c.args...)
		if code != 1 || !strings.Contains(stderr, c.want) || strings.Count(stderr, "\n") != 1 {
			t.Errorf("%v: exit %d, stderr %q; want exit 1 and one line with %q", c.args, code, stderr, c.want)
		}
	}
}
