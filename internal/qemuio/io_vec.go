package qemuio

// readv and writev: one request over several buffers (qemu-io's "off len
// [len..]"), waited for before the command returns. They share the
// asynchronous commands' request path and report; only the wait and the
// failure's wording differ, and, unlike aio_*, a failure or a pattern
// mismatch fails the command (exit status 1), as in qemu-io.

import (
	"fmt"

	"github.com/ringblk/ringblk/block"
)

// runVector submits a on its own tracker, waits for it and prints its
// result; it reports whether the request succeeded.
func (s *ioSession) runVector(a *aioReq, op block.Op, iov [][]byte, flags block.Flags) bool {
	t := &aioTracker{}
	a.t = t
	s.submit(a, op, iov, flags)
	t.wg.Wait()
	if a.err != nil {
		fmt.Fprintf(s.out, "%s failed: %s\n", a.name, errText(a.err))
		return false
	}
	ok := true
	if a.pflag && !a.write && !allBytes(a.buf, a.pattern) {
		// Reported, and the statistics still follow: the command fails.
		fmt.Fprintf(s.out, "Pattern verification failed at offset %d, %d bytes\n", a.off, a.size)
		ok = false
	}
	if a.qflag {
		return ok
	}
	if a.vflag {
		dumpBuffer(s.out, a.buf, a.off)
	}
	verb := "read"
	if a.write {
		verb = "wrote"
	}
	printReport(s.out, verb, a.end.Sub(a.start), a.off, a.size, a.size, 1, a.cflag)
	return ok
}

var readvCmd = &ioCommand{
	name: "readv", argmin: 2, argmax: -1,
	args:    "[-Cqv] [-P pattern] off len [len..]",
	oneline: "reads a number of bytes at a specified offset",
	help: `
 reads one range of the image, starting at off, into one buffer per len

 Example:
 'readv -P 0x5a 0 4k 512' - reads 4.5 KiB from offset 0 into two buffers
 and checks that every byte is 0x5a

 -C, -- report statistics in a machine parsable format
 -P, -- verify that the data read is this byte
 -v, -- dump the buffer to standard output
 -q, -- quiet mode, do not show I/O statistics

`,
	run: func(s *ioSession, argv []string) bool {
		opts, ops, ok := s.getopt(argv, "CP:qv")
		if !ok {
			return s.usage()
		}
		a := &aioReq{name: "readv"}
		for _, o := range opts {
			switch o.Name {
			case "C":
				a.cflag = true
			case "q":
				a.qflag = true
			case "v":
				a.vflag = true
			case "P":
				v, ok := parsePattern(o.Val)
				if !ok {
					fmt.Fprintf(s.out, "%s is not a valid pattern byte\n", o.Val)
					return false
				}
				a.pflag, a.pattern = true, v
			}
		}
		if len(ops) < 2 {
			return s.usage()
		}
		if a.off, ok = s.num(ops[0]); !ok {
			return false
		}
		buf, iov, ok := s.ioVector(ops[1:], 0xab)
		if !ok {
			return false
		}
		a.buf, a.size = buf, int64(len(buf))
		return s.runVector(a, block.OpRead, iov, 0)
	},
}

var writevCmd = &ioCommand{
	name: "writev", argmin: 2, argmax: -1, write: true,
	args:    "[-Cfq] [-P pattern] off len [len..]",
	oneline: "writes a number of bytes at a specified offset",
	help: `
 writes one range of the image, starting at off, from one buffer per len,
 each filled with one byte (0xcd unless -P says otherwise)

 Example:
 'writev -P 7 512 1k 1k' - writes 2 KiB of 0x07 at offset 512

 -P, -- the byte to fill the buffers with
 -C, -- report statistics in a machine parsable format
 -f, -- use Force Unit Access semantics
 -q, -- quiet mode, do not show I/O statistics

`,
	run: func(s *ioSession, argv []string) bool {
		opts, ops, ok := s.getopt(argv, "CfqP:")
		if !ok {
			return s.usage()
		}
		a := &aioReq{name: "writev", write: true}
		pattern := byte(0xcd)
		var flags block.Flags
		for _, o := range opts {
			switch o.Name {
			case "C":
				a.cflag = true
			case "f":
				flags |= block.FUA
			case "q":
				a.qflag = true
			case "P":
				v, ok := parsePattern(o.Val)
				if !ok {
					fmt.Fprintf(s.out, "%s is not a valid pattern byte\n", o.Val)
					return false
				}
				pattern = v
			}
		}
		if len(ops) < 2 {
			return s.usage()
		}
		if a.off, ok = s.num(ops[0]); !ok {
			return false
		}
		buf, iov, ok := s.ioVector(ops[1:], pattern)
		if !ok {
			return false
		}
		a.buf, a.size = buf, int64(len(buf))
		return s.runVector(a, block.OpWrite, iov, flags|s.writeThroughFlags())
	},
}
