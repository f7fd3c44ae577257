package qcow2

import "github.com/ringblk/ringblk/drivers/qcow2/format"

// applyL2Fixes writes the L2 entries a repair of all errors rewrites
// (format/check_l2fix.go: unaligned preallocated clusters become zero
// entries), as QEMU's check does during its count, and syncs. Each entry
// is written alone (8 bytes, 16 with extended L2) into the L2 table the
// count read it from. Crash safety: the entry pointed at no data; until
// the leak pass frees its cluster, a crash leaves a leak (R2's direction:
// the reference goes before the refcount).
func (r *repairer) applyL2Fixes(fixes []format.L2Fix) error {
	if len(fixes) == 0 {
		return nil
	}
	g := &r.im.Geometry
	esz := g.L2EntrySize()
	b := make([]byte, 16)
	for _, f := range fixes {
		putU64(b, f.Entry)
		putU64(b[8:], f.Bitmap)
		if _, err := r.f.WriteAt(b[:esz], f.L2Off+f.Index*esz); err != nil {
			r.logf("ERROR: Failed to overwrite L2 table entry: ", err.Error())
			return err
		}
		r.l2Fixed = append(r.l2Fixed, f.L2Off)
	}
	return r.f.Sync()
}
