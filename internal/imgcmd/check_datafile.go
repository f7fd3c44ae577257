package imgcmd

// qemu-img check opens an image with its external data file, so an image
// whose data file is missing, or that records none, fails there as
// qemu-img's does ("'data-file' is required for this image"), though the
// check itself reads only metadata; and an --image-opts tree may give the
// data file (data-file.*, iotest 061). info reads the header alone and
// shows such images (docs/design/qcow2-datafile.md).

import (
	"fmt"
	"os"
	"strings"

	"github.com/ringblk/ringblk/drivers/chain"
	"github.com/ringblk/ringblk/drivers/qcow2"
	"github.com/ringblk/ringblk/internal/cli"
)

// checkDataFilePresent fails for a qcow2 image with the data file bit
// whose data file cannot be opened; given: an option tree gave it (and
// checkDataFileTree opened it).
func checkDataFilePresent(img *openedImage, given bool) error {
	if given || img.qcow == nil || !img.qcow.Header.HasDataFile() {
		return nil
	}
	name := img.qcow.Header.DataFile
	if name == "" {
		return fmt.Errorf("Could not open '%s': %v", img.path, qcow2.ErrDataFileRequired)
	}
	f, err := os.Open(chain.ResolveDataFile(img.path, name))
	if err != nil {
		return fmt.Errorf("Could not open '%s': Could not open '%s': %v", img.path, name, cli.UnwrapPathErr(err))
	}
	return f.Close()
}

// checkDataFileTree takes an option tree that is a qcow2 image over a
// plain file plus its data-file child: the tree is opened whole,
// read-only (the data file must open, and must be one the image can
// take), and the check then reads the image file. Other trees keep
// ImageFile's refusal.
func checkDataFileTree(ia *cli.ImageArgs, name string, bo *cli.BlkOptions) (string, error) {
	s, err := cli.NameSpec(name, "")
	if ia.ImageOpts {
		s, err = cli.ImageOptsSpec(name)
	}
	refusal := func() error {
		_, _, ferr := cli.ImageFile(name, bo.Format, ia.ImageOpts)
		return ferr
	}
	if err != nil {
		return "", refusal()
	}
	hasData := false
	for k, v := range s {
		switch {
		case k == "data-file" || strings.HasPrefix(k, "data-file."):
			hasData = true
		case k == "driver" && v == "qcow2", k == "file.driver" && v == "file",
			k == "filename", k == "file", k == "file.filename", k == "node-name", k == "file.node-name":
		default:
			return "", refusal()
		}
	}
	if !hasData || (bo.Format != "" && bo.Format != "qcow2") {
		return "", refusal()
	}
	o := *bo
	o.ReadOnly, o.NoBacking, o.HeaderOnly = true, true, true
	img, err := ia.Open(name, o)
	if err != nil {
		return "", err
	}
	defer img.Close()
	if img.Qcow2 == nil || img.Qcow2.DataFileNode() == nil {
		return "", refusal()
	}
	bo.Format = "qcow2"
	return img.Path, nil
}
