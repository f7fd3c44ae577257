// Package qemuio is "ringblk io": qemu-io's commands on one image, through
// ringblk's block layer. The image is opened once (cli.OpenBlk); each -c
// command runs in order, synchronously through the node's helpers, except
// aio_read and aio_write, which are submitted to the node's Context and
// report at the next aio_flush or at exit (io_aio.go).
package qemuio

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"

	"github.com/ringblk/ringblk/crypto/luks"
	"github.com/ringblk/ringblk/drivers/chain"
	luksdrv "github.com/ringblk/ringblk/drivers/luks"
	"github.com/ringblk/ringblk/drivers/nbd"
	"github.com/ringblk/ringblk/drivers/qcow2"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
	"github.com/ringblk/ringblk/drivers/raw"
	"github.com/ringblk/ringblk/drivers/rbd"
	"github.com/ringblk/ringblk/internal/cli"
	"golang.org/x/sys/unix"
)

const ioHelp = `usage: ringblk io [-f fmt] [-r] [-n] [-t cache] [-d discard] [-U] [-o size=SIZE] [-c CMD]... FILE

Run qemu-io's commands on an image through ringblk's block layer (the
node, its driver and the Context's io_uring ring). Commands run in the
order given; without -c they are read from standard input, one per line.
Output lines, messages and exit status follow qemu-io 7.2.

  -c, --cmd CMD      run CMD (repeatable); see the command list below
  -f, --format FMT   raw, qcow2 or null; without it a local FILE is probed
                     (qcow2 magic, else raw). Backing files are never probed.
  -r, --read-only    open read-only
  -n, --nocache      short for -t none (O_DIRECT)
  -t, --cache MODE   writeback (default), writethrough or none
  -i, --aio MODE     threads, native or io_uring: accepted for qemu-io's
                     command lines; ringblk's I/O always uses its own ring
  -k, --native-aio   short for -i native
  -d, --discard MODE unmap (default: discards reach the file) or ignore
  -U, --force-share  do not lock the image against other users (needs -r)
  -o size=SIZE       size of a null image (default 1G)
  -h, --help         this help

Commands (offsets and lengths take b, k, M, G, T, P, E suffixes, as qemu-io):
  read [-Cqv] [-b] [-P pat [-s off] [-l len]] off len     (alias r)
  write [-bcCfnquz] [-P pat | -s file] off len             (alias w)
  discard [-Cq] off len                                    (alias d)
  flush                                                    (alias f)
  aio_read [-Cqv] [-P pat] off len [len..]
  aio_write [-Cfquz] [-P pat] off len [len..]
  aio_flush
  readv [-Cqv] [-P pat] off len [len..]
  writev [-Cfq] [-P pat] off len [len..]
  truncate [-m off] off                                    (alias t)
  reopen [-r|-w] [-c cache]
  close                                                    (alias c)
  length                                                   (alias l)
  map
  info                                                     (alias i)
  help [command]                                           (alias ?)
  quit                                                     (alias q)

  -P pat  write: fill with the byte pat (default 0xcd); read: verify it
  -z      write zeroes (-u: may unmap them; -n: accepted, no effect)
  -f      FUA write   -b  VM state (where the driver has it)   -c  compressed (qcow2)
  -q      no statistics  -v  hexdump the data  -C  one parsable line

aio_read and aio_write return at once; their results print at the next
aio_flush or at exit, and their failures do not change the exit status.
Exit status: 0 when every command succeeded, 1 when one failed (an I/O
error, a pattern mismatch, a bad argument) or the image could not be
opened.
`

var ioSpec = cli.OptSpec{
	Short: map[byte]bool{'c': true, 'f': true, 'r': false, 'n': false, 't': true, 'U': false, 'o': true, 'd': true, 'h': false,
		'i': true, 'k': false, 's': false, 'C': false, 'm': false, 'T': true, 'V': false},
	Long: map[string]bool{"cmd": true, "format": true, "read-only": false, "nocache": false, "cache": true,
		"force-share": false, "discard": true, "help": false, "aio": true, "native-aio": false,
		"snapshot": false, "copy-on-read": false, "misalign": false, "trace": true, "version": false,
		"object": true, "image-opts": false},
}

