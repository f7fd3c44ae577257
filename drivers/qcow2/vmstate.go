package qcow2

import (
	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// VM state (block.VMStateDriver: QEMU's bdrv_save_vmstate and
// bdrv_load_vmstate, qemu-io `write -b` / `read -b`).
//
// qcow2 has no separate structure for a saved VM state: it lives in the
// guest address space past the disk, mapped by the same L1 and L2 tables.
// Position 0 of the VM state is the first byte the L1 entries needed for
// the virtual size do not reach, ceil(size / L1Coverage) * L1Coverage
// (QEMU's qcow2_vm_state_offset), so the area starts on an L2 table
// boundary and never shares a table (or a cluster) with the disk. The L1
// table grows as far as the state needs, past what the virtual size needs
// (l1_size in the header may exceed size_to_l1(size), which every reader
// allows), by growL1 with its usual crash ordering (R3, R6). A snapshot
// copies the whole active L1 table, VM state included.
//
// Writes and reads use the ordinary write and read paths: allocation,
// copy-on-write, refcounts and the flush stages are the disk's. The only
// difference is the end of the mapped range: for an offset past the disk
// it is everything the L1 table maps (mapEndLocked), so a VM-state
// cluster is always a whole cluster. Reads past the L1 table behave like
// an unallocated cluster (backing file, zeros past its end), as in QEMU.

// vmStateStartLocked is the guest offset of VM state position 0.
// REQUIRES: mu held.
func (d *Driver) vmStateStartLocked() int64 {
	g := &d.mu.geo
	return int64(format.L1EntriesFor(uint64(g.Size), g.ClusterBits, g.ExtendedL2)) * g.L1Coverage()
}

// mapEndLocked is where the range an internal request starting at guest
// offset off may map ends: the virtual disk's end for an offset inside
// the disk, the end of what the L1 table maps for the VM state area past
// it. REQUIRES: mu held.
func (d *Driver) mapEndLocked(off int64) int64 {
	if off < d.mu.geo.Size {
		return d.mu.geo.Size
	}
	return int64(len(d.mu.l1)) * d.mu.geo.L1Coverage()
}

// vmStateRange turns a VM state request into its guest range, or an error
// when it would end past what any L1 table can map.
func (d *Driver) vmStateRange(r *block.Request) (off, end int64, err error) {
	d.mu.Lock()
	base := d.vmStateStartLocked()
	d.mu.Unlock()
	if r.Off > format.MaxImageSize-base || r.Len > format.MaxImageSize-base-r.Off {
		return 0, 0, format.Limit("vmstate_offset", uint64(r.Off), "VM state position past the largest qcow2 guest offset")
	}
	return base + r.Off, base + r.Off + r.Len, nil
}

// SaveVMState writes r.Iov at VM state position r.Off.
func (d *Driver) SaveVMState(r *block.Request) {
	r.Context().Go(func(co *aio.Co) {
		d.event(block.DbgVMStateSave)
		err := maintOf(d).saveVMState(co, r)
		r.CompleteLater(d.formatErr(block.OpSaveVMState, r.Off, err))
	})
}

// LoadVMState reads VM state position r.Off into r.Iov.
func (d *Driver) LoadVMState(r *block.Request) {
	r.Context().Go(func(co *aio.Co) {
		d.event(block.DbgVMStateLoad)
		ep := d.hold(r.Context())
		err := readerOf(d).loadVMState(co, r)
		d.unhold(ep)
		r.CompleteLater(d.formatErr(block.OpLoadVMState, r.Off, err))
	})
}

func (d maintOps) saveVMState(co *aio.Co, r *block.Request) error {
	off, end, err := d.vmStateRange(r)
	if err != nil || r.Len == 0 {
		return err
	}
	d.metaLock.lock(co)
	err = d.growL1ForVMState(co, r, end)
	d.metaLock.unlock()
	if err != nil {
		return err
	}
	// The L1 table only shrinks by a snapshot apply, which drains the
	// node first: it cannot run while this request is in flight.
	return d.writeRange(co, r, off, end)
}

// growL1ForVMState grows the L1 table to map guest offsets below end.
// REQUIRES: metaLock held.
func (d maintOps) growL1ForVMState(co *aio.Co, r *block.Request, end int64) error {
	cov := d.mu.geo.L1Coverage()
	need := (end + cov - 1) / cov
	d.mu.Lock()
	have := int64(len(d.mu.l1))
	d.mu.Unlock()
	if need <= have {
		return nil
	}
	n, err := grownL1Entries(have, need)
	if err != nil {
		return err
	}
	if err := d.prepareWrite(co, r); err != nil {
		return err
	}
	if err := d.flushMetadata(co, r); err != nil { // growL1 wants nothing dirty
		return err
	}
	return d.growL1(co, r, n)
}

// grownL1Entries is the size an L1 table of have entries grows to when it
// must reach need entries: steps of 1.5x, as QEMU's qcow2_grow_l1_table
// without exact_size, so that a VM state written piece by piece moves the
// table a few times rather than once per L2 table. Past QEMU's 32 MiB
// limit it is an error (QEMU: EFBIG).
func grownL1Entries(have, need int64) (int64, error) {
	n := max(have, 1)
	for n < need {
		n = (n*3 + 1) / 2
	}
	if n*8 > format.MaxL1Bytes {
		return 0, format.Limit("l1_size", uint64(n), "L1 table for the VM state above 32 MiB")
	}
	return n, nil
}

func (d reader) loadVMState(co *aio.Co, r *block.Request) error {
	off, end, err := d.vmStateRange(r)
	if err != nil || r.Len == 0 {
		return err
	}
	d.mu.Lock()
	mapped := int64(len(d.mu.l1)) * d.mu.geo.L1Coverage()
	d.mu.Unlock()
	in := max(0, min(end, mapped)-off)
	if in > 0 {
		if err := d.readGuest(co, r, r.Iov, off, in); err != nil {
			return err
		}
	}
	if in < r.Len {
		return d.readBacking(co, r, r.Iov, in, off+in, r.Len-in)
	}
	return nil
}
