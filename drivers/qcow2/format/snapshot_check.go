package format

import (
	"io"
	"math"
	"strconv"
)

// Reading the snapshot table from the file, for an open and for a check
// (QEMU 7.2's qcow2_do_read_snapshots and qcow2_check_read_snapshot_table;
// iotests 080 and 261).
//
// The table is read entry by entry through a window of at most
// snapWindow bytes (or one id or name, at most 64 KiB), so memory is the
// decoded entries (at most MaxSnapshots) plus the window, whatever the
// stored sizes say. Bytes past the end of the file read as zeros, as they
// do in QEMU: a table that lies partly or wholly past EOF opens (its
// entries are then all-zero ones); the operations that would use it fail
// later.

// SnapshotTableError is a snapshot table an open refuses and that `check
// -r all` can repair (too much extra data in an entry, a table above
// MaxSnapshotTableBytes or with more than MaxSnapshots entries), or one
// a check cannot read at all. Text is QEMU's sentence, Hint its second
// line ("" if none); Err is ringblk's own description (a *FormatError).
type SnapshotTableError struct {
	Err  error
	Text string
	Hint string
}

func (e *SnapshotTableError) Error() string { return e.Err.Error() }
func (e *SnapshotTableError) Unwrap() error { return e.Err }

const snapWindow = 1 << 20

// snapReader reads the table through a window; past EOF it returns zeros.
type snapReader struct {
	r        io.ReaderAt
	fileSize uint64
	off      uint64 // file offset of buf[0]
	buf      []byte
}

// bytes returns the n bytes at file offset off, valid until the next call.
func (w *snapReader) bytes(off uint64, n int) ([]byte, error) {
	if n == 0 {
		return nil, nil
	}
	if off >= w.off && off-w.off+uint64(n) <= uint64(len(w.buf)) {
		return w.buf[off-w.off : off-w.off+uint64(n)], nil
	}
	size := max(n, snapWindow)
	if cap(w.buf) < size {
		w.buf = make([]byte, size)
	}
	w.buf = w.buf[:size]
	w.off = off
	clear(w.buf)
	if off < w.fileSize && off <= math.MaxInt64 {
		in := min(uint64(size), w.fileSize-off)
		if err := ReadFull(w.r, w.buf[:in], int64(off)); err != nil {
			w.buf = w.buf[:0]
			return nil, err
		}
	}
	return w.buf[:n], nil
}

// snapshotScan is what readSnapshotEntries found.
type snapshotScan struct {
	snaps []Snapshot
	// size is the on-disk extent of the kept entries from the table's
	// start (with the full stored extra data of a truncated entry).
	size int64
	// In a repair: the lines to print, the entries dropped off the end
	// (the header's count must be lowered) and the entries whose extra
	// data was cut to MaxSnapshotExtraData (the table must be rewritten).
	messages    []string
	overhanging uint32
	truncated   int64
}

// readSnapshotEntries decodes count entries of the table at base. Without
// repair, an entry with extra data above MaxSnapshotExtraData or a table
// above maxBytes is refused with QEMU's words. With repair, the extra data
// is cut to the limit and the entries from the first one that does not
// fit are dropped. REQUIRES: count <= MaxSnapshots.
func readSnapshotEntries(r io.ReaderAt, fileSize int64, base uint64, count uint32, maxBytes int64, repair bool) (*snapshotScan, error) {
	if maxBytes <= 0 || maxBytes > MaxSnapshotTableBytes {
		maxBytes = MaxSnapshotTableBytes
	}
	w := &snapReader{r: r, fileSize: uint64(max(fileSize, 0))}
	sc := &snapshotScan{snaps: make([]Snapshot, 0, min(count, 1024))}
	var off, tableLen uint64 // on disk; QEMU's table_length (truncated extra)
	for i := uint32(0); i < count; i++ {
		pre := off
		off = (off + 7) &^ 7
		tableLen = (tableLen + 7) &^ 7
		p, err := w.bytes(base+off, snapshotHeaderLen)
		if err != nil {
			return nil, err
		}
		var s Snapshot
		idLen16, nameLen16 := s.decodeHeader(p)
		idLen, nameLen := int(idLen16), int(nameLen16)
		extra := s.ExtraDataSize
		keep := extra
		if extra > MaxSnapshotExtraData {
			if !repair {
				return nil, &SnapshotTableError{
					Err:  Limit(Indexed("snapshot", uint64(i))+".extra_data_size", uint64(extra), "too much extra metadata in snapshot table entry"),
					Text: "Too much extra metadata in snapshot table entry " + strconv.FormatUint(uint64(i), 10),
					Hint: "You can force-remove this extra metadata with qemu-img check -r all",
				}
			}
			sc.messages = append(sc.messages, "Discarding too much extra metadata in snapshot table entry "+
				strconv.FormatUint(uint64(i), 10)+" ("+strconv.FormatUint(uint64(extra), 10)+" > "+strconv.Itoa(MaxSnapshotExtraData)+")")
			sc.truncated++
			keep = MaxSnapshotExtraData
		}
		s.ExtraDataSize = keep
		x, err := w.bytes(base+off+snapshotHeaderLen, int(keep))
		if err != nil {
			return nil, err
		}
		s.decodeExtra(x)
		off += snapshotHeaderLen + uint64(extra)
		id, err := w.bytes(base+off, idLen)
		if err != nil {
			return nil, err
		}
		s.ID = string(id)
		off += uint64(idLen)
		name, err := w.bytes(base+off, nameLen)
		if err != nil {
			return nil, err
		}
		s.Name = string(name)
		off += uint64(nameLen)
		tableLen += snapshotHeaderLen + uint64(keep) + uint64(idLen) + uint64(nameLen)
		if tableLen > uint64(maxBytes) || off > math.MaxInt32 {
			left := count - i
			if !repair {
				return nil, &SnapshotTableError{
					Err:  Limit("snapshot_table_size", tableLen, "snapshot table too large"),
					Text: "Snapshot table is too big",
					Hint: "You can force-remove all " + strconv.FormatUint(uint64(left), 10) + " overhanging snapshots with qemu-img check -r all",
				}
			}
			sc.messages = append(sc.messages, "Discarding "+strconv.FormatUint(uint64(left), 10)+" overhanging snapshots (snapshot table is too big)")
			sc.overhanging += left
			off = pre
			break
		}
		sc.snaps = append(sc.snaps, s)
	}
	sc.size = int64(off)
	return sc, nil
}

