package imgcmd

import (
	"errors"
	"fmt"
	"io"
	"math/bits"
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2"
	"github.com/ringblk/ringblk/drivers/raw"
	"github.com/ringblk/ringblk/internal/cli"
	"github.com/ringblk/ringblk/internal/units"
)

const createHelp = `usage: ringblk create [-f fmt] [-o key=value[,...]] [-b backing -F backing_fmt] [-q] FILE [SIZE]

Create a new raw or qcow2 image (replacing FILE if it exists), as
qemu-img create does. SIZE takes k, M, G, T, P, E suffixes (powers of
1024); with -b it defaults to the backing file's virtual size.

  -f fmt           raw (default) or qcow2
  -o options       comma-separated key=value list:
                     raw:   size, preallocation=off|falloc|full
                     qcow2: size, cluster_size (512..2M, default 64k),
                            compat=0.10|1.1|v2|v3, refcount_bits (1..64),
                            backing_file, backing_fmt,
                            preallocation=off|metadata|falloc|full,
                            lazy_refcounts=off|on, extended_l2=off|on,
                            compression_type=zlib
  -b backing       backing file (qcow2), relative to FILE's directory
  -F backing_fmt   backing file format (raw or qcow2); required with -b
  -q, --quiet      do not print the "Formatting ..." line
  -h, --help       this help
`

var createSpec = cli.OptSpec{
	Short: map[byte]bool{'f': true, 'o': true, 'b': true, 'F': true, 'q': false, 'u': false, 'h': false},
	Long:  map[string]bool{"quiet": false, "help": false},
}

// createReq is a parsed create command line.
type createReq struct {
	file, format string
	size         int64
	hasSize      bool
	kv           map[string]string // -o options (last one wins)
	quiet        bool
}

