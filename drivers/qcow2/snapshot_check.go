package qcow2

import (
	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// Snapshot tables in check mode (docs/design/qcow2-repair.md, "Snapshot
// tables"). A node opened with DriverOptions.CheckOpen reads the image as
// QEMU's check open does (format.Options.CheckMode: the snapshot table
// pointer and table are not validated at open, so a table that a normal
// open refuses can be repaired). The table is then read in its repaired
// form (format.Image.ReadSnapshotsForCheck): overhanging entries dropped,
// extra data above the limit cut. Only a repair writes that form back.

// imageOptions returns o with the check-mode flag this node opens with.
func (d *Driver) imageOptions(o format.Options) format.Options {
	o.CheckMode = d.opts.CheckOpen
	return o
}

// checkModeSnapshots fills im's snapshot table, in its repaired form,
// when im was read in check mode; a table that cannot be read at all
// leaves the node without snapshots (the check reports it).
func (d *Driver) checkModeSnapshots(im *format.Image) {
	if !d.opts.CheckOpen {
		return
	}
	if _, err := im.ReadSnapshotsForCheck(true); err != nil {
		im.Snapshots, im.SnapshotTableSize = nil, 0
	}
}

// allocFirstFit allocates n contiguous clusters at the first run of free
// ones from the allocator's search start, as QEMU's qcow2_alloc_clusters
// does for snapshot L1 copies and snapshot tables (iotest 261 names the
// clusters a table lands in). A run broken by a used cluster is given
// back (freed at the next metadata flush) and the search goes on after
// it; the file end always ends the search.
func (d metaIO) allocFirstFit(co *aio.Co, n int64) (int64, error) {
	cs := d.mu.geo.ClusterSize()
	var run []int64
	for int64(len(run)) < n {
		off, err := d.allocCluster(co)
		if err != nil {
			for _, g := range run {
				d.abortAlloc(g, nil)
			}
			return 0, err
		}
		if len(run) > 0 && off != run[len(run)-1]+cs {
			for _, g := range run {
				d.abortAlloc(g, nil)
			}
			run = run[:0]
		}
		run = append(run, off)
	}
	return run[0], nil
}
