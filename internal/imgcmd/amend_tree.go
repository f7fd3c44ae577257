package imgcmd

// amend on an image named by an option tree that is more than a format
// over a plain file, e.g. --image-opts with a data-file child
// ("data-file.filename=t.data,file.filename=t.qcow2", iotest 061): the
// tree is opened whole (cli.ImageArgs.Open, chain.OpenSpec) with its
// backing chain, read-write, and its top node must be qcow2.

import (
	"fmt"
	"strings"

	"github.com/ringblk/ringblk/internal/cli"
)

// amendOpenTree opens the option tree name for amend.
func amendOpenTree(ia *cli.ImageArgs, name, format, cache string) (*cli.BlkImage, error) {
	if format != "" {
		if err := amendFormatOK(format); err != nil {
			return nil, err
		}
	}
	img, err := ia.Open(name, cli.BlkOptions{Format: format, Cache: cache})
	if err != nil {
		return nil, err
	}
	if img.Qcow2 == nil {
		err := amendFormatOK(img.Format)
		if err == nil {
			err = fmt.Errorf("Could not open '%s': the option tree's top node is not a qcow2 image", name)
		}
		img.Close()
		return nil, err
	}
	return img, nil
}

// weakImageOpt reports whether an --image-opts key leaves the image named
// by its file, as qemu-img names it: the data-file child and the qcow2
// cache tuning options are not among the options QEMU puts into a json:
// name (a qcow2 node's only such option is its key secret).
func weakImageOpt(k string) bool {
	switch k {
	case "data-file", "l2-cache-size", "l2-cache-entry-size", "refcount-cache-size",
		"cache-size", "cache-clean-interval":
		return true
	}
	return strings.HasPrefix(k, "data-file.")
}
