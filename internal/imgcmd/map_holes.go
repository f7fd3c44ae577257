package imgcmd

import (
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// fileReadsZero asks the file under a qcow2 level about the host range
// [host, host+n) that a data cluster run maps to, as QEMU's block status
// does for qemu-img map: a hole in the file (a preallocated cluster never
// written) or a range past the file's end reads as zeros, and the run is
// reported as zero as well as data. It returns whether the range reads
// as zeros and for how many bytes the answer holds (n when unknown).
// An image whose data lives in an external data file is not asked about:
// its host offsets are not offsets in the image file.
func (l *chainLevel) fileReadsZero(host, n int64) (bool, int64) {
	if l.qimg != nil && l.qimg.qcow.Header.IncompatibleFeatures&format.IncompatDataFile != 0 {
		return false, n
	}
	c := l.node.Child(block.RoleFile)
	if c == nil || c.Node() == nil {
		return false, n
	}
	st, pnum, err := c.Node().BlockStatus(host, n)
	switch {
	case err != nil:
		return false, n
	case pnum <= 0:
		return true, n // at or past the end of the file
	}
	return st&block.StatusZero != 0, min(pnum, n)
}
