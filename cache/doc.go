// Package cache is a bounded cache of fixed-size metadata tables, with load
// and write-back supplied by the caller. It has no format knowledge: a table
// is a Key (image, kind, file offset) and some bytes, and the qcow2 driver
// says what they mean, how to read them and how to write them.
//
// # Tiers
//
//	tier 0  driver    L1 table, reftable, per-table generations (authoritative)
//	tier 1  Set       one per image: every dirty or pinned table, plus a few
//	                  clean ones; bounded, exact LRU, flushed by level
//	tier 2  Clean     one per process: clean immutable copies of any image's
//	                  tables under one byte budget; LRU (default) or ristretto
//
// A lookup goes tier 1 → tier 2 (validated against the generation) → disk.
// Writes go through tier 1 only.
//
// # Tier 1: Set
//
// A Set holds at most Config.Tables tables of Config.TableSize bytes,
// allocated up front. Get returns a pinned *Table; a hit allocates nothing.
// A miss takes a free slot or the least recently used clean, unpinned one
// and runs Config.Load outside the lock (concurrent Gets of the key wait for
// that one load). Pinned and dirty tables are never evicted; when every slot
// is one or the other, Get fails with ErrFull and the driver flushes.
//
// A caller that does its own I/O and must never block on the set (the qcow2
// driver, whose loads run in coroutines) uses Peek (a lookup that neither
// pins nor waits), Insert (a miss filled from the caller's bytes, evicting
// like Get) and Pin instead of Get.
//
// The set has one index (index.go), changed under its lock and readable
// without one: View finds a ready table with no lock, no pin and no count,
// and returns the table's sequence; the caller reads words with atomic
// loads (Word) and keeps what it read only if Valid(seq) still holds (no
// eviction, discard or SetWord in between: a seqlock per table). A View
// hit marks the table Referenced, and eviction gives a referenced table a
// second chance, so lock-free hits count for recency without a lock or a
// queue. Writers change the bytes of a table readers may View with
// SetWord (BeginWrite/EndWrite around a change of several words). Discard of a pinned table orphans it:
// it leaves the index at once and its slot is freed at the last Unpin.
//
// A modified table is marked dirty at a Level. Flush writes the dirty
// tables one level at a time with a caller barrier (fdatasync) after each
// level, so every table of level n is durable before any table of level n+1
// is written — for qcow2, refcount blocks (level 0) before L2 tables
// (level 1), rule R1, and the whole of R12 in one call. RequireBarrier puts
// a barrier in front (COW data before the L2 entry, R4). The driver then
// writes its L1 or header pointers, which come last.
//
// # Tier 2: Clean
//
// A Clean cache shares clean, immutable copies among all open images. Each
// hit is checked against the caller's current generation for the table, so
// a copy that predates a modification is a miss, never stale data. Fill
// loads a missing table once however many callers want it. Two
// implementations: LRU (exact, synchronous, one mutex) and Shared
// (ristretto v2 with a mixing KeyToHash; it may drop, reject or delay Sets,
// which only costs reloads because it never holds dirty data). The default,
// NewClean with PolicyDefault, is the LRU; docs/design/metadata-cache.md
// has the benchmark that chose it.
//
// # Concurrency
//
// Set, Table, LRU and Shared are safe for concurrent use. A Table's bytes
// are guarded by its own RLock/Lock. Flush requires the caller to stop
// modifications for its duration (the driver's metadata lock, as QEMU's
// s->lock); readers may continue. Counters are atomics; the tier-2 ones
// bumped on every lookup are padded to their own cache lines.
package cache
