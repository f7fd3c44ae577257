package imgcmd

// ringblk resize: qemu-img resize through the block layer. A raw image is
// truncated by its raw node (growth backed as --preallocation says); a
// qcow2 image is resized by its driver (Truncate; TruncatePrealloc for
// --preallocation=metadata|falloc|full), which writes the new L1 table and
// header in the order spec/qcow2.md requires.

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/chain"
	"github.com/ringblk/ringblk/drivers/qcow2"
	qfmt "github.com/ringblk/ringblk/drivers/qcow2/format"
	"github.com/ringblk/ringblk/drivers/raw"
	"github.com/ringblk/ringblk/drivers/rbd"
	"github.com/ringblk/ringblk/internal/cli"
)

const resizeHelp = `usage: ringblk resize [-f fmt] [--shrink] [--preallocation=off|metadata|falloc|full] [-q] FILE [+|-]SIZE

Change the virtual size of an image, as qemu-img resize does. SIZE is the
new size, or with + or - a change of the current one; it takes k, M, G,
T, P, E suffixes (powers of 1024). Making an image smaller needs --shrink
and deletes everything past the new end.

  -f fmt            raw or qcow2; without it the file is probed (qcow2
                    magic, else raw)
  --shrink          allow the new size to be smaller than the current one
                    (raw and qcow2)
  --preallocation=MODE
                    how new space is backed when the image grows:
                    off (sparse, default), falloc (reserved with
                    fallocate) or full (zeroes written); qcow2 also
                    takes metadata (clusters mapped, file sparse), and
                    maps every new cluster in the other modes too
  -q, --quiet       do not print "Image resized."
  -h, --help        this help

A qcow2 image's new size must be a multiple of 512 bytes.
`

var resizeSpec = cli.WithObjects(cli.OptSpec{
	Short: map[byte]bool{'f': true, 'q': false, 'h': false},
	Long:  map[string]bool{"shrink": false, "preallocation": true, "quiet": false, "help": false},
})

// Resize is "ringblk resize" (qemu-img resize): args are what follows the
// command name; the result is the exit status.
func Resize(args []string, stdout, stderr io.Writer) int {
	return cli.Run(resizeHelp, stdout, stderr, func() (int, error) {
		for _, a := range args {
			if a == "-h" || a == "--help" || a == "-help" {
				return 0, cli.ErrHelp
			}
		}
		// The size is the last argument and is taken before the options
		// are parsed, so that "-1G" is a size and not an option (as
		// qemu-img does).
		if len(args) < 2 {
			return 1, cli.Usagef("resize: not enough arguments (expecting FILE and SIZE; see 'ringblk resize --help')")
		}
		sizeArg := args[len(args)-1]
		args, imageOpts, err := cli.TakeGlobalOpts(args)
		if err != nil {
			return 1, err
		}
		opts, operands, err := cli.ParseOpts(args[:len(args)-1], resizeSpec)
		if err != nil {
			return 1, err
		}
		if len(operands) != 1 {
			return 1, cli.Usagef("resize: expecting image file name and size (see 'ringblk resize --help')")
		}
		path := operands[0]
		format, quiet, shrink := "", false, false
		preallocName := "off"
		ia := cli.ImageArgs{ImageOpts: imageOpts}
		for _, o := range opts {
			if took, err := ia.Take(o); took {
				if err != nil {
					return 1, err
				}
				continue
			}
			switch o.Name {
			case "f":
				format = o.Val
			case "q", "quiet":
				quiet = true
			case "shrink":
				shrink = true
			case "preallocation":
				if _, ok := qfmt.ParsePrealloc(o.Val); !ok {
					return 1, cli.Usagef("Invalid preallocation mode '%s' (off, metadata, falloc or full)", o.Val)
				}
				preallocName = o.Val
			}
		}
		var keys [][]byte
		if ia.ImageOpts {
			bo := cli.BlkOptions{Format: format}
			p, err := ia.Resolve(path, &bo)
			if err != nil {
				return 1, fmt.Errorf("Could not open '%s': %v", path, err)
			}
			path, format, keys = p, bo.Format, bo.KeySecrets
		}
		if err := checkFormat(format); err != nil {
			return 1, err
		}
		rel := 0
		num := sizeArg
		switch {
		case strings.HasPrefix(num, "+"):
			rel, num = 1, num[1:]
		case strings.HasPrefix(num, "-"):
			rel, num = -1, num[1:]
		}
		delta, err := cli.ParseSize(num)
		if err != nil {
			return 1, cli.Usagef("Invalid image size specified: '%s' (use k, M, G, T, P or E suffixes, optionally after + or -)", sizeArg)
		}
		if rbd.IsName(path) {
			if preallocName != "off" {
				return 1, fmt.Errorf("Could not resize '%s': preallocation is not supported on RBD images", path)
			}
			if format == "" {
				format = "raw"
			}
		} else if _, err := os.Stat(path); err != nil {
			return 1, cli.FileOpenError(path, err)
		}
		if format == "" {
			if format, err = chain.Probe(path); err != nil {
				return 1, cli.FileOpenError(path, err)
			}
		}
		// qcow2 takes off, metadata, falloc and full (the driver maps the
		// new clusters); other formats back the file's growth: off,
		// falloc, full.
		prealloc := raw.PreallocOff
		qprealloc := qfmt.PreallocOff
		if format == "qcow2" {
			qprealloc, _ = qfmt.ParsePrealloc(preallocName)
		} else if p, ok := raw.ParsePrealloc(preallocName); ok {
			prealloc = p
		} else {
			return 1, fmt.Errorf("Could not resize '%s': Unsupported preallocation mode: %s", path, preallocName)
		}
		img, err := openResize(path, format, prealloc, keys)
		if err != nil {
			return 1, err
		}
		code, rerr := resizeImage(img, path, format, rel, delta, shrink, preallocName != "off", func(size int64) error {
			if qprealloc != qfmt.PreallocOff && img.Qcow2 != nil {
				return qcow2.TruncatePrealloc(img.Node, size, qprealloc) // the driver's growth with mapped clusters
			}
			return img.Node.Truncate(size)
		})
		if cerr := img.Close(); rerr == nil && cerr != nil {
			return 1, fmt.Errorf("closing '%s': %v", path, cerr)
		}
		if rerr != nil {
			return code, rerr
		}
		if !quiet {
			fmt.Fprintln(stdout, "Image resized.")
		}
		return 0, nil
	})
}

