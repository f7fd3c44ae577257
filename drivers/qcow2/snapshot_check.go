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
// clusters a table lands in). Clusters of a run broken by a used one stay
// allocated while the search goes on (so it never sees them again) and
// are given back at the end (freed at the next metadata flush); the file
// end always ends the search.
func (d metaIO) allocFirstFit(co *aio.Co, n int64) (int64, error) {
	cs := d.mu.geo.ClusterSize()
	var run, skipped []int64
	defer func() {
		for _, g := range skipped {
			d.abortAlloc(g, nil)
		}
	}()
	for int64(len(run)) < n {
		off, err := d.allocCluster(co)
		if err != nil {
			skipped = append(skipped, run...)
			return 0, err
		}
		if len(run) > 0 && off != run[len(run)-1]+cs {
			skipped = append(skipped, run...)
			run = run[:0]
		}
		run = append(run, off)
	}
	return run[0], nil
}

// snapL1Range is snapshot i's L1 table as a host range for the overlap
// checks, or an empty one when its fields fail format.ValidateSnapshot:
// QEMU opens such images and fails only the operations that need the
// table (readSnapshotL1); the bogus range is never followed or guarded.
// REQUIRES: mu held.
func snapL1Range(s *format.Snapshot, g *format.Geometry) (off, n int64) {
	if !s.L1Valid(g) {
		return 0, 0
	}
	return int64(s.L1Offset), int64(s.L1Entries) * 8
}
