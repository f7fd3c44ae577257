package nbd

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/ringblk/ringblk/internal/nbdproto"

	"github.com/ringblk/ringblk/internal/nbdtest"
)

// newTLSEnv is newEnv with TLS required (certificates in the returned dir).
func newTLSEnv(t *testing.T, verifyPeer bool) (*env, string, *x509.CertPool, tls.Certificate) {
	t.Helper()
	dir := t.TempDir()
	pool, cc := nbdtest.WriteCerts(t, dir)
	cfg, err := TLSServerConfig(dir, verifyPeer)
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, ExportOptions{Name: "disk", AllocationDepth: true})
	e.srv.SetTLS(cfg)
	return e, dir, pool, cc
}

// startTLSClient sends STARTTLS on a greeted connection and completes the
// handshake as a Go client.
func startTLSClient(t *testing.T, c net.Conn, cfg *tls.Config) (*tls.Conn, error) {
	t.Helper()
	c.Write(optBytes(nbdproto.OptStartTLS, nil))
	if r := readOptReply(t, c); r.typ != nbdproto.RepAck {
		t.Fatalf("STARTTLS: reply %#x %q", r.typ, r.data)
	}
	tc := tls.Client(c, cfg)
	return tc, tc.Handshake()
}

// TestTLSRequiredPlaintextClient: with TLS required, a plaintext client
// gets ERR_TLS_REQD for every option but STARTTLS and ABORT, never an
// export; EXPORT_NAME closes the connection; STARTTLS with data is
// invalid; a STARTTLS followed by garbage instead of a TLS handshake
// closes that connection only.
func TestTLSRequiredPlaintextClient(t *testing.T) {
	e, _, pool, cc := newTLSEnv(t, true)
	c := dialRaw(t, e.sock)
	greet(t, c)
	for _, o := range []struct {
		opt  uint32
		data []byte
	}{
		{nbdproto.OptList, nil}, {nbdproto.OptStructured, nil}, {nbdproto.OptInfo, infoData("disk")}, {nbdproto.OptGo, infoData("disk")},
		{nbdproto.OptSetMeta, metaData("disk", nbdproto.CtxAllocation)}, {nbdproto.OptListMeta, metaData("disk")}, {nbdproto.OptExtendedHdrs, nil}, {99, []byte("x")},
	} {
		c.Write(optBytes(o.opt, o.data))
		if r := readOptReply(t, c); r.opt != o.opt || r.typ != nbdproto.RepErrTLSReqd {
			t.Fatalf("option %d before TLS: reply %#x %q, want ERR_TLS_REQD", o.opt, r.typ, r.data)
		}
	}
	c.Write(optBytes(nbdproto.OptStartTLS, []byte("junk")))
	if r := readOptReply(t, c); r.typ != nbdproto.RepErrInvalid {
		t.Fatalf("STARTTLS with data: reply %#x", r.typ)
	}
	c.Write(optBytes(nbdproto.OptExportName, []byte("disk")))
	expectClosed(t, c, "after EXPORT_NAME before TLS")

	g := dialRaw(t, e.sock)
	greet(t, g)
	g.Write(optBytes(nbdproto.OptStartTLS, nil))
	if r := readOptReply(t, g); r.typ != nbdproto.RepAck {
		t.Fatalf("STARTTLS: %#x", r.typ)
	}
	g.Write(optBytes(nbdproto.OptGo, infoData("disk"))) // plaintext where TLS records belong
	expectClosed(t, g, "after plaintext instead of a TLS handshake")

	a := dialRaw(t, e.sock)
	greet(t, a)
	a.Write(optBytes(nbdproto.OptAbort, nil))
	if r := readOptReply(t, a); r.typ != nbdproto.RepAck {
		t.Fatalf("ABORT before TLS: %#x", r.typ)
	}

	// The server still serves a proper TLS client, and the export works
	// through TLS.
	cfg := &tls.Config{RootCAs: pool, ServerName: "localhost", Certificates: []tls.Certificate{cc}}
	tc, err := tlsDial(t, e.sock, cfg)
	if err != nil {
		t.Fatalf("TLS client after the hostile ones: %v", err)
	}
	cl := dialConnGreeted(t, tc, "disk", false)
	cl.send(nbdproto.CmdFlush, 0, 1, 0, 0, nil)
	if v := cl.simple(1); v != 0 {
		t.Fatalf("flush through TLS: %d", v)
	}
}

// tlsDial connects, greets, starts TLS with cfg and returns the TLS
// connection (nil and the handshake error if it failed).
func tlsDial(t *testing.T, sock string, cfg *tls.Config) (*tls.Conn, error) {
	t.Helper()
	c := dialRaw(t, sock)
	greet(t, c)
	return startTLSClient(t, c, cfg)
}

