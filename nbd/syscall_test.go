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
