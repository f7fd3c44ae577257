package imgcmd

// ringblk amend: qemu-img amend for qcow2 images, on the driver's Amend
// (drivers/qcow2/amend.go). The image is opened read-write with its
// backing chain, because a downgrade to compat=0.10 must know whether a
// zero cluster may become unallocated (no backing file) or has to be
// written as zeros.

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/ringblk/ringblk/drivers/chain"
	"github.com/ringblk/ringblk/drivers/qcow2"
	qcow2fmt "github.com/ringblk/ringblk/drivers/qcow2/format"
	"github.com/ringblk/ringblk/internal/cli"
)

const amendHelp = `usage: ringblk amend [-f fmt] [-t cache] [-p] [-q] [--force] -o options FILE

Change format options of an existing qcow2 image, as qemu-img amend does.

  -f fmt         qcow2 (the only format with options to amend); without it
                 the file is probed
  -o options     comma-separated key=value list (repeatable, the last value
                 of a key wins); -o help lists the keys
  -t cache       writeback (default), writethrough or none
  -p             show progress
  -q, --quiet    print nothing but errors
  --force        accepted for compatibility (nothing needs it)
  -h, --help     this help

Keys:
  compat=0.10|1.1     (or v2|v3) downgrade or upgrade the image version
  lazy_refcounts=on|off
  size=SIZE           the new virtual size (k, M, G, T, P, E suffixes);
                      0 keeps it; smaller shrinks the disk, as resize
                      --shrink
  refcount_bits=N     change the refcount width (1, 2, 4 ... 64; 16 only
                      with compat=0.10)
  backing_file, backing_fmt
                      accepted only with the current values (as qemu-img:
                      amend does not change the backing file)
`

const amendKeysHelp = `Amend options for 'qcow2':
  backing_file=<str>     - File name of a base image (must stay the same)
  backing_fmt=<str>      - Image format of the base image (must stay the same)
  compat=<str>           - Compatibility level (v2 [0.10] or v3 [1.1])
  lazy_refcounts=<bool (on/off)> - Postpone refcount updates
  refcount_bits=<num>    - Width of a reference count entry in bits
  size=<size>            - Virtual disk size (growing only)
`

var amendSpec = cli.WithObjects(cli.OptSpec{
	Short: map[byte]bool{'f': true, 'o': true, 't': true, 'p': false, 'q': false, 'h': false},
	Long:  map[string]bool{"quiet": false, "force": false, "help": false},
})

// Amend is "ringblk amend" (qemu-img amend): args are what follows the
// command name; the result is the exit status.
func Amend(args []string, stdout, stderr io.Writer) int {
	return cli.Run(amendHelp, stdout, stderr, func() (int, error) {
		args, imageOpts, err := cli.TakeGlobalOpts(args)
		if err != nil {
			return 1, err
		}
		opts, operands, err := cli.ParseOpts(args, amendSpec)
		if err != nil {
			return 1, err
		}
		format, cache := "", ""
		progress, quiet := false, false
		var olist []string
		ia := cli.ImageArgs{ImageOpts: imageOpts}
		force := false
		for _, o := range opts {
			if took, err := ia.Take(o); took {
				if err != nil {
					return 1, err
				}
				continue
			}
			switch o.Name {
			case "force":
				force = true
			case "f":
				format = o.Val
			case "o":
				olist = append(olist, o.Val)
			case "t":
				cache = o.Val
			case "p":
				progress = true
			case "q", "quiet":
				quiet = true
			}
		}
		if len(operands) == 1 && isLuksAmend(olist) {
			// LUKS key slots (luks_amend.go).
			if err := amendLuks(operands[0], format, olist, &ia, force); err != nil {
				return 1, err
			}
			return 0, nil
		}
		var ao *qcow2fmt.ImageOptions
		if len(olist) > 0 {
			var help bool
			ao, help, err = qcow2fmt.ParseOptions(olist, qcow2fmt.ForAmend)
			if help {
				fmt.Fprint(stdout, amendKeysHelp)
				return 0, nil
			}
		}
		if len(olist) == 0 {
			return 1, cli.Usagef("Must specify options (-o)")
		}
		if len(operands) != 1 {
			return 1, cli.Usagef("Expecting one image file name (see 'ringblk amend --help')")
		}
		if err != nil { // of the -o list
			return 1, dropInHint(cli.OptionErr("", err)) // amend_words.go
		}
		path, format, err := cli.ImageFile(operands[0], format, imageOpts)
		var img *cli.BlkImage
		if cli.IsWholeTree(err) {
			// An option tree: a data-file child, a filter (amend_tree.go).
			if img, err = amendOpenTree(&ia, operands[0], format, cache); err == nil {
				path = img.Path
			}
		} else if err == nil {
			img, err = amendOpenFile(path, format, cache)
		}
		if err != nil {
			return 1, err
		}
		o, err := amendOptions(ao, img.Qcow2.Header())
		if err == nil {
			// The same progress line as convert and compare: a downgrade's
			// zero expansion reports each L1 entry it visits, then 100.
			bar := cli.NewProgress(stdout, progress && !quiet, 1)
			bar.Set(0)
			o.Progress = func(done, total int64) { bar.Set(100 * float64(done) / float64(total)) }
			if err = qcow2.Amend(img.Node, o); err != nil {
				if words, e := snapshotL1Words(err); words != "" { // snapshot_words.go
					// A downgrade's zero expansion refused a snapshot's
					// L1 table: QEMU's line for it, then the amend's.
					fmt.Fprintf(stderr, "%s: %s\n", cli.Prog, words)
					err = &wordsErr{"Failed to turn zero into data clusters: " + strerror(e), err}
				} else {
					err = amendCause(err) // qemu-img amend prints the driver's error alone
				}
			} else {
				bar.Set(100)
				bar.End()
			}
		}
		if cerr := img.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("closing '%s': %v", path, cerr)
		}
		if err != nil {
			return 1, err
		}
		return 0, nil
	})
}

