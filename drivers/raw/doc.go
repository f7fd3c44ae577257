// Package raw is the block driver for raw images on regular files and block
// devices (QEMU's file and host_device drivers): every request becomes
// operations on the submitting Context's io_uring ring through aio, so
// every I/O is counted, batched and testable on the fake ring.
//
// # Using it
//
//	n, err := raw.NewNode(g, "/var/lib/img.raw", raw.Options{Cache: raw.CacheNone}, block.Options{Name: "disk0"})
//	// or, in two steps:
//	d, err := raw.Open(path, opts)     // file, alignment, locks
//	n, err := g.Open(d, block.Options{Align: d.RequestAlign(), ReadOnly: opts.ReadOnly})
//	// (if Graph.Open fails, or is never called: d.Release())
//
// NewNode sets the node options the driver needs: Align to the DIO
// alignment on O_DIRECT (the block layer then pads unaligned requests and
// read-modify-writes them, serialising overlapping requests), ReadOnly, and
// IgnoreDiscard for discard=ignore. Create makes a new image with a
// preallocation mode. Errors are *block.Error naming the operation, node,
// offset and — through the wrapped *os.PathError — the image path;
// errors.Is(err, syscall.ENOSPC) and friends work.
//
// # Options
//
// Cache: writeback (buffered, default), none (O_DIRECT), writethrough
// (O_DSYNC). Discard: ignore (default) or unmap. DetectZeroes: off, on,
// unmap. Prealloc (growth by truncate): off, falloc, full. Locking: auto
// (default), on, off; ShareRW lets other users write. ReadOnly.
//
// # Request path
//
//	Read/Write ─▶ one READ/WRITE (…_FIXED for arena buffers) or READV/WRITEV
//	              on r.Context()'s ring, completion target = the request
//	              itself (a *rawReq): no allocation
//	   O_DIRECT and a buffer off the DIO memory alignment ─▶ bounce through
//	              an aligned arena block (heap when the arena is full)
//	   FUA without O_DSYNC ─▶ write, then fdatasync, chained on completion
//	   detect-zeroes and an all-zero buffer ─▶ write-zeroes
//	Flush       ─▶ FSYNC(datasync) on the ring
//	Discard     ─▶ FALLOCATE punch hole (file) / BLKDISCARD (device, worker)
//	WriteZeroes ─▶ FALLOCATE zero range or punch hole (file), BLKZEROOUT or
//	              punch (device); EOPNOTSUPP is remembered and falls back
//	              (discard: no-op; punch: zero range; zero range: writes);
//	              NoFallback: ENOTSUP instead of writes (zero.go)
//	BlockStatus ─▶ lseek SEEK_DATA/SEEK_HOLE (files); data for devices
//	Truncate    ─▶ ftruncate / fallocate / zero writes, on a worker
//
// aio finishes short transfers: a short read or write mid-file is
// resubmitted for the rest, a read past end of file is zero-filled, a
// write that makes no progress is ENOSPC. Work that blocks (ioctls,
// truncate with preallocation) runs on its own goroutine and is completed
// on the request's Context through Context.Schedule; the request — and so
// the node's in-flight count, which drain waits on — stays raised until
// then.
//
// # Threading
//
// One Driver serves one node, and any Context may submit to it: request
// methods touch only immutable fields, atomics (the EOPNOTSUPP flags) and
// the request; the zero buffer is written once under a sync.Once. Open,
// Close and Length run on the main Context.
//
// # Locks
//
// Open takes QEMU 7.2-compatible OFD byte-range locks (see lock.go): a
// second writer — ringblk or QEMU — is refused with QEMU's wording
// (`Failed to get "write" lock`), and a running QEMU's locks are honoured.
package raw