// TestTLSTransmission: a client with a certificate from the CA starts TLS,
// lists exports, and then reads and writes through TLS; a second STARTTLS
// inside TLS is invalid. A client without a certificate is refused when the
// server verifies peers, and accepted when it does not.
func TestTLSTransmission(t *testing.T) {
	e, _, pool, cc := newTLSEnv(t, true)
	cfg := &tls.Config{RootCAs: pool, ServerName: "localhost", Certificates: []tls.Certificate{cc}, MinVersion: tls.VersionTLS12}
	tc, err := tlsDial(t, e.sock, cfg)
	if err != nil {
		t.Fatalf("TLS handshake with a client certificate: %v", err)
	}
	if v := tc.ConnectionState().Version; v < tls.VersionTLS12 {
		t.Fatalf("TLS version %#x", v)
	}
	tc.Write(optBytes(nbdproto.OptStartTLS, nil))
	if r := readOptReply(t, tc); r.typ != nbdproto.RepErrInvalid {
		t.Fatalf("second STARTTLS: reply %#x", r.typ)
	}
	tc.Write(optBytes(nbdproto.OptList, nil))
	if r := readOptReply(t, tc); r.typ != nbdproto.RepServer || !bytes.Contains(r.data, []byte("disk")) {
		t.Fatalf("LIST inside TLS: %#x %q", r.typ, r.data)
	}
	readOptReply(t, tc) // ACK
	cl := dialConnGreeted(t, tc, "disk", true)
	data := pattern(4<<20, 4)
	for i := 0; i < 4; i++ {
		cl.send(nbdproto.CmdWrite, nbdproto.CmdFlagFUA, uint64(i), uint64(i)<<20, 1<<20, data[i<<20:(i+1)<<20])
		if v := cl.simple(uint64(i)); v != 0 {
			t.Fatalf("write %d through TLS: %d", i, v)
		}
	}
	got, _, v := cl.read(9, 0, 3<<20, 0)
	if v != 0 || !bytes.Equal(got, data[:3<<20]) {
		t.Fatalf("read through TLS: err %d, equal %v", v, bytes.Equal(got, data[:3<<20]))
	}
	cl.send(nbdproto.CmdDisc, 0, 10, 0, 0, nil)
	f, _ := os.ReadFile(e.path)
	if !bytes.Equal(f[:3<<20], data[:3<<20]) {
		t.Fatal("the file does not hold what was written through TLS")
	}

	// With TLS 1.3 the client's handshake ends before the server has
	// checked its certificate: the refusal shows on the first read.
	if nc, err := tlsDial(t, e.sock, &tls.Config{RootCAs: pool, ServerName: "localhost"}); err == nil {
		nc.Write(optBytes(nbdproto.OptList, nil))
		var b [1]byte
		if _, err := nc.Read(b[:]); err == nil {
			t.Fatal("verify-peer server accepted a client without a certificate")
		}
	}
	e2, _, pool2, _ := newTLSEnv(t, false)
	if _, err := tlsDial(t, e2.sock, &tls.Config{RootCAs: pool2, ServerName: "localhost"}); err != nil {
		t.Fatalf("server without verify-peer refused a client without a certificate: %v", err)
	}
	if _, err := tlsDial(t, e2.sock, &tls.Config{RootCAs: pool2, ServerName: "localhost", MaxVersion: tls.VersionTLS11}); err == nil {
		t.Fatal("server accepted TLS 1.1")
	}
}

// dialConnGreeted negotiates GO on a connection past the greeting.
func dialConnGreeted(t *testing.T, c net.Conn, name string, structured bool) *client {
	t.Helper()
	if structured {
		c.Write(optBytes(nbdproto.OptStructured, nil))
		if r := readOptReply(t, c); r.typ != nbdproto.RepAck {
			t.Fatalf("structured reply: %#x", r.typ)
		}
	}
	c.Write(optBytes(nbdproto.OptGo, infoData(name)))
	cl := &client{t: t, c: c, structured: structured}
	for {
		r := readOptReply(t, c)
		if r.typ == nbdproto.RepAck {
			return cl
		}
		if r.typ != nbdproto.RepInfo {
			t.Fatalf("GO: reply %#x %q", r.typ, r.data)
		}
		if binary.BigEndian.Uint16(r.data) == nbdproto.InfoExport {
			cl.size = binary.BigEndian.Uint64(r.data[2:])
			cl.flags = binary.BigEndian.Uint16(r.data[10:])
		}
	}
}