// ioSession is one opened image and the state of its command run.
type ioSession struct {
	img      *cli.BlkImage
	readOnly bool
	out      io.Writer // results and most messages (qemu-io's printf)
	errw     io.Writer // qemu-io's stderr messages
	aio      aioTracker
	quit     bool
	cur      *ioCommand     // the command running
	path     string         // the image, as named (reopen)
	bo       cli.BlkOptions // how it was opened (reopen)
	dbgMsgs  debugMsgs      // blkdebug's breakpoint messages (io_blkdebug.go)
	spec     chain.Spec     // the options it was opened with, nil for a path
	// imageOpts is qemu-io's --image-opts: operands of open are option
	// strings.
	imageOpts bool
	snapshot  bool // -s: writes go to a temporary overlay
	cor       bool // -C: copy-on-read
}

// openRequest is what the command line or an open command asks to open.
type openRequest struct {
	name      string     // the image name, "" when only options name it
	spec      chain.Spec // options (open -o, json:, --image-opts), or nil
	bo        cli.BlkOptions
	aioNative bool
	snapshot  bool
	cor       bool
}

// Run is "ringblk io" (qemu-io): args are what follows the command name;
// commands come from -c, else from stdin. The result is the exit status.
func Run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	var bw *bufio.Writer // see stdoutBuffer
	defer func() {
		if bw != nil {
			bw.Flush()
		}
	}()
	return cli.Run(ioHelp, stdout, stderr, func() (int, error) {
		opts, operands, err := cli.ParseOpts(args, ioSpec)
		if err != nil {
			return 1, err
		}
		var cmds []string
		nullOpts := false
		// qemu-io passes discards on to the file by default.
		r := openRequest{bo: cli.BlkOptions{NullSize: 1 << 30, Discard: raw.DiscardUnmap}}
		imageOpts := false
		for _, o := range opts {
			switch o.Name {
			case "c", "cmd":
				cmds = append(cmds, o.Val)
			case "f", "format":
				r.bo.Format = o.Val
			case "r", "read-only":
				r.bo.ReadOnly = true
			case "n", "nocache":
				r.bo.Cache = "none"
			case "t", "cache":
				if !validCache(o.Val) {
					return 1, fmt.Errorf("Invalid cache option: %s", o.Val)
				}
				r.bo.Cache = o.Val
			case "U", "force-share":
				r.bo.ForceShare = true
			case "s", "snapshot":
				r.snapshot = true
			case "C", "copy-on-read":
				r.cor = true
			case "m", "misalign", "T", "trace":
				// Buffer misalignment and tracing: accepted, no effect.
			case "V", "version":
				fmt.Fprintf(stdout, "%s version %s\n", cli.Prog, cli.QEMUVersion)
				return 0, nil
			case "object":
				if err := cli.AddObject(o.Val); err != nil {
					return 1, err
				}
			case "image-opts":
				imageOpts = true
			case "i", "aio":
				// qemu-io's AIO back ends; ringblk's I/O always goes
				// through its own ring, so each names the same path.
				switch o.Val {
				case "threads", "io_uring":
					r.aioNative = false
				case "native":
					r.aioNative = true
				default:
					return 1, fmt.Errorf("Invalid aio option: %s", o.Val)
				}
			case "k", "native-aio":
				r.aioNative = true
			case "d", "discard":
				switch o.Val {
				case "ignore", "off":
					r.bo.Discard = raw.DiscardIgnore
				case "unmap", "on":
					r.bo.Discard = raw.DiscardUnmap
				default:
					return 1, cli.Usagef("Invalid discard option: %s", o.Val)
				}
			case "o":
				if r.bo.NullSize, err = parseNullOpts(o.Val); err != nil {
					return 1, err
				}
				nullOpts = true
			}
		}
		switch r.bo.Format {
		case "", "raw", "qcow2", "null", "luks":
		case "null-co":
			r.bo.Format = "null"
		default:
			return 1, cli.Usagef("Unknown file format '%s' (supported: raw, qcow2, null)", r.bo.Format)
		}
		if imageOpts && r.bo.Format != "" {
			return 1, fmt.Errorf("--image-opts and -f are mutually exclusive")
		}
		if nullOpts && r.bo.Format != "null" {
			return 1, cli.Usagef("io: -o size=SIZE applies to the null format only (-f null)")
		}
		if len(operands) > 1 {
			return 1, cli.Usagef("io: unexpected argument '%s' (see 'ringblk io --help')", operands[1])
		}
		s := &ioSession{out: stdout, errw: stderr, imageOpts: imageOpts}
		if bw = stdoutBuffer(stdout, len(cmds) > 0); bw != nil {
			s.out = bw
		}
		if len(operands) == 1 {
			r.name = operands[0]
			if imageOpts {
				if r.spec, err = cli.ImageOptsSpec(r.name); err != nil {
					return 1, err
				}
				r.name = ""
			}
			if err := s.open(r); err != nil {
				return 1, err
			}
		}
		failed := false
		if len(cmds) > 0 {
			for _, c := range cmds {
				if !s.run(c) {
					failed = true
				}
				if s.quit {
					break
				}
			}
		} else {
			failed = s.interactive(stdin)
		}
		if s.img != nil { // not closed by a close command
			s.aioFlush()
			if err := s.img.Close(); err != nil {
				if cli.Prog == "qemu-io" && errors.Is(err, format.ErrCorrupt) {
					// QEMU drops an image it marked corrupt without a
					// write-back: nothing to report at exit.
					return 1, nil
				}
				var ie *qcow2.InactiveL2Error
				if errors.As(err, &ie) && (ie.Target == qcow2.TargetRefblock || ie.Target == qcow2.TargetL2) {
					// The inactive-L2 overlap check refused the write-back
					// (overlap_inactive.go): QEMU's close reports the one
					// cache whose flush it refused.
					return 1, fmt.Errorf("Failed to flush the %s cache: %s", ie.Target, errText(ie.Errno))
				}
				if closeWriteBackLines(stderr, err) {
					return 1, nil
				}
				return 1, fmt.Errorf("closing '%s': %v", s.path, cli.PlainErr(err))
			}
		}
		if failed {
			return 1, nil
		}
		return 0, nil
	})
}

