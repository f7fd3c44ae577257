package host

import (
	"errors"
	"fmt"
	"path/filepath"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/chain"
	"github.com/ringblk/ringblk/drivers/qcow2"
	"github.com/ringblk/ringblk/drivers/raw"
)

// LiveSnapshot takes an external snapshot while the device runs (QEMU's
// blockdev-snapshot-sync): it creates a qcow2 overlay at path whose
// backing file is the device's image, and in one drained section of the
// image flushes it, makes it read-only (writes to it fail with EPERM from
// then on: it is inactivated, as for a migration handover) and swaps the
// overlay in as the device's image, with the old image as its backing
// node. Requests submitted meanwhile wait in their queues and then run on
// the overlay. On failure the device keeps its image, writable again.
//
// Then, as QEMU reopens a snapshot's old top read-only, the old image's
// file is flushed and reopened O_RDONLY (raw.Driver.ReopenReadOnly) inside
// a drained section of the whole chain, and its QEMU-compatible locks
// become a reader's: another process may open it read-only without
// force-share (qemu-img info), writers are still refused. If only that
// step fails, the snapshot stands (the device runs on the overlay), the
// file stays open read-write, and the error says so.
func (d *Device) LiveSnapshot(path string) (err error) {
	if d.inContext() {
		return ErrInContext
	}
	h := d.h
	old := d.fe.Root()
	if old == nil || d.isClosed() {
		return ErrClosed
	}
	d.mu.Lock()
	curPath, curFormat, curFile := d.path, d.format, d.file
	d.mu.Unlock()
	if curPath == "" || (curFormat != "raw" && curFormat != "qcow2") {
		return fmt.Errorf("ringblk: %s: a live snapshot needs a raw or qcow2 image file (this is %s): %w", d.name, curFormat, ErrUnsupported)
	}
	if old.ReadOnly() {
		return fmt.Errorf("ringblk: %s: the image is read-only: a snapshot would not protect anything", d.name)
	}
	g, err := d.Geometry()
	if err != nil {
		return err
	}
	base, err := filepath.Abs(curPath)
	if err != nil {
		return err
	}
	if err := h.Create(path, CreateOptions{Format: "qcow2", Size: g.Size, BackingFile: base, BackingFormat: curFormat}); err != nil {
		return fmt.Errorf("ringblk: %s: live snapshot: %w", d.name, err)
	}

	old.DrainedBegin()
	defer old.DrainedEnd()
	// A flush first: it writes a qcow2 image's cached metadata back,
	// which the inactivation alone does not do.
	if err := old.Flush(); err != nil {
		return fmt.Errorf("ringblk: %s: live snapshot: flush the image: %w", d.name, err)
	}
	if err := old.Inactivate(); err != nil {
		return fmt.Errorf("ringblk: %s: live snapshot: flush and freeze the image: %w", d.name, err)
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, old.Activate())
		}
	}()
	fopts := raw.Options{}
	if curFile != nil {
		fo := curFile.Options()
		fopts.Cache, fopts.Discard, fopts.Locking = fo.Cache, fo.Discard, fo.Locking
	}
	file, err := raw.NewNode(h.g, path, fopts, block.Options{Name: h.uniqueName(d.name + "-overlay-file")})
	if err != nil {
		return fmt.Errorf("ringblk: %s: live snapshot: %w", d.name, err)
	}
	drv := qcow2.New(file, qcow2.DriverOptions{ID: chain.FileID(path), Chain: nil,
		Backing: func(qcow2.BackingRequest) (*block.Node, error) {
			old.Ref() // on the main Context: the driver opens there
			return old, nil
		}})
	n, err := h.g.Open(drv, block.Options{Name: h.uniqueName(d.name + "-overlay")})
	if err != nil {
		drv.Release()
		return fmt.Errorf("ringblk: %s: live snapshot: open the overlay: %w", d.name, err)
	}
	if err := h.g.ReplaceChild(d.fe.RootChild(), n); err != nil {
		// The edge moved; the old image lives on as the overlay's backing.
		err = fmt.Errorf("ringblk: %s: live snapshot: %w", d.name, err)
		return errors.Join(err, n.Unref())
	}
	if err := n.Unref(); err != nil { // the front end holds it now
		return err
	}
	f := findRaw(h.g, n)
	d.mu.Lock()
	d.path, d.format, d.qcow, d.file = path, "qcow2", drv, f
	d.mu.Unlock()
	if curFile != nil {
		n.SubtreeDrainedBegin()
		var rerr error
		h.g.Control(func() { rerr = curFile.ReopenReadOnly() })
		n.SubtreeDrainedEnd()
		if rerr != nil {
			return fmt.Errorf("ringblk: %s: live snapshot taken (the device runs on %s), but the old image's file stays open read-write: %w", d.name, path, rerr)
		}
	}
	return nil
}
