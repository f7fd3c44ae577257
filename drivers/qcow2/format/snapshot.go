package format

import "encoding/binary"

// Snapshot is one entry of the internal snapshot table.
//
// Entry layout (docs/interop/qcow2.txt "Snapshots"), each entry starting at
// an 8-byte aligned offset of the table:
//
//	0  l1_table_offset u64   8 l1_size u32   12 id_str_size u16   14 name_size u16
//	16 date_sec u32   20 date_nsec u32   24 vm_clock_nsec u64
//	32 vm_state_size u32   36 extra_data_size u32
//	40 extra data: 0 vm_state_size_large u64, 8 disk_size u64, 16 icount u64, then unknown bytes
//	   id_str, then name (neither NUL terminated)
type Snapshot struct {
	L1Offset    uint64 // l1_table_offset
	L1Entries   uint32 // l1_size
	ID          string
	Name        string
	DateSec     uint32
	DateNsec    uint32
	VMClockNsec uint64
	// VMStateSize is the VM state size: vm_state_size_large when the extra
	// data has it, else the 32-bit field.
	VMStateSize uint64
	// DiskSize is the virtual size when the snapshot was taken; valid when
	// ExtraDataSize >= 16 (QEMU otherwise assumes the current size).
	DiskSize uint64
	// Icount is the instruction count; valid when ExtraDataSize >= 24.
	Icount uint64
	// ExtraDataSize is extra_data_size as stored. Encoding writes the known
	// fields that fit in it, then ExtraUnknown. QEMU 7.2 writes 24.
	ExtraDataSize uint32
	// ExtraUnknown is the extra data past the 24 known bytes, preserved.
	ExtraUnknown []byte
	// VMStateSize32 is the 32-bit vm_state_size field as stored (QEMU
	// writes 0 there when the state does not fit in 32 bits).
	VMStateSize32 uint32
}

const SnapshotKnownExtra = 24

// snapshotEntryLen returns the length of the entry whose fixed part is p,
// without the padding that aligns the next entry.
func snapshotEntryLen(p []byte) (extra uint32, n uint64) {
	extra = binary.BigEndian.Uint32(p[36:])
	idLen := uint64(binary.BigEndian.Uint16(p[12:]))
	nameLen := uint64(binary.BigEndian.Uint16(p[14:]))
	return extra, snapshotHeaderLen + uint64(extra) + idLen + nameLen
}

// ParseSnapshotTable decodes count entries from b, the snapshot table
// (b[0] is at snapshots_offset). It returns the snapshots and the table
// size in bytes. Every entry must lie inside b and the whole table inside
// maxBytes (at most MaxSnapshotTableBytes); extra data is bounded by
// MaxSnapshotExtraData. Version 2 images may omit the extra data.
//
// The snapshots' L1 tables are checked by ValidateSnapshot, which needs the
// header.
func ParseSnapshotTable(b []byte, count uint32, maxBytes int64) ([]Snapshot, int64, error) {
	if count > MaxSnapshots {
		return nil, 0, Limit("nb_snapshots", uint64(count), "snapshot table too large")
	}
	if maxBytes <= 0 || maxBytes > MaxSnapshotTableBytes {
		maxBytes = MaxSnapshotTableBytes
	}
	// Walk the fixed parts first: a count that b cannot hold is refused
	// before the slice of snapshots is allocated.
	var off uint64
	for i := uint32(0); i < count; i++ {
		off = (off + 7) &^ 7
		if off+snapshotHeaderLen > uint64(len(b)) {
			return nil, 0, Corrupt(Indexed("snapshot", uint64(i)), off, "snapshot table entry past the end of the table")
		}
		extra, n := snapshotEntryLen(b[off:])
		if extra > MaxSnapshotExtraData {
			return nil, 0, Limit(Indexed("snapshot", uint64(i))+".extra_data_size", uint64(extra), "too much extra metadata in snapshot table entry")
		}
		if off+n > uint64(maxBytes) {
			return nil, 0, Limit("snapshot_table_size", off+n, "snapshot table too large")
		}
		if off+n > uint64(len(b)) {
			return nil, 0, Corrupt(Indexed("snapshot", uint64(i)), off, "snapshot table entry past the end of the table")
		}
		off += n
	}
	size := int64(off)
	snaps := make([]Snapshot, count)
	off = 0
	for i := range snaps {
		off = (off + 7) &^ 7
		p := b[off:]
		s := &snaps[i]
		idLen16, nameLen16 := s.decodeHeader(p)
		idLen, nameLen := uint64(idLen16), uint64(nameLen16)
		s.decodeExtra(p[snapshotHeaderLen : snapshotHeaderLen+uint64(s.ExtraDataSize)])
		q := snapshotHeaderLen + uint64(s.ExtraDataSize)
		s.ID = string(p[q : q+idLen])
		s.Name = string(p[q+idLen : q+idLen+nameLen])
		off += q + idLen + nameLen
	}
	return snaps, size, nil
}

