package job

import (
	"syscall"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
)

// snapshotAccess is the driver of a fleecing backup's snapshot node
// (QEMU's snapshot-access over copy-before-write): a cluster the filter
// has not copied yet still holds its point-in-time data on the source; a
// copied one has it on the target. A read holds its range against the
// filter, so a guest write cannot change a source cluster between the
// check and the read.
type snapshotAccess struct {
	block.DriverBase
	bc       *blockCopy
	src, tgt *block.Child
}

func (b *Backup) openSnapshot(m *Manager) error {
	d := &snapshotAccess{bc: b.bc}
	n, err := m.g.Open(d, block.Options{Name: "#backup-snapshot-" + b.o.ID, ReadOnly: true, Context: b.o.Source.Context()})
	if err != nil {
		return err
	}
	if d.src, err = m.g.Attach(n, b.o.Source, block.ChildSpec{Name: "source", Role: block.RolePrimary}); err == nil {
		d.tgt, err = m.g.Attach(n, b.o.Target, block.ChildSpec{Name: "target"})
	}
	if err != nil {
		n.Unref()
		return err
	}
	b.snap = n
	return nil
}

func (d *snapshotAccess) Length(*block.Node) (int64, error) { return d.bc.size, nil }

func (d *snapshotAccess) Read(r *block.Request) {
	if d.bc.ended.Load() {
		r.CompleteLater(&block.Error{Kind: block.Io, Op: r.Op, Node: r.Node().Name(), Offset: r.Off, Err: syscall.EIO})
		return
	}
	r.Context().Go(func(co *aio.Co) { r.Complete(d.read(co, r)) })
}

func (d *snapshotAccess) read(co *aio.Co, r *block.Request) error {
	bc := d.bc
	end := min(r.Off+r.Len, bc.size)
	if end <= r.Off {
		return nil
	}
	lo := r.Off &^ (bc.cluster - 1)
	hi := min((end+bc.cluster-1)&^(bc.cluster-1), bc.size)
	id := bc.locks.lock(co, lo, hi)
	defer bc.locks.unlock(id)
	buf := make([]byte, end-r.Off)
	for off := r.Off; off < end; {
		onSource := bc.cp.Get(off)
		next := bc.cp.NextClean(off)
		if !onSource {
			next = bc.cp.NextDirty(off)
			if next < 0 {
				next = end
			}
		}
		next = min(max(next, off+1), end)
		c := d.tgt
		if onSource {
			c = d.src
		}
		if err := coIO(co, bc.g, c, block.OpRead, off, buf[off-r.Off:next-r.Off], 0); err != nil {
			return err
		}
		off = next
	}
	block.CopyToIov(r.Iov, 0, buf)
	return nil
}
