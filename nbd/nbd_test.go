package nbd

import (
	"bytes"
	"encoding/binary"
	"os"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ringblk/ringblk/internal/nbdproto"
)

func TestCommandsSimpleAndStructured(t *testing.T) {
	e := newEnv(t, ExportOptions{Name: "disk"})
	for _, structured := range []bool{false, true} {
		cl := dial(t, e.sock, "disk", structured)
		if cl.size != testSize {
			t.Fatalf("size %d", cl.size)
		}
		want := nbdproto.TFlagHasFlags | nbdproto.TFlagFlush | nbdproto.TFlagFUA | nbdproto.TFlagTrim | nbdproto.TFlagZeroes | nbdproto.TFlagMultiConn | nbdproto.TFlagCache | nbdproto.TFlagFastZero
		if structured {
			want |= nbdproto.TFlagDF
		}
		if cl.flags != want {
			t.Fatalf("flags %#x, want %#x", cl.flags, want)
		}
		data := pattern(64<<10, 3)
		cl.send(nbdproto.CmdWrite, nbdproto.CmdFlagFUA, 1, 4096, uint32(len(data)), data)
		if e := cl.simple(1); e != 0 {
			t.Fatalf("write: error %d", e)
		}
		got, _, errv := cl.read(2, 4096, uint32(len(data)), 0)
		if errv != 0 || !bytes.Equal(got, data) {
			t.Fatalf("read back: err %d, equal %v", errv, bytes.Equal(got, data))
		}
		cl.send(nbdproto.CmdFlush, 0, 3, 0, 0, nil)
		if e := cl.simple(3); e != 0 {
			t.Fatalf("flush: %d", e)
		}
		cl.send(nbdproto.CmdWriteZeroes, 0, 4, 8192, 4096, nil)
		if e := cl.simple(4); e != 0 {
			t.Fatalf("write zeroes: %d", e)
		}
		cl.send(nbdproto.CmdWriteZeroes, nbdproto.CmdFlagNoHole|nbdproto.CmdFlagFUA, 5, 12288, 4096, nil)
		if e := cl.simple(5); e != 0 {
			t.Fatalf("write zeroes no-hole: %d", e)
		}
		// A raw file zeroes fast (fallocate): FAST_ZERO succeeds.
		cl.send(nbdproto.CmdWriteZeroes, nbdproto.CmdFlagFastZero|nbdproto.CmdFlagNoHole, 6, 32768, 4096, nil)
		if e := cl.simple(6); e != 0 {
			t.Fatalf("fast zero: error %d", e)
		}
		cl.send(nbdproto.CmdTrim, nbdproto.CmdFlagFUA, 7, 16384, 16384, nil)
		if e := cl.simple(7); e != 0 {
			t.Fatalf("trim: %d", e)
		}
		cl.send(nbdproto.CmdCache, 0, 8, 0, 3<<20, nil)
		if e := cl.simple(8); e != 0 {
			t.Fatalf("cache: %d", e)
		}
		got, _, _ = cl.read(9, 4096, uint32(len(data)), 0)
		exp := slices.Clone(data)
		clear(exp[8192-4096 : 36864-4096])
		if !bytes.Equal(got, exp) {
			t.Fatal("zeroed and trimmed ranges do not read as zeroes")
		}
		cl.send(nbdproto.CmdDisc, 0, 10, 0, 0, nil)
		expectClosed(t, cl.c, "after DISC")
	}
	// The data is in the file.
	f, _ := os.ReadFile(e.path)
	if !bytes.Equal(f[36864:4096+64<<10], pattern(64<<10, 3)[36864-4096:]) {
		t.Fatal("file content differs from what was written")
	}
}

func TestSparseReadHasHoles(t *testing.T) {
	e := newEnv(t, ExportOptions{Name: ""})
	cl := dial(t, e.sock, "", true)
	data := pattern(64<<10, 9)
	cl.send(nbdproto.CmdWrite, 0, 1, 0, uint32(len(data)), data)
	if e := cl.simple(1); e != 0 {
		t.Fatal(e)
	}
	got, types, errv := cl.read(2, 0, 1<<20, 0)
	if errv != 0 {
		t.Fatal(errv)
	}
	if !bytes.Equal(got[:len(data)], data) || !isZero(got[len(data):]) {
		t.Fatal("sparse read content wrong")
	}
	if !slices.Contains(types, nbdproto.ChunkOffsetHole) || !slices.Contains(types, nbdproto.ChunkOffsetData) {
		t.Fatalf("chunk types %v: want data and hole chunks", types)
	}
	// DF: one data chunk.
	got2, types, _ := cl.read(3, 0, 1<<20, nbdproto.CmdFlagDF)
	if !slices.Equal(types, []uint16{nbdproto.ChunkOffsetData}) || !bytes.Equal(got, got2) {
		t.Fatalf("DF read: chunk types %v", types)
	}
}

