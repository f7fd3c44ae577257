package bench

import (
	"fmt"
	"os"
	"strconv"
)

// Per-clone log files in fio's format (write_bw_log, write_iops_log,
// write_lat_log), so fio's plotting tools (fio_generate_plots,
// fiologparser.py) read them: one line per entry,
//
//	time (ms), value, direction (0 read, 1 write), block size, [offset,] priority
//
// Without log_avg_msec every I/O is an entry (bw in KiB/s of that I/O,
// iops 1, latencies in ns, its block size; the offset column only with
// log_offset=1). With log_avg_msec=N each direction that did I/O in a window of
// N ms gets one entry, the window's average, with block size 0. Entries
// go into a fixed buffer that is written out when nearly full: nothing on
// the I/O path allocates.

// logKind indexes a clone's logs.
const (
	logBW = iota
	logIOPS
	logLat
	logClat
	logSlat
	nLogs
)

var logSuffix = [nLogs]string{"_bw", "_iops", "_lat", "_clat", "_slat"}

// logFile is one open log with its buffer.
type logFile struct {
	f   *os.File
	buf []byte
	err error
}

const logBufSize = 64 << 10

// add appends one entry: time, value, direction, block size, then the
// offset when log_offset is on (off >= 0), then the priority column:
// with log_prio the I/O's priority value as 0x%04x, else 1 for a realtime
// I/O and 0 for any other (fio 3.33's columns).
func (l *logFile) add(ms, val int64, dir int, bs int, off int64, prio uint16, logPrio bool) {
	if l == nil || l.err != nil {
		return
	}
	b := l.buf
	b = strconv.AppendInt(b, ms, 10)
	b = append(b, ',', ' ')
	b = strconv.AppendInt(b, val, 10)
	b = append(b, ',', ' ')
	b = strconv.AppendInt(b, int64(dir), 10)
	b = append(b, ',', ' ')
	b = strconv.AppendInt(b, int64(bs), 10)
	b = append(b, ',', ' ')
	if off >= 0 {
		b = strconv.AppendInt(b, off, 10)
		b = append(b, ',', ' ')
	}
	switch {
	case logPrio:
		const hex = "0123456789abcdef"
		b = append(b, '0', 'x', hex[prio>>12&15], hex[prio>>8&15], hex[prio>>4&15], hex[prio&15])
	case ioprioClass(prio) == ioprioClassRT:
		b = append(b, '1')
	default:
		b = append(b, '0')
	}
	b = append(b, '\n')
	l.buf = b
	if len(l.buf) > logBufSize-128 {
		l.flush()
	}
}

func (l *logFile) flush() {
	if l == nil || len(l.buf) == 0 || l.err != nil {
		return
	}
	_, l.err = l.f.Write(l.buf)
	l.buf = l.buf[:0]
}

func (l *logFile) close() error {
	if l == nil {
		return nil
	}
	l.flush()
	if err := l.f.Close(); l.err == nil {
		l.err = err
	}
	return l.err
}

// logWindow accumulates one direction over a log_avg_msec window.
type logWindow struct {
	ios, bytes               uint64
	latSum, clatSum, slatSum int64
	latN, clatN, slatN       int64
}

// cloneLogs are a clone's open logs (nil entries: not asked for).
type cloneLogs struct {
	files   [nLogs]*logFile
	avgNs   int64 // log_avg_msec in ns; 0: an entry per I/O
	offset  bool  // log_offset
	logPrio bool  // log_prio
	start   int64 // window start
	win     [2]logWindow
}

// logName is fio's file name of a log: PREFIX_bw.N.log (N the clone's
// thread number: from 1, counted over every job of the run, as fio's) or
// PREFIX_bw.log with per_job_logs=0.
func logName(j *Job, prefix string, kind, thread int) string {
	if !j.PerJobLogs {
		return prefix + logSuffix[kind] + ".log"
	}
	return prefix + logSuffix[kind] + "." + strconv.Itoa(thread) + ".log"
}

