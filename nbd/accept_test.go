package nbd

import (
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ringblk/ringblk/internal/nbdproto"
)

// failingListener fails its first Accepts with an errno, as a listener
// does when the process has run out of descriptors, then accepts.
type failingListener struct {
	net.Listener
	mu    sync.Mutex
	fails int
	errno syscall.Errno
}

func (l *failingListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	if l.fails > 0 {
		l.fails--
		l.mu.Unlock()
		return nil, &net.OpError{Op: "accept", Net: "unix", Err: os.NewSyscallError("accept4", l.errno)}
	}
	l.mu.Unlock()
	return l.Listener.Accept()
}

// TestAcceptErrorsDoNotStopServer: a client that opens connections until
// the server runs out of descriptors made Accept fail with EMFILE, and
// Serve returned that error: ringblk nbd then shut down (exit 1) and
// dropped every client, where qemu-nbd keeps listening. Running out of
// descriptors or memory, or a connection aborted before it was accepted,
// is now waited out and Serve goes on; the next client is served.
func TestAcceptErrorsDoNotStopServer(t *testing.T) {
	e := newEnv(t, ExportOptions{Name: ""})
	for _, errno := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED} {
		sock := filepath.Join(t.TempDir(), "flaky.sock")
		l, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		served := make(chan error, 1)
		go func() { served <- e.srv.Serve(&failingListener{Listener: l, fails: 3, errno: errno}) }()
		c := dialRaw(t, sock)
		// The old Serve returned at the first failure and nobody
		// accepted: the greeting never came.
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		var g [18]byte
		if _, err := io.ReadFull(c, g[:]); err != nil {
			select {
			case serr := <-served:
				t.Fatalf("%v: Serve returned (%v) instead of accepting again", errno, serr)
			default:
				t.Fatalf("%v: no greeting: %v", errno, err)
			}
		}
		c.SetReadDeadline(time.Time{})
		c.Write(be32(nbdproto.CFlagFixed | nbdproto.CFlagNoZeroes))
		c.Write(optBytes(nbdproto.OptGo, infoData("")))
		for r := readOptReply(t, c); r.typ != nbdproto.RepAck; r = readOptReply(t, c) {
			if r.typ != nbdproto.RepInfo {
				t.Fatalf("%v: GO: reply %#x", errno, r.typ)
			}
		}
		cl := &client{t: t, c: c}
		if _, _, errv := cl.read(1, 0, 4096, 0); errv != 0 {
			t.Fatalf("%v: read: error %d", errno, errv)
		}
	}
}
