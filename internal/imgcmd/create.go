package imgcmd

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/nbd"
	"github.com/ringblk/ringblk/drivers/qcow2"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
	"github.com/ringblk/ringblk/drivers/raw"
	"github.com/ringblk/ringblk/drivers/rbd"
	"github.com/ringblk/ringblk/internal/cli"
)

const createHelp = `usage: ringblk create [-f fmt] [-o key=value[,...]] [-b backing -F backing_fmt] [-q] FILE [SIZE]

Create a new raw or qcow2 image (replacing FILE if it exists), as
qemu-img create does. SIZE takes k, M, G, T, P, E suffixes (powers of
1024); with -b it defaults to the backing file's virtual size.

  -f fmt           raw (default), qcow2 or luks
  -o options       comma-separated key=value list:
                     raw:   size, preallocation=off|falloc|full
                     qcow2: size, cluster_size (512..2M, default 64k),
                            compat=0.10|1.1|v2|v3, refcount_bits (1..64),
                            backing_file, backing_fmt,
                            preallocation=off|metadata|falloc|full,
                            lazy_refcounts=off|on, extended_l2=off|on,
                            compression_type=zlib|zstd (zstd: read and
                            uncompressed writes; compressed writes refused)
                     luks:  key-secret=ID (a --object secret), cipher-alg
                            (aes-128|aes-192|aes-256), cipher-mode (xts|cbc),
                            ivgen-alg (plain|plain64|essiv), ivgen-hash-alg,
                            hash-alg, iter-time (ms)
  --object secret,id=ID,data=PASS|file=PATH[,format=raw|base64]
                   a secret that key-secret= names
  -b backing       backing file (qcow2), relative to FILE's directory
  -F backing_fmt   backing file format (raw or qcow2); required with -b
  -q, --quiet      do not print the "Formatting ..." line
  -h, --help       this help
`

var createSpec = cli.OptSpec{
	Short: map[byte]bool{'f': true, 'o': true, 'b': true, 'F': true, 'q': false, 'u': false, 'h': false},
	Long:  map[string]bool{"quiet": false, "help": false, "object": true},
}

// createReq is a parsed create command line.
type createReq struct {
	file, format string
	size         int64
	hasSize      bool
	pairs        []format.OptionPair // -o items in order, size taken out (the last value of a key wins)
	quiet        bool
}

// Create is "ringblk create" (qemu-img create): args are what follows the
// command name; the result is the exit status.
func Create(args []string, stdout, stderr io.Writer) int {
	return cli.Run(createHelp, stdout, stderr, func() (int, error) {
		args, imageOpts, err := cli.TakeGlobalOpts(args)
		if err != nil {
			return 1, err
		}
		if imageOpts {
			return 1, cli.Usagef("--image-opts is not supported by ringblk's create (name the image file)")
		}
		opts, operands, err := cli.ParseOpts(args, createSpec)
		if err != nil {
			return 1, err
		}
		r := &createReq{format: "raw"}
		var olist []string
		var objs cli.Objects
		for _, o := range opts {
			switch o.Name {
			case "object":
				if err := objs.Add(o.Val); err != nil {
					return 1, err
				}
			case "f":
				r.format = o.Val
			case "o":
				olist = append(olist, o.Val)
			case "b":
				olist = append(olist, "backing_file="+format.EscapeOptionValue(o.Val))
			case "F":
				olist = append(olist, "backing_fmt="+format.EscapeOptionValue(o.Val))
			case "q", "quiet":
				r.quiet = true
			}
		}
		if err := checkOutputFormat(r.format); err != nil {
			return 1, err
		}
		if len(olist) > 0 {
			pairs, help, err := format.SplitOptionList(olist)
			if err != nil {
				return 1, cli.Usagef("%v", err)
			}
			if help {
				fmt.Fprint(stdout, createHelp)
				return 0, nil
			}
			r.pairs = pairs
		}
		switch len(operands) {
		case 0:
			return 1, cli.Usagef("Expecting image file name (see 'ringblk create --help')")
		case 1, 2:
		default:
			return 1, cli.Usagef("Unexpected argument '%s' (see 'ringblk create --help')", operands[2])
		}
		r.file = operands[0]
		if r.size, _, r.hasSize, err = takeSize(r); err != nil {
			return 1, err
		}
		if len(operands) == 2 {
			if r.hasSize {
				// qemu-img refuses -o size= with a SIZE operand, even
				// when they agree.
				return 1, cli.Usagef("%s: The image size must be specified only once", r.file)
			}
			if r.size, err = cli.ParseSize(operands[1]); err != nil {
				return 1, err
			}
			r.hasSize = true
		}
		var line string
		switch r.format {
		case "raw":
			line, err = createRaw(r)
		case "luks":
			line, err = createLuks(r, &objs)
		default:
			line, err = createQcow2(r, &objs)
		}
		// qemu-img prints the "Formatting" line before it touches the
		// file, so it is there when the creation then fails.
		if !r.quiet && line != "" {
			fmt.Fprintln(stdout, line)
		}
		if err != nil {
			return 1, err
		}
		return 0, nil
	})
}

