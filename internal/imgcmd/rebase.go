package imgcmd

// ringblk rebase: qemu-img rebase. With -u only the header's backing file
// name and format change (qcow2.Amend's backing fields). Without -u the
// guest content is kept: the rebase job (job.NewRebase, the copy code
// stream shares) reads every range the image does not allocate itself
// through the old chain and through the new backing and writes the
// sectors that differ into the image; it flushes them before the header
// changes.

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2"
	"github.com/ringblk/ringblk/internal/cli"
	"github.com/ringblk/ringblk/job"
)

const rebaseHelp = `usage: ringblk rebase [-f fmt] [-t cache] [-T src_cache] [-p] [-q] [-u] [-U] -b backing_file [-F backing_fmt] FILE

Change the backing file of a qcow2 image, as qemu-img rebase does.

  -b backing_file  the new backing file ("" removes it); a relative name is
                   relative to FILE's directory
  -F backing_fmt   the new backing file's format (raw or qcow2); required
                   with a non-empty -b
  -f fmt           format of FILE (probed when absent)
  -u               unsafe: change only the header, copy no data; without
                   -b the backing file is removed
  -t cache         cache mode of FILE (none, writeback, writethrough)
  -T src_cache     cache mode of the backing files
  -p               show progress
  -q, --quiet      print nothing but errors
  -U, --force-share open the backing files without locks
  -h, --help       this help

Without -u, every range FILE does not allocate itself is compared through
the old and the new backing chain, and what differs is copied into FILE
first, so the guest sees the same data afterwards.
`

var rebaseSpec = cli.OptSpec{
	Short: map[byte]bool{'f': true, 'F': true, 'b': true, 't': true, 'T': true, 'u': false, 'p': false, 'q': false, 'U': false, 'h': false},
	Long:  map[string]bool{"quiet": false, "force-share": false, "help": false},
}

// Rebase is "ringblk rebase" (qemu-img rebase): args are what follows the
// command name; the result is the exit status.
func Rebase(args []string, stdout, stderr io.Writer) int {
	return cli.Run(rebaseHelp, stdout, stderr, func() (int, error) {
		args, imageOpts, err := cli.TakeGlobalOpts(args)
		if err != nil {
			return 1, err
		}
		if imageOpts {
			return 1, cli.Usagef("--image-opts is not supported by ringblk's rebase (name the image file)")
		}
		opts, operands, err := cli.ParseOpts(args, rebaseSpec)
		if err != nil {
			return 1, err
		}
		var format, bfmt, cache, srcCache string
		var backing *string
		var unsafe, progress, quiet, share bool
		for _, o := range opts {
			switch o.Name {
			case "f":
				format = o.Val
			case "F":
				bfmt = o.Val
			case "b":
				v := o.Val
				backing = &v
			case "t":
				cache = o.Val
			case "T":
				srcCache = o.Val
			case "u":
				unsafe = true
			case "p":
				progress = true
			case "q", "quiet":
				quiet = true
			case "U", "force-share":
				share = true
			}
		}
		if backing == nil && !unsafe {
			return 1, cli.Usagef("Must specify backing file (-b) or use unsafe mode (-u)")
		}
		if len(operands) != 1 {
			return 1, cli.Usagef("Expecting one image file name")
		}
		path := operands[0]
		if format != "" && format != "raw" && format != "qcow2" {
			return 1, fmt.Errorf("Could not open '%s': Unknown driver '%s'", path, format)
		}
		if bfmt != "" && !qemuFormatNames[bfmt] { // rebase_fmt.go
			return 1, fmt.Errorf("Invalid format name: '%s'", bfmt)
		}
		name := ""
		if backing != nil {
			name = *backing
		}
		img, err := cli.OpenBlk(path, cli.BlkOptions{Format: format, Cache: cache, NoBacking: unsafe})
		if err != nil {
			return 1, err
		}
		err = rebase(img, name, bfmt, unsafe, srcCache, share, cli.NewProgress(stdout, progress && !quiet, 1))
		if cerr := img.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("closing '%s': %v", path, cerr)
		}
		if err != nil {
			return 1, err
		}
		return 0, nil
	})
}

