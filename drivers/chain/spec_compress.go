package chain

// compress in option trees: driver=compress over a "file" child that
// writes compressed clusters (qcow2); every write through the filter is
// a compressed write of whole clusters (drivers/compress).

import (
	"errors"
	"fmt"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/compress"
	"github.com/ringblk/ringblk/drivers/qcow2"
)

func init() { SpecDrivers["compress"] = specCompress }

func specCompress(b *SpecBuilder, s Spec, prefix, name string) (*block.Node, error) {
	child, cimg, err := b.Child(s, "file", prefix+"file.")
	if err != nil {
		return nil, err
	}
	if err := leftover(s, "format", "compress"); err != nil {
		child.Unref()
		return nil, err
	}
	qd, ok := child.Driver().(*qcow2.Driver)
	if !ok {
		child.Unref()
		return nil, fmt.Errorf("Compression is not supported for underlying format: %s", cimg.Format)
	}
	h := qd.Header()
	n, err := compress.NewNode(b.G, child, h.ClusterSize(), block.Options{Name: name, ReadOnly: b.O.ReadOnly})
	if errors.Is(err, compress.ErrNotSupported) {
		return nil, fmt.Errorf("Compression is not supported for underlying format: %s", cimg.Format)
	}
	return n, err
}