func createRaw(r *createReq) (string, error) {
	hint, err := takeExtentSizeHint(r)
	if err != nil {
		return "", err
	}
	line := fmt.Sprintf("Formatting '%s', fmt=raw size=%d", r.file, r.size)
	pre := raw.PreallocOff
	var preStr string
	for _, p := range r.pairs {
		k, v := p.Key, p.Value
		switch k {
		case "preallocation":
			p, ok := raw.ParsePrealloc(v)
			if !ok {
				return "", cli.Usagef("%s: Invalid parameter value for 'preallocation': '%s' (off, falloc, full)", r.file, v)
			}
			pre, preStr = p, v
		default:
			return "", cli.Usagef("%s: Invalid parameter '%s' for format raw", r.file, k)
		}
	}
	if !r.hasSize {
		return "", cli.Usagef("%s: Image creation needs a size parameter", r.file)
	}
	if preStr != "" {
		line += " preallocation=" + preStr
	}
	line += hint
	if nbd.IsURI(r.file) {
		if pre != raw.PreallocOff {
			return "", cli.Usagef("%s: preallocation=%s is not supported on an NBD export", r.file, preStr)
		}
		return line, createNBD(r.file, r.size)
	}
	if rbd.IsName(r.file) {
		return line, createRBD(r.file, r.size, pre != raw.PreallocOff)
	}
	if err := raw.Create(cli.FilePath(r.file), r.size, pre); err != nil {
		return line, createErr(r.file, err)
	}
	if pre == raw.PreallocOff {
		allocateFirstBlock(cli.FilePath(r.file), r.size)
	}
	return line, nil
}

// createNBD "creates" a raw image on an NBD export the way QEMU does for
// protocols that cannot create anything: the export must exist and be at
// least size bytes (it cannot grow), and its first sector is zeroed so no
// old format header is probed there later.
func createNBD(uri string, size int64) error {
	img, err := cli.OpenBlk(uri, cli.BlkOptions{Format: "raw"})
	if err != nil {
		return err
	}
	defer img.Close()
	have, err := img.Node.Length()
	if err != nil {
		return err
	}
	if have < size {
		return fmt.Errorf("%s: Could not resize image: the export has %d bytes and NBD exports cannot grow", uri, have)
	}
	if n := min(size, 512); n > 0 {
		if err := img.Node.WriteZeroes(0, n, block.MayUnmap); err != nil {
			return fmt.Errorf("%s: %v", uri, cli.PlainErr(err))
		}
	}
	return img.Node.Flush()
}

