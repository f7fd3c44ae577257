package nbd

import (
	"math/bits"
	"sync/atomic"
	"time"

	"github.com/ringblk/ringblk/internal/nbdproto"
)

// LatencyBuckets is the number of buckets of a latency histogram: bucket
// i counts latencies in [2^i, 2^(i+1)) ns (bucket 0 also counts 0 ns, the
// last everything longer), as the host API's accounting does.
const LatencyBuckets = 40

// OpStats account one kind of request of an export.
type OpStats struct {
	Ops     uint64
	Bytes   uint64
	Errors  uint64 // requests answered with an error
	TotalNs uint64 // summed latency, request read to reply queued
	Latency [LatencyBuckets]uint64
}

// Stats are an export's accounting, summed over its connections.
type Stats struct {
	Read, Write, Flush, Trim, WriteZeroes OpStats
}

type opCounters struct {
	ops, bytes, errors, totalNs atomic.Uint64
	lat                         [LatencyBuckets]atomic.Uint64
}

type exportStats struct {
	op [5]opCounters // read, write, flush, trim, write-zeroes
}

// statIndex maps a command to its counters (-1: not accounted).
func statIndex(cmd uint16) int {
	switch cmd {
	case nbdproto.CmdRead:
		return 0
	case nbdproto.CmdWrite:
		return 1
	case nbdproto.CmdFlush:
		return 2
	case nbdproto.CmdTrim:
		return 3
	case nbdproto.CmdWriteZeroes:
		return 4
	}
	return -1
}

// record accounts a request whose reply is being queued: atomics only,
// no allocation (the Context's hot path).
func (s *exportStats) record(sl *slot) {
	i := statIndex(sl.req.cmd)
	if i < 0 || sl.start.IsZero() {
		return
	}
	ns := uint64(max(time.Since(sl.start), 0))
	o := &s.op[i]
	o.ops.Add(1)
	if sl.failed {
		o.errors.Add(1)
	} else if i != 2 {
		o.bytes.Add(uint64(sl.req.length))
	}
	o.totalNs.Add(ns)
	b := bits.Len64(ns)
	if b > 0 {
		b--
	}
	o.lat[min(b, LatencyBuckets-1)].Add(1)
	sl.start = time.Time{}
}

func (o *opCounters) load() OpStats {
	s := OpStats{Ops: o.ops.Load(), Bytes: o.bytes.Load(), Errors: o.errors.Load(), TotalNs: o.totalNs.Load()}
	for i := range o.lat {
		s.Latency[i] = o.lat[i].Load()
	}
	return s
}

// Stats returns the export's accounting; any goroutine, I/O keeps running.
func (e *Export) Stats() Stats {
	s := &e.stats.op
	return Stats{Read: s[0].load(), Write: s[1].load(), Flush: s[2].load(), Trim: s[3].load(), WriteZeroes: s[4].load()}
}