func TestBlockStatus(t *testing.T) {
	e := newEnv(t, ExportOptions{Name: "d", AllocationDepth: true})
	cl := dial(t, e.sock, "d", true, nbdproto.CtxAllocation, ctxDepth)
	data := pattern(1<<20, 1)
	cl.send(nbdproto.CmdWrite, 0, 1, 1<<20, uint32(len(data)), data)
	if e := cl.simple(1); e != 0 {
		t.Fatal(e)
	}
	res, errv := cl.blockStatus(2, 0, 4<<20, 0)
	if errv != 0 {
		t.Fatal(errv)
	}
	alloc := res[idAllocation]
	want := []extent{{1 << 20, nbdproto.StateHole | nbdproto.StateZero}, {1 << 20, 0}, {2 << 20, nbdproto.StateHole | nbdproto.StateZero}}
	if !slices.Equal(alloc, want) {
		t.Fatalf("base:allocation %v, want %v", alloc, want)
	}
	if d := res[idDepth]; len(d) == 0 || d[0].flags != 1 {
		t.Fatalf("qemu:allocation-depth %v: a raw file allocates everything at depth 1", d)
	}
	res, _ = cl.blockStatus(3, 0, 4<<20, nbdproto.CmdFlagReqOne)
	if len(res[idAllocation]) != 1 || res[idAllocation][0] != want[0] {
		t.Fatalf("REQ_ONE: %v", res[idAllocation])
	}
	// Without contexts: EINVAL.
	cl2 := dial(t, e.sock, "d", true)
	if _, errv := cl2.blockStatus(4, 0, 4096, 0); errv != nbdproto.ErrInval {
		t.Fatalf("block status without contexts: %d", errv)
	}
}