func createQcow2(r *createReq, objs *cli.Objects) (string, error) {
	if nbd.IsURI(r.file) {
		return "", fmt.Errorf("%s: ringblk creates only raw images on NBD exports (the server applies the format)", r.file)
	}
	enc, encErr := takeQcowEncrypt(r)
	if err := backingWithoutFormat(r); err != nil {
		return "", err
	}
	hint, err := takeExtentSizeHint(r)
	if err != nil {
		return "", err
	}
	o, err := format.ParseOptionPairs(r.pairs, format.ForCreate)
	if err != nil {
		line, err := createStageError(r, err)
		if line != "" {
			line += hint
		}
		return line, err
	}
	co := o.Create
	if !r.hasSize {
		if co.BackingFile == "" {
			return "", cli.Usagef("%s: Image creation needs a size parameter", r.file)
		}
		if rbd.IsName(co.BackingFile) {
			if co.BackingFormat != "" && co.BackingFormat != "raw" {
				return "", fmt.Errorf("%s: backing file: ringblk reads RBD backing images as raw only, not %s", r.file, co.BackingFormat)
			}
			if r.size, err = rbdSize(co.BackingFile); err != nil {
				return "", fmt.Errorf("%s: backing file: %v", r.file, err)
			}
		}
	}
	if !r.hasSize && !rbd.IsName(co.BackingFile) {
		bimg, berr := openImage(combinePath(cli.FilePath(r.file), co.BackingFile), co.BackingFormat)
		if berr != nil {
			return "", fmt.Errorf("%s: backing file: %v", r.file, berr)
		}
		if bimg.qcow != nil {
			r.size = int64(bimg.qcow.Header.Size)
		} else {
			r.size = bimg.size
		}
		bimg.Close()
	}
	line := qcow2FormatLine(r, o, nil) + hint
	// The encryption options come first, as qemu-img prints them.
	line = strings.Replace(line, "fmt=qcow2 ", "fmt=qcow2"+enc.formatLine+" ", 1)
	if _, err = format.Layout(r.size, co); err != nil {
		// qemu-img's driver finds this after the "Formatting" line.
		var fe *format.FormatError
		if errors.As(err, &fe) && fe.Field == "l1_size" {
			return line, fmt.Errorf("%s: The image size is too large for file format 'qcow2' (try using a larger cluster size)", r.file)
		}
		return line, fmt.Errorf("%s: %v", r.file, err)
	}
	if encErr == nil {
		encErr = enc.setup(objs)
	}
	if encErr != nil {
		return line, fmt.Errorf("%s: %v", r.file, encErr)
	}
	write, target := writeQcow2, cli.FilePath(r.file)
	if co.DataFile != "" { // datafile.go
		if write, err = dataFileWriter(r.file, co, enc.format); err != nil {
			return line, err
		}
	}
	if rbd.IsName(r.file) {
		if enc.format != "" {
			return line, fmt.Errorf("%s: ringblk does not create encrypted qcow2 images in RBD", r.file)
		}
		write, target = writeQcow2RBD, r.file
	}
	if err := write(target, r.size, co); err != nil {
		return line, createErr(r.file, err)
	}
	if enc.format == "luks" {
		if err := encryptQcow2(cli.FilePath(r.file), enc.lo.co); err != nil {
			return line, createErr(r.file, err)
		}
	}
	if enc.format == "aes" { // aes.go
		if err := withQcow2(cli.FilePath(r.file), qcow2.SetupAES); err != nil {
			return line, createErr(r.file, err)
		}
	}
	return line, nil
}

// writeQcow2 runs qcow2.Create on a raw node over a new file: a main
// Context, a graph with the one node, then everything closed again.
func writeQcow2(path string, size int64, co format.CreateOptions) error {
	// withNewFile makes the file without O_TRUNC: the raw node takes the
	// image locks first, and qcow2.Create truncates only then, so an
	// image another process holds is refused untouched.
	return withNewFile(path, func(file *block.Node) error {
		return qcow2.Create(file, size, co)
	})
}