// openLogs opens the logs a clone's job asks for, or returns nil; thread
// is the clone's fio thread number (from 1).
func openLogs(j *Job, thread int) (*cloneLogs, error) {
	if j.BWLog == nil && j.IOPSLog == nil && j.LatLog == nil {
		return nil, nil
	}
	l := &cloneLogs{avgNs: int64(j.LogAvgMsec) * 1e6, offset: j.LogOffset, logPrio: j.IOPrio.LogPrio}
	open := func(kind int, prefix string) error {
		name := logName(j, prefix, kind, thread)
		f, err := os.Create(name)
		if err != nil {
			return fmt.Errorf("log file: %w", err)
		}
		l.files[kind] = &logFile{f: f, buf: make([]byte, 0, logBufSize)}
		return nil
	}
	var err error
	if j.BWLog != nil {
		err = open(logBW, *j.BWLog)
	}
	if j.IOPSLog != nil && err == nil {
		err = open(logIOPS, *j.IOPSLog)
	}
	if j.LatLog != nil && err == nil {
		for _, k := range []int{logLat, logClat, logSlat} {
			if err = open(k, *j.LatLog); err != nil {
				break
			}
		}
	}
	if err != nil {
		l.close()
		return nil, err
	}
	return l, nil
}

// io logs one completed I/O (per-I/O mode) or adds it to the window.
func (l *cloneLogs) io(now int64, dir, n int, off, clat, lat int64, prio uint16) {
	if l.avgNs > 0 {
		w := &l.win[dir]
		w.ios++
		w.bytes += uint64(n)
		if clat >= 0 {
			w.clatSum += clat
			w.clatN++
		}
		if lat >= 0 {
			w.latSum += lat
			w.latN++
		}
		return
	}
	ms := now / 1e6
	if !l.offset {
		off = -1
	}
	lp := l.logPrio
	if f := l.files[logBW]; f != nil && clat > 0 {
		f.add(ms, int64(n)*1e9/clat/1024, dir, n, off, prio, lp)
	}
	l.files[logIOPS].add(ms, 1, dir, n, off, prio, lp)
	if clat >= 0 {
		l.files[logClat].add(ms, clat, dir, n, off, prio, lp)
	}
	if lat >= 0 {
		l.files[logLat].add(ms, lat, dir, n, off, prio, lp)
	}
}

// slat logs a submission latency.
func (l *cloneLogs) slat(now int64, dir, n int, off, v int64, prio uint16) {
	if l.avgNs > 0 {
		l.win[dir].slatSum += v
		l.win[dir].slatN++
		return
	}
	if !l.offset {
		off = -1
	}
	l.files[logSlat].add(now/1e6, v, dir, n, off, prio, l.logPrio)
}

// tick closes a window that has ended.
func (l *cloneLogs) tick(now int64) {
	if l.avgNs > 0 && now-l.start >= l.avgNs {
		l.window(now)
	}
}

func (l *cloneLogs) window(now int64) {
	span := now - l.start
	if span <= 0 {
		return
	}
	ms := now / 1e6
	off := int64(-1)
	if l.offset {
		off = 0
	}
	lp := l.logPrio
	for d := range l.win {
		w := &l.win[d]
		if w.ios > 0 {
			l.files[logBW].add(ms, int64(w.bytes*1e9/uint64(span)/1024), d, 0, off, 0, lp)
			l.files[logIOPS].add(ms, int64(w.ios*1e9/uint64(span)), d, 0, off, 0, lp)
		}
		if w.latN > 0 {
			l.files[logLat].add(ms, w.latSum/w.latN, d, 0, off, 0, lp)
		}
		if w.clatN > 0 {
			l.files[logClat].add(ms, w.clatSum/w.clatN, d, 0, off, 0, lp)
		}
		if w.slatN > 0 {
			l.files[logSlat].add(ms, w.slatSum/w.slatN, d, 0, off, 0, lp)
		}
		*w = logWindow{}
	}
	l.start = now
}

// finish closes the last (partial) window.
func (l *cloneLogs) finish(now int64) {
	if l.avgNs > 0 {
		l.window(now)
	}
}

func (l *cloneLogs) close() error {
	var first error
	for _, f := range l.files {
		if err := f.close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}
