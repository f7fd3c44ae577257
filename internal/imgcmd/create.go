package imgcmd

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"

	"github.com/ringblk/ringblk/aio"
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

  -f fmt           raw (default) or qcow2
  -o options       comma-separated key=value list:
                     raw:   size, preallocation=off|falloc|full
                     qcow2: size, cluster_size (512..2M, default 64k),
                            compat=0.10|1.1|v2|v3, refcount_bits (1..64),
                            backing_file, backing_fmt,
                            preallocation=off|metadata|falloc|full,
                            lazy_refcounts=off|on, extended_l2=off|on,
                            compression_type=zlib|zstd (zstd: read and
                            uncompressed writes; compressed writes refused)
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
	pairs        []format.OptionPair // -o items in order, size taken out (the last value of a key wins)
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
		r := &createReq{format: "raw"}
		var olist []string
		for _, o := range opts {
			switch o.Name {
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
	if nbd.IsURI(r.file) {
		if pre != raw.PreallocOff {
			return "", cli.Usagef("%s: preallocation=%s is not supported on an NBD export", r.file, preStr)
		}
		return line, createNBD(r.file, r.size)
	}
	if rbd.IsName(r.file) {
		return line, createRBD(r.file, r.size, pre != raw.PreallocOff)
	}
	if err := raw.Create(r.file, r.size, pre); err != nil {
		return line, createErr(r.file, err)
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

func createQcow2(r *createReq) (string, error) {
	if nbd.IsURI(r.file) {
		return "", fmt.Errorf("%s: ringblk creates only raw images on NBD exports (the server applies the format)", r.file)
	}
	o, err := format.ParseOptionPairs(r.pairs, format.ForCreate)
	if err != nil {
		return "", cli.Usagef("%s: %v", r.file, err)
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
	if _, err = format.Layout(r.size, co); err != nil {
		return "", fmt.Errorf("%s: %v", r.file, err)
	}

	rb := co.RefcountBits
	if rb == 0 {
		rb = 16
	}
	given := func(k, def string) string {
		if v, ok := o.Given[k]; ok {
			return v
		}
		return def
	}
	// The values as the user wrote them, in qemu-img's order.
	var b strings.Builder
	fmt.Fprintf(&b, "Formatting '%s', fmt=qcow2 cluster_size=%d extended_l2=%s", r.file, co.EffectiveClusterSize(), given("extended_l2", "off"))
	if v, ok := o.Given["preallocation"]; ok {
		b.WriteString(" preallocation=" + v)
	}
	fmt.Fprintf(&b, " compression_type=%s size=%d", given("compression_type", "zlib"), r.size)
	if v, ok := o.Given["compat"]; ok {
		b.WriteString(" compat=" + v)
	}
	if co.BackingFile != "" {
		// qemu-img prints option values as an -o list would hold them.
		fmt.Fprintf(&b, " backing_file=%s backing_fmt=%s", format.EscapeOptionValue(co.BackingFile), format.EscapeOptionValue(co.BackingFormat))
	}
	fmt.Fprintf(&b, " lazy_refcounts=%s refcount_bits=%d", given("lazy_refcounts", "off"), rb)

	write := writeQcow2
	if rbd.IsName(r.file) {
		write = writeQcow2RBD
	}
	if err := write(r.file, r.size, co); err != nil {
		return b.String(), createErr(r.file, err)
	}
	return b.String(), nil
}

// writeQcow2 runs qcow2.Create on a raw node over a new file: a main
// Context, a graph with the one node, then everything closed again.
func writeQcow2(path string, size int64, co format.CreateOptions) (err error) {
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
			return 0, "", false, cli.Usagef("%v", err)
		}
		given, ok = p.Value, true
	}
	r.pairs = kept
	return size, given, ok, nil
}