func TestOptions(t *testing.T) {
	e := newEnv(t, ExportOptions{Name: "a", Description: "first"})
	e2, err := NewExport(e.g, e.node, ExportOptions{Name: "b", ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e2.Close() })
	if err := e.srv.AddExport(e2); err != nil {
		t.Fatal(err)
	}
	if err := e.srv.AddExport(e2); err == nil {
		t.Fatal("duplicate export name accepted")
	}
	c := dialRaw(t, e.sock)
	greet(t, c)
	c.Write(optBytes(nbdproto.OptList, nil))
	var names []string
	for {
		r := readOptReply(t, c)
		if r.typ == nbdproto.RepAck {
			break
		}
		n := binary.BigEndian.Uint32(r.data)
		names = append(names, string(r.data[4:4+n]))
	}
	if !slices.Equal(names, []string{"a", "b"}) {
		t.Fatalf("LIST: %q", names)
	}
	c.Write(optBytes(nbdproto.OptList, []byte{1}))
	if r := readOptReply(t, c); r.typ != nbdproto.RepErrInvalid {
		t.Fatalf("LIST with data: %#x", r.typ)
	}
	c.Write(optBytes(99, []byte("xyz")))
	if r := readOptReply(t, c); r.typ != nbdproto.RepErrUnsup || r.opt != 99 {
		t.Fatalf("unknown option: %#x", r.typ)
	}
	c.Write(optBytes(nbdproto.OptInfo, infoData("nope")))
	if r := readOptReply(t, c); r.typ != nbdproto.RepErrUnknown {
		t.Fatalf("INFO unknown export: %#x", r.typ)
	}
	c.Write(optBytes(nbdproto.OptInfo, []byte{0, 0, 0, 9, 'a'}))
	if r := readOptReply(t, c); r.typ != nbdproto.RepErrInvalid {
		t.Fatalf("malformed INFO: %#x", r.typ)
	}
	c.Write(optBytes(nbdproto.OptSetMeta, metaData("a", nbdproto.CtxAllocation)))
	if r := readOptReply(t, c); r.typ != nbdproto.RepErrInvalid {
		t.Fatalf("SET_META_CONTEXT before STRUCTURED_REPLY: %#x", r.typ)
	}
	c.Write(optBytes(nbdproto.OptStructured, nil))
	readOptReply(t, c)
	c.Write(optBytes(nbdproto.OptListMeta, metaData("a")))
	var ctxs []string
	for {
		r := readOptReply(t, c)
		if r.typ == nbdproto.RepAck {
			break
		}
		ctxs = append(ctxs, string(r.data[4:]))
	}
	if !slices.Equal(ctxs, []string{nbdproto.CtxAllocation}) {
		t.Fatalf("LIST_META_CONTEXT: %q (allocation depth not enabled on a)", ctxs)
	}
	c.Write(optBytes(nbdproto.OptInfo, infoData("b")))
	var flags uint16
	sawBS := false
	for {
		r := readOptReply(t, c)
		if r.typ == nbdproto.RepAck {
			break
		}
		switch binary.BigEndian.Uint16(r.data) {
		case nbdproto.InfoExport:
			flags = binary.BigEndian.Uint16(r.data[10:])
		case nbdproto.InfoBlockSize:
			sawBS = binary.BigEndian.Uint32(r.data[10:]) == MaxPayload
		}
	}
	if flags&nbdproto.TFlagReadOnly == 0 || flags&nbdproto.TFlagTrim != 0 || !sawBS {
		t.Fatalf("INFO b: flags %#x, block size sent %v", flags, sawBS)
	}
	c.Write(optBytes(nbdproto.OptAbort, nil))
	if r := readOptReply(t, c); r.typ != nbdproto.RepAck {
		t.Fatalf("ABORT: %#x", r.typ)
	}
	expectClosed(t, c, "after ABORT")

	// Read-only export: writes fail with EPERM, payload consumed.
	cl := dial(t, e.sock, "b", false)
	cl.send(nbdproto.CmdWrite, 0, 1, 0, 4096, make([]byte, 4096))
	if errv := cl.simple(1); errv != nbdproto.ErrPerm {
		t.Fatalf("write to read-only export: %d", errv)
	}
	cl.send(nbdproto.CmdTrim, 0, 2, 0, 4096, nil)
	if errv := cl.simple(2); errv != nbdproto.ErrPerm {
		t.Fatalf("trim on read-only export: %d", errv)
	}
	if _, _, errv := cl.read(3, 0, 4096, 0); errv != 0 {
		t.Fatalf("read from read-only export: %d", errv)
	}
}

func TestBadRequests(t *testing.T) {
	e := newEnv(t, ExportOptions{Name: ""})
	cl := dial(t, e.sock, "", true)
	cases := []struct {
		cmd, flags uint16
		off        uint64
		n          uint32
		want       uint32
	}{
		{nbdproto.CmdRead, 0, testSize - 4096, 8192, nbdproto.ErrInval},
		{nbdproto.CmdRead, 0, 1 << 62, 1, nbdproto.ErrInval},
		{nbdproto.CmdRead, 0, 0, MaxPayload + 1, nbdproto.ErrOverflow},
		{nbdproto.CmdTrim, 0, testSize, 1, nbdproto.ErrInval}, // the protocol: EINVAL for reads and trims, as qemu-nbd
		{nbdproto.CmdWriteZeroes, 0, 1<<64 - 1, 2, nbdproto.ErrNoSpc},
		{99, 0, 0, 0, nbdproto.ErrInval},
		{nbdproto.CmdRead, 1 << 9, 0, 1, nbdproto.ErrInval},
		{nbdproto.CmdRead, nbdproto.CmdFlagReqOne, 0, 1, nbdproto.ErrInval},
		{nbdproto.CmdFlush, 0, 0, 5, nbdproto.ErrInval},
	}
	for i, c := range cases {
		cl.send(c.cmd, c.flags, uint64(100+i), c.off, c.n, nil)
		ch := cl.readChunk()
		if ch.cookie != uint64(100+i) || ch.err != c.want {
			t.Fatalf("case %d (cmd %d off %d len %d): cookie %d error %d, want %d", i, c.cmd, c.off, c.n, ch.cookie, ch.err, c.want)
		}
	}
	// A write beyond the end: its payload is consumed and the stream stays in sync.
	cl.send(nbdproto.CmdWrite, 0, 50, testSize-10, 20, make([]byte, 20))
	if errv := cl.simple(50); errv != nbdproto.ErrNoSpc {
		t.Fatalf("write past the end: %d", errv)
	}
	if _, _, errv := cl.read(51, 0, 512, 0); errv != 0 {
		t.Fatalf("read after a refused write: %d", errv)
	}
	// A write too large to skip: the connection is closed, others go on.
	other := dial(t, e.sock, "", false)
	cl.send(nbdproto.CmdWrite, 0, 52, 0, MaxPayload+1, nil)
	expectClosed(t, cl.c, "oversized write")
	// Bad magic.
	bad := dial(t, e.sock, "", false)
	bad.c.Write(bytes.Repeat([]byte{0xee}, 28))
	expectClosed(t, bad.c, "bad request magic")
	if _, _, errv := other.read(1, 0, 4096, 0); errv != 0 {
		t.Fatalf("other client: %d", errv)
	}
}

