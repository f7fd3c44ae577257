// Package format is ringblk's qcow2 format layer: it decodes, validates
// and encodes qcow2 metadata and maps guest ranges to host extents. The
// block driver (package qcow2, one directory up) is built on it; format
// imports only the standard library and github.com/klauspost/compress/zstd
// (zstd clusters, zstd.go) — never block, aio or cache — so each rule of
// the format is testable without a ring.
//
// The pieces: header parsing (ParseHeader, MarshalBinary; header.go),
// entry codecs (Geometry.DecodeL1Entry, DecodeL2Entry, DecodeCompressed,
// RefcountGet/RefcountSet; entry.go), guest-to-host mapping (Map, style B2
// "qcow2 as mapping then I/O"; mapping.go), the snapshot table
// (ParseSnapshotTable, AppendSnapshotTable; snapshot.go), the bitmap
// directory (BitmapClusters; bitmaps.go), compressed clusters
// (DecompressCluster; compress.go, zstd.go), a validated read-only model of
// an image's metadata (ReadImage → *Image; image.go), a consistency check
// with qemu-img check's counts (Image.Check; check.go), the layout of a
// new image (Layout, CreateOptions; layout.go), qemu-img measure's
// arithmetic (MeasureFullyAllocated; measure.go) and the -o option lists of
// create, convert, measure and amend (ParseOptions; options.go).
//
// One decoder: the read path's one-cluster mapping (Geometry.OneClusterL2,
// DataHost) and the general decoders (DecodeL1Entry, DecodeL2Entry) share
// their first step, a one-mask test for the common clean entry; only what
// it does not accept is classified in full.
//
// Every parser of untrusted bytes has a fuzz target: FuzzQcow2Header
// (header and extensions), FuzzQcow2Open (ReadImage, Map, ReadAt),
// FuzzQcow2SnapshotTable, FuzzBitmapDirectory, FuzzQcow2Entries (L1, L2,
// compressed and refcount table entries), FuzzQcow2Refcounts (refcount
// blocks), FuzzQcow2Decompress and FuzzQcow2ParseOptions.
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
// panic or a wrong mapping. The bitmap directory (BitmapClusters) is
// bounded by nb_bitmaps ≤ 65535, a directory ≤ 64 MiB, names ≤ 1023 bytes,
// granularity 2^9..2^31 and table sizes that must match the disk size;
// tables are read one cluster at a time. Errors are *FormatError values naming the
// spec field and value, wrapping one of ErrNotQcow2, ErrUnsupported,
// ErrCorrupt, ErrLimit or ErrRange for errors.Is; the driver wraps
// them in the block layer's error type.
//
// Refused outright: unknown incompatible feature bits (named from the
// image's feature table), encryption (crypt_method or the full disk
// encryption extension), external data files, unknown compression types,
// and backing file names with json: or any other protocol prefix. The dirty
// and corrupt bits are fine for reading; the driver repairs a dirty image
// at a read-write open and refuses a corrupt one (Header.CheckWritable is
// this package's check), and Header.AutoclearToClear tells a writer which
// autoclear bits to clear before its first write. Unknown header
// extensions and header bytes beyond the known fields are kept and written
// back unchanged by MarshalBinary.
package format