// SnapshotCheck is what ReadSnapshotsForCheck found and, in a repair,
// changed in memory.
type SnapshotCheck struct {
	// Messages are the lines QEMU prints, in its words and order.
	Messages []string
	// Overhanging entries were dropped off the end of the table (repair
	// only): the header's nb_snapshots must be lowered to
	// len(Image.Snapshots) before the refcounts are checked, which leaks
	// their clusters (the refcount repair then frees them).
	Overhanging uint32
	// Truncated entries had their extra data cut to MaxSnapshotExtraData
	// (repair only): the table must be rewritten after the refcount
	// repair.
	Truncated int64
}

// ReadSnapshotsForCheck reads the snapshot table of an image opened with
// Options.CheckMode (which skips it), as `qemu-img check` does: with
// repair, a table with more than MaxSnapshots entries or above
// MaxSnapshotTableBytes loses its overhanging entries and entries with too
// much extra data have it cut; without, those are a *SnapshotTableError.
// A pointer QEMU's open refuses (offset invalid) is a *SnapshotTableError
// either way. On success Snapshots and SnapshotTableSize describe the
// entries kept (the size is their extent on disk).
func (im *Image) ReadSnapshotsForCheck(repair bool) (*SnapshotCheck, error) {
	h := im.Header
	res := &SnapshotCheck{}
	count := h.SnapshotCount
	if count > MaxSnapshots && repair {
		res.Messages = append(res.Messages, "Discarding "+strconv.FormatUint(uint64(count-MaxSnapshots), 10)+" overhanging snapshots")
		res.Overhanging = count - MaxSnapshots
		count = MaxSnapshots
	}
	if count > MaxSnapshots {
		e := &SnapshotTableError{Err: Limit("nb_snapshots", uint64(count), "snapshot table too large"), Text: "snapshot table too large"}
		e.Hint = "You can force-remove all " + strconv.FormatUint(uint64(count-MaxSnapshots), 10) + " overhanging snapshots with qemu-img check -r all"
		return nil, e
	}
	cs := uint64(im.Geometry.ClusterSize())
	if err := tableOffset("snapshots_offset", h.SnapshotsOffset, uint64(count)*snapshotHeaderLen, cs); err != nil {
		return nil, &SnapshotTableError{Err: err, Text: "snapshot table offset invalid"}
	}
	im.Snapshots, im.SnapshotTableSize = nil, 0
	if count == 0 {
		return res, nil
	}
	sc, err := readSnapshotEntries(im.r, im.FileSize, h.SnapshotsOffset, count, MaxSnapshotTableBytes, repair)
	if err != nil {
		if ste, ok := err.(*SnapshotTableError); ok {
			return nil, &SnapshotTableError{Err: ste.Err, Text: "failed to read the snapshot table: " + ste.Text, Hint: ste.Hint}
		}
		return nil, &SnapshotTableError{Err: err, Text: "failed to read the snapshot table: " + err.Error()}
	}
	res.Messages = append(res.Messages, sc.messages...)
	res.Overhanging += sc.overhanging
	res.Truncated = sc.truncated
	im.Snapshots, im.SnapshotTableSize = sc.snaps, sc.size
	return res, nil
}

// SnapshotL1Valid reports whether snapshot i's L1 table fields pass
// ValidateSnapshot. An entry that does not is kept (QEMU opens such
// images); the operations that need its table fail with the error, and
// the overlap checks leave its range out.
func (im *Image) SnapshotL1Valid(i int) bool {
	return im.Snapshots[i].L1Valid(&im.Geometry)
}

// L1Valid reports whether ValidateSnapshot (with the package limit)
// accepts s's L1 table fields, without building an error: it runs in
// the driver's overlap checks.
func (s *Snapshot) L1Valid(g *Geometry) bool {
	n := uint64(s.L1Entries) * 8
	cs := uint64(g.ClusterSize())
	if n > MaxL1Bytes || s.L1Offset&(cs-1) != 0 || s.L1Offset > 1<<63-1-n {
		return false
	}
	return s.L1Entries == 0 || g.FileSize <= 0 || s.L1Offset+n <= uint64(g.FileSize)
}
