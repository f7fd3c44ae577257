package nbd

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/ringblk/ringblk/internal/nbdproto"
)

// TLS (nbds URIs): NBD_OPT_STARTTLS right after the greeting, the rest of
// the handshake inside TLS. The transmission phase reads and writes a
// plain socket on the node's Context, so a TLS connection is carried
// through a Unix socketpair: the Context gets one end, and two goroutines
// for the connection's life (not per request) copy between the other end
// and the tls.Conn, as the server does (docs/design/nbd.md).

// tlsConfig reads the client's x509 files from u.TLSDir.
func tlsConfig(u URI) (*tls.Config, error) {
	caFile := filepath.Join(u.TLSDir, "ca-cert.pem")
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("TLS credentials: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("TLS credentials: %s holds no PEM certificate", caFile)
	}
	cfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12, ServerName: u.TLSHostname}
	certFile, keyFile := filepath.Join(u.TLSDir, "client-cert.pem"), filepath.Join(u.TLSDir, "client-key.pem")
	if _, err := os.Stat(certFile); err == nil {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("TLS credentials %s, %s: %w", certFile, keyFile, err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	if u.TLSHostname == "" {
		// A Unix socket names no host: check the chain against the CA
		// only (libnbd does the same).
		cfg.InsecureSkipVerify = true
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("the server sent no certificate")
			}
			opts := x509.VerifyOptions{Roots: pool, Intermediates: x509.NewCertPool()}
			for _, c := range cs.PeerCertificates[1:] {
				opts.Intermediates.AddCert(c)
			}
			_, err := cs.PeerCertificates[0].Verify(opts)
			return err
		}
	}
	return cfg, nil
}

// startTLS sends NBD_OPT_STARTTLS and runs the TLS handshake on nc.
func startTLS(nc net.Conn, u URI) (*tls.Conn, error) {
	cfg, err := tlsConfig(u)
	if err != nil {
		return nil, err
	}
	o := &opts{nc: nc}
	if err := o.send(nbdproto.OptStartTLS, nil); err != nil {
		return nil, err
	}
	typ, data, err := o.reply(nbdproto.OptStartTLS)
	if err != nil {
		return nil, err
	}
	if typ != nbdproto.RepAck {
		return nil, fmt.Errorf("the server refused TLS: %s (%#x)", data, typ)
	}
	tc := tls.Client(nc, cfg)
	if err := tc.Handshake(); err != nil {
		return nil, fmt.Errorf("TLS handshake: %w", err)
	}
	return tc, nil
}

// tlsPipe returns the Context's end of a socketpair whose other end two
// goroutines connect to tc.
func tlsPipe(tc *tls.Conn) (net.Conn, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("socketpair for TLS: %w", err)
	}
	conns := make([]net.Conn, 2)
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "nbd-tls")
		conns[i], err = net.FileConn(f)
		f.Close()
		if err != nil {
			for _, c := range conns[:i] {
				c.Close()
			}
			if i == 0 {
				unix.Close(fds[1])
			}
			return nil, fmt.Errorf("socketpair for TLS: %w", err)
		}
	}
	inner, outer := conns[0], conns[1]
	go func() {
		// Replies: server → Context.
		io.CopyBuffer(outer, tc, make([]byte, 256<<10))
		if uc, ok := outer.(*net.UnixConn); ok {
			uc.CloseWrite()
		}
	}()
	go func() {
		// Requests: Context → server; ends when the Context closes its end.
		io.CopyBuffer(tc, outer, make([]byte, 256<<10))
		tc.Close()
		outer.Close()
	}()
	return inner, nil
}
