package qemuio

// readv and writev: one request over several buffers (qemu-io's "off len
// [len..]"), waited for before the command returns. They share the
// asynchronous commands' request path and report; only the wait and the
// failure's wording differ, and, unlike aio_*, a failure or a pattern
// mismatch fails the command (exit status 1), as in qemu-io.

import (
	"fmt"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/internal/cli"
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
		if _, ok := s.vecOpts(opts, a); !ok {
			return false
		}
		if len(ops) < 2 {
			return s.usage()
		}
		iov, ok := s.vecOperands(a, ops, 0xab)
		if !ok {
			return false
		}
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
		v, ok := s.vecOpts(opts, a)
		if !ok {
			return false
		}
		if len(ops) < 2 {
			return s.usage()
		}
		iov, ok := s.vecOperands(a, ops, v.fill)
		if !ok {
			return false
		}
		return s.runVector(a, block.OpWrite, iov, v.flags|s.writeThroughFlags())
	},
}

// vecFlags is what a vector command's options (readv, writev, aio_read,
// aio_write) say beyond the request's own report flags.
type vecFlags struct {
	fill    byte        // a write's buffer byte: -P, 0xcd by default
	flags   block.Flags // -f: FUA
	unmap   bool        // -u
	zero    bool        // -z
	invalid bool        // -i: the command printed its line and submits nothing
}

// vecOpts applies a vector command's options (those its getopt spec
// allowed) to a and returns the rest; false after a bad -P byte, printed.
// -P is the byte a read checks, or the byte a write fills with.
func (s *ioSession) vecOpts(opts []cli.Opt, a *aioReq) (vecFlags, bool) {
	v := vecFlags{fill: 0xcd}
	for _, o := range opts {
		switch o.Name {
		case "C":
			a.cflag = true
		case "q":
			a.qflag = true
		case "v":
			a.vflag = true
		case "f":
			v.flags |= block.FUA
		case "u":
			v.unmap = true
		case "z":
			v.zero = true
		case "i":
			verb := "read"
			if a.write {
				verb = "write"
			}
			fmt.Fprintf(s.out, "injecting invalid %s request\n", verb)
			v.invalid = true
			return v, true
		case "P":
			p, ok := parsePattern(o.Val)
			if !ok {
				fmt.Fprintf(s.out, "%s is not a valid pattern byte\n", o.Val)
				return v, false
			}
			if a.write {
				v.fill = p
			} else {
				a.pflag, a.pattern = true, p
			}
		}
	}
	return v, true
}

// vecOperands reads a vector command's "off len [len..]" (at least two
// operands) into a: its offset, and one buffer of fill split at the
// lengths, whose pieces it returns.
func (s *ioSession) vecOperands(a *aioReq, ops []string, fill byte) ([][]byte, bool) {
	var ok bool
	if a.off, ok = s.num(ops[0]); !ok {
		return nil, false
	}
	buf, iov, ok := s.ioVector(ops[1:], fill)
	if !ok {
		return nil, false
	}
	a.buf, a.size = buf, int64(len(buf))
	return iov, true
}
