package qcow2

import "errors"

// SnapshotFreeError is a snapshot deletion that failed while dropping
// the references of the snapshot's clusters and L1 table, after its entry
// had left the snapshot table (R2): the snapshot is gone and the image
// consistent, but clusters it referenced leak (check -r leaks repairs
// them). QEMU's wording for the same failure.
type SnapshotFreeError struct{ Err error }

func (e *SnapshotFreeError) Error() string {
	return "Failed to free the cluster and L1 table: " + e.Err.Error()
}

func (e *SnapshotFreeError) Unwrap() error { return e.Err }

// oldTableFreeError is writeSnapshotTable failing after the new snapshot
// table and header were written, while freeing the old table's clusters:
// the table change stands, only those clusters may leak. Its message is
// the cause's.
type oldTableFreeError struct{ err error }

func (e *oldTableFreeError) Error() string { return e.err.Error() }
func (e *oldTableFreeError) Unwrap() error { return e.err }

// asSnapshotFree turns a failed free of the old snapshot table during a
// deletion into the deletion's SnapshotFreeError (the entry is gone; what
// it referenced leaks); other errors stay as they are.
func asSnapshotFree(err error) error {
	var o *oldTableFreeError
	if errors.As(err, &o) {
		return &SnapshotFreeError{Err: o.err}
	}
	return err
}
