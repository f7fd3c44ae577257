package qemuio

// close and truncate: the commands that act on the open image as a whole.

import (
	"fmt"

	"github.com/ringblk/ringblk/internal/cli"
)

var closeCmd = &ioCommand{
	name: "close", alt: "c", argmin: 0, argmax: 0,
	// Outstanding aio_read/aio_write finish (and print) first; later
	// commands find no file open. No extended help, as in qemu-io.
	oneline: "close the current open file",
	run: func(s *ioSession, argv []string) bool {
		s.aioFlush()
		img := s.img
		s.img = nil
		if err := img.Close(); err != nil {
			fmt.Fprintf(s.errw, "%s: closing the image: %v\n", cli.Prog, cli.PlainErr(err))
			return false
		}
		return true
	},
}

var truncateCmd = &ioCommand{
	name: "truncate", alt: "t", argmin: 1, argmax: 3, write: true,
	args:    "[-m prealloc_mode] off",
	oneline: "truncates the current file at the given offset",
	help: `
 sets the image's length to off, growing or shrinking it (as the
 format's driver allows); -m names the preallocation of grown space:
 only off (none) is supported

`,
	run: func(s *ioSession, argv []string) bool {
		opts, ops, ok := s.getopt(argv, "m:")
		if !ok || len(ops) != 1 {
			return s.usage()
		}
		for _, o := range opts {
			switch o.Val {
			case "off":
			case "metadata", "falloc", "full":
				fmt.Fprintf(s.errw, "%s: preallocation mode '%s' is not supported by truncate (only off)\n", cli.Prog, o.Val)
				return false
			default:
				fmt.Fprintf(s.errw, "%s: Invalid preallocation mode '%s'\n", cli.Prog, o.Val)
				return false
			}
		}
		size, ok := s.num(ops[0])
		if !ok {
			return false
		}
		if err := s.img.Node.Truncate(size); err != nil {
			fmt.Fprintf(s.errw, "%s: %v\n", cli.Prog, cli.PlainErr(err))
			return false
		}
		return true
	},
}

var reopenCmd = &ioCommand{
	name: "reopen", argmin: 0, argmax: -1,
	args:    "[(-r|-w)] [-c cache] [-o options]",
	oneline: "reopens an image with new options",
	help: `
 closes the image and opens it again, read-only (-r), read-write (-w)
 or with another cache mode (-c); outstanding aio requests finish first.
 -o (runtime options of the drivers) is not supported by ringblk

`,
	run: func(s *ioSession, argv []string) bool {
		opts, ops, ok := s.getopt(argv, "rwc:o:")
		if !ok || len(ops) != 0 {
			return s.usage()
		}
		bo := s.bo
		rw := 0
		for _, o := range opts {
			switch o.Name {
			case "r":
				bo.ReadOnly, rw = true, rw+1
			case "w":
				bo.ReadOnly, rw = false, rw+1
			case "c":
				switch o.Val {
				case "none", "writeback", "writethrough", "directsync", "unsafe":
					bo.Cache = o.Val
				default:
					fmt.Fprintf(s.errw, "%s: Invalid cache option: %s\n", cli.Prog, o.Val)
					return false
				}
			case "o":
				fmt.Fprintf(s.errw, "%s: reopen -o is not supported by ringblk\n", cli.Prog)
				return false
			}
		}
		if rw > 1 {
			fmt.Fprintf(s.errw, "%s: Only one -r/-w option may be given\n", cli.Prog)
			return false
		}
		s.aioFlush()
		if err := s.img.Close(); err != nil {
			s.img = nil
			fmt.Fprintf(s.errw, "%s: closing the image: %v\n", cli.Prog, cli.PlainErr(err))
			return false
		}
		img, err := cli.OpenBlk(s.path, bo)
		if err != nil {
			fmt.Fprintf(s.errw, "%s: %v\n", cli.Prog, cli.PlainErr(err))
			// Back to the options it had, as a failed reopen leaves it.
			if s.img, err = cli.OpenBlk(s.path, s.bo); err != nil {
				s.img = nil
			}
			return false
		}
		s.img, s.bo, s.readOnly = img, bo, bo.ReadOnly
		return true
	},
}