func TestBadHandshakes(t *testing.T) {
	e := newEnv(t, ExportOptions{Name: ""})
	for name, send := range map[string][]byte{
		"unknown client flags": be32(1 << 7),
		"no fixed newstyle":    be32(0),
		"bad option magic":     append(be32(nbdproto.CFlagFixed), bytes.Repeat([]byte{1}, 16)...),
		"export name unknown":  append(be32(nbdproto.CFlagFixed), optBytes(nbdproto.OptExportName, []byte("zz"))...),
		"huge option":          append(be32(nbdproto.CFlagFixed), optBytes(nbdproto.OptGo, nil)[:12]...), // patched below
		"truncated":            be32(nbdproto.CFlagFixed)[:2],
	} {
		c := dialRaw(t, e.sock)
		var g [18]byte
		c.Read(g[:])
		if name == "huge option" {
			send = append(send, be32(1<<30)...)
		}
		c.Write(send)
		if name == "truncated" {
			c.(interface{ CloseWrite() error }).CloseWrite()
		}
		expectClosed(t, c, name)
	}
	// A large option is refused with TOO_BIG and the session goes on.
	c := dialRaw(t, e.sock)
	greet(t, c)
	c.Write(optBytes(nbdproto.OptInfo, make([]byte, maxOptionLen+1)))
	if r := readOptReply(t, c); r.typ != nbdproto.RepErrTooBig {
		t.Fatalf("large option: %#x", r.typ)
	}
	c.Write(optBytes(nbdproto.OptExportName, nil))
	var h [10]byte
	if _, err := c.Read(h[:]); err != nil || binary.BigEndian.Uint64(h[:]) != testSize {
		t.Fatalf("EXPORT_NAME after refused option: %v % x", err, h)
	}
}

func TestPipelinedRequests(t *testing.T) {
	e := newEnv(t, ExportOptions{Name: ""})
	cl := dial(t, e.sock, "", true)
	const n = 200 // more than the slots: reading pauses and resumes
	var req []byte
	for i := 0; i < n; i++ {
		req = append(req, reqBytes(nbdproto.CmdWrite, 0, uint64(i), uint64(i)*4096, 4096)...)
		req = append(req, pattern(4096, byte(i))...)
	}
	go cl.c.Write(req)
	seen := map[uint64]bool{}
	for i := 0; i < n; i++ {
		ch := cl.readChunk()
		if ch.err != 0 || seen[ch.cookie] {
			t.Fatalf("reply %d: cookie %d err %d", i, ch.cookie, ch.err)
		}
		seen[ch.cookie] = true
	}
	req = req[:0]
	for i := 0; i < n; i++ {
		req = append(req, reqBytes(nbdproto.CmdRead, nbdproto.CmdFlagDF, uint64(i), uint64(i)*4096, 4096)...)
	}
	go cl.c.Write(req)
	for i := 0; i < n; i++ {
		ch := cl.readChunk()
		off := binary.BigEndian.Uint64(ch.data)
		if ch.typ != nbdproto.ChunkOffsetData || off != ch.cookie*4096 || !bytes.Equal(ch.data[8:], pattern(4096, byte(ch.cookie))) {
			t.Fatalf("read reply %d: cookie %d type %d", i, ch.cookie, ch.typ)
		}
	}
}

