// Package qcow2 is ringblk's qcow2 block driver: it turns guest requests
// on a node into requests to the node's "file" (and "backing") children.
// The format itself — header, entry codecs, mapping, snapshot table,
// bitmap directory, limits, compression codecs, ReadImage and Image.Check,
// create layout — is package format (drivers/qcow2/format), which imports
// no block, aio or cache.
//
// # Layering
//
//	driver             block.Driver (driver.go, read.go, write.go, alloc.go,
//	                   flush.go, discard.go, resize.go, create_write.go,
//	                   subcluster.go, snapshot_ops.go, repair.go, lazy.go,
//	                   amend.go, amend_zero.go, vmstate.go, make_empty.go):
//	                   requests, allocation, COW, refcount
//	                   updates, crash ordering, L2 cache, coroutines for
//	                   slow paths
//	       │ uses
//	format             package format: Header, entry codecs, Map, snapshot
//	                   table, Check, ReadImage: pure functions plus reads
//	                   through io.ReaderAt
//
// # The driver
//
// NewNode (or New + Graph.Open) opens an image on a file node: the file
// node becomes the "file" child, ReadImage validates the metadata through
// it, and a backing file is opened by the caller's BackingOpener with an
// explicit format (raw or qcow2; never probed), a depth cap
// (MaxBackingDepth) and cycle detection by file ID. Create writes a new
// image with QEMU's layout (byte-identical to qemu-img create for the
// supported options).
//
// Hot paths run on the request's Context without allocating: a read
// whose L2 tables are cached maps the range under the driver's mutex and
// sends one child read per data extent and one backing-node read per
// unallocated extent (zero-filling the rest); a write whose clusters are
// all allocated with COPIED set goes straight to the data clusters; a
// flush with nothing dirty is a child flush. Everything else runs as a
// coroutine (aio.Co) that issues child requests one at a time: L2 misses,
// compressed clusters (inflated through a one-cluster cache), and every
// metadata change, serialised by one coroutine mutex (metaLock).
// Allocating writes release it while their data goes out; the guest
// clusters stay marked in flight so that no other request allocates or
// changes them meanwhile (R8). L2 tables live in the cache package
// (l2cache.go): a bounded per-image cache.Set holds every dirty or pinned
// table plus recently used clean ones and writes them back in stage C of
// flushMetadata; clean tables it evicts go to the cache.Clean the caller
// passed (DriverOptions.SharedCache, shared by as many images as the caller
// likes; nil: a private one), keyed by a per-open image ID and checked
// against a per-table generation that every change, free and reuse moves
// forward. The set's one index is readable without a lock (cache.Set.View):
// cached reads and in-place writes take no driver-wide lock (fast.go); the
// rest maps under mu without I/O or allocation, including hits in the
// shared cache. Driver.CacheStats exposes the counters.
//
// Crash ordering follows qcow2.md §2.9: metadata changes are made in
// memory (refcount blocks, L2 tables, refcount table and L1 entries, each
// with a dirty mark) and written back by flushMetadata in dependency order
// with an fsync after each stage — refcount blocks (R1), refcount table
// entries (R3), L2 tables (R1, R3, R4), L1 entries (R3) — with frees
// deferred until the pointer removals are durable (R2) and until requests
// that mapped the old clusters have finished their I/O. Each rule is
// documented at the code that keeps it. Dirty L2 tables are pinned in the
// cache and written back at a flush or when they fill 7/8 of it.
//
// The refcount table grows (a self-describing area at the end of the
// image, then one header write) when allocation outgrows it; Truncate
// grows the disk (moving the L1 table to a larger one when needed, then
// one header write of the size) or shrinks it. Whole-cluster allocating writes are
// batched: the clusters are allocated together and written with one child
// write per host-contiguous run. Discard and write-zeroes follow QEMU 7.2
// (zero flag on version 3, deallocation on version 2). Block status
// reports the mapping; it does not ask the file for holes under data.
// A partial allocating write whose cluster otherwise reads as zeros does
// not build a cluster-sized buffer: a cluster past the old end of the file
// gets only the guest bytes, any other has the file zero it (ZERO_RANGE)
// first, as QEMU does.
//
// Driver.Check (block.Checker) and Image.Check count leaks and corruptions
// as qemu-img check does; with a repair mode Driver.Check repairs like
// qemu-img check -r leaks|all (lower leaked refcounts, raise low ones,
// rebuild the refcount structure in QEMU's placement when a referenced
// cluster has refcount 0, fix COPIED flags, then clear the dirty and
// corrupt bits), and refuses images with damaged entries
// (docs/design/qcow2-repair.md). Lazy refcounts: a flush may leave refcount
// blocks in memory once the dirty bit is durable (R10); a clean close
// writes them and clears it; a read-write open of a dirty image repairs it
// first (DriverOptions.CheckOpen opens it unrepaired, writes refused until
// a repair).
//
// Create also preallocates (metadata, falloc, full) with QEMU 7.2's
// cluster placement (docs/design/qcow2-preallocation.md) and makes
// extended-L2 images. Writes to extended-L2 images allocate per subcluster
// (subcluster.go): partial writes complete only the touched subclusters,
// and write-zeroes/discard use the zero bitmap as QEMU 7.2 does. Amend
// (amend.go) applies qemu-img amend's compat, lazy_refcounts, size and
// backing changes to an open read-write node.
//
// Internal snapshots (snapshot_ops.go): CreateSnapshot, ApplySnapshot and
// DeleteSnapshot do what qemu-img snapshot -c/-a/-d do, on a drained
// read-write node, in a coroutine under metaLock. Refcounts count paths: a
// data cluster in an L2 table shared by k L1 tables counts k times. COPIED
// is recomputed over the whole active tree after each operation (R7).
// Every new table (a snapshot's L1 copy, the snapshot table, the active L1
// of an apply) goes to fresh clusters, durable with its refcounts, and is
// switched in by one small header write (R3, R6); decrements come only
// after the switch is durable (R2). docs/design/qcow2-snapshots.md has the
// crash windows and the differences from qemu-img.
//
// Crash consistency is tested two ways. TestQcow2KillNine re-executes the
// test binary as a child that runs random writes, write-zeroes, discards,
// flushes and a resize on a real image file, several requests in flight,
// and logs after every flush how far its durable prefix reaches; the parent
// kills it with SIGKILL, then requires qemu-img check to find at most
// leaks, every sector to hold a value the durable prefix allows (read
// through ringblk and through qemu-img convert), and a finished resize to
// be in the header. TestQcow2DriverCrashStates records every write and
// flush at the file node and checks power-loss states: whole writes, and
// writes torn at 512-byte sectors, relying on sector-atomic writes as QEMU
// does.
//
// Compressed writes are deflate with a 4 KiB window (QEMU's inflate
// window), or one zstd frame per cluster on a zstd image, packed several
// to a host cluster (compress_pack.go).
//
// Truncate also shrinks (shrink.go, QEMU 7.2's shrink: entries past the
// new end dropped, L2 tables and unused refcount blocks freed, freed
// clusters punched, the file cut after its last used cluster), and
// TruncatePrealloc grows with preallocation (prealloc_resize.go). A new
// refcount block goes where QEMU puts it, after the run that needs it
// (alloc_place.go); freed clusters are reused before the file grows.
//
// Not yet: amend of refcount_bits; resizing an image with persistent
// bitmaps (refused); repair of damaged L1/L2 entries.
//
// Persistent dirty bitmaps (bitmaps.go, docs/design/qcow2-bitmaps.md):
// loaded at open and attached to the node, in_use on disk before the
// first write (R13), stored at close and inactivation. A damaged bitmap
// directory is not used: the first write clears autoclear bit 0 (R10) and
// drops the extension where that is safe (bitmaps_drop.go). With cache=none the 8-byte
// pointer writes are padded by the block layer (a read-modify-write of
// the sector under the file node's request serialisation), not from the
// in-memory copy as QEMU does.
//
// # Hostile images
//
// Images are untrusted input; package format's documentation lists the
// limits and the refusals. The driver opens an image through
// format.ReadImage and decodes every entry it reads with format's codecs.
package qcow2
