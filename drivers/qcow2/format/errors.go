package format

import (
	"errors"
	"strconv"
)

// Sentinels for errors.Is. Every error this package returns for image
// content is a *FormatError wrapping exactly one of them; I/O errors from the
// caller's io.ReaderAt are wrapped with %w and keep their own identity.
var (
	// ErrNotQcow2 means the magic is not "QFI\xfb": the bytes are not a qcow2
	// image at all (a different format, or garbage).
	ErrNotQcow2 = errors.New("qcow2: not a qcow2 image")
	// ErrUnsupported means the image is well formed but uses something this
	// package refuses: an unknown incompatible feature, encryption, an
	// external data file, a json:/protocol backing name, zstd decompression.
	ErrUnsupported = errors.New("qcow2: unsupported")
	// ErrCorrupt means a field or a table entry breaks the format's rules
	// (unaligned offset, reserved bits, overlapping metadata, ...).
	ErrCorrupt = errors.New("qcow2: corrupt image")
	// ErrLimit means a size field exceeds one of the named open-time limits
	// in limits.go. The check happens before any allocation of that size.
	ErrLimit = errors.New("qcow2: limit exceeded")
	// ErrRange means a request lies outside the virtual disk, or an index
	// lies outside a caller-supplied buffer.
	ErrRange = errors.New("qcow2: out of range")
)

// FormatError describes one rejected field of an image. Field uses the
// qcow2 specification's field names (docs/interop/qcow2.txt), with an index
// for table entries ("l1_table[3]", "snapshot[0].l1_table_offset"), so that
// the message maps straight onto the spec and onto `qemu-img check` output.
type FormatError struct {
	Field  string // spec name of the field, e.g. "l1_size"
	Value  uint64 // the offending value as stored in the image
	Reason string // what is wrong, lower case, no trailing period
	Err    error  // ErrNotQcow2, ErrUnsupported, ErrCorrupt, ErrLimit or ErrRange
}

func (e *FormatError) Error() string {
	s := "qcow2: " + e.Field + " " + strconv.FormatUint(e.Value, 10)
	if e.Value > 9 {
		s += " (0x" + strconv.FormatUint(e.Value, 16) + ")"
	}
	return s + ": " + e.Reason
}

// Unwrap returns the sentinel, so errors.Is(err, ErrCorrupt) works.
func (e *FormatError) Unwrap() error { return e.Err }

func Corrupt(field string, v uint64, reason string) error {
	return &FormatError{Field: field, Value: v, Reason: reason, Err: ErrCorrupt}
}

func Unsupported(field string, v uint64, reason string) error {
	return &FormatError{Field: field, Value: v, Reason: reason, Err: ErrUnsupported}
}

func Limit(field string, v uint64, reason string) error {
	return &FormatError{Field: field, Value: v, Reason: reason, Err: ErrLimit}
}

func OutOfRange(field string, v uint64, reason string) error {
	return &FormatError{Field: field, Value: v, Reason: reason, Err: ErrRange}
}

// Indexed builds "name[i]" without fmt, for table-entry field names.
func Indexed(name string, i uint64) string {
	return name + "[" + strconv.FormatUint(i, 10) + "]"
}
