package qcow2

import "github.com/ringblk/ringblk/block"

// Debug events (block.DebugEvent) for a blkdebug filter under the image
// (drivers/blkdebug): the points QEMU's qcow2 driver raises them at,
// where this driver has the same step. Without a filter each costs one
// nil test (d.dbg is looked up once, at open).
//
// Raised: read_aio (guest data read from the file), write_aio (guest data
// written), cow_read/cow_write (copy-on-write of a partial cluster),
// l2_load (an L2 table read into the cache), l2_update (a dirty L2 table
// written back), l2_alloc_write (a new L2 table written), l1_update (the
// L1 table written), refblock_load, refblock_update, refblock_alloc (a
// new refcount block), reftable_grow, cluster_alloc (host clusters
// allocated), cluster_free (a refcount dropped to zero), vmstate_save,
// vmstate_load (vmstate.go), empty_image_prepare (make_empty.go). The block-layer
// events on the file (pwritev, pwritev_done, flush_to_os, flush_to_disk)
// are the filter's own.
func (d *Driver) event(ev block.DebugEvent) {
	if d.dbg != nil {
		d.dbg.DebugEvent(ev)
	}
	if d.dataDbg != nil && (ev == block.DbgReadAIO || ev == block.DbgWriteAIO) {
		d.dataDbg.DebugEvent(ev) // datafile.go
	}
}
