package host

import (
	"errors"
	"fmt"
)

// LiveSnapshot takes an external snapshot while the device runs (QEMU's
// blockdev-snapshot-sync): it creates a qcow2 overlay at path whose
// backing file is the device's image, and in one drained section of the
// image flushes it, makes it read-only (writes to it fail with EPERM from
// then on: it is inactivated, as for a migration handover) and swaps the
// overlay in, with the old image as its backing node: every front end on
// the image (the device's, an export's) moves to the overlay, which lives
// on the image's Context. Requests submitted meanwhile wait in their
// queues and then run on the overlay. On failure the device keeps its
// image, writable again, and the overlay file is removed. It is
// StageSnapshot and Commit in one drained section.
//
// Then, as QEMU reopens a snapshot's old top read-only, the old image's
// file is reopened O_RDONLY (raw.Driver.ReopenReadOnly, in Commit) and its
// QEMU-compatible locks become a reader's: another process may open it
// read-only without force-share (qemu-img info), writers are still
// refused. If only that step fails, the snapshot stands (the device runs
// on the overlay), the file stays open read-write, and the error says so.
func (d *Device) LiveSnapshot(path string) (err error) {
	if !d.h.enter() {
		return ErrClosed
	}
	defer d.h.leave()
	if d.inContext() {
		return ErrInContext
	}
	old := d.fe.Root()
	if old == nil || d.isClosed() {
		return ErrClosed
	}
	if old.ReadOnly() {
		// QMP's blockdev-snapshot-sync takes one (StageSnapshot): this
		// call, for a guest's running disk, refuses it.
		return fmt.Errorf("ringblk: %s: the image is read-only: a snapshot would not protect anything", d.name)
	}
	d.h.g.Control(old.Ref) // the section must end on the node it began on
	old.DrainedBegin()
	defer func() {
		old.DrainedEnd()
		err = errors.Join(err, old.Unref())
	}()
	st, err := d.StageSnapshot(StageOptions{Path: path})
	if err != nil {
		return fmt.Errorf("ringblk: %s: live snapshot: %w", d.name, err)
	}
	// The front ends move onto the overlay drained, so nothing reaches it
	// before the section ends.
	ov := st.Overlay()
	d.h.g.Control(ov.Ref)
	ov.DrainedBegin()
	defer func() {
		ov.DrainedEnd()
		err = errors.Join(err, ov.Unref())
	}()
	return st.Commit()
}
