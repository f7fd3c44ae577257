package nbd

import (
	"bytes"
	"testing"
	"time"

	"github.com/ringblk/ringblk/internal/nbdproto"
)

// TestHandshakeTimeoutClosesSilentClient: a client that connects and then
// says nothing is disconnected after Server.HandshakeTimeout, and while it
// waits it holds no place of an export limited to one client: another
// client negotiates and is served.
func TestHandshakeTimeoutClosesSilentClient(t *testing.T) {
	e := newEnv(t, ExportOptions{Name: "", MaxConnections: 1})
	e.srv.mu.Lock() // read under the lock when a client is accepted
	e.srv.HandshakeTimeout = 300 * time.Millisecond
	e.srv.mu.Unlock()
	silent := dialRaw(t, e.sock)
	greet(t, silent)
	start := time.Now()
	other := dial(t, e.sock, "", true)
	d := pattern(4096, 9)
	other.send(nbdproto.CmdWrite, 0, 1, 8192, 4096, d)
	if ev := other.simple(1); ev != 0 {
		t.Fatalf("other client's write: error %d", ev)
	}
	if got, _, ev := other.read(2, 8192, 4096, 0); ev != 0 || !bytes.Equal(got, d) {
		t.Fatalf("other client's read: error %d", ev)
	}
	expectClosed(t, silent, "client silent in the handshake")
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("silent client closed after %v, handshake timeout 300ms", el)
	}
}

// TestDripFedRequests: a client whose requests arrive a few bytes at a
// time (a header split across reads, a payload in pieces) is served
// correctly, and a client next to it is served in the meantime.
func TestDripFedRequests(t *testing.T) {
	e := newEnv(t, ExportOptions{Name: ""})
	drip := dial(t, e.sock, "", true)
	other := dial(t, e.sock, "", false)
	d := pattern(3000, 4)
	dripSend := func(msg []byte) {
		for i := 0; i < len(msg); i += 5 {
			if _, err := drip.c.Write(msg[i:min(i+5, len(msg))]); err != nil {
				t.Fatal(err)
			}
			if i%600 == 0 {
				// Mid-request, the neighbour gets its answers.
				if _, _, ev := other.read(uint64(i), 0, 512, 0); ev != 0 {
					t.Fatalf("other client at byte %d: error %d", i, ev)
				}
				time.Sleep(time.Millisecond)
			}
		}
	}
	dripSend(append(reqBytes(nbdproto.CmdWrite, nbdproto.CmdFlagFUA, 7, 4096, uint32(len(d))), d...))
	if ev := drip.simple(7); ev != 0 {
		t.Fatalf("drip-fed write: error %d", ev)
	}
	dripSend(reqBytes(nbdproto.CmdRead, nbdproto.CmdFlagDF, 8, 4096, uint32(len(d))))
	ch := drip.readChunk()
	if ch.cookie != 8 || ch.err != 0 || ch.typ != nbdproto.ChunkOffsetData || !bytes.Equal(ch.data[8:], d) {
		t.Fatalf("drip-fed read: cookie %d type %d error %d", ch.cookie, ch.typ, ch.err)
	}
}
