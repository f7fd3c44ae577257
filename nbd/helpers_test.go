package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/raw"

	"github.com/ringblk/ringblk/internal/nbdproto"
)

// env is a main Context, a graph, an image file and a server with one
// export of it on a Unix socket.
type env struct {
	t      *testing.T
	main   *aio.Context
	g      *block.Graph
	path   string
	node   *block.Node
	exp    *Export
	srv    *Server
	sock   string
	served chan error
}

const testSize = 16 << 20

func newEnv(t *testing.T, eo ExportOptions) *env {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "disk.raw")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, testSize); err != nil {
		t.Fatal(err)
	}
	return newEnvFile(t, path, eo, func(g *block.Graph) (*block.Node, error) {
		return raw.NewNode(g, path, raw.Options{ReadOnly: eo.ReadOnly, Discard: raw.DiscardUnmap}, block.Options{Name: "disk"})
	})
}

func newEnvFile(t *testing.T, path string, eo ExportOptions, open func(*block.Graph) (*block.Node, error)) *env {
	t.Helper()
	m, err := aio.New(aio.Options{Name: "nbd-test-main", Main: true, CPU: aio.NoCPU, ArenaSize: -1, Entries: 64})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, main: m, g: block.NewGraph(m), path: path, sock: filepath.Join(t.TempDir(), "nbd.sock"), served: make(chan error, 1)}
	e.node, err = open(e.g)
	if err != nil {
		m.Stop()
		t.Fatal(err)
	}
	e.exp, err = NewExport(e.g, e.node, eo)
	e.node.Unref()
	if err != nil {
		m.Stop()
		t.Fatal(err)
	}
	e.srv = NewServer()
	if err := e.srv.AddExport(e.exp); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", e.sock)
	if err != nil {
		t.Fatal(err)
	}
	go func() { e.served <- e.srv.Serve(l) }()
	t.Cleanup(e.close)
	return e
}

func (e *env) close() {
	e.srv.Close()
	// A test that ends at once may close the server before the Serve
	// goroutine has started: Serve then reports net.ErrClosed.
	if err := <-e.served; err != nil && !errors.Is(err, net.ErrClosed) {
		e.t.Errorf("Serve: %v", err)
	}
	if err := e.exp.Close(); err != nil {
		e.t.Errorf("export close: %v", err)
	}
	if _, err := e.main.Stop(); err != nil {
		e.t.Errorf("main stop: %v", err)
	}
}

// client is a minimal NBD client for tests.
type client struct {
	t          *testing.T
	c          net.Conn
	size       uint64
	flags      uint16
	structured bool
}

func dialRaw(t *testing.T, sock string) net.Conn {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	t.Cleanup(func() { c.Close() })
	return c
}

func be32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }

// optBytes encodes one option.
func optBytes(opt uint32, data []byte) []byte {
	b := binary.BigEndian.AppendUint64(nil, nbdproto.MagicOpt)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

type optReply struct {
	opt, typ uint32
	data     []byte
}

func readOptReply(t *testing.T, c net.Conn) optReply {
	t.Helper()
	var h [20]byte
	if _, err := io.ReadFull(c, h[:]); err != nil {
		t.Fatalf("reading option reply: %v", err)
	}
	if binary.BigEndian.Uint64(h[:]) != nbdproto.MagicRepOpt {
		t.Fatalf("option reply magic %#x", binary.BigEndian.Uint64(h[:]))
	}
	r := optReply{opt: binary.BigEndian.Uint32(h[8:]), typ: binary.BigEndian.Uint32(h[12:])}
	r.data = make([]byte, binary.BigEndian.Uint32(h[16:]))
	if _, err := io.ReadFull(c, r.data); err != nil {
		t.Fatal(err)
	}
	return r
}

// greet reads the server greeting and sends the client flags.
func greet(t *testing.T, c net.Conn) {
	t.Helper()
	var g [18]byte
	if _, err := io.ReadFull(c, g[:]); err != nil {
		t.Fatal(err)
	}
	if binary.BigEndian.Uint64(g[:]) != nbdproto.MagicNBD || binary.BigEndian.Uint64(g[8:]) != nbdproto.MagicOpt {
		t.Fatalf("bad greeting % x", g)
	}
	c.Write(be32(nbdproto.CFlagFixed | nbdproto.CFlagNoZeroes))
}

func infoData(name string) []byte {
	b := be32(uint32(len(name)))
	b = append(b, name...)
	return binary.BigEndian.AppendUint16(b, 0)
}

func metaData(name string, queries ...string) []byte {
	b := be32(uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(queries)))
	for _, q := range queries {
		b = binary.BigEndian.AppendUint32(b, uint32(len(q)))
		b = append(b, q...)
	}
	return b
}

