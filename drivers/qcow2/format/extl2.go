package format

import (
	"errors"
	"strconv"
	"strings"
)

// Extended L2 entries (incompatible bit 4), docs/spec/qcow2.md §1.10: the
// decoding rules QEMU 7.2 applies that differ from standard entries.
//
//   - Bit 0 of the first word (the zero flag of standard entries) has no
//     meaning: zeroes are in the bitmap. QEMU ignores it when it reads
//     the entry (iotest 271 reads and writes through such an entry), so
//     DecodeL2Entry does too; writers never set it, and an entry that is
//     rewritten loses it.
//   - The bitmap of a compressed cluster is unused: ignored (the decoded
//     entry's Bitmap is 0), not an error.
//   - A subcluster both allocated and zero, and an allocated subcluster in
//     a cluster without a host offset, are corrupt (DecodeL2Entry).

// L2EntryAt names where a decode error of an L2 entry was met: the table
// at l2Off, index l2i (the read path's mapping errors carry the same).
func L2EntryAt(err error, l2Off, l2i int64) error {
	return WithField(err, "l2_table@"+HexString(uint64(l2Off))+Indexed("", uint64(l2i)))
}

// l2EntryCorruptionText is QEMU's "Marking image as corrupt" text for an
// invalid L2 entry a write met (one L2EntryAt located): "Invalid cluster
// entry found" for the subcluster bitmap rules, "Cluster allocation offset
// … unaligned" for an unaligned data cluster; "" otherwise.
func l2EntryCorruptionText(err error) string {
	var fe *FormatError
	if !errors.As(err, &fe) {
		return ""
	}
	rest, ok := strings.CutPrefix(fe.Field, "l2_table@0x")
	if !ok {
		return ""
	}
	open, close := strings.IndexByte(rest, '['), strings.IndexByte(rest, ']')
	if open < 0 || close < open {
		return ""
	}
	l2Off, err1 := strconv.ParseInt(rest[:open], 16, 64)
	l2i, err2 := strconv.ParseInt(rest[open+1:close], 10, 64)
	if err1 != nil || err2 != nil {
		return ""
	}
	where := "(L2 offset: " + cHex(l2Off) + ", L2 index: " + cHex(l2i) + ")"
	switch fe.Reason {
	case "subcluster both allocated and zero", "allocated subclusters in an unallocated cluster":
		var rd readPathError
		if errors.As(err, &rd) {
			// QEMU's read path words it with two spaces (iotest 271).
			return "Invalid cluster entry found  " + where
		}
		return "Invalid cluster entry found " + where
	case "host cluster offset not cluster aligned":
		return "Cluster allocation offset " + cHex(int64(fe.Value&OffsetMask)) + " unaligned " + where
	}
	return ""
}

// readPathError marks an L2 entry error met by a read (ReadPath).
type readPathError struct{ error }

func (e readPathError) Unwrap() error { return e.error }

// ReadPath marks err, met while a read mapped its guest range, for
// QemuCorruptionText: QEMU's read path (its host offset lookup) words the
// invalid subcluster bitmap case a little differently from its write
// path. The error still matches what it wraps (errors.Is/As).
func ReadPath(err error) error { return readPathError{err} }

// IsL2EntryCorruption reports whether err is a located L2 entry error
// (L2EntryAt) QEMU treats as corruption when a request meets it at run
// time: an invalid subcluster bitmap or an unaligned data cluster offset.
// Other decode errors (reserved bits, an offset past the end of the file)
// QEMU's I/O paths do not look at; ringblk fails the request without
// marking the image.
func IsL2EntryCorruption(err error) bool { return l2EntryCorruptionText(err) != "" }