func validCache(m string) bool {
	switch m {
	case "none", "writeback", "writethrough", "directsync", "unsafe":
		return true
	}
	return false
}

// open opens what r names as the session's image (the command line's
// image or an open command). Its error is qemu-io's "can't open device
// NAME: cause" ("can't open: cause" without a name).
func (s *ioSession) open(r openRequest) error {
	img, err := openImage(&r, s.errw)
	if err != nil {
		return err
	}
	s.img, s.readOnly, s.path, s.bo, s.spec = img, r.bo.ReadOnly, r.name, r.bo, r.spec
	if s.path == "" {
		s.path = img.Path
	}
	s.snapshot, s.cor = r.snapshot, r.cor
	return nil
}

func openImage(r *openRequest, warn io.Writer) (*cli.BlkImage, error) {
	path := r.name
	fail := func(err error) error {
		var ue *cli.UsageError
		if errors.As(err, &ue) {
			return err
		}
		return &openError{name: path, err: err}
	}
	bo := r.bo
	if r.aioNative && bo.Cache != "none" && bo.Cache != "directsync" {
		// As qemu-io: Linux AIO only on O_DIRECT files.
		return nil, fail(errors.New("aio=native was specified, but it requires cache.direct=on, which was not specified."))
	}
	if bo.ForceShare && !bo.ReadOnly {
		return nil, fail(errors.New("force-share=on can only be used with read-only images"))
	}
	if r.cor && bo.ReadOnly {
		return nil, fail(errors.New("Can't use copy-on-read on read-only device"))
	}
	if cli.IsSpecName(path) && (r.spec != nil || !isNullJSON(path)) {
		spec, err := cli.NameSpec(path, bo.Format)
		if err != nil {
			return nil, fail(err)
		}
		// open -o's options win over the json: filename's.
		for k, v := range r.spec {
			spec[k] = v
		}
		r.spec = spec
	}
	if p := chain.ProtocolPrefix(path); r.spec == nil && p != "" && p != "file" && p != "null-co" && p != "null-aio" && !rbd.IsName(path) {
		// A protocol-prefixed name ("blkdebug:…"): opened through the
		// option tree, where that protocol's driver takes it.
		r.spec = chain.Spec{}
	}
	if r.spec != nil && r.spec["driver"] == "copy-on-read" {
		// QEMU's copy-on-read filter over the image: the image, with
		// qemu-io's copy-on-read reads.
		if bo.ReadOnly {
			return nil, fail(errors.New("Block node is read-only"))
		}
		sub, _ := r.spec.Sub("file")
		if fn, ok := r.spec["filename"]; ok {
			sub["filename"] = fn
		}
		r.spec, r.cor = sub, true
	}
	var img *cli.BlkImage
	var err error
	if r.spec != nil {
		spec := r.spec
		if path != "" {
			if _, ok := spec["filename"]; !ok && !cli.IsSpecName(path) {
				spec["filename"] = path
			}
		}
		if bo.Format != "" {
			if _, ok := spec["driver"]; !ok {
				spec["driver"] = bo.Format
				if bo.Format == "null" {
					spec["driver"] = "null-co"
				}
			}
		}
		bo.Format = ""
		if img, err = cli.OpenBlkSpec(spec, bo); err != nil {
			return nil, fail(cli.PlainErr(err))
		}
	} else {
		if img, err = openPath(path, bo, warn); err != nil {
			return nil, fail(err)
		}
	}
	if r.snapshot {
		if err := img.Snapshot(); err != nil {
			img.Close()
			return nil, fail(err)
		}
	}
	return img, nil
}

