package bench

import (
	"fmt"
	"io"
	"strings"
)

// terseSlots is the number of percentile fields of fio's terse lines
// (FIO_IO_U_LIST_MAX_LEN): the list asked for, then "0%=0" padding.
const terseSlots = 20

// WriteTerse writes fio's terse (version 3) output: one semicolon
// separated line per reported job; latencies in microseconds, bandwidth in
// KiB/s, and the disks' utilisation at the end, as fio's
// --output-format=terse.
func WriteTerse(out io.Writer, res *Result) {
	disks := res.diskDeltas()
	for _, e := range entries(res) {
		var b strings.Builder
		fmt.Fprintf(&b, "3;fio-3.33;%s;%d;%d", e.name, e.groupID, errnoOf(e.err))
		for d := 0; d < 2; d++ { // read, write (version 3 has no trim)
			terseDir(&b, e, d)
		}
		fmt.Fprintf(&b, ";%f%%;%f%%;%d;%d;%d", e.usrPct, e.sysPct, e.ctx, e.majf, e.minf)
		for _, v := range e.depth {
			fmt.Fprintf(&b, ";%.1f%%", v)
		}
		for _, v := range e.latUs {
			fmt.Fprintf(&b, ";%.2f%%", v)
		}
		for _, v := range e.latMs {
			fmt.Fprintf(&b, ";%.2f%%", v)
		}
		for _, x := range disks {
			fmt.Fprintf(&b, ";%s;%d;%d;%d;%d;%d;%d;%d;%.2f%%", x.name, x.ios[0], x.ios[1], x.merges[0], x.merges[1],
				x.ticks[0], x.ticks[1], x.inQueue, x.util)
		}
		if e.job.Description != "" {
			fmt.Fprintf(&b, ";%s", e.job.Description)
		}
		b.WriteByte('\n')
		io.WriteString(out, b.String())
	}
}

// terseDir writes one direction's fields (all zero for a direction
// without I/O).
func terseDir(b *strings.Builder, e *entry, d int) {
	var ds *dirStats
	if e.dirs[d].ios > 0 {
		ds = &e.dirs[d]
	}
	if ds == nil {
		empty := newDirStats()
		ds = &empty
		fmt.Fprintf(b, ";0;0;0;0")
	} else {
		fmt.Fprintf(b, ";%d;%d;%d;%d", ds.bytes/1024, uint64(e.bwBytes(d)/1024), uint64(e.iops(d)+0.5), e.runtimeMs)
	}
	us := func(s *latStat) {
		fmt.Fprintf(b, ";%d;%d;%f;%f", s.minOrZero()/1000, s.max/1000, s.mean/1000, s.stddev()/1000)
	}
	us(&ds.slat)
	us(&ds.clat)
	list := jobPercentiles(e.job)
	var vals []int64
	if e.job.ClatPercentiles {
		vals = percentiles(&ds.clat, list)
	}
	for i := 0; i < terseSlots; i++ {
		if i < len(list) && vals != nil {
			fmt.Fprintf(b, ";%f%%=%d", list[i], vals[i]/1000)
		} else {
			b.WriteString(";0%=0")
		}
	}
	us(&ds.lat)
	fmt.Fprintf(b, ";%d;%d;%f%%;%f;%f", uint64(ds.bw.min), uint64(ds.bw.max), e.share[d], ds.bw.mean, ds.bw.stddev())
}
