package format

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
