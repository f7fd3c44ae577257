package imgcmd

import (
	"sync/atomic"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/raw"
)

// convert -C, copy offloading: the data ranges of the source are copied
// by the kernel (copy_file_range, raw.CopyRange) instead of being read
// and written, when the source chains and the target are raw files.
// Zero ranges are still skipped or zeroed as the block status says, but
// data ranges are not sparsified (qemu-img -C refuses -S for that
// reason). The first failed offload turns offloading off for the rest of
// the copy and the range is read and written, as qemu-img does. Other
// formats are copied the ordinary way (qemu-img also offloads between
// qcow2 images' files; ringblk does not).

// copyRangeBytes counts the bytes copied by the kernel, for the tests.
var copyRangeBytes atomic.Int64

// rawFile is the raw driver of a node that is a plain raw file.
func rawFile(n *block.Node) *raw.Driver {
	d, _ := n.Driver().(*raw.Driver)
	return d
}

// copyRangeFiles reports whether every source chain is one raw file and
// dst a raw file: what offloading needs.
func copyRangeFiles(chains []*imageChain, dst *block.Node) bool {
	if rawFile(dst) == nil {
		return false
	}
	for _, ch := range chains {
		if len(ch.levels) != 1 || ch.levels[0].format != "raw" || rawFile(ch.levels[0].node) == nil {
			return false
		}
	}
	return true
}

// copyRange offloads [off, off+n) of the copy to the kernel, part by
// part of a concatenation.
func (c *converter) copyRange(off, n int64) error {
	dst := rawFile(c.dst)
	for n > 0 {
		ch, base := c.src, int64(0)
		if c.parts != nil {
			ch, base = c.part(off)
		}
		k := min(n, base+ch.size()-off)
		if err := raw.CopyRange(rawFile(ch.levels[0].node), off-base, dst, c.dstBase+off, k); err != nil {
			return err
		}
		copyRangeBytes.Add(k)
		off, n = off+k, n-k
	}
	return nil
}