func TestDisconnectMidRequest(t *testing.T) {
	e := newEnv(t, ExportOptions{Name: ""})
	cl := dial(t, e.sock, "", false)
	cl.c.Write(append(reqBytes(nbdproto.CmdWrite, 0, 1, 0, 65536), make([]byte, 1000)...))
	cl.c.Close()
	cl2 := dial(t, e.sock, "", false)
	cl2.c.Write(reqBytes(nbdproto.CmdRead, 0, 1, 0, 10)[:20])
	cl2.c.Close()
	other := dial(t, e.sock, "", false)
	if _, _, errv := other.read(1, 0, 4096, 0); errv != 0 {
		t.Fatal(errv)
	}
	deadline := time.Now().Add(10 * time.Second)
	for e.exp.Connections() != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections, want 1 after two clients left", e.exp.Connections())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestStructuredReadErrorsAreChunks: once structured replies are
// negotiated, a READ must never get a simple reply, not even when the
// request itself is refused (out of range, too long, bad flags): the
// protocol says so, and QEMU's client takes a simple reply to a read as a
// protocol error and drops the connection. Each refusal is one error
// chunk flagged DONE, and the stream stays usable.
func TestStructuredReadErrorsAreChunks(t *testing.T) {
	e := newEnv(t, ExportOptions{Name: ""})
	cl := dial(t, e.sock, "", true)
	cases := []struct {
		name  string
		flags uint16
		off   uint64
		n     uint32
		want  uint32
	}{
		{"past the end", 0, testSize - 512, 1024, nbdproto.ErrInval},
		{"offset beyond the end", 0, testSize + 4096, 0, nbdproto.ErrInval},
		{"longer than the maximum payload", 0, 0, MaxPayload + 1, nbdproto.ErrOverflow},
		{"NO_HOLE flag", nbdproto.CmdFlagNoHole, 0, 512, nbdproto.ErrInval},
		{"unknown flag", 1 << 9, 0, 512, nbdproto.ErrInval},
	}
	for i, c := range cases {
		cookie := uint64(10 + i)
		cl.send(nbdproto.CmdRead, c.flags, cookie, c.off, c.n, nil)
		ch := cl.readChunk()
		if ch.simple {
			t.Fatalf("%s: simple reply (error %d) to a READ on a structured connection", c.name, ch.err)
		}
		if ch.cookie != cookie || ch.typ != nbdproto.ChunkError || ch.flags&nbdproto.ChunkDone == 0 || ch.err != c.want {
			t.Fatalf("%s: chunk cookie %d type %d flags %#x error %d, want an error chunk with DONE and error %d",
				c.name, ch.cookie, ch.typ, ch.flags, ch.err, c.want)
		}
	}
	if _, types, errv := cl.read(99, 0, 512, 0); errv != 0 || len(types) != 1 || types[0] != nbdproto.ChunkOffsetData {
		t.Fatalf("read after the refusals: error %d chunks %v", errv, types)
	}
	// Without structured replies the same refusal is a simple reply.
	plain := dial(t, e.sock, "", false)
	plain.send(nbdproto.CmdRead, 0, 7, testSize, 1, nil)
	if ch := plain.readChunk(); !ch.simple || ch.err != nbdproto.ErrInval {
		t.Fatalf("refused read without structured replies: simple %v error %d", ch.simple, ch.err)
	}
}

// TestFailedSetMetaContextClearsSelection: NBD_OPT_SET_META_CONTEXT
// replaces the contexts selected before it even when it fails, so a
// client whose last SET failed has none, and BLOCK_STATUS is refused.
// The server kept the earlier selection.
func TestFailedSetMetaContextClearsSelection(t *testing.T) {
	e := newEnv(t, ExportOptions{Name: "d"})
	for _, bad := range []struct {
		name string
		data []byte
		want uint32
	}{
		{"unknown export", metaData("nope", nbdproto.CtxAllocation), nbdproto.RepErrUnknown},
		{"malformed", []byte{0, 0, 0, 1, 'd', 0, 0, 0, 9}, nbdproto.RepErrInvalid},
	} {
		c := dialRaw(t, e.sock)
		greet(t, c)
		c.Write(optBytes(nbdproto.OptStructured, nil))
		readOptReply(t, c)
		c.Write(optBytes(nbdproto.OptSetMeta, metaData("d", nbdproto.CtxAllocation)))
		if r := readOptReply(t, c); r.typ != nbdproto.RepMetaContext {
			t.Fatalf("%s: first SET_META_CONTEXT: reply %#x", bad.name, r.typ)
		}
		if r := readOptReply(t, c); r.typ != nbdproto.RepAck {
			t.Fatalf("%s: first SET_META_CONTEXT: reply %#x", bad.name, r.typ)
		}
		c.Write(optBytes(nbdproto.OptSetMeta, bad.data))
		if r := readOptReply(t, c); r.typ != bad.want {
			t.Fatalf("%s: second SET_META_CONTEXT: reply %#x, want %#x", bad.name, r.typ, bad.want)
		}
		c.Write(optBytes(nbdproto.OptGo, infoData("d")))
		for r := readOptReply(t, c); r.typ != nbdproto.RepAck; r = readOptReply(t, c) {
			if r.typ != nbdproto.RepInfo {
				t.Fatalf("%s: GO: reply %#x", bad.name, r.typ)
			}
		}
		cl := &client{t: t, c: c, structured: true}
		if _, errv := cl.blockStatus(1, 0, 4096, 0); errv != nbdproto.ErrInval {
			t.Fatalf("%s: BLOCK_STATUS after a failed SET_META_CONTEXT: error %d, want EINVAL (no context selected)", bad.name, errv)
		}
	}
}

// TestIgnoreDiscard: an export with IgnoreDiscard answers TRIM without
// touching the node (here a file node that would punch a hole), and
// WRITE_ZEROES still zeroes.
func TestIgnoreDiscard(t *testing.T) {
	e := newEnv(t, ExportOptions{Name: "", IgnoreDiscard: true})
	cl := dial(t, e.sock, "", true)
	d := pattern(64<<10, 3)
	cl.send(nbdproto.CmdWrite, 0, 1, 0, uint32(len(d)), d)
	if errv := cl.simple(1); errv != 0 {
		t.Fatalf("write: %d", errv)
	}
	cl.send(nbdproto.CmdTrim, nbdproto.CmdFlagFUA, 2, 0, uint32(len(d)), nil)
	if errv := cl.simple(2); errv != 0 {
		t.Fatalf("trim: %d", errv)
	}
	if got, _, errv := cl.read(3, 0, uint32(len(d)), 0); errv != 0 || !bytes.Equal(got, d) {
		t.Fatalf("read after an ignored trim: error %d, data changed %v", errv, !bytes.Equal(got, d))
	}
	cl.send(nbdproto.CmdWriteZeroes, 0, 4, 0, 4096, nil)
	if errv := cl.simple(4); errv != 0 {
		t.Fatalf("write zeroes: %d", errv)
	}
	if got, _, errv := cl.read(5, 0, 8192, 0); errv != 0 || !bytes.Equal(got[:4096], make([]byte, 4096)) || !bytes.Equal(got[4096:], d[4096:8192]) {
		t.Fatalf("read after write zeroes: error %d", errv)
	}
}

// TestDetectZeroesUnmap: with DetectZeroesUnmap a WRITE of zero bytes
// reaches the node as a write-zeroes that may unmap (the file node here
// punches a hole; it has no detect-zeroes of its own), FUA included, and
// a WRITE of data stays a write.
func TestDetectZeroesUnmap(t *testing.T) {
	e := newEnv(t, ExportOptions{Name: "", DetectZeroes: DetectZeroesUnmap})
	cl := dial(t, e.sock, "", true)
	d := pattern(128<<10, 3)
	cl.send(nbdproto.CmdWrite, 0, 1, 0, uint32(len(d)), d)
	if errv := cl.simple(1); errv != 0 {
		t.Fatalf("write: %d", errv)
	}
	cl.send(nbdproto.CmdWrite, nbdproto.CmdFlagFUA, 2, 0, 64<<10, make([]byte, 64<<10))
	if errv := cl.simple(2); errv != 0 {
		t.Fatalf("write of zeroes: %d", errv)
	}
	if got, _, errv := cl.read(3, 0, uint32(len(d)), 0); errv != 0 || !bytes.Equal(got[:64<<10], make([]byte, 64<<10)) || !bytes.Equal(got[64<<10:], d[64<<10:]) {
		t.Fatalf("read back: error %d", errv)
	}
	f, err := os.Open(e.path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	data, err := unix.Seek(int(f.Fd()), 0, unix.SEEK_DATA)
	if err != nil || data < 64<<10 {
		t.Fatalf("first data at %d (%v): the zeroes were written as data, not punched", data, err)
	}
}
