package qcow2

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/bitmap"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// Persistent dirty bitmaps (docs/spec/qcow2.md §2.11, docs/design/
// qcow2-bitmaps.md).
//
// Open (read-only or read-write) reads the bitmap directory when the
// autoclear bit vouches for it. Every usable bitmap (not in_use, no extra
// data we would have to understand) is loaded into a bitmap.Bitmap marked
// Persistent and attached to the node, enabled when its auto flag is set:
// block marks it on every write path from then on. A bitmap found in_use
// stays on disk as it is, is listed as inconsistent and can only be
// removed (RemovePersistentBitmap). A directory that does not decode, or
// whose clusters collide with other metadata, is "damaged": nothing is
// loaded, and the first write clears autoclear bit 0 as before (R10), so
// QEMU ignores the extension; its clusters leak.
//
// Before the first write of a session (prepareWrite) the loaded bitmaps
// are marked in_use on disk: a new directory with the flag set, durable,
// then the extension switched to it (R13). Close and Inactivate store
// every Persistent bitmap of the node: new tables and data clusters, a new
// directory, all durable with their refcounts, then the switch, then the
// old clusters freed (R2, R3, R13).

// persistentBitmaps is the driver's view of the on-disk directory.
// Changed under metaLock; read under mu.
type persistentBitmaps struct {
	// disk is the directory as last read or written (nil: none).
	disk []format.BitmapEntry
	// damaged: the directory could not be used (see above).
	damaged error
	// marked: the loaded bitmaps are in_use on disk (this session wrote).
	marked bool
	// stale names the entries found unusable at load (in_use, or extra
	// data we do not know): inconsistent, never tracked, only removable.
	// The in_use flag this driver sets itself does not make an entry stale.
	stale map[string]bool
	// removed holds the entries of inconsistent bitmaps removed since
	// the last store: their clusters are freed when the directory that
	// no longer names them is durable.
	removed []format.BitmapEntry
}

// BitmapInfo describes one persistent bitmap as qemu-img info lists it.
type BitmapInfo struct {
	Name        string
	Granularity int64
	InUse, Auto bool
}

// PersistentBitmaps lists the bitmaps of the on-disk directory, in its
// order (what qemu-img info shows).
func (d *Driver) PersistentBitmaps() []BitmapInfo {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]BitmapInfo, 0, len(d.mu.pbm.disk))
	for i := range d.mu.pbm.disk {
		e := &d.mu.pbm.disk[i]
		out = append(out, BitmapInfo{Name: e.Name, Granularity: e.Granularity(), InUse: e.InUse(), Auto: e.Auto()})
	}
	return out
}

// BitmapsDamaged returns why the image's bitmap directory is not used
// (nil when it is fine or absent).
func (d *Driver) BitmapsDamaged() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.mu.pbm.damaged
}

// inconsistentLocked returns the on-disk entry named name that is not
// loaded (in_use, or incompatible extra data). REQUIRES: mu held.
func (d *Driver) inconsistentLocked(name string) int {
	for i := range d.mu.pbm.disk {
		if e := &d.mu.pbm.disk[i]; e.Name == name && d.mu.pbm.stale[e.Name] {
			return i
		}
	}
	return -1
}

// InconsistentBitmap reports whether name is a bitmap of the directory
// found unusable at open (in use, or unknown extra data): listed, never
// loaded, only removable with RemovePersistentBitmap.
func (d *Driver) InconsistentBitmap(name string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.inconsistentLocked(name) >= 0
}