// TestTLSRealClients: nbdinfo (libnbd, GnuTLS), qemu-img and qemu-io (QEMU
// tls-creds-x509 objects) reach the export over TLS with client
// certificates, and plain URIs are refused.
func TestTLSRealClients(t *testing.T) {
	needTool(t, "nbdinfo")
	needTool(t, "qemu-img")
	needTool(t, "qemu-io")
	e, dir, _, _ := newTLSEnv(t, true)
	out := runTool(t, "nbdinfo", "nbds+unix:///disk?socket="+e.sock+"&tls-certificates="+dir)
	if !strings.Contains(out, "export-size: 16777216") || !strings.Contains(out, "can_fast_zero: true") {
		t.Fatalf("nbdinfo over TLS:\n%s", out)
	}
	if out, err := exec.Command("nbdinfo", uri(e, "disk")).CombinedOutput(); err == nil {
		t.Fatalf("nbdinfo without TLS succeeded against a TLS-only server:\n%s", out)
	}
	obj := "tls-creds-x509,id=tls0,endpoint=client,dir=" + dir
	opts := "driver=nbd,server.type=unix,server.path=" + e.sock + ",export=disk,tls-creds=tls0,tls-hostname=localhost"
	runTool(t, "qemu-io", "--object", obj, "--image-opts", "-c", "write -P 0x6b 1M 2M", "-c", "flush", opts)
	out = runTool(t, "qemu-io", "--object", obj, "--image-opts", "-c", "read -P 0x6b 1M 2M", opts)
	if strings.Contains(out, "failed") {
		t.Fatalf("qemu-io read over TLS:\n%s", out)
	}
	out = runTool(t, "qemu-img", "info", "--object", obj, "--image-opts", "--output=json", opts)
	if !strings.Contains(out, `"virtual-size": 16777216`) {
		t.Fatalf("qemu-img info over TLS:\n%s", out)
	}
	f, _ := os.ReadFile(e.path)
	if !bytes.Equal(f[1<<20:3<<20], bytes.Repeat([]byte{0x6b}, 2<<20)) {
		t.Fatal("the file does not hold qemu-io's TLS write")
	}
}

// FuzzNegotiationTLS: with TLS required, arbitrary plaintext never reaches
// an export, and every reply before a STARTTLS acknowledgement is
// ERR_TLS_REQD, ERR_INVALID, ERR_TOO_BIG, or the ACK of ABORT or STARTTLS.
func FuzzNegotiationTLS(f *testing.F) {
	flags := be32(nbdproto.CFlagFixed | nbdproto.CFlagNoZeroes)
	f.Add(append(flags, optBytes(nbdproto.OptGo, infoData("a"))...))
	f.Add(append(append(flags, optBytes(nbdproto.OptStructured, nil)...), optBytes(nbdproto.OptList, nil)...))
	f.Add(append(flags, optBytes(nbdproto.OptExportName, []byte("a"))...))
	f.Add(append(flags, optBytes(nbdproto.OptStartTLS, []byte("x"))...))
	f.Add(append(append(flags, optBytes(nbdproto.OptStartTLS, nil)...), optBytes(nbdproto.OptGo, infoData("a"))...))
	f.Add(append(flags, optBytes(nbdproto.OptAbort, nil)...))
	f.Add(append(flags, optBytes(nbdproto.OptInfo, make([]byte, 70000))...))
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	f.Fuzz(func(t *testing.T, in []byte) {
		s := NewServer()
		s.AddExport(&Export{opts: ExportOptions{Name: "a"}, size: 1 << 20})
		srv, cli := socketPair(t)
		defer cli.Close()
		srv.SetDeadline(time.Now().Add(5 * time.Second))
		got := make(chan []byte, 1)
		go func() {
			b, _ := io.ReadAll(cli)
			got <- b
		}()
		go func() {
			cli.Write(in)
			cli.CloseWrite()
		}()
		n := &negotiator{s: s, nc: srv, tls: cfg} // no certificate: a handshake, if one starts, fails
		e, err := n.run()
		if e != nil || err == nil {
			t.Fatalf("plaintext handshake with TLS required ended with export %v, error %v", e, err)
		}
		srv.Close()
		out := <-got
		if len(out) < 18 {
			t.Fatalf("greeting of %d bytes", len(out))
		}
		out = out[18:]
		for len(out) >= 20 && binary.BigEndian.Uint64(out) == nbdproto.MagicRepOpt {
			opt, typ, l := binary.BigEndian.Uint32(out[8:]), binary.BigEndian.Uint32(out[12:]), binary.BigEndian.Uint32(out[16:])
			if uint64(len(out)) < 20+uint64(l) {
				t.Fatalf("option reply of %d bytes truncated", l)
			}
			out = out[20+l:]
			switch {
			case typ == nbdproto.RepErrTLSReqd, typ == nbdproto.RepErrInvalid, typ == nbdproto.RepErrTooBig:
			case typ == nbdproto.RepAck && opt == nbdproto.OptAbort:
			case typ == nbdproto.RepAck && opt == nbdproto.OptStartTLS:
				return // what follows is the (failed) TLS handshake
			default:
				t.Fatalf("option %d before TLS answered %#x", opt, typ)
			}
		}
		if len(out) != 0 {
			t.Fatalf("%d unexpected bytes after the option replies", len(out))
		}
	})
}
