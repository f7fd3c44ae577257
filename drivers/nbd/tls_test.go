package nbd_test

import (
	"bytes"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
	nbdc "github.com/ringblk/ringblk/drivers/nbd"
	nbdsrv "github.com/ringblk/ringblk/nbd"

	"github.com/ringblk/ringblk/internal/nbdtest"
)

// TestClientTLS: nbds+unix:// with tls-certificates reaches a server that
// requires TLS and verifies client certificates (ours, and qemu-nbd with a
// tls-creds-x509 object); reads and writes go through the TLS pipe. The
// plain URI is refused, and so is a CA that did not sign the server.
func TestClientTLS(t *testing.T) {
	certs := nbdtest.CertDir(t)
	path, data := image(t)
	t.Run("ringblk", func(t *testing.T) {
		cfg, err := nbdsrv.TLSServerConfig(certs, true)
		if err != nil {
			t.Fatal(err)
		}
		srvURI := serveWith(t, path, nbdsrv.ExportOptions{Name: "disk"}, cfg)
		e := blocktest.NewEnv(t, 0)
		if _, err := nbdc.NewNode(e.G, srvURI, true, block.Options{Name: "plain"}); err == nil {
			t.Fatal("a plaintext client opened a TLS-only export")
		}
		other := nbdtest.CertDir(t)
		if _, err := nbdc.NewNode(e.G, strings.Replace(srvURI, "nbd+unix", "nbds+unix", 1)+"&tls-certificates="+other, true, block.Options{Name: "wrongca"}); err == nil {
			t.Fatal("the client accepted a server certificate from another CA")
		}
		n := open(t, e, strings.Replace(srvURI, "nbd+unix", "nbds+unix", 1)+"&tls-certificates="+certs, false, block.Options{})
		got := make([]byte, size)
		if _, err := n.ReadAt(got, 0); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("read over TLS: %v, equal %v", err, bytes.Equal(got, data))
		}
		w := pattern(3<<20, 11)
		if _, err := n.WriteAt(w, 2<<20); err != nil {
			t.Fatal(err)
		}
		if err := n.Flush(); err != nil {
			t.Fatal(err)
		}
		f, _ := os.ReadFile(path)
		if !bytes.Equal(f[2<<20:5<<20], w) {
			t.Fatal("the file does not hold the write made over TLS")
		}
		copy(data[2<<20:], w)
	})
	t.Run("qemu-nbd", func(t *testing.T) {
		if _, err := exec.LookPath("qemu-nbd"); err != nil {
			t.Skip("qemu-nbd not installed (scripts/deps.sh installs it)")
		}
		qs := nbdtest.StartQemuNbd(t, "-t", "-e", "0", "-f", "raw", "--object",
			"tls-creds-x509,id=t0,endpoint=server,dir="+certs, "--tls-creds", "t0", path)
		e := blocktest.NewEnv(t, 0)
		n := open(t, e, "nbds+unix:///?socket="+qs+"&tls-certificates="+certs, true, block.Options{})
		got := make([]byte, size)
		if _, err := n.ReadAt(got, 0); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("read from qemu-nbd over TLS: %v, equal %v", err, bytes.Equal(got, data))
		}
	})
}
