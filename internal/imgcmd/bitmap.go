package imgcmd

import (
	"errors"
	"fmt"
	"io"

	"github.com/ringblk/ringblk/bitmap"
	"github.com/ringblk/ringblk/drivers/qcow2"
	"github.com/ringblk/ringblk/internal/cli"
)

const bitmapHelp = `usage: ringblk bitmap (--merge SOURCE | --add | --remove | --clear | --enable | --disable)...
                      [-b source_file [-F source_fmt]] [-g granularity] [--object objectdef]
                      [--image-opts | -f fmt] filename bitmap

Change the persistent dirty bitmaps of a qcow2 image, as qemu-img bitmap
does. The actions run in the order given, on bitmap BITMAP of FILENAME;
the bitmaps are written back when the image is closed.

  --add            create BITMAP, enabled (it tracks every later write), with
                   granularity -g (default: the cluster size, at least 4 KiB)
  --remove         delete BITMAP (also one left in use by a crash)
  --clear          mark everything clean
  --enable         track writes
  --disable        stop tracking writes
  --merge SOURCE   add SOURCE's dirty bits to BITMAP; SOURCE is a bitmap of
                   FILENAME, or of -b source_file (format -F) when given
  -g granularity   bytes per bit: a power of two, 512 bytes to 2 GiB (--add)
  -f fmt           image format (qcow2); without it the file is probed
  --object, --image-opts
                   accepted for qemu-img compatibility; no objects are needed
  -h, --help       this help

A bitmap found in use (its image was not closed cleanly while it was
tracking) is inconsistent: only --remove may touch it.

Exit status: 0 on success, 1 on any error.
`

var bitmapSpec = cli.OptSpec{
	Short: map[byte]bool{'b': true, 'F': true, 'g': true, 'f': true, 'h': false},
	Long: map[string]bool{"merge": true, "add": false, "remove": false, "clear": false, "enable": false,
		"disable": false, "granularity": true, "object": true, "image-opts": false, "help": false},
}

type bitmapAction struct{ op, src string }

// Bitmap is "ringblk bitmap" (qemu-img bitmap).
func Bitmap(args []string, stdout, stderr io.Writer) int {
	return cli.Run(bitmapHelp, stdout, stderr, func() (int, error) {
		opts, files, err := cli.ParseOpts(args, bitmapSpec)
		if err != nil {
			return 1, err
		}
		var actions []bitmapAction
		format, srcFile, srcFmt, gran := "", "", "", ""
		add, merge := false, false
		var ia cli.ImageArgs
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
			case "b":
				srcFile = o.Val
			case "F":
				srcFmt = o.Val
			case "g", "granularity":
				gran = o.Val
			case "add", "remove", "clear", "enable", "disable":
				actions = append(actions, bitmapAction{op: o.Name})
				add = add || o.Name == "add"
			case "merge":
				actions = append(actions, bitmapAction{op: "merge", src: o.Val})
				merge = true
			}
		}
		if len(actions) == 0 {
			return 1, cli.Usagef("Need at least one of --add, --remove, --clear, --enable, --disable, or --merge")
		}
		var g int64
		if gran != "" {
			if g, err = cli.ParseSize(gran); err != nil {
				return 1, cli.Usagef("Invalid granularity specified")
			}
		}
		switch {
		case g != 0 && !add:
			return 1, cli.Usagef("granularity only supported with --add")
		case srcFmt != "" && srcFile == "":
			return 1, cli.Usagef("-F only supported with -b")
		case srcFile != "" && !merge:
			return 1, cli.Usagef("Merge bitmap source file only supported with --merge")
		case len(files) != 2:
			return 1, cli.Usagef("Expecting filename and bitmap name")
		}
		if err := checkFormat(format); err != nil {
			return 1, err
		}
		if err := checkFormat(srcFmt); err != nil {
			return 1, err
		}
		file, name := files[0], files[1]
		img, err := ia.Open(file, cli.BlkOptions{Format: format})
		if err != nil {
			return 1, err
		}
		var src *cli.BlkImage
		if srcFile != "" {
			// As qemu-img: the source is opened sharing writes (-U), so
			// that it may be the overlay of the image being changed, or
			// its backing file (qemu-iotests qemu-img-bitmaps merges from
			// the top layer into the backing image). A plain file name,
			// whatever --image-opts says of the image.
			if src, err = cli.OpenBlkIn(img.Ctx, img.Graph, srcFile, cli.BlkOptions{Format: srcFmt, ReadOnly: true, ForceShare: true}); err != nil {
				img.Close()
				return 1, err
			}
		}
		err = bitmapRun(img, src, actions, name, g)
		if src != nil {
			src.Close()
		}
		if cerr := img.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("%s: %v", file, cli.PlainErr(cerr))
		}
		if err != nil {
			return 1, err
		}
		return 0, nil
	})
}