// openResize opens the image writable. A raw image gets a raw node of its
// own so that growth is preallocated as asked; a qcow2 image is opened
// with its backing chain, as qemu-img does: growing over a backing file
// longer than the old size must hide that file's bytes in the new area
// (the driver's Truncate zeroes it), and the driver needs the backing
// file's length and content (for a partial last cluster) to do so.
func openResize(path, format string, prealloc raw.Prealloc, keys [][]byte) (*cli.BlkImage, error) {
	if format == "qcow2" || format == "luks" || rbd.IsName(path) {
		// Discards reach the file: a qcow2 shrink punches the clusters it
		// frees, as QEMU's does (its file child always passes discards on).
		return cli.OpenBlk(path, cli.BlkOptions{Format: format, KeySecrets: keys, Discard: raw.DiscardUnmap})
	}
	c, g, err := cli.NewBlkEnv()
	if err != nil {
		return nil, err
	}
	n, err := raw.NewNode(g, path, raw.Options{Prealloc: prealloc}, block.Options{Name: cli.NodeNameFor(g, path)})
	if err != nil {
		c.Stop()
		return nil, cli.OpenError(path, err)
	}
	return cli.NewBlkImage(c, g, n, path, "raw"), nil
}

func resizeImage(img *cli.BlkImage, path, format string, rel int, delta int64, shrink, prealloc bool, truncate func(size int64) error) (int, error) {
	cur, err := img.Node.Length()
	if err != nil {
		return 1, fmt.Errorf("Could not read the size of '%s': %v", path, err)
	}
	size := delta
	switch rel {
	case 1:
		if delta > (1<<63-1)-cur {
			return 1, fmt.Errorf("Could not resize '%s': the new size is too large", path)
		}
		size = cur + delta
	case -1:
		size = cur - delta
	}
	if size <= 0 {
		return 1, errors.New("New image size must be positive")
	}
	if size < cur {
		if !shrink {
			return 1, fmt.Errorf("Use the --shrink option to perform a shrink operation (it deletes all data past the new end of '%s')", path)
		}
		if prealloc {
			return 1, errors.New("Preallocation can only be used for growing images")
		}
	}
	if err := truncate(size); err != nil {
		if w := qemuResizeWords(err); w != nil { // resize_words.go
			return 1, w
		}
		return 1, fmt.Errorf("Could not resize '%s' to %d bytes: %v", path, size, resizeCause(err))
	}
	return 0, nil
}

// resizeCause strips the block layer's operation prefix when the cause
// alone says it (the driver's own words, such as "must be a multiple of
// 512").
func resizeCause(err error) error {
	var be *block.Error
	if errors.As(err, &be) && be.Err != nil {
		return be.Err
	}
	return err
}
