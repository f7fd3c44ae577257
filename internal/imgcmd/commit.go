package imgcmd

// ringblk commit: qemu-img commit. The data every layer from FILE down to
// the base (exclusive) allocates is written into the base by the commit
// job (job.NewCommit with KeepChain, the code block-commit runs); then,
// unless -d or -b, FILE is emptied. The chain is opened once read-only to
// find the layers, then again with the base read-write (the layers above
// it stay read-only) for the job.

import (
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2"
	qcow2fmt "github.com/ringblk/ringblk/drivers/qcow2/format"
	"github.com/ringblk/ringblk/internal/cli"
	"github.com/ringblk/ringblk/job"
)

const commitHelp = `usage: ringblk commit [-f fmt] [-t cache] [-b base] [-r rate_limit] [-d] [-p] [-q] FILE

Write the data of FILE into its backing file, as qemu-img commit does.

  -f fmt         format of FILE (probed when absent)
  -t cache       cache mode (none, writeback, writethrough)
  -b base        commit into this image of the backing chain instead of
                 FILE's backing file (implies -d: the layers between keep
                 their data and FILE keeps its backing file)
  -d             keep FILE's data (by default FILE is emptied afterwards)
  -r rate_limit  copy at most rate_limit bytes per second (suffixes k, M,
                 G…; the job's speed limit)
  -p             show progress
  -q, --quiet    print nothing but errors
  -h, --help     this help

Emptying FILE re-creates its metadata with the same options and backing
file; an image with internal snapshots or bitmaps cannot be emptied
(use -d).
`

var commitSpec = cli.WithObjects(cli.OptSpec{
	Short: map[byte]bool{'f': true, 't': true, 'b': true, 'r': true, 'd': false, 'p': false, 'q': false, 'h': false},
	Long:  map[string]bool{"quiet": false, "help": false},
})

// Commit is "ringblk commit" (qemu-img commit): args are what follows the
// command name; the result is the exit status.
func Commit(args []string, stdout, stderr io.Writer) int {
	return cli.Run(commitHelp, stdout, stderr, func() (int, error) {
		args, imageOpts, err := cli.TakeGlobalOpts(args)
		if err != nil {
			return 1, err
		}
		opts, operands, err := cli.ParseOpts(args, commitSpec)
		if err != nil {
			return 1, err
		}
		var format, cache, base string
		var keep, progress, quiet, haveBase bool
		ia := cli.ImageArgs{ImageOpts: imageOpts}
		var rate int64
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
			case "t":
				cache = o.Val
			case "b":
				base, haveBase = o.Val, true
				keep = true
			case "r":
				v, err := cli.ParseSize(o.Val)
				if err != nil || v < 0 {
					return 1, cli.Usagef("Invalid rate limit specified")
				}
				rate = v
			case "d":
				keep = true
			case "p":
				progress = true
			case "q", "quiet":
				quiet = true
			}
		}
		if len(operands) != 1 {
			return 1, cli.Usagef("Expecting one image file name")
		}
		var keys [][]byte
		if ia.ImageOpts {
			bo := cli.BlkOptions{Format: format}
			p, err := ia.Resolve(operands[0], &bo)
			if err != nil {
				return 1, fmt.Errorf("Could not open '%s': %v", operands[0], err)
			}
			operands[0], format, keys = p, bo.Format, bo.KeySecrets
		}
		if format != "" && format != "raw" && format != "qcow2" {
			return 1, fmt.Errorf("Could not open '%s': Unknown driver '%s'", operands[0], format)
		}
		c := &committer{path: operands[0], format: format, cache: cache, base: base, haveBase: haveBase, keep: keep, keys: keys, rate: rate}
		if err := c.plan(); err != nil {
			return 1, err
		}
		bar := cli.NewProgress(stdout, progress && !quiet, 1)
		if err := c.run(bar); err != nil {
			return 1, err
		}
		if !quiet {
			fmt.Fprintln(stdout, "Image committed.")
		}
		return 0, nil
	})
}

