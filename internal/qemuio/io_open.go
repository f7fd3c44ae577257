package qemuio

// open, and the commands that work without an open image: sigraise and
// abort (qemu-io's crash simulations).

import (
	"bufio"
	"fmt"
	"os"
	"unsafe"

	"github.com/ringblk/ringblk/drivers/chain"
	"github.com/ringblk/ringblk/drivers/raw"
	"github.com/ringblk/ringblk/internal/cli"
	"golang.org/x/sys/unix"
)

var openCmd = &ioCommand{
	name: "open", alt: "o", argmin: 1, argmax: -1, nofile: true,
	args:    "[-rsCnkU] [-t cache] [-d discard] [-o options] [path]",
	oneline: "open the file specified by path",
	help: `
 opens a new file in the requested mode

 Example:
 'open -n -o driver=raw /tmp/data' - opens raw data file read-write, uncached

 Opens a file for subsequent use by all of the other qemu-io commands.
 -r, -- open file read-only
 -s, -- use snapshot file (writes go to a temporary overlay)
 -C, -- use copy-on-read
 -n, -- disable host cache, short for -t none
 -U, -- force shared permissions
 -k, -- use kernel AIO implementation (accepted; ringblk uses its ring)
 -i, -- use AIO mode (threads, native or io_uring; accepted)
 -t, -- use the given cache mode for the image
 -d, -- use the given discard mode for the image
 -o, -- options to be given to the block driver
`,
	run: openRun,
}

func openRun(s *ioSession, argv []string) bool {
	opts, ops, ok := s.getopt(argv, "snCro:ki:t:d:U")
	if !ok {
		return s.usage()
	}
	r := openRequest{bo: cli.BlkOptions{NullSize: 1 << 30, Discard: raw.DiscardUnmap}}
	var spec chain.Spec
	for _, o := range opts {
		switch o.Name {
		case "s":
			r.snapshot = true
		case "n":
			r.bo.Cache = "none"
		case "C":
			r.cor = true
		case "r":
			r.bo.ReadOnly = true
		case "k":
			r.aioNative = true
		case "t":
			if !validCache(o.Val) {
				fmt.Fprintf(s.errw, "%s: Invalid cache option: %s\n", cli.Prog, o.Val)
				return false
			}
			r.bo.Cache = o.Val
		case "d":
			switch o.Val {
			case "ignore", "off":
				r.bo.Discard = raw.DiscardIgnore
			case "unmap", "on":
				r.bo.Discard = raw.DiscardUnmap
			default:
				fmt.Fprintf(s.errw, "%s: Invalid discard option: %s\n", cli.Prog, o.Val)
				return false
			}
		case "i":
			switch o.Val {
			case "threads", "io_uring":
				r.aioNative = false
			case "native":
				r.aioNative = true
			default:
				fmt.Fprintf(s.errw, "%s: Invalid aio option: %s\n", cli.Prog, o.Val)
				return false
			}
		case "o":
			if s.imageOpts {
				fmt.Fprintln(s.out, "--image-opts and 'open -o' are mutually exclusive")
				return false
			}
			if spec == nil {
				spec = chain.Spec{}
			}
			if err := chain.ParseKeyValues(o.Val, "", spec); err != nil {
				fmt.Fprintf(s.errw, "%s: %v\n", cli.Prog, err)
				return false
			}
		case "U":
			r.bo.ForceShare = true
		}
	}
	if s.imageOpts && len(ops) == 1 {
		sp, err := cli.ImageOptsSpec(ops[0])
		if err != nil {
			fmt.Fprintf(s.errw, "%s: %v\n", cli.Prog, err)
			return false
		}
		spec, ops = sp, nil
	}
	if len(ops) > 1 {
		return s.usage()
	}
	if s.img != nil {
		fmt.Fprintf(s.errw, "%s: file open already, try 'help close'\n", cli.Prog)
		return false
	}
	if len(ops) == 1 {
		r.name = ops[0]
	}
	r.spec = spec
	if r.name == "" && r.spec == nil {
		r.spec = chain.Spec{}
	}
	if err := s.open(r); err != nil {
		msg, hint := cli.SplitLockHint(err.Error(), err)
		fmt.Fprintf(s.errw, "%s: %s\n%s", cli.Prog, msg, hint)
		return false
	}
	return true
}

var sigraiseCmd = &ioCommand{
	name: "sigraise", argmin: 1, argmax: 1, nofile: true,
	args:    "signal",
	oneline: "raises a signal",
	help: `
 raises the given signal

 Example:
 'sigraise 15' - raises SIGTERM

 Invokes raise(signal), where "signal" is the mandatory integer argument
 given to sigraise. The process dies as the signal's default action says,
 without closing the image (a crash).

`,
	run: func(s *ioSession, argv []string) bool {
		sig, ok := s.num(argv[1])
		if !ok {
			return false
		}
		if sig > 65 { // NSIG on Linux
			fmt.Fprintf(s.out, "signal argument '%s' is too large to be a valid signal\n", argv[1])
			return false
		}
		s.flushOut()
		raiseDefault(unix.Signal(sig))
		return true
	},
}

var abortCmd = &ioCommand{
	name: "abort", argmin: 0, argmax: 0, nofile: true,
	oneline: "simulate a program crash using abort(3)",
	run: func(s *ioSession, argv []string) bool {
		s.flushOut()
		raiseDefault(unix.SIGABRT)
		// abort(3) never returns; neither does this process.
		os.Exit(134)
		return false
	},
}

// sigaction is the kernel's struct sigaction on Linux (rt_sigaction).
type sigaction struct {
	handler  uintptr
	flags    uint64
	restorer uintptr
	mask     uint64
}

// flushOut writes out buffered stdout (stdoutBuffer) before the process
// ends by a signal.
func (s *ioSession) flushOut() {
	if bw, ok := s.out.(*bufio.Writer); ok {
		bw.Flush()
	}
}

// raiseDefault delivers sig to this thread with its default action, as
// raise(3) in a C program without handlers: the Go runtime's own handler
// (which would turn SIGABRT into a stack dump, or ignore some signals) is
// replaced by SIG_DFL first. Output written so far has reached its file
// descriptors (os.Stdout is unbuffered). Signal 0 does nothing.
func raiseDefault(sig unix.Signal) {
	if sig == 0 {
		return
	}
	sa := sigaction{handler: 0} // SIG_DFL
	unix.Syscall6(unix.SYS_RT_SIGACTION, uintptr(sig), uintptr(unsafe.Pointer(&sa)), 0, 8, 0, 0)
	var set [1]uint64
	set[0] = 1 << (uint(sig) - 1)
	unix.Syscall6(unix.SYS_RT_SIGPROCMASK, unix.SIG_UNBLOCK, uintptr(unsafe.Pointer(&set[0])), 0, 8, 0, 0)
	unix.Tgkill(unix.Getpid(), unix.Gettid(), sig)
}
