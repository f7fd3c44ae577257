package nbd_test

import (
	"encoding/binary"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/block/blocktest"
	nbdc "github.com/ringblk/ringblk/drivers/nbd"
	"github.com/ringblk/ringblk/internal/nbdproto"
)

// FuzzClientReplies: whatever a server sends after the handshake, the
// client neither panics nor hangs: a read, a write and a block-status
// request in flight all complete (with data or an error) once the server
// has sent its bytes and closed the connection.
func FuzzClientReplies(f *testing.F) {
	chunk := func(flags, typ uint16, cookie uint64, payload []byte) []byte {
		b := binary.BigEndian.AppendUint32(nil, 0x668e33ef)
		b = binary.BigEndian.AppendUint16(b, flags)
		b = binary.BigEndian.AppendUint16(b, typ)
		b = binary.BigEndian.AppendUint64(b, cookie)
		b = binary.BigEndian.AppendUint32(b, uint32(len(payload)))
		return append(b, payload...)
	}
	simple := func(errv uint32, cookie uint64) []byte {
		b := binary.BigEndian.AppendUint32(nil, 0x67446698)
		b = binary.BigEndian.AppendUint32(b, errv)
		return binary.BigEndian.AppendUint64(b, cookie)
	}
	// Cookies of the first three requests: slot 63, 62, 61, generation 1.
	c0, c1, c2 := uint64(63)|1<<32, uint64(62)|1<<32, uint64(61)|1<<32
	data := append(binary.BigEndian.AppendUint64(nil, 0), make([]byte, 8192)...)
	hole := binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint64(nil, 0), 8192)
	bs := binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, 7), 4096), 3)
	f.Add(append(append(chunk(1, 1, c0, data), simple(0, c1)...), chunk(1, 5, c2, bs)...))
	f.Add(append(append(chunk(1, 2, c0, hole), simple(5, c1)...), chunk(1, 1<<15+1, c2, []byte{0, 0, 0, 5, 0, 0})...))
	f.Add(chunk(0, 1, c0, data[:100]))
	f.Add(simple(0, 12345))
	f.Add([]byte{0x67, 0x44})
	e := blocktest.NewEnv(f, 0)
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, in []byte) {
		sock := filepath.Join(dir, "f.sock")
		serveOnce(t, sock, func(c net.Conn) {
			fakeHandshakeOpts(c, 1<<20, true, 1|1<<6)
			var h [28]byte
			io.ReadFull(c, h[:]) // read
			io.ReadFull(c, h[:]) // write header
			io.CopyN(io.Discard, c, 4096)
			io.ReadFull(c, h[:]) // block status
			c.Write(in)
		})
		n, err := nbdOpen(e, "nbd+unix:///?socket="+sock)
		if err != nil {
			t.Fatal(err)
		}
		fe := e.G.NewFrontEnd(block.FrontEndOptions{Name: "fz"})
		if err := fe.Insert(n); err != nil {
			t.Fatal(err)
		}
		q := fe.Queue(e.Main)
		res := []*blocktest.Result{blocktest.NewResult(), blocktest.NewResult(), blocktest.NewResult()}
		e.OnMain(func() {
			q.Plug()
			q.Read(make([]byte, 8192), 0, res[0], 0)
			q.Write(make([]byte, 4096), 8192, 0, res[1], 0)
			r := q.Get()
			r.Op, r.Off, r.Len = block.OpBlockStatus, 0, 1<<20
			q.Submit(r, res[2])
			q.Unplug()
		})
		deadline := time.Now().Add(10 * time.Second)
		for _, r := range res {
			for !r.Finished() {
				if time.Now().After(deadline) {
					t.Fatal("a request never completed")
				}
				time.Sleep(time.Millisecond)
			}
		}
		fe.Close()
		n.Unref()
	})
}

func nbdOpen(e *blocktest.Env, uri string) (*block.Node, error) {
	return nbdc.NewNode(e.G, uri, false, block.Options{Name: "fz"})
}

// FuzzList: whatever a server sends while the client lists its exports
// (qemu-nbd --list), List neither panics nor hangs: it returns what it
// understood or an error once the server has sent its bytes and closed.
func FuzzList(f *testing.F) {
	rep := func(opt, typ uint32, data []byte) []byte {
		b := binary.BigEndian.AppendUint64(nil, nbdproto.MagicRepOpt)
		b = binary.BigEndian.AppendUint32(b, opt)
		b = binary.BigEndian.AppendUint32(b, typ)
		b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
		return append(b, data...)
	}
	greeting := binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(nil, nbdproto.MagicNBD), nbdproto.MagicOpt), 3)
	name := append(binary.BigEndian.AppendUint32(nil, 2), "vmdesc"...)
	export := binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint16(nil, nbdproto.InfoExport), 1<<20), 0x48f)
	sizes := binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint16(nil, nbdproto.InfoBlockSize), 1), 4096), 1<<25)
	ctx := append(binary.BigEndian.AppendUint32(nil, 0), "base:allocation"...)
	var full []byte
	for _, p := range [][]byte{greeting, rep(nbdproto.OptStructured, nbdproto.RepAck, nil),
		rep(nbdproto.OptList, nbdproto.RepServer, name), rep(nbdproto.OptList, nbdproto.RepAck, nil),
		rep(nbdproto.OptInfo, nbdproto.RepInfo, export), rep(nbdproto.OptInfo, nbdproto.RepInfo, sizes), rep(nbdproto.OptInfo, nbdproto.RepAck, nil),
		rep(nbdproto.OptListMeta, nbdproto.RepMetaContext, ctx), rep(nbdproto.OptListMeta, nbdproto.RepAck, nil)} {
		full = append(full, p...)
	}
	f.Add(full)
	f.Add(append(append([]byte(nil), greeting...), rep(nbdproto.OptStructured, nbdproto.RepErrUnsup, nil)...))
	f.Add(append(append([]byte(nil), full[:len(greeting)+20]...), rep(nbdproto.OptList, nbdproto.RepErrPolicy, []byte("no"))...))
	f.Add(append(append([]byte(nil), full[:len(greeting)+20]...), rep(nbdproto.OptList, nbdproto.RepServer, []byte{0xff, 0, 0, 0})...))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) > 1<<16 {
			return
		}
		sock := filepath.Join(dir, "l.sock")
		serveOnce(t, sock, func(c net.Conn) {
			go io.Copy(io.Discard, c)
			c.Write(in)
		})
		done := make(chan struct{})
		go func() {
			defer close(done)
			list, err := nbdc.List(nbdc.URI{Network: "unix", Addr: sock})
			if err == nil {
				for _, e := range list {
					_ = e.Name + e.Description
				}
			}
		}()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("List did not return after the server closed")
		}
	})
}

// serveOnce listens on sock and hands the first connection to serve,
// closing it afterwards: a fake server for one client. The listener is
// closed when the test ends.
func serveOnce(t testing.TB, sock string, serve func(c net.Conn)) {
	t.Helper()
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		serve(c)
	}()
}