// amendOpenFile opens the qcow2 image at path read-write for amend; a
// format given or probed other than qcow2 is refused in qemu-img's words.
func amendOpenFile(path, format, cache string) (*cli.BlkImage, error) {
	if format != "" && format != "qcow2" && format != "raw" {
		return nil, cli.Usagef("Unknown file format '%s' (amend supports qcow2)", format)
	}
	if _, err := os.Stat(path); err != nil {
		return nil, cli.FileOpenError(path, err)
	}
	if format == "" {
		var err error
		if format, err = chain.Probe(path); err != nil {
			return nil, cli.FileOpenError(path, err)
		}
	}
	if err := amendFormatOK(format); err != nil {
		return nil, err
	}
	return cli.OpenBlk(path, cli.BlkOptions{Format: "qcow2", Cache: cache})
}

// amendFormatOK refuses formats amend has no options for.
func amendFormatOK(format string) error {
	switch format {
	case "qcow2":
		return nil
	case "raw":
		return cli.Usagef("Format driver 'raw' does not support option amendment")
	default:
		return cli.Usagef("Unknown file format '%s' (amend supports qcow2)", format)
	}
}

// amendOptions turns parsed -o keys into the driver's AmendOptions,
// refusing backing file changes as qemu-img amend does before it touches
// the image.
func amendOptions(p *qcow2fmt.ImageOptions, h qcow2fmt.Header) (qcow2.AmendOptions, error) {
	var o qcow2.AmendOptions
	o.Version = p.Create.Version
	if p.Has("lazy_refcounts") {
		b := p.LazyRefcounts
		o.LazyRefcounts = &b
	}
	o.Size = p.Size
	o.RefcountBits = p.Create.RefcountBits
	if p.Has("backing_file") && p.Create.BackingFile != h.BackingFile {
		return o, amendBackingErr()
	}
	if p.Has("backing_fmt") && p.Create.BackingFormat != h.BackingFormat {
		return o, amendBackingErr()
	}
	amendDataFileOptions(p, &o) // datafile.go
	return o, nil
}

// amendCause keeps the driver's own words for a refusal (qemu-img's
// messages, on one line) and drops the wrapping that names the node,
// operation and field.
func amendCause(err error) error {
	var fe *qcow2fmt.FormatError
	if errors.As(err, &fe) && fe.Reason != "" {
		return errors.New(strings.ReplaceAll(fe.Reason, "\n", ": "))
	}
	return resizeCause(err)
}
