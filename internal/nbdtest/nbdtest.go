// Package nbdtest holds test helpers shared by the packages that test NBD
// (the server, its command, the client driver and their users): starting
// qemu-nbd on a Unix socket and writing TLS certificates in the layout
// QEMU and libnbd read. For tests only.
package nbdtest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// StartQemuNbd runs `qemu-nbd -k SOCKET ARGS...` with a socket in a
// temporary directory and returns the socket's path once qemu-nbd accepts
// connections (listening, not only bound). The test is skipped when
// qemu-nbd is not installed; the process is killed at the test's end.
func StartQemuNbd(t testing.TB, args ...string) string {
	t.Helper()
	if _, err := exec.LookPath("qemu-nbd"); err != nil {
		t.Skip("qemu-nbd not installed (scripts/deps.sh installs it)")
	}
	sock := filepath.Join(t.TempDir(), "q.sock")
	q := exec.Command("qemu-nbd", append([]string{"-k", sock}, args...)...)
	var stderr bytes.Buffer
	q.Stderr = &stderr
	if err := q.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { q.Wait(); close(exited) }()
	t.Cleanup(func() { q.Process.Kill(); <-exited })
	for i := 0; ; i++ {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return sock
		}
		select {
		case <-exited:
			t.Fatalf("qemu-nbd %v exited: %s", args, stderr.String())
		default:
		}
		if i == 200 {
			t.Fatalf("qemu-nbd %v did not start: %s", args, stderr.String())
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// WriteCerts makes a CA and a server and a client certificate signed by
// it (for localhost, 127.0.0.1 and ::1), in the files QEMU's
// tls-creds-x509 and libnbd's tls-certificates read: ca-cert.pem,
// server-cert.pem, server-key.pem, client-cert.pem, client-key.pem. It
// returns the CA pool and the client's certificate.
func WriteCerts(t testing.TB, dir string) (*x509.CertPool, tls.Certificate) {
	t.Helper()
	key := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	write := func(name, typ string, der []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Now()
	caKey := key()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ringblk test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	write("ca-cert.pem", "CERTIFICATE", caDER)
	var client tls.Certificate
	for i, who := range []string{"server", "client"} {
		k := key()
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(int64(i + 2)), Subject: pkix.Name{CommonName: "localhost"},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
			DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
			KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kder, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		write(who+"-cert.pem", "CERTIFICATE", der)
		write(who+"-key.pem", "PRIVATE KEY", kder)
		if who == "client" {
			client = tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k}
		}
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return pool, client
}

// CertDir is WriteCerts into a new temporary directory, which it returns.
func CertDir(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	WriteCerts(t, dir)
	return dir
}
