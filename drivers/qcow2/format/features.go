package format

import "strconv"

// FeatureError is the refusal of an image with incompatible feature bits
// this package does not know. It is a *FormatError (errors.As finds it
// through Unwrap) that also lists the bits as QEMU names them, so a
// drop-in front end can word the refusal as qemu-img does.
type FeatureError struct {
	FormatError
	// Named are the names the image's feature name table gives the
	// unknown bits, in table order: the walk stops at the first entry
	// with an empty name, names are cut at 46 bytes, and each bit is
	// named once (QEMU's report_unsupported_feature).
	Named []string
	// Unnamed are the unknown bits no table entry names.
	Unnamed uint64
}

// Unwrap returns the embedded *FormatError (which wraps ErrUnsupported).
func (e *FeatureError) Unwrap() error { return &e.FormatError }

// featureError builds the FeatureError for the unknown incompatible bits
// in mask.
func (h *Header) featureError(mask uint64) error {
	e := &FeatureError{FormatError: FormatError{
		Field: "incompatible_features", Value: h.IncompatibleFeatures,
		Reason: "unsupported incompatible features: " + h.describeBits(FeatureIncompatible, mask),
		Err:    ErrUnsupported,
	}}
	left := mask
	for _, f := range h.FeatureNames {
		if f.Name == "" {
			break
		}
		if f.Type != FeatureIncompatible || f.Bit > 63 || left&(uint64(1)<<f.Bit) == 0 {
			continue
		}
		name := f.Name
		if len(name) > featureNameLen-2 {
			name = name[:featureNameLen-2]
		}
		e.Named = append(e.Named, name)
		left &^= uint64(1) << f.Bit
	}
	e.Unnamed = left
	return e
}

// QEMUText lists the bits as qemu-img 7.2 does after "Unsupported qcow2
// feature(s): ": the table's names, then "Unknown incompatible feature:
// HEX" for the rest.
func (e *FeatureError) QEMUText() string {
	s := ""
	for _, n := range e.Named {
		if s != "" {
			s += ", "
		}
		s += n
	}
	if e.Unnamed != 0 {
		if s != "" {
			s += ", "
		}
		s += "Unknown incompatible feature: " + strconv.FormatUint(e.Unnamed, 16)
	}
	return s
}
