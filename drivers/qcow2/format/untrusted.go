package format

// Images whose own metadata clusters (header, active L1 table, refcount
// table) have refcount 0 (qcow2.md §3.2 row 10). Their refcounts cannot
// be trusted for allocation: the first free cluster they show is live
// metadata. QEMU opens them read-write and its first allocation lands on
// that metadata, where an overlap check stops it and marks the image
// corrupt (iotest 137). ringblk opens them too (Options.
// DeferMetadataRefcounts) and refuses every allocation up front with the
// same report, so nothing is written over metadata; writes in place and
// reads work, and check -r all rebuilds the refcounts.

import "errors"

// AllocL2Table is the UntrustedAllocError purpose of a new L2 table;
// "" is any other cluster (data, refcount block, table copy).
const AllocL2Table = "L2 table"

// CheckMetadataRefcounts is the read-write refcount check ReadImage
// leaves out under Options.DeferMetadataRefcounts: a Corrupt error naming
// the first of the header, the active L1 table and the refcount table
// (in that order) whose cluster has refcount 0, an I/O error, or nil.
func (im *Image) CheckMetadataRefcounts() error { return im.checkMetadataRefcounts() }

// UntrustedAllocError is an allocation refused because the image's
// refcounts cannot be trusted (Cause is the CheckMetadataRefcounts
// error); Purpose says what the cluster was for.
type UntrustedAllocError struct {
	Purpose string
	Cause   error
}

func (e *UntrustedAllocError) Error() string {
	what := "a cluster"
	if e.Purpose != "" {
		what = "an " + e.Purpose
	}
	return "refusing to allocate " + what + ": " + e.Cause.Error()
}

func (e *UntrustedAllocError) Unwrap() error { return e.Cause }

// untrustedAllocText is QEMU's "Marking image as corrupt" text for an
// UntrustedAllocError: QEMU's allocator hands out the first cluster with
// refcount 0, the metadata the check named. The header is cluster 0,
// which QEMU's table allocations refuse by offset; a data cluster there,
// and any cluster on the L1 or refcount table, is stopped by its overlap
// check, which names the structure. "" for other errors.
func untrustedAllocText(err error) string {
	var ue *UntrustedAllocError
	var fe *FormatError
	if !errors.As(err, &ue) || !errors.As(ue.Cause, &fe) {
		return ""
	}
	switch fe.Field {
	case "header":
		if ue.Purpose != "" {
			return "Preventing invalid allocation of " + ue.Purpose + " at offset 0"
		}
		return "Preventing invalid write on metadata (overlaps with qcow2_header)"
	case "l1_table_offset":
		return "Preventing invalid write on metadata (overlaps with active L1 table)"
	case "refcount_table_offset":
		return "Preventing invalid write on metadata (overlaps with refcount table)"
	}
	return ""
}
