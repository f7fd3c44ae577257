package imgcmd

// ringblk rebase: qemu-img rebase. With -u only the header's backing file
// name and format change (qcow2.Amend's backing fields). Without -u the
// guest content is kept: every range the image does not allocate itself
// is read through the old chain and through the new backing, and the
// sectors that differ are written into the image before the header
// changes.

import (
	"bytes"
	"fmt"
	"io"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2"
	"github.com/ringblk/ringblk/internal/cli"
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

// rebaseSector is the granularity at which the old and new contents are
// compared (and differing data written), as qemu-img does.
const rebaseSector = 512

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
		if bfmt != "" && bfmt != "raw" && bfmt != "qcow2" {
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
// newB is nil or shorter).
func rebaseCopy(img *cli.BlkImage, newB *cli.BlkImage, bar *cli.Progress) error {
	if img.Node.Child(block.RoleBacking) == nil && newB == nil {
		return nil
	}
	ch, err := newImageChain(img, false)
	if err != nil {
		return err
	}
	defer ch.Close()
	size := ch.size()
	var newSize int64
	if newB != nil {
		if newSize, err = newB.Node.Length(); err != nil {
			return fmt.Errorf("Could not get the size of '%s': %v", newB.Path, cli.PlainErr(err))
		}
	}
	oldBuf := make([]byte, compareBufSize)
	newBuf := make([]byte, compareBufSize)
	for off := int64(0); off < size; {
		st, err := ch.statusAbove(off, size-off, true)
		if err != nil {
			return fmt.Errorf("error while reading image metadata: %v", cli.PlainErr(err))
		}
		n := min(st.Pnum, compareBufSize)
		if n <= 0 {
			return fmt.Errorf("error while reading image metadata at offset %d", off)
		}
		if st.Status&block.StatusAllocated == 0 {
			if err := rebaseRange(img, newB, newSize, off, oldBuf[:n], newBuf[:n]); err != nil {
				return err
			}
		}
		off += n
		bar.Add(float64(n) / float64(size) * 100)
	}
	return nil
}

func rebaseRange(img, newB *cli.BlkImage, newSize, off int64, old, cur []byte) error {
	if _, err := img.Node.ReadAt(old, off); err != nil {
		return fmt.Errorf("error while reading image %s: %v", img.Path, cli.PlainErr(err))
	}
	clear(cur)
	if newB != nil && off < newSize {
		m := min(int64(len(cur)), newSize-off)
		if _, err := newB.Node.ReadAt(cur[:m], off); err != nil {
			return fmt.Errorf("error while reading from new backing file: %v", cli.PlainErr(err))
		}
	}
	// Write each run of differing sectors.
	n := int64(len(old))
	for i := int64(0); i < n; {
		e := min(i+rebaseSector, n)
		if bytes.Equal(old[i:e], cur[i:e]) {
			i = e
			continue
		}
		j := e
		for j < n {
			k := min(j+rebaseSector, n)
			if bytes.Equal(old[j:k], cur[j:k]) {
				break
			}
			j = k
		}
		if _, err := img.Node.WriteAt(old[i:j], off+i); err != nil {
			return fmt.Errorf("error while writing to COW image: %v", cli.PlainErr(err))
		}
		i = j
	}
	return nil
}