type committer struct {
	path, format, cache, base string
	haveBase, keep            bool
	keys                      [][]byte // key secrets by chain depth (--image-opts)
	rate                      int64    // -r, bytes per second (0: unlimited)

	// From plan: the layers above the base (top first), the base and
	// its depth in FILE's chain (1: FILE's backing file).
	above     []chainLevel
	baseL     chainLevel
	baseDepth int
	// hdr is FILE's header (for emptying); nil for a raw FILE.
	hdr *qcow2fmt.Header
}

// plan opens the chain read-only and finds the layers and the base.
func (c *committer) plan() error {
	img, err := cli.OpenBlk(c.path, cli.BlkOptions{Format: c.format, ReadOnly: true, Cache: c.cache, KeySecrets: c.keys})
	if errors.Is(err, syscall.EISDIR) {
		return cli.DirOpenError(c.path) // qemu-img opens FILE read-write
	}
	if err != nil {
		return err
	}
	defer img.Close()
	ch, err := newImageChain(img, false)
	if err != nil {
		return err
	}
	defer ch.Close()
	if img.Qcow2 != nil {
		h := img.Qcow2.Header()
		c.hdr = &h
	}
	if len(ch.levels) < 2 {
		return fmt.Errorf("Image does not have a backing file")
	}
	bi := 1
	if c.haveBase {
		bi = -1
		// -b names the file as a backing file name does: relative to
		// the directory of the image above it (not to the working
		// directory), as qemu-img resolves it.
		for i := 1; i < len(ch.levels) && bi < 0; i++ {
			fi, err := os.Stat(ch.levels[i].path)
			if err != nil {
				continue
			}
			if want, err := os.Stat(combinePath(ch.levels[i-1].path, c.base)); err == nil && os.SameFile(fi, want) {
				bi = i
			}
		}
		if bi < 0 {
			return fmt.Errorf("Did not find '%s' in the backing chain of '%s'", c.base, c.path)
		}
	}
	c.above = append([]chainLevel(nil), ch.levels[:bi]...)
	c.baseL = ch.levels[bi]
	c.baseDepth = bi
	for i := range c.above {
		c.above[i].node = nil
	}
	c.baseL.node = nil
	if !c.keep {
		if err := c.canEmpty(); err != nil {
			return err
		}
	}
	return nil
}

// canEmpty refuses, before anything is written, an image whose emptying
// by re-creation would lose something.
func (c *committer) canEmpty() error {
	h := c.hdr
	if h == nil {
		return fmt.Errorf("Could not empty %s: Operation not supported (use -d)", c.path)
	}
	switch {
	case h.SnapshotCount != 0:
		return fmt.Errorf("Could not empty %s: it has internal snapshots (ringblk cannot empty those; use -d)", c.path)
	case h.Bitmaps != nil:
		return fmt.Errorf("Could not empty %s: it has persistent bitmaps (ringblk cannot empty those; use -d)", c.path)
	case h.IncompatibleFeatures&qcow2fmt.IncompatDataFile != 0:
		return fmt.Errorf("Could not empty %s: it has an external data file (ringblk cannot empty those; use -d)", c.path)
	case len(h.Unknown) != 0:
		return fmt.Errorf("Could not empty %s: it has header extensions ringblk does not know (use -d)", c.path)
	}
	return nil
}

// run opens FILE's chain with the base writable and runs the commit job
// to completion: its progress drives -p, -r is its speed limit, and its
// Prepare flushes the base, so the base is durable before FILE is
// emptied (a crash between the two must not lose what was committed).
func (c *committer) run(bar *cli.Progress) error {
	img, err := cli.OpenBlk(c.path, cli.BlkOptions{Format: c.format, ReadOnly: true, Cache: c.cache, WritableDepth: c.baseDepth, KeySecrets: c.keys})
	if err != nil {
		return err
	}
	err = c.commit(img, bar)
	if cerr := img.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if !c.keep {
		return c.emptyTop() // commit_empty.go
	}
	return nil
}

