package qcow2

import (
	"errors"
	"sync/atomic"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// ErrSnapshotNodeWritable is LoadSnapshotTmp's refusal of a read-write
// node: the view it installs must never be written through.
var ErrSnapshotNodeWritable = errors.New("qcow2: a snapshot is loaded for reading only; open the image read-only")

// LoadSnapshotTmp makes a read-only node read snapshot id/name instead of
// the active disk (qemu-img convert/measure -l, QEMU's snapshot_load_tmp):
// the snapshot's L1 table replaces the active one in memory only; nothing
// is written and the virtual size stays the active one (an L1 table too
// short for it reads as unallocated past its end). An empty id or name
// matches any; both empty is ErrSnapshotNotFound. Not from a coroutine.
func (d *Driver) LoadSnapshotTmp(id, name string) error {
	if d.node == nil || d.mu.hdr == nil {
		return errors.New("qcow2: image is not open")
	}
	if !d.readOnly {
		return ErrSnapshotNodeWritable
	}
	n := d.node
	n.DrainedBegin()
	defer n.DrainedEnd()
	var err error
	runCoAndWait(n, func(co *aio.Co) {
		d.metaLock.lock(co)
		err = snapOf(d).loadSnapshotTmpLocked(co, id, name)
		d.metaLock.unlock()
	})
	var fe *format.FormatError
	if errors.As(err, &fe) {
		err = d.formatErr(block.OpRead, 0, err)
	}
	return err
}

func (d snapshotOps) loadSnapshotTmpLocked(co *aio.Co, id, name string) error {
	d.mu.Lock()
	i := -1
	if id != "" || name != "" {
		for j := range d.mu.snaps {
			if (id == "" || d.mu.snaps[j].ID == id) && (name == "" || d.mu.snaps[j].Name == name) {
				i = j
				break
			}
		}
	}
	var sn format.Snapshot
	if i >= 0 {
		sn = d.mu.snaps[i]
	}
	need := format.L1EntriesFor(uint64(d.mu.geo.Size), d.mu.geo.ClusterBits, d.mu.geo.ExtendedL2)
	d.mu.Unlock()
	if i < 0 {
		return ErrSnapshotNotFound
	}
	l1, err := d.readSnapshotL1(co, &sn, i)
	if err != nil {
		return err
	}
	if uint64(len(l1)) < need {
		l1 = append(l1, make([]uint64, need-uint64(len(l1)))...)
	}
	d.mu.Lock()
	d.mu.l1 = l1
	d.resetMetaClusters()
	d.mu.hdr.L1Offset, d.mu.hdr.L1Entries = sn.L1Offset, sn.L1Entries
	d.mu.zcache.buf = nil
	d.publishLocked()
	d.mu.Unlock()
	return nil
}

// runCoAndWait runs fn as a coroutine on n's Context and waits for it the
// way the caller may: a nested wait on that Context's owner or on the main
// Context's, a channel elsewhere. Not from a coroutine.
func runCoAndWait(n *block.Node, fn func(co *aio.Co)) {
	ctx, main := n.Context(), n.Graph().Main()
	var done atomic.Bool
	ch := make(chan struct{})
	ctx.Go(func(co *aio.Co) {
		fn(co)
		done.Store(true)
		close(ch)
		main.Kick()
		ctx.Kick()
	})
	notDone := func() bool { return !done.Load() }
	switch {
	case ctx.InContext():
		ctx.WaitWhile(notDone)
	case main.InContext():
		main.WaitWhile(notDone)
	default:
		<-ch
	}
}
