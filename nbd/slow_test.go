package nbd

import (
	"bytes"
	"testing"
	"time"

	"github.com/ringblk/ringblk/internal/nbdproto"
)

// TestSlowClientBounded: a client that sends many large reads and never
// reads the replies makes the server stop reading its requests once its
// payload budget is used; the memory it holds stays bounded and other
// clients keep being served. When it finally reads, every reply comes.
func TestSlowClientBounded(t *testing.T) {
	e := newEnv(t, ExportOptions{Name: ""})
	slow := dial(t, e.sock, "", false)
	const n = 200 // 200 MiB of replies asked for
	var req []byte
	for i := 0; i < n; i++ {
		req = append(req, reqBytes(nbdproto.CmdRead, 0, uint64(i), uint64(i%16)<<20, 1<<20)...)
	}
	if _, err := slow.c.Write(req); err != nil {
		t.Fatal(err)
	}
	other := dial(t, e.sock, "", true)
	for i := 0; i < 20; i++ {
		d := pattern(4096, byte(i))
		other.send(nbdproto.CmdWrite, 0, 1, 0, 4096, d)
		if ev := other.simple(1); ev != 0 {
			t.Fatal(ev)
		}
		got, _, _ := other.read(2, 0, 4096, 0)
		if !bytes.Equal(got, d) {
			t.Fatal("other client: wrong data")
		}
	}
	var held, maxHeld int64
	var busy int
	for deadline := time.Now().Add(10 * time.Second); ; {
		time.Sleep(50 * time.Millisecond)
		held, maxHeld, busy = 0, 0, 0
		e.g.Control(func() {
			e.exp.mu.Lock()
			defer e.exp.mu.Unlock()
			for c := range e.exp.conns {
				if c.held > held {
					held, busy = c.held, c.busy
				}
				for i := range c.slots {
					maxHeld += int64(cap(c.slots[i].buf))
				}
			}
		})
		if held > budget+MaxPayload || maxHeld > 2*(budget+MaxPayload) {
			t.Fatalf("slow client holds %d bytes of payload (%d buffered), bound %d", held, maxHeld, budget+MaxPayload)
		}
		if busy > 0 && held >= budget {
			break // stalled on its budget
		}
		if time.Now().After(deadline) {
			t.Fatalf("slow client: %d requests in flight holding %d bytes; the test did not stall it on its budget", busy, held)
		}
	}
	// While the slow client is stalled with its replies queued, the
	// other client is still served, on the same Context.
	for i := 0; i < 5; i++ {
		d := pattern(4096, byte(100+i))
		other.send(nbdproto.CmdWrite, 0, 3, 8192, 4096, d)
		if ev := other.simple(3); ev != 0 {
			t.Fatalf("other client while the slow one is stalled: error %d", ev)
		}
		if got, _, _ := other.read(4, 8192, 4096, 0); !bytes.Equal(got, d) {
			t.Fatal("other client while the slow one is stalled: wrong data")
		}
	}
	for i := 0; i < n; i++ {
		ch := slow.readChunk()
		if ch.err != 0 {
			t.Fatalf("reply %d: %d", i, ch.err)
		}
		buf := make([]byte, 1<<20)
		if _, err := readFull(slow, buf); err != nil {
			t.Fatal(err)
		}
	}
}

func readFull(cl *client, b []byte) (int, error) {
	cl.c.SetReadDeadline(time.Now().Add(20 * time.Second))
	n := 0
	for n < len(b) {
		k, err := cl.c.Read(b[n:])
		n += k
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// TestCloseWhileClientsLeave: Export.Close and drained_end schedule the
// BHs of the connections in the export's set, under its lock, while some
// connections are finishing (DISC). A finishing connection must leave the
// set before it deletes its BHs. The test holds the lock while the
// clients disconnect, then does what Close and DrainedEnd do.
func TestCloseWhileClientsLeave(t *testing.T) {
	e := newEnv(t, ExportOptions{Name: ""})
	var cls []*client
	for i := 0; i < 4; i++ {
		cls = append(cls, dial(t, e.sock, "", false))
	}
	for e.exp.Connections() != len(cls) {
		time.Sleep(5 * time.Millisecond)
	}
	func() {
		e.exp.mu.Lock()
		defer e.exp.mu.Unlock()
		for _, cl := range cls {
			cl.send(nbdproto.CmdDisc, 0, 1, 0, 0, nil)
		}
		time.Sleep(200 * time.Millisecond) // the connections reach their end
		for c := range e.exp.conns {
			c.readBH.Schedule()
			c.shutdownBH.Schedule()
		}
	}()
	for _, cl := range cls {
		expectClosed(t, cl.c, "after DISC")
	}
}

// TestCloseDoesNotWaitForSlowHandshake: Server.Close ends handshakes in
// progress instead of waiting for their timeout.
func TestCloseDoesNotWaitForSlowHandshake(t *testing.T) {
	e := newEnv(t, ExportOptions{Name: ""})
	c := dialRaw(t, e.sock)
	var g [18]byte
	if _, err := readFull(&client{c: c}, g[:]); err != nil {
		t.Fatal(err)
	}
	// The client now sends nothing.
	start := time.Now()
	e.srv.Close()
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("Server.Close took %v with a client silent in the handshake", d)
	}
	expectClosed(t, c, "handshake after Server.Close")
}

// TestDisconnectWithRepliesPending: a client that sends reads and closes
// at once leaves replies the server cannot send (EPIPE/ECONNRESET): the
// connection ends, its slots are freed, and the other clients go on.
func TestDisconnectWithRepliesPending(t *testing.T) {
	e := newEnv(t, ExportOptions{Name: ""})
	other := dial(t, e.sock, "", false)
	for round := 0; round < 5; round++ {
		cl := dial(t, e.sock, "", round%2 == 0)
		var req []byte
		for i := 0; i < 50; i++ {
			req = append(req, reqBytes(nbdproto.CmdRead, 0, uint64(i), uint64(i)<<18, 1<<20)...)
		}
		cl.c.Write(req)
		cl.c.Close()
	}
	if _, _, errv := other.read(1, 0, 4096, 0); errv != 0 {
		t.Fatal(errv)
	}
	deadline := time.Now().Add(10 * time.Second)
	for e.exp.Connections() != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections, want 1 after the others closed", e.exp.Connections())
		}
		time.Sleep(10 * time.Millisecond)
	}
}