// isNullJSON reports a json: filename for the null-co driver, which
// cli.OpenBlk reads itself (with its size rules).
func isNullJSON(name string) bool {
	s, err := cli.NameSpec(name, "")
	return err == nil && (s["driver"] == "null-co" || s["driver"] == "null-aio") && len(s) <= 2
}

// openPath opens an image named by its path (or a null-co or NBD name),
// the format given or probed.
func openPath(path string, bo cli.BlkOptions, warn io.Writer) (*cli.BlkImage, error) {
	path = cli.FilePath(path)
	// A json: null-co filename or a null-co:// name is a null image.
	if err := cli.ResolveNull(path, &bo); err != nil {
		return nil, err
	}
	if bo.Format != "null" && !nbd.IsURI(path) && !rbd.IsName(path) {
		if _, err := os.Stat(path); err != nil {
			return nil, fmt.Errorf("Could not open '%s': %v", path, cli.UnwrapPathErr(err))
		}
	}
	if bo.Format == "" && !rbd.IsName(path) { // an RBD image is probed once open
		// The operator named this file: probing it is allowed; the
		// chain opener never probes its backing files.
		f, err := chain.Probe(path)
		if err != nil {
			if bo.ReadOnly && errors.Is(err, syscall.EISDIR) {
				// QEMU's read-only open succeeds; its file driver then
				// refuses what is not a regular file.
				return nil, errors.New(cli.NotRegularFile(path))
			}
			return nil, fmt.Errorf("Could not open '%s': %v", path, cli.UnwrapPathErr(err))
		}
		if f == "raw" && !bo.ReadOnly {
			// As qemu-io: only a writable probed raw image is a risk.
			if cli.Prog == "ringblk" {
				fmt.Fprintf(warn, "%s: warning: image format was not specified for '%s' and probing guessed raw; give -f raw to silence this\n", cli.Prog, path)
			} else {
				// QEMU's raw driver prints these lines as they are.
				fmt.Fprint(warn, cli.ProbedRawWarning(path))
			}
		}
		bo.Format, bo.Probed = f, true
	}
	img, err := cli.OpenBlk(path, bo)
	if err != nil {
		var ue *cli.UsageError
		if errors.As(err, &ue) {
			return nil, err
		}
		var le *raw.LockError
		var be *chain.BackingError
		var bfe *qcow2.BackingFormatError
		var dfe *chain.DataFileError
		switch {
		case errors.As(err, &be):
			// qemu-io's words: the cause, no "Could not open".
			return nil, be
		case errors.As(err, &dfe): // qcow2 data files (drivers/chain/datafile.go)
			return nil, dfe
		case errors.Is(err, qcow2.ErrDataFileRequired) || errors.Is(err, qcow2.ErrDataFileNotExternal):
			return nil, cli.OpenCause(err)
		case errors.As(err, &bfe):
			return nil, cli.BackingFormatErr(bfe)
		case errors.As(err, &le):
			return nil, le
		case errors.Is(err, luks.ErrBadPassword) || errors.Is(err, luksdrv.ErrKeySecretRequired) || errors.Is(err, qcow2.ErrKeySecretRequired):
			// qemu-io's words for encrypted images: the cause alone.
			return nil, cli.OpenCause(err)
		}
		return nil, err
	}
	return img, nil
}