// decodeHeader reads an entry's fixed part p (snapshotHeaderLen bytes):
// every field but the extra data, ID and name, with the extra data size in
// ExtraDataSize and the ID and name lengths returned. Both parsers use it:
// ParseSnapshotTable, and the checker that also repairs.
func (s *Snapshot) decodeHeader(p []byte) (idLen, nameLen uint16) {
	be := binary.BigEndian
	s.L1Offset = be.Uint64(p[0:])
	s.L1Entries = be.Uint32(p[8:])
	idLen, nameLen = be.Uint16(p[12:]), be.Uint16(p[14:])
	s.DateSec = be.Uint32(p[16:])
	s.DateNsec = be.Uint32(p[20:])
	s.VMClockNsec = be.Uint64(p[24:])
	s.VMStateSize32 = be.Uint32(p[32:])
	s.VMStateSize = uint64(s.VMStateSize32)
	s.ExtraDataSize = be.Uint32(p[36:])
	return idLen, nameLen
}

// decodeExtra reads an entry's extra data x (what the entry's extra data
// size covers): the fields this version knows (VM state size, disk size,
// icount, each only when x holds it) and a copy of the rest.
func (s *Snapshot) decodeExtra(x []byte) {
	be := binary.BigEndian
	if len(x) >= 8 {
		s.VMStateSize = be.Uint64(x[0:])
	}
	if len(x) >= 16 {
		s.DiskSize = be.Uint64(x[8:])
	}
	if len(x) >= 24 {
		s.Icount = be.Uint64(x[16:])
	}
	if len(x) > SnapshotKnownExtra {
		s.ExtraUnknown = append([]byte(nil), x[SnapshotKnownExtra:]...)
	}
}

// AppendSnapshotTable encodes snaps as a snapshot table, appending to dst.
// Entries are 8-byte aligned relative to the start of the table, which
// must therefore be 8-byte aligned in dst (a new slice is).
func AppendSnapshotTable(dst []byte, snaps []Snapshot) ([]byte, error) {
	if len(snaps) > MaxSnapshots {
		return dst, Limit("nb_snapshots", uint64(len(snaps)), "snapshot table too large")
	}
	start := len(dst)
	be := binary.BigEndian
	for i := range snaps {
		s := &snaps[i]
		field := Indexed("snapshot", uint64(i))
		if len(s.ID) > 0xffff || len(s.Name) > 0xffff {
			return dst, Limit(field+".name_size", uint64(max(len(s.ID), len(s.Name))), "snapshot id or name longer than 65535 bytes")
		}
		known := min(int(s.ExtraDataSize), SnapshotKnownExtra)
		if s.ExtraDataSize > MaxSnapshotExtraData || (len(s.ExtraUnknown) > 0 && int(s.ExtraDataSize) != SnapshotKnownExtra+len(s.ExtraUnknown)) ||
			(len(s.ExtraUnknown) == 0 && s.ExtraDataSize > SnapshotKnownExtra) {
			return dst, Corrupt(field+".extra_data_size", uint64(s.ExtraDataSize), "extra data size does not match the extra fields")
		}
		for (len(dst)-start)%8 != 0 {
			dst = append(dst, 0)
		}
		dst = be.AppendUint64(dst, s.L1Offset)
		dst = be.AppendUint32(dst, s.L1Entries)
		dst = be.AppendUint16(dst, uint16(len(s.ID)))
		dst = be.AppendUint16(dst, uint16(len(s.Name)))
		dst = be.AppendUint32(dst, s.DateSec)
		dst = be.AppendUint32(dst, s.DateNsec)
		dst = be.AppendUint64(dst, s.VMClockNsec)
		dst = be.AppendUint32(dst, s.VMStateSize32)
		dst = be.AppendUint32(dst, s.ExtraDataSize)
		var x [SnapshotKnownExtra]byte
		be.PutUint64(x[0:], s.VMStateSize)
		be.PutUint64(x[8:], s.DiskSize)
		be.PutUint64(x[16:], s.Icount)
		dst = append(dst, x[:known]...)
		dst = append(dst, s.ExtraUnknown...)
		dst = append(dst, s.ID...)
		dst = append(dst, s.Name...)
		if len(dst)-start > MaxSnapshotTableBytes {
			return dst, Limit("snapshot_table_size", uint64(len(dst)-start), "snapshot table too large")
		}
	}
	return dst, nil
}

// ValidateSnapshot checks snapshot i's L1 table fields against the image:
// size within MaxL1Bytes (or maxL1Bytes if lower), cluster aligned, and
// inside the file (g.FileSize; 0: unchecked). Overlaps with other metadata
// are checked by ReadImage, which knows all of it.
func ValidateSnapshot(s *Snapshot, i int, g *Geometry, maxL1Bytes int64) error {
	field := Indexed("snapshot", uint64(i))
	if maxL1Bytes <= 0 || maxL1Bytes > MaxL1Bytes {
		maxL1Bytes = MaxL1Bytes
	}
	if uint64(s.L1Entries) > uint64(maxL1Bytes)/8 {
		return Limit(field+".l1_size", uint64(s.L1Entries), "snapshot L1 table too large")
	}
	if err := tableOffset(field+".l1_table_offset", s.L1Offset, uint64(s.L1Entries)*8, uint64(g.ClusterSize())); err != nil {
		return err
	}
	if s.L1Entries > 0 && g.FileSize > 0 && s.L1Offset+uint64(s.L1Entries)*8 > uint64(g.FileSize) {
		return Corrupt(field+".l1_table_offset", s.L1Offset, "snapshot L1 table past end of file")
	}
	return nil
}