// CheckNewPersistentBitmap says whether a persistent bitmap name of the
// given granularity may be added (QEMU's can_store_new_dirty_bitmap):
// a version 3 image, writable, a name of 1..1023 bytes not used by an
// inconsistent bitmap on disk, granularity 2^9..2^31, room in the
// directory.
func (d *Driver) CheckNewPersistentBitmap(name string, granularity int64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case d.readOnly:
		return errors.New("qcow2: image is read-only: cannot store persistent bitmaps")
	case d.mu.hdr.Version < 3:
		return errors.New("Cannot store dirty bitmaps in qcow2 v2 files")
	case d.mu.pbm.damaged != nil:
		return fmt.Errorf("qcow2: the image's bitmap directory is damaged: %v", d.mu.pbm.damaged)
	case len(name) == 0:
		return errors.New("Bitmap name cannot be empty")
	case len(name) > format.MaxBitmapNameLen:
		return fmt.Errorf("Name length exceeds maximum (%d characters)", format.MaxBitmapNameLen)
	case granularity <= 0 || granularity&(granularity-1) != 0:
		return fmt.Errorf("Granularity %d is not a power of two", granularity)
	case bits.TrailingZeros64(uint64(granularity)) > format.MaxBitmapGranularityBits:
		return fmt.Errorf("Granularity exceeds maximum (%d bytes)", int64(1)<<format.MaxBitmapGranularityBits)
	case bits.TrailingZeros64(uint64(granularity)) < format.MinBitmapGranularityBits:
		return fmt.Errorf("Granularity is under minimum (%d bytes)", int64(1)<<format.MinBitmapGranularityBits)
	case ((uint64(d.mu.geo.Size)+uint64(granularity)-1)/uint64(granularity)+7)/8 > format.MaxBitmapBytes ||
		format.BitmapTableEntries(uint64(d.mu.geo.Size), uint32(bits.TrailingZeros64(uint64(granularity))), uint64(d.mu.geo.ClusterSize())) > format.MaxBitmapTableEntries:
		return errors.New("Too much space will be occupied by the bitmap. Use larger granularity")
	case d.inconsistentLocked(name) >= 0:
		return fmt.Errorf("Bitmap '%s' already exists in the image", name)
	}
	// What the directory will hold at the next store: the stale entries
	// and every persistent bitmap of the node (loaded or new), plus this.
	names := map[string]bool{}
	for i := range d.mu.pbm.disk {
		if e := &d.mu.pbm.disk[i]; d.mu.pbm.stale[e.Name] {
			names[e.Name] = true
		}
	}
	d.mu.Unlock()
	if d.node != nil {
		for _, b := range d.node.Bitmaps() {
			if b.Persistent {
				names[b.Name()] = true
			}
		}
	}
	d.mu.Lock()
	size := format.BitmapDirectoryEntrySize(&format.BitmapEntry{Name: name})
	for n := range names {
		size += format.BitmapDirectoryEntrySize(&format.BitmapEntry{Name: n})
	}
	switch {
	case len(names) >= format.MaxBitmaps:
		return errors.New("Maximum number of persistent bitmaps is already reached")
	case size > format.MaxBitmapDirectoryBytes:
		return errors.New("Not enough space in the bitmap directory")
	}
	return nil
}

