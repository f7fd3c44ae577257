package nbd_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
	nbdc "github.com/ringblk/ringblk/drivers/nbd"
	nbdsrv "github.com/ringblk/ringblk/nbd"
)

// certDir writes a CA and a server and a client certificate in the file
// names of QEMU's tls-creds-x509 and libnbd's tls-certificates.
func certDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	now := time.Now()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caT := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caT, caT, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	put := func(name, typ string, der []byte) {
		os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600)
	}
	put("ca-cert.pem", "CERTIFICATE", caDER)
	for i, who := range []string{"server", "client"} {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tm := &x509.Certificate{SerialNumber: big.NewInt(int64(i + 2)), Subject: pkix.Name{CommonName: "localhost"},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), DNSNames: []string{"localhost"},
			IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
		der, err := x509.CreateCertificate(rand.Reader, tm, ca, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kd, _ := x509.MarshalPKCS8PrivateKey(k)
		put(who+"-cert.pem", "CERTIFICATE", der)
		put(who+"-key.pem", "PRIVATE KEY", kd)
	}
	return dir
}

// TestClientTLS: nbds+unix:// with tls-certificates reaches a server that
// requires TLS and verifies client certificates (ours, and qemu-nbd with a
// tls-creds-x509 object); reads and writes go through the TLS pipe. The
// plain URI is refused, and so is a CA that did not sign the server.
func TestClientTLS(t *testing.T) {
	certs := certDir(t)
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
		other := certDir(t)
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
		qs := filepath.Join(t.TempDir(), "q.sock")
		q := exec.Command("qemu-nbd", "-t", "-e", "0", "-f", "raw", "-k", qs, "--object",
			"tls-creds-x509,id=t0,endpoint=server,dir="+certs, "--tls-creds", "t0", path)
		if err := q.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { q.Process.Kill(); q.Wait() }()
		for i := 0; ; i++ {
			if c, err := net.Dial("unix", qs); err == nil { // listening, not just bound
				c.Close()
				break
			}
			if i == 200 {
				t.Fatal("qemu-nbd did not start")
			}
			time.Sleep(25 * time.Millisecond)
		}
		e := blocktest.NewEnv(t, 0)
		n := open(t, e, "nbds+unix:///?socket="+qs+"&tls-certificates="+certs, true, block.Options{})
		got := make([]byte, size)
		if _, err := n.ReadAt(got, 0); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("read from qemu-nbd over TLS: %v, equal %v", err, bytes.Equal(got, data))
		}
	})
}