func rebase(img *cli.BlkImage, name, bfmt string, unsafe bool, srcCache string, share bool, bar *cli.Progress) error {
	changeErr := func(cause string) error {
		return fmt.Errorf("Could not change the backing file to '%s': %s", name, cause)
	}
	if img.Qcow2 == nil {
		return changeErr("Operation not supported")
	}
	// qemu-img records no probed format: -F is needed with a name.
	if name != "" && bfmt == "" {
		return changeErr("backing format must be specified")
	}
	bar.Set(0)
	if !unsafe {
		var newB *cli.BlkImage
		if name != "" {
			bpath := combinePath(img.Path, name)
			var err error
			newB, err = cli.OpenBlkIn(img.Ctx, img.Graph, bpath, cli.BlkOptions{Format: bfmt, ReadOnly: true, ForceShare: share, Cache: srcCache})
			if err != nil {
				return fmt.Errorf("Could not open new backing file '%s': Could not open '%s': %v", name, bpath, cli.PlainErr(err))
			}
			defer newB.Close()
		}
		if err := rebaseCopy(img, newB, bar); err != nil {
			return err
		}
	}
	if name == "" {
		bfmt = "" // -F without a backing file is ignored
	}
	o := qcow2.AmendOptions{BackingFile: &name, BackingFormat: &bfmt}
	if err := qcow2.Amend(img.Node, o); err != nil {
		return changeErr(amendCause(err).Error())
	}
	bar.Set(100)
	bar.End()
	return nil
}

// rebaseCopy writes into img's top every sector it does not allocate
// whose content through the old chain differs from newB's (zeroes where
// newB is nil or shorter), by running the rebase job to completion. When
// newB's file is in the old chain (same file, same format), the job skips
// the ranges no layer above it allocates (qemu-img's prefix chain).
func rebaseCopy(img *cli.BlkImage, newB *cli.BlkImage, bar *cli.Progress) error {
	if img.Node.Child(block.RoleBacking) == nil && newB == nil {
		return nil
	}
	o := job.RebaseOptions{Options: job.Options{ID: "rebase"}, Top: img.Node}
	if newB != nil {
		o.NewBacking = newB.Node
		prefix, err := chainNodeOf(img, newB)
		if err != nil {
			return err
		}
		o.Prefix = prefix
	}
	j, _, err := job.NewRebase(job.NewManager(img.Graph, nil), o)
	if err != nil {
		return fmt.Errorf("Could not rebase '%s': %v", img.Path, err)
	}
	err = runJob(j, bar)
	var ioe *job.IOError
	switch {
	case err == nil:
		return nil
	case !errors.As(err, &ioe):
		return fmt.Errorf("Could not rebase '%s': %v", img.Path, cli.PlainErr(err))
	case ioe.Op == "block-status":
		return fmt.Errorf("error while reading image metadata: %v", cli.PlainErr(ioe.Err))
	case ioe.Op == "read":
		return fmt.Errorf("error while reading image %s: %v", img.Path, cli.PlainErr(ioe.Err))
	case ioe.Op == "read-new-backing":
		return fmt.Errorf("error while reading from new backing file: %v", cli.PlainErr(ioe.Err))
	case ioe.Op == "flush":
		return fmt.Errorf("Could not flush '%s': %v", img.Path, cli.PlainErr(ioe.Err))
	}
	return fmt.Errorf("error while writing to COW image: %v", cli.PlainErr(ioe.Err))
}

// chainNodeOf returns the node of img's backing chain that is newB's file
// in newB's format, or nil.
func chainNodeOf(img, newB *cli.BlkImage) (*block.Node, error) {
	want, err := os.Stat(newB.Path)
	if err != nil {
		return nil, nil
	}
	ch, err := newImageChain(img, false)
	if err != nil {
		return nil, err
	}
	defer ch.Close()
	for _, l := range ch.levels[1:] {
		if fi, err := os.Stat(l.path); err == nil && os.SameFile(fi, want) && l.format == newB.Format {
			return l.node, nil
		}
	}
	return nil, nil
}
