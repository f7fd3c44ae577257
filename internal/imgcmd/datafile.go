package imgcmd

// qcow2 external data files at create (-o data_file=PATH,data_file_raw=on|off);
// the driver side is drivers/qcow2/datafile.go, the decision on names
// docs/design/qcow2-datafile.md.

import (
	"fmt"
	"os"
	"syscall"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/chain"
	"github.com/ringblk/ringblk/drivers/nbd"
	"github.com/ringblk/ringblk/drivers/qcow2"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
	"github.com/ringblk/ringblk/drivers/raw"
	"github.com/ringblk/ringblk/drivers/rbd"
	"github.com/ringblk/ringblk/internal/cli"
)

// dataFileWriter returns the writer of a new qcow2 image whose data goes
// to co.DataFile: that file is made (or emptied) and sized first, where
// ringblk will look for it when the image is opened (a relative name
// against the image's directory, chain.ResolveDataFile).
func dataFileWriter(file string, co format.CreateOptions, encFormat string) (func(string, int64, format.CreateOptions) error, error) {
	if encFormat != "" {
		return nil, fmt.Errorf("%s: ringblk does not create encrypted qcow2 images with an external data file", file)
	}
	if rbd.IsName(file) || nbd.IsURI(file) {
		return nil, fmt.Errorf("%s: an external data file needs a local image file", file)
	}
	if err := format.CheckDataFileName(co.DataFile); err != nil {
		return nil, fmt.Errorf("%s: data file '%s': %v", file, co.DataFile, plainFormatErr(err))
	}
	return func(path string, size int64, co format.CreateOptions) error {
		dpath := chain.ResolveDataFile(path, co.DataFile)
		return withNewFiles([]string{dpath, path}, func(n []*block.Node) error {
			return qcow2.CreateWithDataFile(n[1], n[0], size, co)
		})
	}, nil
}

// plainFormatErr is a format error's reason alone (qemu-img's words).
func plainFormatErr(err error) error {
	if fe, ok := err.(*format.FormatError); ok && fe.Reason != "" {
		return fmt.Errorf("%s", fe.Reason)
	}
	return cli.PlainErr(err)
}

// withNewFiles is withNewFile for several files in one graph: each made
// if missing, not truncated, a raw node over each, in the order given.
func withNewFiles(paths []string, fn func(files []*block.Node) error) (err error) {
	for _, p := range paths {
		f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|syscall.O_CLOEXEC, 0o644)
		if err != nil {
			return err
		}
		f.Close()
	}
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
	var nodes []*block.Node
	defer func() {
		for _, n := range nodes {
			if cerr := n.Unref(); err == nil {
				err = cerr
			}
		}
	}()
	for _, p := range paths {
		n, err := raw.NewNode(g, p, raw.Options{}, block.Options{})
		if err != nil {
			return err
		}
		nodes = append(nodes, n)
	}
	return fn(nodes)
}

// dataFilePath is where the data of the qcow2 image at path lives when it
// has an external data file: the recorded name resolved as the opener
// resolves it, or the node given on the command line; "" otherwise.
func dataFilePath(d *qcow2.Driver, path string) string {
	n := d.DataFileNode()
	if n == nil {
		return ""
	}
	if h := d.Header(); h.DataFile != "" {
		return chain.ResolveDataFile(path, h.DataFile)
	}
	return n.Name()
}

// amendDataFileOptions takes amend's data_file and data_file_raw keys;
// the driver checks them against the image (qcow2.AmendOptions).
func amendDataFileOptions(p *format.ImageOptions, o *qcow2.AmendOptions) {
	if p.Has("data_file") {
		v := p.Create.DataFile
		o.DataFile = &v
	}
	if p.Has("data_file_raw") {
		v := p.Create.DataFileRaw
		o.DataFileRaw = &v
	}
}
