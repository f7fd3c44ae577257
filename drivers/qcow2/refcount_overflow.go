package qcow2

import "errors"

// ErrRefcountOverflow: a cluster would need a reference more than the
// image's refcount width can count (for example any sharing under
// refcount_bits=1). Creating a snapshot then fails with it (qemu-img
// reports EINVAL); `qemu-img amend -o refcount_bits=` to a wider width
// lifts the limit.
var ErrRefcountOverflow = errors.New("qcow2: refcount overflow")

// overflowError is the driver's error for an overflow: its text is the
// format error's (naming the value and the width), and it is both that
// format error (format.ErrLimit) and ErrRefcountOverflow.
type overflowError struct{ err error }

func (e *overflowError) Error() string   { return e.err.Error() }
func (e *overflowError) Unwrap() []error { return []error{e.err, ErrRefcountOverflow} }
