package qcow2

import "github.com/ringblk/ringblk/block"

// Debug events (block.DebugEvent) for a blkdebug filter under the image
// (drivers/blkdebug): the points QEMU's qcow2 driver raises them at,
// where this driver has the same step. Without a filter each costs one
// nil test (d.dbg is looked up once, at open).
//
// Raised: read_aio (guest data read from the file), write_aio (guest data
// written), cow_read/cow_write (copy-on-write of a partial cluster),
// l2_load (an L2 table read into the cache), l2_update (an L2 table
// written back), l2_alloc_write (before the first write of a new L2
// table), l1_update (an L1 entry written), refblock_alloc and
// refblock_load (every refcount change, as QEMU's alloc_refcount_block;
// refblock_alloc alone when the block is new), refblock_update_part (a
// refcount block written back), refblock_alloc_write (before the first
// write of a new refcount block), refblock_alloc_hookup (its table entry
// written), reftable_update (a table entry cleared), reftable_grow and
// refblock_alloc_write_blocks/_write_table/_switch_table (the refcount
// table moved), l1_grow_alloc_table/_write_table/_activate_table (the L1
// table moved), cluster_alloc (host clusters allocated), cluster_free (a
// refcount dropped to zero), vmstate_save, vmstate_load (vmstate.go),
// empty_image_prepare (make_empty.go). Where QEMU writes a new table
// inside the request that allocates it and this driver at the next flush
// (stages A and C of flushMetadata), the event comes right before that
// write (close_report.go), so an injected error fails the flush — in a
// writethrough cache mode the write itself, as in QEMU. The block-layer
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