// dial connects and negotiates export name with GO; structured and the
// meta contexts when asked.
func dial(t *testing.T, sock, name string, structured bool, meta ...string) *client {
	t.Helper()
	return dialConn(t, dialRaw(t, sock), name, structured, meta...)
}

func errf(format string, args ...any) error { return fmt.Errorf(format, args...) }

// dialConn negotiates on an open connection.
func dialConn(t *testing.T, c net.Conn, name string, structured bool, meta ...string) *client {
	t.Helper()
	greet(t, c)
	if structured {
		c.Write(optBytes(nbdproto.OptStructured, nil))
		if r := readOptReply(t, c); r.typ != nbdproto.RepAck {
			t.Fatalf("structured reply: %#x", r.typ)
		}
		if len(meta) > 0 {
			c.Write(optBytes(nbdproto.OptSetMeta, metaData(name, meta...)))
			for {
				r := readOptReply(t, c)
				if r.typ == nbdproto.RepAck {
					break
				}
				if r.typ != nbdproto.RepMetaContext {
					t.Fatalf("set meta context: reply %#x %q", r.typ, r.data)
				}
			}
		}
	}
	c.Write(optBytes(nbdproto.OptGo, infoData(name)))
	cl := &client{t: t, c: c, structured: structured}
	for {
		r := readOptReply(t, c)
		if r.typ == nbdproto.RepAck {
			break
		}
		if r.typ != nbdproto.RepInfo {
			t.Fatalf("GO: reply %#x %q", r.typ, r.data)
		}
		if binary.BigEndian.Uint16(r.data) == nbdproto.InfoExport {
			cl.size = binary.BigEndian.Uint64(r.data[2:])
			cl.flags = binary.BigEndian.Uint16(r.data[10:])
		}
	}
	return cl
}

func reqBytes(cmd, flags uint16, cookie, off uint64, length uint32) []byte {
	b := be32(nbdproto.MagicReq)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, cmd)
	b = binary.BigEndian.AppendUint64(b, cookie)
	b = binary.BigEndian.AppendUint64(b, off)
	return binary.BigEndian.AppendUint32(b, length)
}

func (cl *client) send(cmd, flags uint16, cookie, off uint64, length uint32, payload []byte) {
	cl.t.Helper()
	if _, err := cl.c.Write(append(reqBytes(cmd, flags, cookie, off, length), payload...)); err != nil {
		cl.t.Fatal(err)
	}
}

// chunk is one reply message: simple (typ 0xffff) or a structured chunk.
type chunk struct {
	cookie uint64
	simple bool
	err    uint32
	flags  uint16
	typ    uint16
	data   []byte // structured payload
}

func (cl *client) readChunk() chunk {
	cl.t.Helper()
	var m [4]byte
	if _, err := io.ReadFull(cl.c, m[:]); err != nil {
		cl.t.Fatalf("reading reply: %v", err)
	}
	switch binary.BigEndian.Uint32(m[:]) {
	case nbdproto.MagicSimple:
		var h [12]byte
		if _, err := io.ReadFull(cl.c, h[:]); err != nil {
			cl.t.Fatal(err)
		}
		return chunk{simple: true, err: binary.BigEndian.Uint32(h[:]), cookie: binary.BigEndian.Uint64(h[4:]), flags: nbdproto.ChunkDone}
	case nbdproto.MagicChunk:
		var h [16]byte
		if _, err := io.ReadFull(cl.c, h[:]); err != nil {
			cl.t.Fatal(err)
		}
		ch := chunk{flags: binary.BigEndian.Uint16(h[:]), typ: binary.BigEndian.Uint16(h[2:]), cookie: binary.BigEndian.Uint64(h[4:])}
		ch.data = make([]byte, binary.BigEndian.Uint32(h[12:]))
		if _, err := io.ReadFull(cl.c, ch.data); err != nil {
			cl.t.Fatal(err)
		}
		if ch.typ == nbdproto.ChunkError {
			ch.err = binary.BigEndian.Uint32(ch.data)
		}
		return ch
	default:
		cl.t.Fatalf("reply magic %#x", m)
	}
	return chunk{}
}