func (c *committer) commit(img *cli.BlkImage, bar *cli.Progress) error {
	base := img.Node
	img.Graph.Control(func() {
		for i := 0; i < c.baseDepth && base != nil; i++ {
			if ch := base.Child(block.RoleBacking); ch != nil {
				base = ch.Node()
			} else {
				base = nil
			}
		}
	})
	if base == nil || base == img.Node {
		return fmt.Errorf("Could not open '%s': the backing chain changed", c.baseL.path)
	}
	size, err := img.Node.Length()
	if err != nil {
		return fmt.Errorf("Could not get the size of '%s': %v", c.path, cli.PlainErr(err))
	}
	bsize, err := base.Length()
	if err != nil {
		return fmt.Errorf("Could not get the size of '%s': %v", c.baseL.path, cli.PlainErr(err))
	}
	if size > bsize {
		if _, ok := base.Driver().(*qcow2.Driver); !ok {
			return fmt.Errorf("Top image %s is larger than its base image %s, which cannot grow (raw)", c.path, c.baseL.path)
		}
		if err := qcow2.Amend(base, qcow2.AmendOptions{Size: size}); err != nil {
			return fmt.Errorf("Top image %s is larger than its base image, and resizing the base image failed: %v", c.path, amendCause(err))
		}
	}
	m := job.NewManager(img.Graph, nil)
	j, _, err := job.NewCommit(m, job.CommitOptions{
		Options: job.Options{ID: "commit", Speed: c.rate},
		Top:     img.Node, Base: base, KeepChain: true,
	})
	if err != nil {
		return fmt.Errorf("Block job failed: %v", err)
	}
	err = runJob(j, bar)
	var ioe *job.IOError
	switch {
	case err == nil:
		bar.Set(100)
		bar.End()
		return nil
	case errors.As(err, &ioe) && ioe.Op == "flush":
		return fmt.Errorf("Could not flush '%s': %v", c.baseL.path, cli.PlainErr(ioe.Err))
	case errors.As(err, &ioe):
		return fmt.Errorf("Block job failed: %v", cli.PlainErr(ioe.Err))
	}
	return fmt.Errorf("Block job failed: %v", cli.PlainErr(err))
}

// empty re-creates FILE's metadata with its options and backing file, as
// qemu's qcow2 make-empty fast path does: every cluster unallocated.
func (c *committer) empty() error {
	h := c.hdr
	co := qcow2fmt.CreateOptions{
		ClusterSize:     int64(1) << h.ClusterBits,
		Version:         int(h.Version),
		RefcountBits:    1 << h.RefcountOrder,
		BackingFile:     h.BackingFile,
		BackingFormat:   h.BackingFormat,
		ExtendedL2:      h.IncompatibleFeatures&qcow2fmt.IncompatExtendedL2 != 0,
		LazyRefcounts:   h.CompatibleFeatures&qcow2fmt.CompatLazyRefcounts != 0,
		CompressionType: h.CompressionType,
	}
	area, err := readCryptoArea(c.path, h)
	if err != nil {
		return fmt.Errorf("Could not empty %s: %v", c.path, err)
	}
	if err := writeQcow2(c.path, int64(h.Size), co); err != nil {
		return fmt.Errorf("Could not empty %s: %v", c.path, err)
	}
	if area != nil {
		// The emptied image keeps its LUKS header and key slots.
		if err := installQcowEncryption(c.path, area); err != nil {
			return fmt.Errorf("Could not empty %s: %v", c.path, err)
		}
	}
	if h.CryptMethod == qcow2fmt.CryptAES { // and legacy AES its crypt_method (aes.go)
		if err := withQcow2(c.path, qcow2.SetupAES); err != nil {
			return fmt.Errorf("Could not empty %s: %v", c.path, err)
		}
	}
	return nil
}