// Create is "ringblk create" (qemu-img create): args are what follows the
// command name; the result is the exit status.
func Create(args []string, stdout, stderr io.Writer) int {
	return cli.Run(createHelp, stdout, stderr, func() (int, error) {
		opts, operands, err := cli.ParseOpts(args, createSpec)
		if err != nil {
			return 1, err
		}
		r := &createReq{format: "raw", kv: map[string]string{}}
		var olist []string
		for _, o := range opts {
			switch o.Name {
			case "f":
				r.format = o.Val
			case "o":
				olist = append(olist, o.Val)
			case "b":
				olist = append(olist, "backing_file="+o.Val)
			case "F":
				olist = append(olist, "backing_fmt="+o.Val)
			case "q", "quiet":
				r.quiet = true
			}
		}
		if err := checkOutputFormat(r.format); err != nil {
			return 1, err
		}
		for _, l := range olist {
			if l == "help" || l == "?" {
				fmt.Fprint(stdout, createHelp)
				return 0, nil
			}
			for _, kv := range strings.Split(l, ",") {
				if kv == "" {
					continue
				}
				k, v, ok := strings.Cut(kv, "=")
				if !ok {
					return 1, cli.Usagef("Invalid parameter '%s' in -o (expected key=value)", kv)
				}
				r.kv[k] = v
			}
		}
		switch len(operands) {
		case 0:
			return 1, cli.Usagef("Expecting image file name (see 'ringblk create --help')")
		case 1, 2:
		default:
			return 1, cli.Usagef("Unexpected argument '%s' (see 'ringblk create --help')", operands[2])
		}
		r.file = operands[0]
		if s, ok := r.kv["size"]; ok {
			if r.size, err = cli.ParseSize(s); err != nil {
				return 1, err
			}
			r.hasSize = true
			delete(r.kv, "size")
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
		if b, ok := r.kv["backing_file"]; ok && b == "" {
			return 1, cli.Usagef("%s: Expected backing file name, got empty string", r.file)
		}
		var line string
		if r.format == "raw" {
			line, err = createRaw(r)
		} else {
			line, err = createQcow2(r)
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
	line := fmt.Sprintf("Formatting '%s', fmt=raw size=%d", r.file, r.size)
	pre := raw.PreallocOff
	for k, v := range r.kv {
		switch k {
		case "preallocation":
			p, ok := raw.ParsePrealloc(v)
			if !ok {
				return "", cli.Usagef("%s: Invalid parameter value for 'preallocation': '%s' (off, falloc, full)", r.file, v)
			}
			pre = p
		default:
			return "", cli.Usagef("%s: Invalid parameter '%s' for format raw", r.file, k)
		}
	}
	if !r.hasSize {
		return "", cli.Usagef("%s: Image creation needs a size parameter", r.file)
	}
	if v, ok := r.kv["preallocation"]; ok {
		line += " preallocation=" + v
	}
	if err := raw.Create(r.file, r.size, pre); err != nil {
		return line, createErr(r.file, err)
	}
	return line, nil
}

func createQcow2(r *createReq) (string, error) {
	var co qcow2.CreateOptions
	var compatStr string
	var err error
	for k, v := range r.kv {
		switch k {
		case "cluster_size":
			n, perr := units.ParseSize(v)
			if perr != nil || n < 512 || n > 2<<20 || bits.OnesCount64(uint64(n)) != 1 {
				return "", cli.Usagef("%s: Cluster size must be a power of two between 512 and 2048k (got '%s')", r.file, v)
			}
			co.ClusterSize = n
		case "compat":
			switch v {
			case "0.10", "v2":
				co.Version = 2
			case "1.1", "v3":
				co.Version = 3
			default:
				return "", cli.Usagef("%s: Invalid parameter value for 'compat': '%s' (0.10, 1.1, v2, v3)", r.file, v)
			}
			compatStr = v
		case "refcount_bits":
			n, perr := strconv.Atoi(v)
			if perr != nil || n < 1 || n > 64 || bits.OnesCount(uint(n)) != 1 {
				return "", cli.Usagef("%s: Refcount width must be a power of two and may not exceed 64 bits (got '%s')", r.file, v)
			}
			co.RefcountBits = n
		case "backing_file":
			co.BackingFile = v
		case "backing_fmt":
			if v != "raw" && v != "qcow2" {
				return "", cli.Usagef("%s: Unsupported backing format '%s' (raw or qcow2)", r.file, v)
			}
			co.BackingFormat = v
		case "preallocation":
			p, ok := qcow2.ParsePrealloc(v)
			if !ok {
				return "", cli.Usagef("%s: Parameter 'preallocation' does not accept value '%s'", r.file, v)
			}
			co.Preallocation = p
		case "extended_l2":
			switch v {
			case "on":
				co.ExtendedL2 = true
			case "off":
			default:
				return "", cli.Usagef("%s: Parameter 'extended_l2' expects 'on' or 'off'", r.file)
			}
		case "lazy_refcounts":
			switch v {
			case "on", "yes", "true", "y":
				co.LazyRefcounts = true
			case "off", "no", "false", "n":
			default:
				return "", cli.Usagef("%s: Parameter 'lazy_refcounts' expects 'on' or 'off'", r.file)
			}
		case "compression_type":
			if v != "zlib" {
				return "", cli.Usagef("%s: compression_type=%s is not supported yet (only zlib)", r.file, v)
			}
		default:
			return "", cli.Usagef("%s: Invalid parameter '%s' for format qcow2", r.file, k)
		}
	}
	if co.Version == 2 && co.RefcountBits != 0 && co.RefcountBits != 16 {
		return "", cli.Usagef("%s: Different refcount widths than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)", r.file)
	}
	if co.LazyRefcounts && co.Version == 2 {
		return "", cli.Usagef("%s: Lazy refcounts only supported with compatibility level 1.1 and above (use version=v3 or greater)", r.file)
	}
	if co.ExtendedL2 && co.Version == 2 {
		return "", cli.Usagef("%s: Extended L2 entries are only supported with compatibility level 1.1 and above (use version=v3 or greater)", r.file)
	}
	if co.ExtendedL2 && co.ClusterSize != 0 && co.ClusterSize < 16384 {
		return "", cli.Usagef("%s: Extended L2 entries are only supported with cluster sizes of at least 16384 bytes", r.file)
	}
	if co.BackingFile != "" && co.Preallocation != qcow2.PreallocOff && !co.ExtendedL2 {
		return "", cli.Usagef("%s: Backing file and preallocation can only be used at the same time if extended_l2 is on", r.file)
	}
	if co.BackingFile != "" && co.BackingFormat == "" {
		return "", cli.Usagef("%s: Backing file specified without backing format (add -F raw or -F qcow2)", r.file)
	}
	if co.BackingFile == "" && co.BackingFormat != "" {
		return "", cli.Usagef("%s: Backing format specified without backing file", r.file)
	}
	if !r.hasSize {
		if co.BackingFile == "" {
			return "", cli.Usagef("%s: Image creation needs a size parameter", r.file)
		}
		bimg, berr := openImage(combinePath(r.file, co.BackingFile), co.BackingFormat)
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
	if _, err = qcow2.Layout(r.size, co); err != nil {
		return "", fmt.Errorf("%s: %v", r.file, err)
	}

	cs := co.ClusterSize
	if cs == 0 {
		cs = 65536
	}
	rb := co.RefcountBits
	if rb == 0 {
		rb = 16
	}
	var b strings.Builder
	ext := "off"
	if co.ExtendedL2 {
		ext = "on"
	}
	fmt.Fprintf(&b, "Formatting '%s', fmt=qcow2 cluster_size=%d extended_l2=%s", r.file, cs, ext)
	if v, ok := r.kv["preallocation"]; ok {
		b.WriteString(" preallocation=" + v)
	}
	fmt.Fprintf(&b, " compression_type=zlib size=%d", r.size)
	if compatStr != "" {
		b.WriteString(" compat=" + compatStr)
	}
	if co.BackingFile != "" {
		fmt.Fprintf(&b, " backing_file=%s backing_fmt=%s", co.BackingFile, co.BackingFormat)
	}
	lazy := "off"
	if v, ok := r.kv["lazy_refcounts"]; ok {
		lazy = v
	}
	fmt.Fprintf(&b, " lazy_refcounts=%s refcount_bits=%d", lazy, rb)

	if err := writeQcow2(r.file, r.size, co); err != nil {
		return b.String(), createErr(r.file, err)
	}
	return b.String(), nil
}

// writeQcow2 runs qcow2.Create on a raw node over a new file: a main
// Context, a graph with the one node, then everything closed again.
func writeQcow2(path string, size int64, co qcow2.CreateOptions) (err error) {
	// Make sure the file exists, without O_TRUNC: the raw node below
	// takes the image locks first, and qcow2.Create truncates only then,
	// so an image another process holds is refused untouched.
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|syscall.O_CLOEXEC, 0o644)
	if err != nil {
		return err
	}
	f.Close()
	c, err := aio.New(aio.Options{Name: "main", Main: true, CPU: aio.NoCPU, Entries: 64, ArenaSize: 1 << 20})
	if err != nil {
		return err
	}
	if err := c.Start(); err != nil {
		return fmt.Errorf("cannot start an io_uring Context: %v", err)
	}
	defer func() {
		if _, serr := c.Stop(); serr != nil && err == nil {
			err = serr
		}
	}()
	g := block.NewGraph(c)
	file, err := raw.NewNode(g, path, raw.Options{}, block.Options{})
	if err != nil {
		return err
	}
	err = qcow2.Create(file, size, co)
	if cerr := file.Unref(); err == nil {
		err = cerr
	}
	return err
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
