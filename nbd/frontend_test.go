package nbd

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ringblk/ringblk/aio"

	"github.com/ringblk/ringblk/internal/nbdproto"
)

// TestZeroAllocsPerRequest: once a connection's slot buffers have grown,
// a 4 KiB write and a 4 KiB read (simple and structured replies) allocate
// nothing anywhere in the process, client included.
func TestZeroAllocsPerRequest(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: make test counts allocations in its own -run Alloc pass (the race detector allocates)")
	}
	e := newEnv(t, ExportOptions{Name: ""})
	for _, structured := range []bool{false, true} {
		cl := dial(t, e.sock, "", structured)
		cl.c.SetDeadline(time.Time{})
		wreq := append(reqBytes(nbdproto.CmdWrite, 0, 1, 8192, 4096), pattern(4096, 1)...)
		rreq := reqBytes(nbdproto.CmdRead, nbdproto.CmdFlagDF*boolU16(structured), 2, 8192, 4096)
		rep := make([]byte, 16)
		rdata := make([]byte, 4096)
		var chdr [32]byte
		op := func() {
			if _, err := cl.c.Write(wreq); err != nil {
				panic(err)
			}
			if _, err := io.ReadFull(cl.c, rep); err != nil {
				panic(err)
			}
			if _, err := cl.c.Write(rreq); err != nil {
				panic(err)
			}
			if structured {
				// One OFFSET_DATA chunk: 20-byte header, 8-byte offset, data.
				if _, err := io.ReadFull(cl.c, chdr[:28]); err != nil {
					panic(err)
				}
			} else if _, err := io.ReadFull(cl.c, rep); err != nil {
				panic(err)
			}
			if _, err := io.ReadFull(cl.c, rdata); err != nil {
				panic(err)
			}
		}
		for i := 0; i < 50; i++ {
			op()
		}
		if !bytes.Equal(rdata, pattern(4096, 1)) {
			t.Fatal("read back wrong data")
		}
		if binary.BigEndian.Uint32(rep[4:]) != 0 {
			t.Fatal("request failed")
		}
		if a := testing.AllocsPerRun(300, op); a != 0 {
			t.Fatalf("structured=%v: %v allocations per write+read", structured, a)
		}
		// A pipelined burst: 16 reads in one send, parsed from one socket
		// read, submitted in one batch, answered through coalesced writev.
		const burst = 16
		var breq []byte
		for i := 0; i < burst; i++ {
			breq = append(breq, reqBytes(nbdproto.CmdRead, nbdproto.CmdFlagDF*boolU16(structured), uint64(10+i), uint64(i)*4096, 4096)...)
		}
		hdr := rep[:16]
		if structured {
			hdr = chdr[:28]
		}
		bop := func() {
			if _, err := cl.c.Write(breq); err != nil {
				panic(err)
			}
			for i := 0; i < burst; i++ {
				if _, err := io.ReadFull(cl.c, hdr); err != nil {
					panic(err)
				}
				if _, err := io.ReadFull(cl.c, rdata); err != nil {
					panic(err)
				}
			}
		}
		for i := 0; i < 20; i++ {
			bop()
		}
		if a := testing.AllocsPerRun(100, bop); a != 0 {
			t.Fatalf("structured=%v: %v allocations per burst of %d pipelined reads", structured, a, burst)
		}
	}
}

func boolU16(b bool) uint16 {
	if b {
		return 1
	}
	return 0
}

// TestDrainStopsReading: between drained_begin and drained_end the export
// reads no request (none is parked in the front end, none answered);
// after drained_end the request sent meanwhile is served.
func TestDrainStopsReading(t *testing.T) {
	e := newEnv(t, ExportOptions{Name: ""})
	cl := dial(t, e.sock, "", false)
	if _, _, errv := cl.read(1, 0, 4096, 0); errv != 0 {
		t.Fatal(errv)
	}
	e.node.DrainedBegin()
	ended := false
	defer func() {
		if !ended {
			e.node.DrainedEnd() // let the cleanup close the export
		}
	}()
	cl.send(nbdproto.CmdRead, 0, 2, 0, 4096, nil)
	time.Sleep(200 * time.Millisecond)
	if k := e.exp.FrontEnd().ParkedCount(); k != 0 {
		t.Fatalf("%d requests parked in the front end: the export kept reading while drained", k)
	}
	cl.c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	var b [1]byte
	if n, _ := cl.c.Read(b[:]); n != 0 {
		t.Fatal("a reply arrived while the export was drained")
	}
	cl.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	ended = true
	e.node.DrainedEnd()
	if _, _, errv := cl.readReply(2, 0, 4096); errv != 0 {
		t.Fatalf("request sent while drained: %d", errv)
	}
}