// RemovePersistentBitmap removes the inconsistent (in_use) bitmap name
// from the directory; its clusters are freed by the next store (close).
// Loaded bitmaps are removed from the node (block.Node.RemoveBitmap) and
// leave the directory at the next store too.
func (d *Driver) RemovePersistentBitmap(name string) error {
	if d.readOnly {
		return errors.New("qcow2: image is read-only")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	i := d.inconsistentLocked(name)
	if i < 0 {
		return fmt.Errorf("Bitmap '%s' not found", name)
	}
	d.mu.pbm.removed = append(d.mu.pbm.removed, d.mu.pbm.disk[i])
	d.mu.pbm.disk = append(d.mu.pbm.disk[:i:i], d.mu.pbm.disk[i+1:]...)
	return nil
}

// truncateBitmapsCheck refuses a resize that QEMU 7.2 refuses for its
// bitmaps (qcow2_truncate_bitmaps_check), in the directory's order and
// with its words: an inconsistent bitmap (found in use, or with unknown
// extra data: it cannot be rewritten for the new size, only removed),
// and a persistent bitmap an operation holds (a backup, an export).
// Every other bitmap is resized with the node and stored with the new
// size at close. A damaged directory is not in force (its bit is cleared
// before the first write) and refuses nothing.
func (d *Driver) truncateBitmapsCheck() error {
	d.mu.Lock()
	if d.mu.pbm.damaged != nil {
		d.mu.Unlock()
		return nil
	}
	type entry struct {
		name  string
		stale bool
	}
	var dir []entry
	for i := range d.mu.pbm.disk {
		name := d.mu.pbm.disk[i].Name
		dir = append(dir, entry{name, d.mu.pbm.stale[name]})
	}
	d.mu.Unlock()
	for _, e := range dir {
		if e.stale {
			return format.Unsupported("bitmaps", 0, fmt.Sprintf("Bitmap '%s' is inconsistent and cannot be used\nTry block-dirty-bitmap-remove to delete this bitmap from disk", e.name)) // QEMU's words
		}
		if d.node == nil {
			continue
		}
		if b := d.node.Bitmap(e.name); b != nil && b.Persistent && b.Busy() {
			return format.Unsupported("bitmaps", 0, fmt.Sprintf("Bitmap '%s' is currently in use by another operation and cannot be used", e.name)) // QEMU's words
		}
	}
	return nil
}

// hasPersistentBitmaps reports bitmaps on disk or persistent ones on the
// node (MakeEmpty keeps away from them).
func (d *Driver) hasPersistentBitmaps() bool {
	d.mu.Lock()
	n := len(d.mu.pbm.disk)
	d.mu.Unlock()
	if n > 0 {
		return true
	}
	if d.node != nil {
		for _, b := range d.node.Bitmaps() {
			if b.Persistent {
				return true
			}
		}
	}
	return false
}

// maintainedAutoclear is the autoclear bits this driver keeps valid:
// bitmaps, unless their directory is damaged, and raw external data of an
// image opened with its data file (write-zeroes reach the data file,
// zeroDataRaw, and a resize sets its length, truncateData; datafile.go).
// REQUIRES: mu held.
func (d *Driver) maintainedAutoclearLocked() uint64 {
	var m uint64
	if d.mu.pbm.damaged == nil {
		m |= format.AutoclearBitmaps
	}
	if d.dataFile != nil && d.dataRaw {
		m |= format.AutoclearRawExternal
	}
	return m
}

// bitmapReader reads the image file at open (nodeReader) or from a
// coroutine (coReader).
type bitmapReader interface {
	ReadAt(p []byte, off int64) (int, error)
}

// loadBitmaps reads the directory and returns the usable bitmaps, loaded,
// without attaching them. A damaged directory is recorded, not returned.
// REQUIRES: the driver is not yet shared (Open) or metaLock held.
func (d *Driver) loadBitmaps(r bitmapReader) ([]*bitmap.Bitmap, error) {
	d.mu.Lock()
	h := d.mu.hdr
	fs, cs, size := d.mu.geo.FileSize, d.mu.geo.ClusterSize(), d.mu.geo.Size
	d.mu.pbm = persistentBitmaps{}
	d.mu.Unlock()
	if h.Version < 3 || !h.BitmapsConsistent() {
		return nil, nil // no extension, or a writer that did not know it cleared the bit: ignored, as QEMU does
	}
	damaged := func(err error) ([]*bitmap.Bitmap, error) {
		d.mu.Lock()
		d.mu.pbm.damaged = err
		d.mu.Unlock()
		if d.opts.CheckLog != nil {
			d.opts.CheckLog("qcow2: bitmap directory not used: " + err.Error())
		}
		return nil, nil
	}
	entries, err := format.ReadBitmapDirectory(r, h, fs)
	if err != nil {
		return damaged(err)
	}
	owned, err := format.BitmapClusters(r, h, fs)
	if err != nil {
		return damaged(err)
	}
	for _, c := range owned {
		if metaOf(d).overlapsMetadata(c, cs) {
			return damaged(format.Corrupt("bitmap_directory", uint64(c), "a bitmap cluster overlaps other metadata"))
		}
	}
	var out []*bitmap.Bitmap
	stale := map[string]bool{}
	for i := range entries {
		e := &entries[i]
		if !e.Usable() {
			stale[e.Name] = true
			continue
		}
		b, err := bitmap.New(e.Name, size, e.Granularity())
		if err != nil {
			return damaged(err)
		}
		if err := loadBitmapBits(r, e, b, cs, fs); err != nil {
			return damaged(err)
		}
		b.SetEnabled(e.Auto())
		b.Persistent = true
		out = append(out, b)
	}
	d.mu.Lock()
	d.mu.pbm.disk, d.mu.pbm.stale = entries, stale
	d.mu.Unlock()
	return out, nil
}

// loadBitmapBits ORs the bits stored for e into b.
func loadBitmapBits(r bitmapReader, e *format.BitmapEntry, b *bitmap.Bitmap, cs, fs int64) error {
	tb := make([]byte, int64(e.TableSize)*8)
	if err := format.ReadFull(r, tb, int64(e.TableOffset)); err != nil {
		return err
	}
	table, err := format.ParseBitmapTable(tb, uint64(cs), fs)
	if err != nil {
		return err
	}
	buf := make([]byte, cs)
	per := cs * 8
	for j, te := range table {
		first := int64(j) * per
		switch {
		case te.AllOnes:
			b.SetBits(first, per)
		case te.Offset != 0:
			if err := format.ReadFull(r, buf, int64(te.Offset)); err != nil {
				return err
			}
			b.DeserializePart(buf, first)
		}
	}
	return nil
}

// attachBitmaps attaches loaded bitmaps to the node (main Context).
func (d *Driver) attachBitmaps(list []*bitmap.Bitmap) error {
	for _, b := range list {
		if err := d.node.AttachBitmap(b); err != nil {
			return d.openErr(block.InvalidFormat, fmt.Errorf("qcow2: persistent bitmap %q: %w", b.Name(), err))
		}
	}
	return nil
}

// markBitmapsInUse sets in_use on disk for every loaded bitmap before the
// first write of a session (R13). REQUIRES: metaLock held.
func (d maintOps) markBitmapsInUse(co *aio.Co) error {
	d.mu.Lock()
	pb := &d.mu.pbm
	need := !d.readOnly && !pb.marked && pb.damaged == nil && len(pb.disk) > 0
	var entries []format.BitmapEntry
	if need {
		entries = append([]format.BitmapEntry(nil), pb.disk...)
		need = false
		for i := range entries {
			if !pb.stale[entries[i].Name] {
				entries[i].Flags |= format.BitmapInUse
				need = true
			}
		}
	}
	d.mu.Unlock()
	if !need {
		return nil
	}
	if err := d.switchBitmapDirectory(co, entries, nil); err != nil {
		return err
	}
	d.mu.Lock()
	d.mu.pbm.marked = true
	d.mu.Unlock()
	return nil
}

// storeBitmaps writes every Persistent bitmap of the node to the image,
// with the inconsistent ones kept as they are, and drops the directory
// entries of bitmaps that are gone. REQUIRES: metaLock held.
func (d maintOps) storeBitmaps(co *aio.Co) error {
	if d.readOnly || d.node == nil {
		return nil
	}
	var live []*bitmap.Bitmap
	for _, b := range d.node.Bitmaps() {
		if b.Persistent {
			live = append(live, b)
		}
	}
	d.mu.Lock()
	pb := d.mu.pbm
	ver := d.mu.hdr.Version
	blocked := d.mu.corruptErr != nil || d.repairPendingLocked() != nil // nothing may be written
	cs := d.mu.geo.ClusterSize()
	size := d.mu.geo.Size
	d.mu.Unlock()
	if blocked || pb.damaged != nil || ver < 3 || (len(live) == 0 && len(pb.disk) == 0 && len(pb.removed) == 0) {
		return nil
	}
	// The old clusters of every entry that is rewritten or dropped.
	var frees []hostFree
	oldOf := func(e *format.BitmapEntry) error {
		cl, err := d.entryClusters(co, e)
		if err != nil {
			return err
		}
		for _, c := range cl {
			frees = append(frees, hostFree{c, cs})
		}
		return nil
	}
	var entries []format.BitmapEntry
	for i := range pb.disk {
		e := &pb.disk[i]
		if pb.stale[e.Name] {
			entries = append(entries, *e) // kept untouched
			continue
		}
		if err := oldOf(e); err != nil {
			return err
		}
	}
	for i := range pb.removed {
		if err := oldOf(&pb.removed[i]); err != nil {
			return err
		}
	}
	for _, b := range live {
		name := b.Name()
		for i := range entries {
			if entries[i].Name == name {
				return fmt.Errorf("qcow2: cannot store bitmap %q: an inconsistent bitmap of that name is in the image", name)
			}
		}
		if b.Size() != size {
			return fmt.Errorf("qcow2: cannot store bitmap %q: it covers %d bytes, the disk has %d", name, b.Size(), size)
		}
		e, err := d.writeBitmapTable(co, b)
		if err != nil {
			return err
		}
		entries = append(entries, e)
	}
	if err := d.switchBitmapDirectory(co, entries, frees); err != nil {
		return err
	}
	d.mu.Lock()
	d.mu.pbm.removed = nil
	d.mu.pbm.marked = false
	d.mu.Unlock()
	return nil
}

// entryClusters returns the table and data clusters of e.
func (d maintOps) entryClusters(co *aio.Co, e *format.BitmapEntry) ([]int64, error) {
	cs := d.mu.geo.ClusterSize()
	tb := make([]byte, int64(e.TableSize)*8)
	if err := format.ReadFull(coReader{d.Driver, co, nil}, tb, int64(e.TableOffset)); err != nil {
		return nil, err
	}
	d.mu.Lock()
	fs := d.mu.geo.FileSize
	d.mu.Unlock()
	table, err := format.ParseBitmapTable(tb, uint64(cs), fs)
	if err != nil {
		return nil, err
	}
	var out []int64
	for c := int64(e.TableOffset); c < int64(e.TableOffset)+int64(len(tb)); c += cs {
		out = append(out, c)
	}
	for _, te := range table {
		if te.Offset != 0 {
			out = append(out, int64(te.Offset))
		}
	}
	return out, nil
}

// writeBitmapTable writes b's non-zero parts to new data clusters and its
// table to new clusters and returns its directory entry. The clusters'
// refcounts are raised in memory; switchBitmapDirectory makes them
// durable before anything points at them.
func (d maintOps) writeBitmapTable(co *aio.Co, b *bitmap.Bitmap) (format.BitmapEntry, error) {
	cs := d.mu.geo.ClusterSize()
	gb := uint32(bits.TrailingZeros64(uint64(b.Granularity())))
	n := format.BitmapTableEntries(uint64(b.Size()), gb, uint64(cs))
	if n == 0 || n > format.MaxBitmapTableEntries {
		return format.BitmapEntry{}, format.Limit("bitmap_table_size", n, "bitmap "+b.Name()+" needs a table outside 1..2^27 entries")
	}
	table := make([]byte, int64(n)*8)
	buf := make([]byte, cs)
	per := cs * 8
	for j := int64(0); j < int64(n); j++ {
		if !b.SerializePart(buf, j*per) {
			continue
		}
		off, err := d.allocCluster(co)
		if err != nil {
			return format.BitmapEntry{}, err
		}
		if err := d.fileWrite(co, nil, buf, off); err != nil {
			return format.BitmapEntry{}, d.abortAlloc(off, err)
		}
		binary.BigEndian.PutUint64(table[j*8:], format.BitmapTableWord(uint64(off)))
	}
	toff, err := d.allocBitmapArea(co, int64(len(table)))
	if err != nil {
		return format.BitmapEntry{}, err
	}
	if err := d.fileWrite(co, nil, table, toff); err != nil {
		return format.BitmapEntry{}, err
	}
	var flags uint32
	if b.Enabled() {
		flags |= format.BitmapAuto
	}
	return format.BitmapEntry{Name: b.Name(), Flags: flags, GranularityBits: gb, TableOffset: uint64(toff), TableSize: uint32(n)}, nil
}

// allocBitmapArea allocates clusters for n bytes of a table or directory
// as QEMU does (first fit; one cluster from the free index, several
// contiguous ones). Only the n bytes are written, so the file may end
// inside the last cluster, as QEMU's does (R11 holds: the write reaches
// into that cluster).
func (d maintOps) allocBitmapArea(co *aio.Co, n int64) (int64, error) {
	cs := d.mu.geo.ClusterSize()
	if nc := (n + cs - 1) / cs; nc > 1 {
		return d.allocContiguous(co, nc)
	}
	return d.allocCluster(co)
}

// switchBitmapDirectory makes entries the image's bitmap directory (none:
// the extension goes and autoclear bit 0 is cleared), then frees the old
// directory and frees. Order (R13): the new directory and everything it
// points at, with their refcounts, durable (R1, R3); then the extension
// switched — one 24-byte write of its fields when they sit in one sector,
// otherwise autoclear bit 0 cleared (synced), the header cluster
// rewritten, and the bit set again (synced) — then the old clusters
// queued for freeing after the next flush (R2). REQUIRES: metaLock held.
func (d maintOps) switchBitmapDirectory(co *aio.Co, entries []format.BitmapEntry, frees []hostFree) error {
	var ext *format.BitmapsExtension
	if len(entries) > 0 {
		dir, err := format.AppendBitmapDirectory(nil, entries)
		if err != nil {
			return err
		}
		off, err := d.allocBitmapArea(co, int64(len(dir)))
		if err != nil {
			return err
		}
		if err := d.fileWrite(co, nil, dir, off); err != nil {
			return err
		}
		ext = &format.BitmapsExtension{Count: uint32(len(entries)), DirectorySize: uint64(len(dir)), DirectoryOffset: uint64(off)}
	}
	// R1, R3: refcounts, then the structures, durable before the switch.
	if err := d.flushAllMetadata(co, nil); err != nil {
		return err
	}
	if err := d.fileSync(co, nil); err != nil {
		return err
	}
	d.mu.Lock()
	old := *d.mu.hdr
	d.mu.Unlock()
	if err := d.switchBitmapsExt(co, &old, ext); err != nil {
		return err
	}
	d.mu.Lock()
	if ob := old.Bitmaps; ob != nil && old.BitmapsConsistent() {
		d.mu.pendingFrees = append(d.mu.pendingFrees, hostFree{int64(ob.DirectoryOffset), int64(ob.DirectorySize)})
	}
	d.mu.pendingFrees = append(d.mu.pendingFrees, frees...)
	d.mu.pbm.disk = entries
	d.mu.Unlock()
	return d.flushAllMetadata(co, nil)
}

// switchBitmapsExt replaces the header's bitmaps extension by ext (nil:
// none) as switchBitmapDirectory describes. REQUIRES: metaLock held.
func (d maintOps) switchBitmapsExt(co *aio.Co, old *format.Header, ext *format.BitmapsExtension) error {
	if ext != nil && old.BitmapsConsistent() {
		if p, ok := d.bitmapsExtPos(co, old); ok && p/512 == (p+format.BitmapsExtLen-1)/512 {
			var b [format.BitmapsExtLen]byte
			binary.BigEndian.PutUint32(b[0:], ext.Count)
			binary.BigEndian.PutUint64(b[8:], ext.DirectorySize)
			binary.BigEndian.PutUint64(b[16:], ext.DirectoryOffset)
			if err := d.fileWrite(co, nil, b[:], p); err != nil {
				return err
			}
			if err := d.fileSync(co, nil); err != nil {
				return err
			}
			d.mu.Lock()
			e := *ext
			d.mu.hdr.Bitmaps = &e
			d.publishLocked()
			d.mu.Unlock()
			return nil
		}
	}
	// Whole header: the bit is clear while it is rewritten, so a torn
	// extension area is never trusted.
	ac := old.AutoclearFeatures
	if ac&format.AutoclearBitmaps != 0 {
		if err := d.writeAutoclear(co, ac&^format.AutoclearBitmaps); err != nil {
			return err
		}
	}
	nh := *old
	nh.AutoclearFeatures = ac &^ format.AutoclearBitmaps
	nh.Bitmaps = nil
	if ext != nil {
		e := *ext
		nh.Bitmaps = &e
	}
	if err := d.rewriteHeader(co, &nh); err != nil {
		return err
	}
	if ext != nil {
		return d.writeAutoclear(co, nh.AutoclearFeatures|format.AutoclearBitmaps)
	}
	return nil
}

// writeAutoclear writes the autoclear word (8 bytes at 88, R6) and syncs.
func (d maintOps) writeAutoclear(co *aio.Co, v uint64) error {
	var b [8]byte
	putU64(b[:], v)
	if err := d.fileWrite(co, nil, b[:], 88); err != nil {
		return err
	}
	if err := d.fileSync(co, nil); err != nil {
		return err
	}
	d.mu.Lock()
	d.mu.hdr.AutoclearFeatures = v
	d.publishLocked()
	d.mu.Unlock()
	return nil
}

// bitmapsExtPos finds the file offset of the bitmaps extension's 24 data
// bytes, from h's encoding, and confirms that the header on disk holds
// the same bytes up to their end (the in-place write may trust it).
func (d maintOps) bitmapsExtPos(co *aio.Co, h *format.Header) (int64, bool) {
	hb, err := h.MarshalBinary()
	if err != nil {
		return 0, false
	}
	p := int(h.HeaderLength)
	if h.Version < 3 {
		return 0, false
	}
	be := binary.BigEndian
	for p+8 <= len(hb) {
		magic, n := be.Uint32(hb[p:]), int(be.Uint32(hb[p+4:]))
		if magic == format.ExtEnd {
			return 0, false
		}
		if magic == format.ExtBitmaps {
			end := p + 8 + format.BitmapsExtLen
			disk := make([]byte, end)
			if err := d.fileRead(co, nil, disk, 0); err != nil || string(disk) != string(hb[:end]) {
				return 0, false
			}
			return int64(p + 8), true
		}
		p += 8 + (n+7)&^7
	}
	return 0, false
}

// reloadBitmaps re-reads the directory at activation (another process
// may have changed it while the node was inactive) and replaces the bits
// of the node's persistent bitmaps of the same name and granularity with
// the stored ones. A bitmap the other process added is not attached (that
// needs the main Context): it stays in the directory and is listed; one it
// removed stays on the node and is stored again at the next close.
// REQUIRES: metaLock held.
func (d maintOps) reloadBitmaps(co *aio.Co, r *block.Request) error {
	loaded, err := d.loadBitmaps(coReader{d.Driver, co, r})
	if err != nil || d.node == nil {
		return err
	}
	for _, lb := range loaded {
		if b := d.node.Bitmap(lb.Name()); b != nil && b.Persistent && b.Granularity() == lb.Granularity() && b.Size() == lb.Size() {
			b.Clear()
			if err := b.Merge(lb); err != nil {
				return err
			}
			b.SetEnabled(lb.Enabled())
		}
	}
	return nil
}
