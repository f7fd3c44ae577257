package format

// Open-time limits (qcow2.md §3.1). Each size field read from an image is
// compared with one of these before anything proportional to it is
// allocated or read; exceeding one is an ErrLimit (style B5: "limits are
// errors, not allocations"). The values are QEMU 7.2's, so that every image
// QEMU opens, we open, and the memory an image can make us allocate at open
// is bounded by about MaxL1Bytes + MaxRefcountTableBytes +
// MaxSnapshotTableBytes plus one cluster. Options can lower the three table
// caps for a library user; they can never raise them.
const (
	// MinClusterBits and MaxClusterBits bound cluster_bits: 512 B to 2 MiB
	// clusters. Checked before 1<<cluster_bits is ever computed.
	MinClusterBits = 9
	MaxClusterBits = 21
	// MinClusterBitsExtendedL2 is the smallest cluster_bits allowed with
	// extended L2 entries (16 KiB clusters, 512 B subclusters).
	MinClusterBitsExtendedL2 = 14

	// HeaderLengthV2 is the fixed header length of version 2 images.
	HeaderLengthV2 = 72
	// MinHeaderLengthV3 is the smallest header_length of a version 3 image.
	// header_length must also be a multiple of 8 and at most a cluster.
	MinHeaderLengthV3 = 104

	// MaxRefcountOrder bounds refcount_order: refcount_bits 1 to 64.
	MaxRefcountOrder = 6

	// MaxL1Bytes bounds every L1 table, active or snapshot (QEMU's
	// QCOW_MAX_L1_SIZE): 4 Mi entries.
	MaxL1Bytes = 32 << 20
	// MaxRefcountTableBytes bounds the refcount table (QCOW_MAX_REFTABLE_SIZE).
	MaxRefcountTableBytes = 8 << 20

	// MaxSnapshots bounds nb_snapshots (QCOW_MAX_SNAPSHOTS).
	MaxSnapshots = 65536
	// MaxSnapshotTableBytes bounds the whole snapshot table including ids,
	// names and extra data (QCOW_MAX_SNAPSHOTS_SIZE).
	MaxSnapshotTableBytes = 64 << 20
	// MaxSnapshotExtraData bounds each entry's extra_data_size
	// (QCOW_MAX_SNAPSHOT_EXTRA_DATA).
	MaxSnapshotExtraData = 1024

	// MaxBackingNameLen bounds backing_file_size; the name must also fit in
	// the first cluster after backing_file_offset.
	MaxBackingNameLen = 1023
	// MaxBackingFormatLen bounds the backing-format extension (QEMU keeps
	// it in a 16-byte buffer with a terminating NUL).
	MaxBackingFormatLen = 15

	// MaxBitmaps and MaxBitmapDirectoryBytes bound the bitmaps extension.
	MaxBitmaps              = 65535
	MaxBitmapDirectoryBytes = 65535 * 1024

	// MaxImageSize bounds the virtual size. With the largest L1 (4 Mi
	// entries) and the largest cluster (2 MiB, 256 Ki L2 entries) a qcow2
	// image cannot address more than 2^61 bytes, and any bigger size field
	// could only be a lie. Smaller clusters are bounded tighter by the L1
	// checks ("L1 table too large").
	MaxImageSize = 1 << 61

	// MaxHostOffset is the first host offset a standard L1/L2 entry cannot
	// express (bits 9..55). Compressed descriptors have a lower bound that
	// depends on cluster_bits; see Geometry.MaxCompressedOffset.
	MaxHostOffset = 1 << 56

	// BitmapsExtLen is the only valid length of the bitmaps extension, and
	// fdeExtLen that of the full disk encryption pointer.
	BitmapsExtLen = 24
	fdeExtLen     = 16

	// snapshotHeaderLen is the fixed part of a snapshot table entry.
	snapshotHeaderLen = 40
	// featureNameLen is the size of one feature name table entry.
	featureNameLen = 48
)
