package servecmd

import (
	"net"
	"os"
	"time"
)

// stdioConn is the daemon's standard input and output as one connection:
// the monitor of "--chardev stdio" (qemu-storage-daemon's way of driving
// a daemon from a pipe or a terminal). Closing it closes both.
type stdioConn struct{ in, out *os.File }

func (c stdioConn) Read(b []byte) (int, error)  { return c.in.Read(b) }
func (c stdioConn) Write(b []byte) (int, error) { return c.out.Write(b) }

func (c stdioConn) Close() error {
	err := c.in.Close()
	if e := c.out.Close(); err == nil {
		err = e
	}
	return err
}

// OutputOutlivesInput: at the end of its input the daemon goes on writing
// replies and events until it exits (qmp.OutputOutlivesInput).
func (stdioConn) OutputOutlivesInput() bool { return true }

// StandardOutput: the daemon's own lines go through this connection's
// queue (qmp.Server.Print).
func (stdioConn) StandardOutput() bool { return true }

type stdioAddr struct{}

func (stdioAddr) Network() string { return "stdio" }
func (stdioAddr) String() string  { return "stdio" }

func (stdioConn) LocalAddr() net.Addr  { return stdioAddr{} }
func (stdioConn) RemoteAddr() net.Addr { return stdioAddr{} }

// Deadlines apply where the descriptor can take them (a pipe or a
// terminal); a regular file cannot, and its writes do not block.
func (c stdioConn) SetDeadline(t time.Time) error {
	c.in.SetDeadline(t)
	c.out.SetDeadline(t)
	return nil
}
func (c stdioConn) SetReadDeadline(t time.Time) error { c.in.SetReadDeadline(t); return nil }
func (c stdioConn) SetWriteDeadline(t time.Time) error {
	c.out.SetWriteDeadline(t)
	return nil
}
