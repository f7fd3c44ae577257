package qcow2

import "github.com/ringblk/ringblk/drivers/qcow2/format"

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
