package qemuio

// aio_read, aio_write and aio_flush: requests submitted to the node's
// Context without waiting, as qemu-io's blk_aio_* calls are. The command
// returns once the request is on its way; the request completes on the
// Context's owner goroutine, which records the result. Results print at
// the next aio_flush (which waits for every outstanding request) or at
// exit, in completion order: qemu-io too prints them only when its main
// loop runs them, and in no fixed order among themselves. Like qemu-io,
// a failed or mismatching asynchronous request does not fail the command
// or change the exit status.

import (
	"bytes"
	"fmt"
	"sync"
	"time"

	"github.com/ringblk/ringblk/block"
	"golang.org/x/sys/unix"
)

// errIO is the error of a request outside the image (QEMU: -EIO).
var errIO error = unix.EIO

// aioTracker counts a session's outstanding asynchronous requests and
// holds the finished ones until they are reported. mu guards done; the
// WaitGroup counts submitted, unfinished requests.
type aioTracker struct {
	wg   sync.WaitGroup
	mu   sync.Mutex
	done []*aioReq
}

// aioReq is one asynchronous request. The command goroutine fills it and
// hands it over at submission; the Context's owner writes end and err in
// RequestDone; the command goroutine reads them again only after the
// WaitGroup says it finished.
type aioReq struct {
	t        *aioTracker
	name     string // readv/writev: the command, for its failure line
	write    bool
	off      int64
	size     int64
	buf      []byte
	pattern  byte
	pflag    bool
	qflag    bool
	vflag    bool
	cflag    bool
	start    time.Time
	end      time.Time
	err      error
	rejected bool // failed before submission (outside the image)
}

// RequestDone runs on the node's Context when the request completes.
func (a *aioReq) RequestDone(_ *block.Request, err error) {
	a.end = time.Now()
	a.err = err
	a.t.finish(a)
}

func (t *aioTracker) finish(a *aioReq) {
	t.mu.Lock()
	t.done = append(t.done, a)
	t.mu.Unlock()
	t.wg.Done()
}

// submit starts a request of op on the session's node. iov holds the
// data of reads and writes; write-zeroes carries only size.
func (s *ioSession) submit(a *aioReq, op block.Op, iov [][]byte, flags block.Flags) {
	if a.t == nil {
		a.t = &s.aio
	}
	a.t.wg.Add(1)
	a.start = time.Now()
	inside, err := s.inRange(a.off, a.size)
	if err != nil || !inside {
		if err == nil {
			err = errIO
		}
		a.end, a.err, a.rejected = time.Now(), err, true
		a.t.finish(a)
		return
	}
	n := s.img.Node
	ctx := n.Context()
	g := s.img.Graph
	ctx.Schedule(func() {
		r := g.Pool(ctx).Get()
		r.Op, r.Off, r.Len, r.Flags = op, a.off, a.size, flags
		if iov != nil {
			r.Iov = iov
		}
		n.Submit(r, a)
	})
}

// aioFlush waits for every outstanding asynchronous request and prints
// their results.
func (s *ioSession) aioFlush() {
	s.aio.wg.Wait()
	s.aio.mu.Lock()
	done := s.aio.done
	s.aio.done = nil
	s.aio.mu.Unlock()
	for _, a := range done {
		s.aioReport(a)
	}
}

// aioReportFinished prints the results of the asynchronous requests that
// have finished, without waiting for the others (qemu-io's main loop
// runs their completions while sleep waits).
func (s *ioSession) aioReportFinished() {
	s.aio.mu.Lock()
	done := s.aio.done
	s.aio.done = nil
	s.aio.mu.Unlock()
	for _, a := range done {
		s.aioReport(a)
	}
}

func (s *ioSession) aioReport(a *aioReq) {
	if a.write {
		if a.err != nil {
			fmt.Fprintf(s.out, "aio_write failed: %s\n", errText(a.err))
			return
		}
		if !a.qflag {
			printReport(s.out, "wrote", a.end.Sub(a.start), a.off, a.size, a.size, 1, a.cflag)
		}
		return
	}
	if a.err != nil {
		fmt.Fprintf(s.out, "readv failed: %s\n", errText(a.err))
		return
	}
	if a.pflag && !allBytes(a.buf, a.pattern) {
		fmt.Fprintf(s.out, "Pattern verification failed at offset %d, %d bytes\n", a.off, a.size)
	}
	if a.qflag {
		return
	}
	if a.vflag {
		dumpBuffer(s.out, a.buf, a.off)
	}
	printReport(s.out, "read", a.end.Sub(a.start), a.off, a.size, a.size, 1, a.cflag)
}

