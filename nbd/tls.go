package nbd

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/ringblk/ringblk/internal/nbdproto"
)

// TLS (NBD_OPT_STARTTLS).
//
// With Server.SetTLS, TLS is mandatory, as with qemu-nbd --tls-creds:
// before STARTTLS every option but ABORT is answered ERR_TLS_REQD, and
// NBD_OPT_EXPORT_NAME, which has no error reply, closes the connection.
// STARTTLS is acknowledged in plaintext, then the TLS handshake runs on the
// same socket under the handshake deadline, and negotiation goes on inside
// TLS. A second STARTTLS gets ERR_INVALID. Without it, STARTTLS
// gets ERR_UNSUP.
//
// The transmission phase runs on a Context with raw socket I/O, which
// cannot speak TLS. A TLS client is therefore served through a Unix
// socketpair: the Context gets one end, exactly as it gets a plaintext
// client's socket, and two goroutines per connection (not per request)
// move bytes between the other end and the tls.Conn. The pair's buffers
// bound what a slow client holds, as the socket's do for plaintext.

// TLSServerConfig loads x509 credentials laid out as QEMU's
// tls-creds-x509 object expects them for endpoint=server: ca-cert.pem,
// server-cert.pem and server-key.pem in dir. With verifyPeer (QEMU's
// default) clients must present a certificate signed by that CA. The
// protocol floor is TLS 1.2.
func TLSServerConfig(dir string, verifyPeer bool) (*tls.Config, error) {
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca-cert.pem"))
	if err != nil {
		return nil, fmt.Errorf("TLS credentials: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("TLS credentials: %s holds no PEM certificate", filepath.Join(dir, "ca-cert.pem"))
	}
	certFile, keyFile := filepath.Join(dir, "server-cert.pem"), filepath.Join(dir, "server-key.pem")
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("TLS credentials %s, %s: %w", certFile, keyFile, err)
	}
	cfg := &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS12,
		ClientCAs:    pool,
		ClientAuth:   tls.NoClientCert,
	}
	if verifyPeer {
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// startTLS answers NBD_OPT_STARTTLS and, after the acknowledgement, runs
// the TLS handshake; a failed handshake ends the connection.
func (n *negotiator) startTLS(data []byte) error {
	switch {
	case n.tls == nil:
		return n.replyErr(nbdproto.OptStartTLS, nbdproto.RepErrUnsup, "TLS is not configured on this server")
	case len(data) != 0:
		return n.replyErr(nbdproto.OptStartTLS, nbdproto.RepErrInvalid, "NBD_OPT_STARTTLS carries no data")
	case n.tlsDone:
		return n.replyErr(nbdproto.OptStartTLS, nbdproto.RepErrInvalid, "TLS is already active")
	}
	if err := n.reply(nbdproto.OptStartTLS, nbdproto.RepAck, nil); err != nil {
		return err
	}
	tc := tls.Server(n.nc, n.tls)
	if err := tc.Handshake(); err != nil {
		return fmt.Errorf("TLS handshake: %w", err)
	}
	n.nc, n.tlsDone = tc, true
	// Nothing negotiated in plaintext carries over (only ABORT and
	// STARTTLS were possible, but be explicit).
	n.structured, n.meta, n.metaExport, n.metaX = false, nil, "", nil
	return nil
}

// tlsPipe returns the Context's end of a socketpair whose other end two
// goroutines connect to tc.
func tlsPipe(tc *tls.Conn) (net.Conn, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("socketpair for a TLS client: %w", err)
	}
	inner, err := fdConn(fds[0], "nbd-tls-inner")
	if err != nil {
		unix.Close(fds[1])
		return nil, err
	}
	outer, err := fdConn(fds[1], "nbd-tls-outer")
	if err != nil {
		inner.Close()
		return nil, err
	}
	go func() {
		// Requests: client → Context. EOF or an error on the TLS side is
		// EOF for the Context, which then finishes what it has read.
		buf := make([]byte, 64<<10)
		io.CopyBuffer(outer, tc, buf)
		if uc, ok := outer.(*net.UnixConn); ok {
			uc.CloseWrite()
		}
	}()
	go func() {
		// Replies: Context → client. Ends when the Context closes its end
		// (or the client stops taking data); closing tc also ends the
		// request goroutine's read.
		buf := make([]byte, 256<<10)
		io.CopyBuffer(tc, outer, buf)
		tc.Close()
		outer.Close()
	}()
	return inner, nil
}

func fdConn(fd int, name string) (net.Conn, error) {
	f := os.NewFile(uintptr(fd), name)
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("socketpair for a TLS client: %w", err)
	}
	return c, nil
}