// TestMoveNodeWithClients moves the exported node to an IOThread Context
// and back while a client keeps writing and reading.
func TestMoveNodeWithClients(t *testing.T) {
	e := newEnv(t, ExportOptions{Name: ""})
	io1, err := aio.New(aio.Options{Name: "nbd-test-io1", CPU: aio.NoCPU, ArenaSize: -1, Entries: 64})
	if err != nil {
		t.Fatal(err)
	}
	if err := io1.Start(); err != nil {
		t.Fatal(err)
	}
	defer io1.Stop()
	cl := dial(t, e.sock, "", true)
	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			d := pattern(4096, byte(i))
			cl.send(nbdproto.CmdWrite, nbdproto.CmdFlagFUA, uint64(i), uint64(i%64)*4096, 4096, d)
			if ev := cl.simple(uint64(i)); ev != 0 {
				done <- errf("write %d: %d", i, ev)
				return
			}
			got, _, ev := cl.read(uint64(i), uint64(i%64)*4096, 4096, 0)
			if ev != 0 || !bytes.Equal(got, d) {
				done <- errf("read %d: err %d", i, ev)
				return
			}
		}
	}()
	for i := 0; i < 4; i++ {
		time.Sleep(50 * time.Millisecond)
		target := io1
		if i%2 == 1 {
			target = e.main
		}
		if err := e.node.SetContext(target); err != nil {
			close(stop)
			<-done
			t.Fatalf("move %d: %v", i, err)
		}
	}
	close(stop)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	e.node.SetContext(e.main)
}

// TestTCP serves on 127.0.0.1 and several connections of one export.
func TestTCP(t *testing.T) {
	e := newEnv(t, ExportOptions{Name: "t"})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go e.srv.Serve(l)
	var cls []*client
	for i := 0; i < 3; i++ {
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(20 * time.Second))
		cls = append(cls, dialConn(t, c, "t", false))
	}
	for i, cl := range cls {
		if cl.flags&nbdproto.TFlagMultiConn == 0 {
			t.Fatal("no CAN_MULTI_CONN")
		}
		cl.send(nbdproto.CmdWrite, 0, 1, uint64(i)*4096, 4096, pattern(4096, byte(i)))
		if ev := cl.simple(1); ev != 0 {
			t.Fatal(ev)
		}
	}
	cls[0].send(nbdproto.CmdFlush, 0, 2, 0, 0, nil)
	if ev := cls[0].simple(2); ev != 0 {
		t.Fatal(ev)
	}
	for i := range cls {
		got, _, _ := cls[(i+1)%3].read(3, uint64(i)*4096, 4096, 0)
		if !bytes.Equal(got, pattern(4096, byte(i))) {
			t.Fatalf("connection %d does not see connection %d's write", (i+1)%3, i)
		}
	}
}

// TestUnixSendBuffer: a Unix-socket connection gets a send buffer of at
// least 2 MiB, so a large read reply leaves in one send.
func TestUnixSendBuffer(t *testing.T) {
	e := newEnv(t, ExportOptions{Name: ""})
	cl := dial(t, e.sock, "", false)
	if _, _, errv := cl.read(1, 0, 512, 0); errv != 0 {
		t.Fatal(errv)
	}
	var got int
	var gerr error
	e.g.Control(func() {
		e.exp.mu.Lock()
		defer e.exp.mu.Unlock()
		for c := range e.exp.conns {
			got, gerr = unix.GetsockoptInt(c.fd, unix.SOL_SOCKET, unix.SO_SNDBUF)
		}
	})
	if gerr != nil || got < unixSndBuf {
		t.Fatalf("SO_SNDBUF %d (%v), want at least %d", got, gerr, unixSndBuf)
	}
}

// TestExportOnIOThread runs the connections on an IOThread Context
// (ExportOptions.Context): requests in flight, a drain, then Close.
func TestExportOnIOThread(t *testing.T) {
	io1, err := aio.New(aio.Options{Name: "nbd-test-iot", CPU: aio.NoCPU, ArenaSize: -1, Entries: 64})
	if err != nil {
		t.Fatal(err)
	}
	if err := io1.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { io1.Stop() })
	e := newEnv(t, ExportOptions{Name: "", Context: io1})
	cl := dial(t, e.sock, "", true)
	var req []byte
	for i := 0; i < 100; i++ {
		req = append(req, reqBytes(nbdproto.CmdWrite, 0, uint64(i), uint64(i)*8192, 8192)...)
		req = append(req, pattern(8192, byte(i))...)
	}
	go cl.c.Write(req)
	for i := 0; i < 100; i++ {
		if ch := cl.readChunk(); ch.err != 0 {
			t.Fatalf("write reply %d: %d", i, ch.err)
		}
	}
	e.node.DrainedBegin()
	e.node.DrainedEnd()
	for i := 0; i < 100; i += 7 {
		got, _, errv := cl.read(uint64(i), uint64(i)*8192, 8192, 0)
		if errv != 0 || !bytes.Equal(got, pattern(8192, byte(i))) {
			t.Fatalf("read %d: err %d", i, errv)
		}
	}
}
