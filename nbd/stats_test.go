package nbd

import (
	"testing"

	"github.com/ringblk/ringblk/internal/nbdproto"
)

// TestExportStats: each accounted command counts once with its bytes and
// latency, a refused one (a read with a write-only flag) counts as an error without
// bytes, and block status and cache are not counted.
func TestExportStats(t *testing.T) {
	e := newEnv(t, ExportOptions{Name: "disk"})
	cl := dial(t, e.sock, "disk", true)
	data := pattern(64<<10, 1)
	cl.send(nbdproto.CmdWrite, nbdproto.CmdFlagFUA, 1, 0, uint32(len(data)), data)
	if v := cl.simple(1); v != 0 {
		t.Fatalf("write: %d", v)
	}
	if _, _, v := cl.read(2, 0, 4096, 0); v != 0 {
		t.Fatalf("read: %d", v)
	}
	cl.send(nbdproto.CmdFlush, 0, 3, 0, 0, nil)
	cl.simple(3)
	cl.send(nbdproto.CmdWriteZeroes, 0, 4, 0, 4096, nil)
	cl.simple(4)
	plain := dial(t, e.sock, "disk", false)                                // a refusal is a simple reply
	if _, _, v := plain.read(8, 0, 4096, nbdproto.CmdFlagNoHole); v == 0 { // a write flag on a read: refused
		t.Fatal("a read with NO_HOLE succeeded")
	}
	cl.send(nbdproto.CmdTrim, 0, 5, 0, 8192, nil)
	cl.simple(5)
	cl.send(nbdproto.CmdCache, 0, 6, 0, 4096, nil)
	cl.simple(6)
	cl.blockStatus(7, 0, 4096, 0)
	s := e.exp.Stats()
	check := func(what string, o OpStats, ops, bytes, errs uint64) {
		t.Helper()
		var hist uint64
		for _, n := range o.Latency {
			hist += n
		}
		if o.Ops != ops || o.Bytes != bytes || o.Errors != errs || hist != ops || (ops > 0 && o.TotalNs == 0) {
			t.Errorf("%s: %+v, want ops %d bytes %d errors %d", what, o, ops, bytes, errs)
		}
	}
	check("read", s.Read, 2, 4096, 1)
	check("write", s.Write, 1, uint64(len(data)), 0)
	check("flush", s.Flush, 1, 0, 0)
	check("write zeroes", s.WriteZeroes, 1, 4096, 0)
	check("trim", s.Trim, 1, 8192, 0)
}
