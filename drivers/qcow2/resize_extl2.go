package qcow2

import (
	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// zeroLastClusterExtL2 finishes hideBacking on an extended-L2 image: QEMU
// 7.2's zeroing truncate zeroes [old rounded up to a subcluster, size) in
// one request that ends at the image's end, so a partial last cluster
// lying wholly inside that range is zeroed as a whole cluster (all 32
// zero bits), where the block layer's write-zeroes, which zeroRangeLocked
// follows, cuts off the unaligned tail and sets only the bits up to the
// end (iotest 271). The bits past the end change nothing a guest sees.
// REQUIRES: metaLock held.
func (d maintOps) zeroLastClusterExtL2(co *aio.Co, r *block.Request, old, size int64) error {
	cs, scs := d.mu.geo.ClusterSize(), d.mu.geo.SubclusterSize()
	last := size &^ (cs - 1)
	if !d.mu.geo.ExtendedL2 || size == last || last < (old+scs-1)&^(scs-1) {
		return nil
	}
	return d.updateSubclusters(co, r, last, func(le format.L2Entry, e, bm uint64) (uint64, uint64, bool) {
		if le.Type == format.Compressed {
			return e, bm, false
		}
		return e, format.BitmapZeroMask, false
	})
}
