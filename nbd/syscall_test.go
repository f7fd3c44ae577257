package nbd

import (
	"testing"

	"github.com/ringblk/ringblk/internal/nbdproto"
)

// TestShortReadThenPoll: a read that returns less than asked for has
// emptied the socket, so the connection waits for readiness instead of
// reading again for an EAGAIN. Each burst of pipelined requests then costs
// one read system call, not two.
func TestShortReadThenPoll(t *testing.T) {
	e := newEnv(t, ExportOptions{Name: ""})
	cl := dial(t, e.sock, "", true)
	const rounds, perRound = 40, 8
	connReads := func() int {
		n := -1
		e.main.Run(func() {
			e.exp.mu.Lock()
			defer e.exp.mu.Unlock()
			for c := range e.exp.conns {
				n = c.reads
			}
		})
		return n
	}
	before := connReads()
	for r := 0; r < rounds; r++ {
		var burst []byte
		for i := 0; i < perRound; i++ {
			burst = append(burst, reqBytes(nbdproto.CmdRead, nbdproto.CmdFlagDF, uint64(i), uint64(i)*4096, 4096)...)
		}
		if _, err := cl.c.Write(burst); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < perRound; i++ {
			if ch := cl.readChunk(); ch.err != 0 || ch.typ != nbdproto.ChunkOffsetData {
				t.Fatalf("round %d reply %d: type %d err %d", r, i, ch.typ, ch.err)
			}
		}
	}
	got := connReads() - before
	// One read per burst; a few more if a burst arrives in two parts.
	if got > rounds+rounds/4 {
		t.Fatalf("%d read system calls for %d bursts of %d requests, want about one per burst", got, rounds, perRound)
	}
	t.Logf("%d reads for %d bursts", got, rounds)
}

// TestBurstReadThroughRing: once the socket is empty, the connection waits
// for the next requests with a read on the ring (aio ReadSome), not a
// POLL_ADD followed by read(2); so a burst of pipelined requests that
// arrives while it waits costs no read system call at all.
func TestBurstReadThroughRing(t *testing.T) {
	e := newEnv(t, ExportOptions{Name: ""})
	cl := dial(t, e.sock, "", true)
	const rounds, perRound = 40, 8
	counts := func() (reads, ring int) {
		reads = -1
		e.main.Run(func() {
			e.exp.mu.Lock()
			defer e.exp.mu.Unlock()
			for c := range e.exp.conns {
				reads, ring = c.reads, c.ringReads
			}
		})
		return
	}
	r0, g0 := counts()
	for r := 0; r < rounds; r++ {
		var burst []byte
		for i := 0; i < perRound; i++ {
			burst = append(burst, reqBytes(nbdproto.CmdRead, nbdproto.CmdFlagDF, uint64(i), uint64(i)*4096, 4096)...)
		}
		if _, err := cl.c.Write(burst); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < perRound; i++ {
			if ch := cl.readChunk(); ch.err != 0 || ch.typ != nbdproto.ChunkOffsetData {
				t.Fatalf("round %d reply %d: type %d err %d", r, i, ch.typ, ch.err)
			}
		}
	}
	r1, g1 := counts()
	t.Logf("%d read system calls and %d ring reads for %d bursts", r1-r0, g1-g0, rounds)
	if r1-r0 > rounds/4 {
		t.Fatalf("%d read system calls for %d bursts of %d requests, want (about) none: the reads should go through the ring", r1-r0, rounds, perRound)
	}
	if g1-g0 < rounds {
		t.Fatalf("%d ring reads for %d bursts, want one per burst at least", g1-g0, rounds)
	}
}