// parseNullOpts reads -o for the null format: "size=SIZE" only.
func parseNullOpts(list string) (int64, error) {
	var size int64 = 1 << 30
	for _, kv := range strings.Split(list, ",") {
		if kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k != "size" {
			return 0, cli.Usagef("Invalid option '%s' in -o (ringblk io knows size=SIZE, for the null format)", kv)
		}
		n, err := chain.ParseQemuSize(v)
		if err != nil {
			return 0, cli.Usagef("Invalid size '%s' in -o (k, M, G, T, P or E suffixes)", v)
		}
		size = n
	}
	return size, nil
}

// interactive reads commands from r, one per line, until EOF or quit. A
// prompt is shown when r is a terminal.
func (s *ioSession) interactive(r io.Reader) (failed bool) {
	prompt := false
	if f, ok := r.(*os.File); ok {
		if _, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS); err == nil {
			prompt = true
		}
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for {
		if prompt {
			fmt.Fprint(s.out, promptText())
		}
		if !sc.Scan() {
			if prompt {
				fmt.Fprintln(s.out)
			}
			return failed
		}
		if !s.run(sc.Text()) {
			failed = true
		}
		if s.quit {
			return failed
		}
	}
}

// ioCommand describes one qemu-io command.
type ioCommand struct {
	name, alt string
	argmin    int
	argmax    int    // -1: no upper bound
	args      string // the synopsis of the usage line
	oneline   string
	help      string // extended help (help CMD)
	write     bool   // needs a writable image
	nofile    bool   // runs without an open image (open, sigraise, …)
	run       func(s *ioSession, argv []string) bool
}

// ioCommands is sorted by name, as qemu-io lists them.
var ioCommands []*ioCommand

func init() {
	ioCommands = []*ioCommand{abortCmd, aioFlushCmd, allocCmd, aioReadCmd, aioWriteCmd, closeCmd, discardCmd, flushCmd, helpCmd,
		infoCmdIO, lengthCmd, mapCmd, openCmd, quitCmd, readCmd, readvCmd, reopenCmd, sigraiseCmd, truncateCmd, writeCmd, writevCmd}
}

func findIOCommand(name string) *ioCommand {
	for _, c := range ioCommands {
		if c.name == name || c.alt != "" && c.alt == name {
			return c
		}
	}
	return nil
}

// run runs one command line; false means it failed (the exit status
// becomes 1).
func (s *ioSession) run(line string) bool {
	var argv []string
	for _, f := range strings.Split(line, " ") {
		if f != "" {
			argv = append(argv, f)
		}
	}
	if len(argv) == 0 {
		return true
	}
	c := findIOCommand(argv[0])
	if c == nil {
		fmt.Fprintf(s.errw, "command \"%s\" not found\n", argv[0])
		return false
	}
	if s.img == nil && !c.nofile && c != helpCmd && c != quitCmd {
		// As qemu-io with no image open (none given, or after close);
		// checked before the argument count, as qemu-io does.
		fmt.Fprintln(s.errw, "no file open, try 'help open'")
		return false
	}
	n := len(argv) - 1
	if n < c.argmin || c.argmax >= 0 && n > c.argmax {
		switch {
		case c.argmax < 0:
			fmt.Fprintf(s.errw, "bad argument count %d to %s, expected at least %d arguments\n", n, argv[0], c.argmin)
		case c.argmin == c.argmax:
			fmt.Fprintf(s.errw, "bad argument count %d to %s, expected %d arguments\n", n, argv[0], c.argmin)
		default:
			fmt.Fprintf(s.errw, "bad argument count %d to %s, expected between %d and %d arguments\n", n, argv[0], c.argmin, c.argmax)
		}
		return false
	}
	if c.write && s.readOnly {
		fmt.Fprintln(s.errw, cli.Prog+": Block node is read-only")
		return false
	}
	s.cur = c
	ok := c.run(s, argv)
	s.dbgMsgs.print(s.out)
	return ok
}

// usage prints a command's one-line usage and fails it, as qemu-io does
// after a bad option or operand count.
func (s *ioSession) usage() bool {
	c := s.cur
	fmt.Fprintf(s.out, "%s %s -- %s\n", c.name, c.args, c.oneline)
	return false
}

// getopt parses a command's options as glibc's getopt does for qemu-io
// (cli.ParseOpts with cli.Letters(spec): "P:" takes a value, operands may
// come before options, "--" ends the options). It prints getopt's message
// on a bad option and returns ok false.
func (s *ioSession) getopt(argv []string, spec string) (opts []cli.Opt, operands []string, ok bool) {
	opts, operands, err := cli.ParseOpts(argv[1:], cli.Letters(spec))
	if err != nil {
		fmt.Fprintf(s.errw, "%s: %v\n", argv[0], err)
		return nil, nil, false
	}
	return opts, operands, true
}