// ioVector builds one buffer split at the given lengths (qemu-io's
// "off len [len..]"), each filled with fill.
func (s *ioSession) ioVector(args []string, fill byte) ([]byte, [][]byte, bool) {
	var sizes []int64
	var total int64
	for _, arg := range args {
		n, ok := s.num(arg)
		if !ok {
			return nil, nil, false
		}
		if n > ioMaxRequest {
			fmt.Fprintf(s.out, "Argument '%s' exceeds maximum size %d\n", arg, int64(ioMaxRequest))
			return nil, nil, false
		}
		if total > ioMaxRequest-n {
			fmt.Fprintf(s.out, "The total number of bytes exceed the maximum size %d\n", int64(ioMaxRequest))
			return nil, nil, false
		}
		sizes = append(sizes, n)
		total += n
	}
	buf := bytes.Repeat([]byte{fill}, int(total))
	iov := make([][]byte, 0, len(sizes))
	var at int64
	for _, n := range sizes {
		iov = append(iov, buf[at:at+n])
		at += n
	}
	return buf, iov, true
}

var aioReadCmd = &ioCommand{
	name: "aio_read", argmin: 2, argmax: -1,
	args:    "[-Ciqv] [-P pattern] off len [len..]",
	oneline: "asynchronously reads a number of bytes",
	help: `
 asynchronously reads a range of bytes from the given offset

 Example:
 'aio_read -v 512 1k 1k ' - dumps 2 kilobytes read from 512 bytes into the image

 Reads a segment of the open image, optionally dumping it to standard
 output (-v). The read is submitted at once; its result prints at the
 next aio_flush (which waits for all outstanding requests) or at exit.
 The command succeeds once the request is submitted, whatever its I/O
 result or pattern check.
 -C, -- report statistics in a machine parsable format
 -P, -- verify that the data read is this byte
 -i, -- treat the request as invalid (prints a line, submits nothing)
 -v, -- dump the buffer to standard output
 -q, -- quiet mode, do not show I/O statistics

`,
	run: func(s *ioSession, argv []string) bool {
		opts, ops, ok := s.getopt(argv, "CP:iqv")
		if !ok {
			return s.usage()
		}
		a := &aioReq{}
		v, ok := s.vecOpts(opts, a)
		if !ok || v.invalid {
			return ok
		}
		if len(ops) < 2 {
			return s.usage()
		}
		iov, ok := s.vecOperands(a, ops, 0xab)
		if !ok {
			return false
		}
		s.submit(a, block.OpRead, iov, 0)
		return true
	},
}

var aioWriteCmd = &ioCommand{
	name: "aio_write", argmin: 2, argmax: -1, write: true,
	args:    "[-Cfiquz] [-P pattern] off len [len..]",
	oneline: "asynchronously writes a number of bytes",
	help: `
 asynchronously writes a range of bytes from the given offset source
 from multiple buffers

 Example:
 'aio_write 512 1k 1k' - writes 2 kilobytes at 512 bytes into the open image

 Writes into a segment of the open image, from a buffer filled with one
 byte (0xcd unless -P says otherwise). The write is submitted at once; its
 result prints at the next aio_flush or at exit. The command succeeds
 once the request is submitted, whatever its I/O result.
 -P, -- use a different byte to fill the buffer
 -C, -- report statistics in a machine parsable format
 -f, -- use Force Unit Access semantics
 -i, -- treat the request as invalid (prints a line, submits nothing)
 -q, -- quiet mode, do not show I/O statistics
 -u, -- with -z, allow unmapping
 -z, -- write zeroes (a write-zeroes request)

`,
	run: func(s *ioSession, argv []string) bool {
		opts, ops, ok := s.getopt(argv, "CfiqP:uz")
		if !ok {
			return s.usage()
		}
		a := &aioReq{write: true}
		v, ok := s.vecOpts(opts, a)
		if !ok || v.invalid {
			return ok
		}
		if len(ops) < 2 {
			return s.usage()
		}
		// qemu-io 7.2 lets -P pass with -z (and writes zeroes): so do we.
		switch {
		case v.zero && len(ops) != 2:
			fmt.Fprintln(s.out, "-z supports only a single length parameter")
			return false
		case v.unmap && !v.zero:
			fmt.Fprintln(s.out, "-u requires -z to be specified")
			return false
		}
		flags := v.flags
		if v.zero {
			if a.off, ok = s.num(ops[0]); !ok {
				return false
			}
			n, ok := s.num(ops[1])
			if !ok {
				return false
			}
			if v.unmap {
				flags |= block.MayUnmap
			}
			a.size = n
			s.submit(a, block.OpWriteZeroes, nil, flags|s.writeThroughFlags())
			return true
		}
		iov, ok := s.vecOperands(a, ops, v.fill)
		if !ok {
			return false
		}
		s.submit(a, block.OpWrite, iov, flags|s.writeThroughFlags())
		return true
	},
}

var aioFlushCmd = &ioCommand{
	name: "aio_flush", argmin: 0, argmax: 0,
	oneline: "completes all outstanding aio requests",
	run: func(s *ioSession, argv []string) bool {
		s.aioFlush()
		return true
	},
}