// errInconsistent is QEMU's refusal to use a bitmap found in use.
func errInconsistent(name string) error {
	return fmt.Errorf("Bitmap '%s' is inconsistent and cannot be used\nTry block-dirty-bitmap-remove to delete this bitmap from disk", name)
}

func bitmapRun(img *cli.BlkImage, src *cli.BlkImage, actions []bitmapAction, name string, g int64) error {
	n, d := img.Node, img.Qcow2
	inconsistent := func(d *qcow2.Driver, name string) bool {
		return d != nil && d.InconsistentBitmap(name)
	}
	// find returns the usable bitmap name of node (nil, error otherwise).
	find := func(im *cli.BlkImage, name string) (*bitmap.Bitmap, error) {
		if b := im.Node.Bitmap(name); b != nil {
			return b, nil
		}
		if inconsistent(im.Qcow2, name) {
			return nil, errInconsistent(name)
		}
		return nil, fmt.Errorf("Dirty bitmap '%s' not found", name)
	}
	for _, a := range actions {
		var err error
		switch a.op {
		case "add":
			err = bitmapAdd(img, name, g)
		case "remove":
			switch {
			case n.Bitmap(name) != nil:
				err = n.RemoveBitmap(name)
			case inconsistent(d, name):
				err = d.RemovePersistentBitmap(name)
			default:
				err = fmt.Errorf("Dirty bitmap '%s' not found", name)
			}
		case "clear", "enable", "disable":
			var b *bitmap.Bitmap
			if b, err = find(img, name); err == nil {
				switch a.op {
				case "clear":
					b.Clear()
				case "enable":
					b.SetEnabled(true)
				case "disable":
					b.SetEnabled(false)
				}
			}
		case "merge":
			var dst, s *bitmap.Bitmap
			if dst, err = find(img, name); err == nil {
				from := img
				if src != nil {
					from = src
				}
				if s, err = find(from, a.src); err == nil {
					err = dst.Merge(s)
				}
			}
		}
		if err != nil {
			return fmt.Errorf("Operation %s on bitmap %s failed: %w", a.op, name, err)
		}
	}
	return nil
}

// bitmapAdd is QMP's block-dirty-bitmap-add with persistent=true.
func bitmapAdd(img *cli.BlkImage, name string, g int64) error {
	n, d := img.Node, img.Qcow2
	// QEMU's order: the name, then the granularity, then the bitmaps
	// already there.
	if name == "" {
		return errors.New("Bitmap name cannot be empty")
	}
	if g != 0 && (g < bitmap.MinGranularity || g > bitmap.MaxGranularity || g&(g-1) != 0) {
		return errors.New("Granularity must be power of 2 and at least 512")
	}
	if n.Bitmap(name) != nil {
		return fmt.Errorf("Bitmap already exists: %s", name)
	}
	if g == 0 {
		g = 4096
		if d != nil {
			h := d.Header()
			g = max(g, h.ClusterSize())
		}
	}
	if g < bitmap.MinGranularity || g > bitmap.MaxGranularity || g&(g-1) != 0 {
		return errors.New("Granularity must be power of 2 and at least 512")
	}
	if d == nil {
		return fmt.Errorf("Can't store persistent bitmaps to %s: Operation not supported", n.Name())
	}
	for _, b := range d.PersistentBitmaps() {
		if b.Name == name {
			return fmt.Errorf("Bitmap already exists: %s", name)
		}
	}
	if err := d.CheckNewPersistentBitmap(name, g); err != nil {
		return fmt.Errorf("Can't make bitmap '%s' persistent in '%s': %v", name, n.Name(), err)
	}
	b, err := n.AddBitmap(name, g)
	if err != nil {
		return err
	}
	b.Persistent = true
	return nil
}