// num parses an offset or length operand, printing qemu-io's message on
// failure.
func (s *ioSession) num(arg string) (int64, bool) {
	v, err := parseIONum(arg)
	if err != nil {
		fmt.Fprintln(s.out, numError(err, arg))
		return 0, false
	}
	return v, true
}

// stdoutBuffer is qemu-io's stdout for a run of -c commands when it is
// not a terminal: the C library buffers it fully (a pipe's block, 4 KiB)
// while error lines on stderr go out at once, so an error printed at
// exit (a failed write-back when the image is closed, iotest 080)
// comes before the command output that was still in the buffer. Nil
// (unbuffered) for ringblk's own io command and for stdin sessions.
// The buffer is written when Run returns, after cli.Run printed the
// error, and before sigraise/abort end the process (as qemu-io flushes
// before raise).
func stdoutBuffer(stdout io.Writer, cmds bool) *bufio.Writer {
	if cli.Prog != "qemu-io" || !cmds {
		return nil
	}
	if f, ok := stdout.(*os.File); ok {
		if _, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS); err == nil {
			return nil
		}
	}
	return bufio.NewWriterSize(stdout, 4096)
}

// errText words an I/O error as strerror does ("Input/output error").
// As qemu-io, a request that met damaged qcow2 metadata (or ran on an
// image marked corrupt) fails with EIO, as in QEMU; the damage itself was
// reported when the image was marked (qcow2.CorruptionReport).
func errText(err error) string {
	if cli.Prog == "qemu-io" && errors.Is(err, format.ErrCorrupt) {
		return "Input/output error"
	}
	var en unix.Errno
	if errors.As(err, &en) {
		t := en.Error()
		return strings.ToUpper(t[:1]) + t[1:]
	}
	return err.Error()
}

// inRange reports whether [off, off+n) lies within the image, the check
// QEMU's block backend makes before any request (EIO otherwise).
func (s *ioSession) inRange(off, n int64) (bool, error) {
	size, err := s.img.Node.Length()
	if err != nil {
		return false, err
	}
	return off <= size && n <= size-off, nil
}

var helpCmd = &ioCommand{
	name: "help", alt: "?", argmin: 0, argmax: 1, args: "[command]",
	oneline: "help for one or all commands",
	run: func(s *ioSession, argv []string) bool {
		if len(argv) == 1 {
			for _, c := range ioCommands {
				fmt.Fprintf(s.out, "%s %s-- %s\n", c.name, argsSp(c.args), c.oneline)
			}
			fmt.Fprintln(s.out, "\nUse 'help commandname' for extended help.")
			return true
		}
		c := findIOCommand(argv[1])
		if c == nil {
			fmt.Fprintf(s.out, "command %s not found\n", argv[1])
			return false
		}
		fmt.Fprintf(s.out, "%s %s-- %s\n", argv[1], argsSp(c.args), c.oneline)
		fmt.Fprint(s.out, c.help)
		return true
	},
}

func argsSp(a string) string {
	if a == "" {
		return ""
	}
	return a + " "
}

var quitCmd = &ioCommand{
	name: "quit", alt: "q", argmin: 0, argmax: 0, oneline: "exit the program",
	run: func(s *ioSession, argv []string) bool { s.quit = true; return true },
}

// promptText is the interactive prompt: qemu-io's own when run as qemu-io.
func promptText() string {
	if cli.Prog == "qemu-io" {
		return "qemu-io> "
	}
	return "ringblk io> "
}

// openError is a failed open in qemu-io's words: "can't open device
// NAME: cause" ("can't open: cause" without a name). reopen prints the
// cause alone, as qemu-io does.
type openError struct {
	name string
	err  error
}

func (e *openError) Error() string {
	var cause any = e.err
	if w := cli.QemuFormatWording(e.err); w != "" && cli.Prog == "qemu-io" {
		// qemu-io prints the format driver's refusal as it is, without
		// qemu-img's "Could not open" (iotest 080).
		cause = w
	}
	if e.name == "" {
		return fmt.Sprintf("can't open: %v", cause)
	}
	return fmt.Sprintf("can't open device %s: %v", e.name, cause)
}

func (e *openError) Unwrap() error { return e.err }