// simple waits for a simple reply to cookie and returns its error.
func (cl *client) simple(cookie uint64) uint32 {
	cl.t.Helper()
	ch := cl.readChunk()
	if ch.cookie != cookie {
		cl.t.Fatalf("reply cookie %d, want %d", ch.cookie, cookie)
	}
	if !ch.simple && ch.typ != nbdproto.ChunkError {
		cl.t.Fatalf("reply type %d to cookie %d, want a simple reply", ch.typ, cookie)
	}
	return ch.err
}

// read reads [off, off+n) and returns the data and the structured chunk
// types seen.
func (cl *client) read(cookie, off uint64, n uint32, flags uint16) ([]byte, []uint16, uint32) {
	cl.t.Helper()
	cl.send(nbdproto.CmdRead, flags, cookie, off, n, nil)
	return cl.readReply(cookie, off, n)
}

func (cl *client) readReply(cookie, off uint64, n uint32) ([]byte, []uint16, uint32) {
	cl.t.Helper()
	buf := make([]byte, n)
	if !cl.structured {
		if e := cl.simple(cookie); e != 0 {
			return nil, nil, e
		}
		if _, err := io.ReadFull(cl.c, buf); err != nil {
			cl.t.Fatal(err)
		}
		return buf, nil, 0
	}
	var types []uint16
	for {
		ch := cl.readChunk()
		if ch.cookie != cookie {
			cl.t.Fatalf("chunk cookie %d, want %d", ch.cookie, cookie)
		}
		types = append(types, ch.typ)
		switch ch.typ {
		case nbdproto.ChunkError:
			return nil, types, ch.err
		case nbdproto.ChunkOffsetData:
			o := binary.BigEndian.Uint64(ch.data) - off
			copy(buf[o:], ch.data[8:])
		case nbdproto.ChunkOffsetHole:
			o := binary.BigEndian.Uint64(ch.data) - off
			l := binary.BigEndian.Uint32(ch.data[8:])
			clear(buf[o : o+uint64(l)])
		}
		if ch.flags&nbdproto.ChunkDone != 0 {
			return buf, types, 0
		}
	}
}

type extent struct{ length, flags uint32 }

// blockStatus returns the extents per context id.
func (cl *client) blockStatus(cookie, off uint64, n uint32, flags uint16) (map[uint32][]extent, uint32) {
	cl.t.Helper()
	cl.send(nbdproto.CmdBlockStatus, flags, cookie, off, n, nil)
	return cl.blockStatusReply(cookie)
}

// blockStatusReply reads the reply to a BLOCK_STATUS request sent before.
func (cl *client) blockStatusReply(cookie uint64) (map[uint32][]extent, uint32) {
	cl.t.Helper()
	res := map[uint32][]extent{}
	for {
		ch := cl.readChunk()
		if ch.cookie != cookie {
			cl.t.Fatalf("cookie %d", ch.cookie)
		}
		if ch.simple || ch.typ == nbdproto.ChunkError {
			return nil, ch.err
		}
		if ch.typ == nbdproto.ChunkBlockStatus {
			id := binary.BigEndian.Uint32(ch.data)
			for d := ch.data[4:]; len(d) >= 8; d = d[8:] {
				res[id] = append(res[id], extent{binary.BigEndian.Uint32(d), binary.BigEndian.Uint32(d[4:])})
			}
		}
		if ch.flags&nbdproto.ChunkDone != 0 {
			return res, 0
		}
	}
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7)
	}
	return b
}

func expectClosed(t *testing.T, c net.Conn, what string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var b [256]byte
	for {
		_, err := c.Read(b[:])
		if err == io.EOF {
			return
		}
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatalf("%s: connection still open", what)
			}
			return
		}
	}
}
