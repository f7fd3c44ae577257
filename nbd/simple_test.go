package nbd

import (
	"bytes"
	"io"
	"testing"

	"github.com/ringblk/ringblk/internal/nbdproto"
)

// TestSimpleReads drives reads on a connection that did not negotiate
// structured replies: many in flight, sizes from 0 bytes to above the
// kept-buffer size, each answered by a simple reply followed by exactly
// the requested data.
func TestSimpleReads(t *testing.T) {
	e := newEnv(t, ExportOptions{Name: ""})
	cl := dial(t, e.sock, "", false)
	if cl.flags&nbdproto.TFlagDF != 0 {
		t.Fatalf("flags %#x advertise DF without structured replies", cl.flags)
	}
	img := pattern(4<<20, 5)
	cl.send(nbdproto.CmdWrite, 0, 1, 0, uint32(len(img)), img)
	if e := cl.simple(1); e != 0 {
		t.Fatalf("write: %d", e)
	}
	sizes := []uint32{0, 1, 511, 4096, 65536, 300 << 10, 1 << 20, 3 << 20}
	var req []byte
	type rq struct {
		off uint64
		n   uint32
	}
	var want []rq
	for i := 0; i < 150; i++ {
		n := sizes[i%len(sizes)]
		off := uint64(i*4099) % uint64(len(img)-int(n)+1)
		req = append(req, reqBytes(nbdproto.CmdRead, 0, uint64(i), off, n)...)
		want = append(want, rq{off, n})
	}
	go cl.c.Write(req)
	seen := map[uint64]bool{}
	for i := 0; i < len(want); i++ {
		ch := cl.readChunk()
		if !ch.simple || ch.err != 0 || ch.cookie >= uint64(len(want)) || seen[ch.cookie] {
			t.Fatalf("reply %d: simple %v cookie %d err %d", i, ch.simple, ch.cookie, ch.err)
		}
		seen[ch.cookie] = true
		w := want[ch.cookie]
		buf := make([]byte, w.n)
		if _, err := io.ReadFull(cl.c, buf); err != nil {
			t.Fatalf("reply %d data: %v", i, err)
		}
		if !bytes.Equal(buf, img[w.off:w.off+uint64(w.n)]) {
			t.Fatalf("reply %d (cookie %d, off %d, %d bytes): data differs", i, ch.cookie, w.off, w.n)
		}
	}
}
