package qcow2

import (
	"errors"
	"syscall"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// LoadSnapshotTmp makes a read-only image show internal snapshot idOrName
// (an ID or a name) instead of the active disk, for as long as it stays
// open: the snapshot's L1 table, with the snapshot's own number of
// entries, replaces the active one in memory (QEMU's
// bdrv_snapshot_load_tmp, qemu-img convert -l). Nothing is written, and
// the virtual size stays the image's, as in QEMU. A read-write image is
// refused: the loaded table would be written back as the active one.
// The caller loads before the node serves requests.
func (d *Driver) LoadSnapshotTmp(idOrName string) error {
	if d.node == nil || d.mu.hdr == nil {
		return errors.New("qcow2: image is not open")
	}
	if !d.readOnly {
		return &block.Error{Kind: block.Unsupported, Op: block.OpRead, Node: d.nodeName(),
			Err: errors.New("Device is not readonly: " + syscall.EROFS.Error())}
	}
	return d.runLocked(d.node, func(co *aio.Co) error {
		d.mu.Lock()
		i := findSnapshot(d.mu.snaps, idOrName)
		var sn format.Snapshot
		if i >= 0 {
			sn = d.mu.snaps[i]
		}
		d.mu.Unlock()
		if i < 0 {
			return ErrSnapshotNotFound
		}
		l1, err := snapOf(d).readSnapshotL1(co, &sn, i)
		if err != nil {
			return d.formatErr(block.OpRead, 0, err)
		}
		if l1 == nil {
			l1 = []uint64{}
		}
		d.mu.Lock()
		d.mu.l1 = l1
		d.mu.hdr.L1Offset, d.mu.hdr.L1Entries = sn.L1Offset, sn.L1Entries
		d.resetMetaClusters()
		d.mu.zcache.buf = nil
		d.publishLocked()
		d.mu.Unlock()
		return nil
	})
}