// createErr words a failed creation as qemu-img does: "FILE: cause", and
// "FILE: Could not create 'FILE': cause" when the file could not be opened
// or made.
func createErr(file string, err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) && pe.Op == "open" {
		return fmt.Errorf("%s: Could not create '%s': %w", file, file, cli.UnwrapPathErr(pe))
	}
	return fmt.Errorf("%s: %w", file, cli.PlainErr(err))
}

// takeSize takes size= out of r.pairs: the last one given, read as
// qemu-img reads option sizes.
func takeSize(r *createReq) (size int64, given string, ok bool, err error) {
	kept := r.pairs[:0]
	for _, p := range r.pairs {
		if p.Key != "size" {
			kept = append(kept, p)
			continue
		}
		if size, err = format.ParseOptionSize(p.Key, p.Value); err != nil {
			return 0, "", false, cli.OptionErr(r.file+": ", err)
		}
		given, ok = p.Value, true
	}
	r.pairs = kept
	return size, given, ok, nil
}

// backingWithoutFormat is qemu-img create's answer to a backing file
// given without its format: the backing file is opened first (a missing
// one is reported as such), and then the creation is refused, naming the
// format a probe finds. ringblk never records a probed format (see
// docs/design/iotests.md, "Backing files without a format").
func backingWithoutFormat(r *createReq) error {
	var file, fmtName string
	for _, p := range r.pairs {
		switch p.Key {
		case "backing_file":
			file = p.Value
		case "backing_fmt":
			fmtName = p.Value
		}
	}
	if file == "" || fmtName != "" {
		return nil
	}
	path := combinePath(cli.FilePath(r.file), file)
	img, err := openImage(path, "")
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = fmt.Errorf("Could not open '%s': %v", path, cli.UnwrapPathErr(pe))
		}
		return &cli.HintError{Err: fmt.Errorf("%s: %v", r.file, err), Hint: "Could not open backing image.\n"}
	}
	probed := img.format
	img.Close()
	return &cli.HintError{Err: fmt.Errorf("%s: Backing file specified without backing format", r.file), Hint: "Detected format of " + probed + "."}
}

// qcow2FormatLine is qemu-img create's "Formatting" line for a qcow2
// image (format.FormattingLine).
func qcow2FormatLine(r *createReq, o *format.ImageOptions, raw map[string]string) string {
	return format.FormattingLine(r.file, r.size, o, raw)
}

