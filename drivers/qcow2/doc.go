// Package qcow2 is the pure format layer of ringblk's qcow2 support: it
// decodes, validates and encodes qcow2 metadata and maps guest ranges to
// host extents, without doing any I/O of its own beyond an io.ReaderAt.
//
// # Layering
//
//	driver (later)     block.Driver: requests, allocation, COW, refcount
//	                   updates, crash ordering, metadata cache, aio ops
//	       │ uses
//	format (this)      Header, entry codecs, Map, snapshot table,
//	                   ReadImage: pure functions plus reads through io.ReaderAt
//
// The driver, built later on top of this package, owns every write and the
// ordering rules of qcow2.md §2. This layer imports only the standard
// library, so each rule of the format is testable without a ring: header
// parsing (ParseHeader, MarshalBinary), entry codecs (Geometry.DecodeL1Entry,
// DecodeL2Entry, DecodeCompressed, RefcountGet/RefcountSet), guest-to-host
// mapping (Map, style B2 "qcow2 as mapping then I/O"), the snapshot table
// (ParseSnapshotTable, AppendSnapshotTable) and a validated read-only model
// of an image's metadata (ReadImage → *Image).
//
// Map turns a guest range into a short list of extents: unallocated (read
// the backing file, or zeros), zero, data at a host offset, or compressed.
// It takes the L1 table and a callback that returns raw L2 tables, so the
// driver can serve them from its cache; it appends to a caller slice and
// does not allocate when that slice has room.
//
// # Hostile images
//
// Images are untrusted input. Every size field is checked against a named
// limit (limits.go, QEMU 7.2's values: cluster_bits 9..21, L1 ≤ 32 MiB,
// refcount table ≤ 8 MiB, ≤ 65536 snapshots in ≤ 64 MiB with ≤ 1024 bytes
// of extra data each, backing name ≤ 1023 bytes, backing format ≤ 15 bytes,
// refcount_order ≤ 6, virtual size ≤ 2^61, host offsets < 2^56) before
// anything proportional to it is allocated, so open-time memory is bounded
// by the tables' limits plus one cluster. Every L1, L2 and refcount table
// entry is validated when decoded; damaged metadata is an error, never a
// panic or a wrong mapping. Errors are *FormatError values naming the
// spec field and value, wrapping one of ErrNotQcow2, ErrUnsupported,
// ErrCorrupt, ErrLimit or ErrRange for errors.Is; the block layer wraps
// them in its own error type.
//
// Refused outright: unknown incompatible feature bits (named from the
// image's feature table), encryption (crypt_method or the full disk
// encryption extension), external data files, unknown compression types,
// and backing file names with json: or any other protocol prefix. The dirty
// and corrupt bits are fine for reading; Header.CheckWritable refuses them
// for read-write use, and Header.AutoclearToClear tells a writer which
// autoclear bits to clear before its first write. Unknown header
// extensions and header bytes beyond the known fields are kept and written
// back unchanged by MarshalBinary.
package qcow2
