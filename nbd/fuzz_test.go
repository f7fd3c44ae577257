package nbd

import (
	"encoding/binary"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ringblk/ringblk/internal/nbdproto"
)

// FuzzNegotiation feeds arbitrary client bytes to the handshake: it must
// end (error, abort or an export chosen) without panicking, and every
// byte it sends must be well-formed option replies after the greeting.
func FuzzNegotiation(f *testing.F) {
	flags := be32(nbdproto.CFlagFixed | nbdproto.CFlagNoZeroes)
	f.Add(append(flags, optBytes(nbdproto.OptGo, infoData("a"))...))
	f.Add(append(append(flags, optBytes(nbdproto.OptStructured, nil)...), optBytes(nbdproto.OptSetMeta, metaData("a", nbdproto.CtxAllocation, "qemu:", "base:"))...))
	f.Add(append(append(flags, optBytes(nbdproto.OptList, nil)...), optBytes(nbdproto.OptListMeta, metaData("a"))...))
	f.Add(append(flags, optBytes(nbdproto.OptInfo, []byte{0, 0, 0, 9, 'a'})...))
	f.Add(append(flags, optBytes(nbdproto.OptExportName, []byte("a"))...))
	f.Add(append(flags, optBytes(nbdproto.OptAbort, nil)...))
	f.Add(append(flags, optBytes(99, []byte("x"))...))
	f.Add(append(be32(nbdproto.CFlagFixed), optBytes(nbdproto.OptInfo, make([]byte, 70000))...))
	f.Fuzz(func(t *testing.T, in []byte) {
		s := NewServer()
		s.AddExport(&Export{opts: ExportOptions{Name: "a", Description: "d", AllocationDepth: true}, size: 1 << 20})
		s.AddExport(&Export{opts: ExportOptions{Name: "", ReadOnly: true}, size: 4096})
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
			// The client sends nothing more: the negotiator sees EOF once
			// it has consumed in.
			cli.CloseWrite()
		}()
		n := &negotiator{s: s, nc: srv}
		e, err := n.run()
		if err == nil && e == nil {
			t.Fatal("handshake ended with neither an export nor an error")
		}
		srv.Close()
		out := <-got
		if len(out) < 18 {
			t.Fatalf("greeting of %d bytes", len(out))
		}
		out = out[18:]
		for len(out) >= 20 && binary.BigEndian.Uint64(out) == nbdproto.MagicRepOpt {
			l := binary.BigEndian.Uint32(out[16:])
			if uint64(len(out)) < 20+uint64(l) {
				t.Fatalf("option reply of %d bytes truncated", l)
			}
			out = out[20+l:]
		}
		// What may follow the replies: an EXPORT_NAME answer (size, flags,
		// maybe 124 zero bytes).
		if len(out) != 0 && len(out) != 10 && len(out) != 134 {
			t.Fatalf("%d unexpected bytes after the option replies", len(out))
		}
	})
}

// FuzzRequest: a request checkRequest accepts is within the export and
// carries only flags its command takes.
func FuzzRequest(f *testing.F) {
	f.Add(reqBytes(nbdproto.CmdRead, 0, 1, 0, 4096), int64(1<<20), false, true, 1)
	f.Add(reqBytes(nbdproto.CmdWrite, nbdproto.CmdFlagFUA, 1, 1<<20-1, 2), int64(1<<20), false, false, 0)
	f.Add(reqBytes(nbdproto.CmdBlockStatus, nbdproto.CmdFlagReqOne, 1, 0, 0), int64(1<<20), true, true, 2)
	f.Add(reqBytes(nbdproto.CmdWriteZeroes, nbdproto.CmdFlagFastZero|nbdproto.CmdFlagNoHole, 1, 1<<63, 1<<31), int64(1<<20), false, true, 0)
	f.Fuzz(func(t *testing.T, b []byte, size int64, ro, structured bool, meta int) {
		if len(b) < nbdproto.ReqHeaderLen || size < 0 {
			return
		}
		r, err := parseRequest(b)
		if err != nil {
			if binary.BigEndian.Uint32(b) == nbdproto.MagicReq {
				t.Fatal("good magic refused")
			}
			return
		}
		v := exportView{size: size, readOnly: ro, structured: structured, metaCount: meta}
		e, fatal := checkRequest(r, v)
		if fatal && !(r.cmd == nbdproto.CmdWrite && r.length > MaxPayload) {
			t.Fatalf("fatal for %+v", r)
		}
		if e != 0 || r.cmd == nbdproto.CmdDisc || r.cmd == nbdproto.CmdFlush {
			return
		}
		if r.off+uint64(r.length) > uint64(size) || r.off+uint64(r.length) < r.off {
			t.Fatalf("accepted %+v beyond the export size %d", r, size)
		}
		if ro && (r.cmd == nbdproto.CmdWrite || r.cmd == nbdproto.CmdTrim || r.cmd == nbdproto.CmdWriteZeroes) {
			t.Fatalf("write %+v accepted on a read-only export", r)
		}
		if r.length > MaxPayload && (r.cmd == nbdproto.CmdRead || r.cmd == nbdproto.CmdWrite) {
			t.Fatalf("payload %d accepted", r.length)
		}
		if r.flags&nbdproto.CmdFlagDF != 0 && (!structured || r.cmd != nbdproto.CmdRead) {
			t.Fatalf("DF accepted on %+v (structured %v)", r, structured)
		}
		if r.cmd == nbdproto.CmdBlockStatus && (!structured || meta == 0) {
			t.Fatalf("block status accepted without contexts")
		}
	})
}

// socketPair returns two connected Unix stream sockets.
func socketPair(t *testing.T) (*net.UnixConn, *net.UnixConn) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "socketpair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c.(*net.UnixConn)
	}
	return conn(fds[0]), conn(fds[1])
}