// createStageError reports an option error of qemu-img create. The values
// qemu-img's qcow2 driver checks itself (a cluster size or refcount width
// out of range, an unknown compat level or preallocation mode) are
// refused after the "Formatting" line and in the driver's words; the rest
// (syntax, unknown keys) before it, as usage errors.
func createStageError(r *createReq, err error) (string, error) {
	var oe *format.OptionError
	if !errors.As(err, &oe) || !r.hasSize {
		return "", cli.OptionErr(r.file+": ", err)
	}
	var val string
	for _, p := range r.pairs {
		if p.Key == oe.Key {
			val = p.Value
		}
	}
	var msg string
	rawVal := val
	switch {
	case strings.HasPrefix(oe.Msg, "Cluster size must be"):
		msg = "Cluster size must be a power of two between 512 and 2048k"
		n, perr := format.ParseOptionSize(oe.Key, val)
		if perr != nil {
			return "", cli.OptionErr(r.file+": ", err)
		}
		rawVal = strconv.FormatInt(n, 10)
	case strings.HasPrefix(oe.Msg, "Refcount width must be"):
		msg = "Refcount width must be a power of two and may not exceed 64 bits"
	case strings.HasPrefix(oe.Msg, "Different refcount widths"):
		msg = "Different refcount widths than 16 bits require compatibility level 1.1 or above (use version=v3 or greater)"
	case strings.HasPrefix(oe.Msg, "Invalid compatibility level"):
		msg = "Parameter 'version' does not accept value '" + val + "'"
	case strings.HasPrefix(oe.Msg, "Lazy refcounts only supported"),
		strings.HasPrefix(oe.Msg, "Extended L2 entries are only supported"):
		// The qcow2 driver's own checks, after the line (049, 271).
		msg = oe.Msg
	case oe.Key == "preallocation" && strings.Contains(oe.Msg, "does not accept value"):
		msg = "Parameter 'preallocation' does not accept value '" + val + "'"
	default:
		return "", cli.OptionErr(r.file+": ", err)
	}
	// The line needs the other options: parse them without this one.
	var rest []format.OptionPair
	for _, p := range r.pairs {
		if p.Key != oe.Key {
			rest = append(rest, p)
		}
	}
	o, perr := format.ParseOptionPairs(rest, format.ForCreate)
	if perr != nil {
		if oe.Key != "refcount_bits" && oe.Key != "compat" {
			return "", cli.OptionErr(r.file+": ", err)
		}
		// A v2 image with refcount_bits: both keys matter; keep both.
		o = &format.ImageOptions{Given: map[string]string{}}
		for _, p := range r.pairs {
			o.Given[p.Key] = p.Value
		}
	}
	if cli.Prog == "ringblk" && (oe.Key == "cluster_size" || oe.Key == "refcount_bits") && !strings.HasPrefix(msg, "Different") {
		// As ringblk, the message names the value it refuses.
		msg += " (got '" + val + "')"
	}
	rawMap := map[string]string{oe.Key: rawVal}
	if oe.Key == "refcount_bits" || strings.HasPrefix(msg, "Different refcount") {
		rawMap["refcount_bits"] = r.givenValue("refcount_bits")
	}
	return qcow2FormatLine(r, o, rawMap), fmt.Errorf("%s: %s", r.file, msg)
}

// givenValue is the last value of key in the -o list.
func (r *createReq) givenValue(key string) string {
	v := ""
	for _, p := range r.pairs {
		if p.Key == key {
			v = p.Value
		}
	}
	return v
}

// takeExtentSizeHint takes extent_size_hint= out of r.pairs (the file
// protocol's creation option, which qemu-img accepts for raw and qcow2
// images) and returns its part of the "Formatting" line. The hint asks a
// file system that has one (XFS) to allocate in extents of that size;
// ringblk accepts and checks it but sets no hint, which changes only how
// such a file system groups the file's blocks, never the data. QEMU
// itself ignores a file system without the hint.
func takeExtentSizeHint(r *createReq) (string, error) {
	kept := r.pairs[:0]
	var hint string
	for _, p := range r.pairs {
		if p.Key != "extent_size_hint" {
			kept = append(kept, p)
			continue
		}
		n, err := format.ParseOptionSize(p.Key, p.Value)
		if err != nil {
			return "", cli.OptionErr(r.file+": ", err)
		}
		if n > 0xffffffff {
			return "", fmt.Errorf("%s: Extent size hint is too large", r.file)
		}
		hint = " extent_size_hint=" + strconv.FormatInt(n, 10)
	}
	r.pairs = kept
	return hint, nil
}

// allocateFirstBlock writes zeroes over the start of a new sparse raw
// image, as qemu-img's file driver does so that probing the file's
// O_DIRECT alignment later finds allocated blocks: 4 KiB (512 bytes for
// an image smaller than that), never past the end. It changes no data
// (the range read as zeroes before), only what map reports for it; a
// failure is ignored, as qemu-img ignores it.
func allocateFirstBlock(path string, size int64) {
	n := int64(4096)
	if size < n {
		n = 512
	}
	n = min(n, size)
	if n <= 0 {
		return
	}
	f, err := os.OpenFile(path, os.O_WRONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	defer f.Close()
	f.WriteAt(make([]byte, n), 0)
}
