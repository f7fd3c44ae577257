package imgcmd

// dd: qemu-img dd, a dd(1)-style copy of an image into a new image.

import (
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"syscall"

	"github.com/ringblk/ringblk/drivers/chain"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
	"github.com/ringblk/ringblk/drivers/raw"
	"github.com/ringblk/ringblk/internal/cli"
)

const ddHelp = `usage: ringblk dd [-f fmt] [-O output_fmt] [-U] [bs=block_size] [count=blocks] [skip=blocks] if=input of=output

Copy an image into a new image, as dd(1) and qemu-img dd do: the output
(created, replacing a file of that name) holds count blocks of bs bytes
of the input's guest view, starting skip blocks in. Without count, the
rest of the input.

  -f fmt          the input's format (raw, qcow2, null); probed without it
  -O output_fmt   the output's format (raw, the default, or qcow2)
  -U, --force-share  open the input without locking it
  bs=SIZE         block size (default 512; k, M, G, … suffixes)
  count=N         copy at most N blocks
  skip=N          skip N blocks of the input first
  -h, --help      this help
`

var ddSpec = cli.OptSpec{
	Short: map[byte]bool{'f': true, 'O': true, 'U': false, 'h': false},
	Long:  map[string]bool{"force-share": false, "help": false},
}

// ddReq is a parsed dd command line.
type ddReq struct {
	in, out, inFmt, outFmt string
	bs, count, skip        int64
	hasCount, hasSkip      bool
	share                  bool
}

// DD is "ringblk dd" (qemu-img dd).
func DD(args []string, stdout, stderr io.Writer) int {
	return cli.Run(ddHelp, stdout, stderr, func() (int, error) {
		args, imageOpts, err := cli.TakeGlobalOpts(args)
		if err != nil {
			return 1, err
		}
		r, err := parseDD(args, stderr)
		if err != nil {
			return 1, err
		}
		if r.in, r.inFmt, err = cli.ImageFile(r.in, r.inFmt, imageOpts); err != nil {
			return 1, err
		}
		return 0, runDD(r, stderr)
	})
}

// ddNum reads a bs/count/skip value as qemu-img does (a size with an
// optional suffix) within [min, max]; its mistakes are qemu-img's two
// kinds of message.
func ddNum(name, v string, min, max int64, stderr io.Writer) (int64, error) {
	n, err := chain.ParseQemuSize(v)
	if err != nil {
		if cli.Prog == "ringblk" {
			return 0, cli.Usagef("Invalid %s specified: '%s' (k, M, G, T, P or E suffixes)", name, v)
		}
		// Two messages, as qemu-img prints them.
		fmt.Fprintf(stderr, "%s: Invalid %s specified. You may use k, M, G, T, P or E suffixes for\n", cli.Prog, name)
		return 0, errors.New("kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.")
	}
	if n < min || n > max {
		return 0, fmt.Errorf("Invalid %s specified. Must be between %d and %d.", name, min, max)
	}
	return n, nil
}

func parseDD(args []string, stderr io.Writer) (*ddReq, error) {
	opts, operands, err := cli.ParseOpts(args, ddSpec)
	if err != nil {
		return nil, err
	}
	r := &ddReq{outFmt: "raw", bs: 512}
	for _, o := range opts {
		switch o.Name {
		case "f":
			r.inFmt = o.Val
		case "O":
			r.outFmt = o.Val
		case "U", "force-share":
			r.share = true
		}
	}
	var hasIn, hasOut bool
	for _, a := range operands {
		k, v, ok := strings.Cut(a, "=")
		if !ok {
			return nil, fmt.Errorf("unrecognized operand %s", a)
		}
		switch k {
		case "bs":
			if r.bs, err = ddNum("bs", v, 1, math.MaxInt32, stderr); err != nil {
				return nil, err
			}
		case "count":
			if r.count, err = ddNum("count", v, 0, math.MaxInt64, stderr); err != nil {
				return nil, err
			}
			r.hasCount = true
		case "skip":
			if r.skip, err = ddNum("skip", v, 0, math.MaxInt64, stderr); err != nil {
				return nil, err
			}
			r.hasSkip = true
		case "if":
			r.in, hasIn = v, true
		case "of":
			r.out, hasOut = v, true
		default:
			return nil, fmt.Errorf("unrecognized operand %s", k)
		}
	}
	if !hasIn || !hasOut {
		return nil, errors.New("Must specify both input and output files")
	}
	if err := checkSourceFormat(r.inFmt); err != nil {
		return nil, err
	}
	if r.outFmt != "raw" && r.outFmt != "qcow2" {
		return nil, errors.New("Unknown file format")
	}
	return r, nil
}

func runDD(r *ddReq, stderr io.Writer) error {
	src, err := cli.OpenBlk(r.in, cli.BlkOptions{Format: r.inFmt, ReadOnly: true, ForceShare: r.share})
	if err != nil {
		return err
	}
	defer src.Close()
	size, err := src.Node.Length()
	if err != nil {
		return fmt.Errorf("Failed to get size for '%s'", r.in)
	}
	if r.hasCount && r.count <= math.MaxInt64/r.bs && r.count*r.bs < size {
		size = r.count * r.bs
	}
	pastEnd := r.hasSkip && (r.skip > math.MaxInt64/r.bs || size < r.skip*r.bs)
	outSize, inPos := int64(0), size
	if !pastEnd {
		inPos = r.skip * r.bs
		outSize = size - inPos
	}
	if r.outFmt == "qcow2" {
		err = writeQcow2(r.out, outSize, format.CreateOptions{})
	} else {
		err = raw.Create(r.out, outSize, raw.PreallocOff)
	}
	if err != nil {
		return fmt.Errorf("%s: error while creating output image: %v", r.out, cli.PlainErr(cli.UnwrapPathErr(err)))
	}
	dst, err := cli.OpenBlk(r.out, cli.BlkOptions{Format: r.outFmt})
	if err != nil {
		return err
	}
	if pastEnd {
		// As dd(1): an empty output, and a complaint.
		fmt.Fprintf(stderr, "%s: %s: cannot skip to specified offset\n", cli.Prog, r.in)
	}
	buf := make([]byte, r.bs)
	for outPos := int64(0); inPos < size; {
		b := buf[:min(r.bs, size-inPos)]
		if _, err := src.Node.ReadAt(b, inPos); err != nil {
			dst.Close()
			return fmt.Errorf("error while reading from input image file: %s", errnoText(err))
		}
		inPos += int64(len(b))
		if _, err := dst.Node.WriteAt(b, outPos); err != nil {
			dst.Close()
			return fmt.Errorf("error while writing to output image file: %s", errnoText(err))
		}
		outPos += int64(len(b))
	}
	if err := dst.Close(); err != nil {
		return fmt.Errorf("error while writing to output image file: %s", errnoText(err))
	}
	return nil
}

// errnoText words an I/O error as strerror does ("Input/output error"),
// or the error's plain message when it carries no errno.
func errnoText(err error) string {
	var en syscall.Errno
	if errors.As(err, &en) {
		t := en.Error()
		return strings.ToUpper(t[:1]) + t[1:]
	}
	return cli.PlainErr(err).Error()
}
