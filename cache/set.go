package cache

import (
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/ringblk/ringblk/internal/invariants"
)

// ErrFull is returned by Set.Get on a miss when every slot holds a dirty or
// pinned table. Nothing was evicted and nothing was loaded: the caller
// flushes (which makes dirty tables clean, hence evictable) or waits for pins
// to drop, then retries. The set never grows past its capacity.
var ErrFull = errors.New("cache: every table is dirty or pinned")

// Level orders write-back inside one Set.Flush: every dirty table of a lower
// level is written, and a barrier has completed, before any table of a
// higher level is written. For qcow2 (rules R1 and R12) refcount blocks are
// level 0 and L2 tables level 1.
type Level uint8

// Config sizes a Set and supplies its I/O.
type Config struct {
	// Tables is the capacity in tables (at least 1). Memory is allocated up
	// front: Tables × TableSize bytes.
	Tables int
	// TableSize is the size of every table in bytes (at least 1).
	TableSize int
	// Load fills dst (len TableSize) with the table named by key. It runs
	// on a miss, outside the set's lock, at most once at a time per key;
	// other Gets of the same key wait for it. It must fill all of dst. An
	// error is returned to every waiting Get and leaves no entry behind.
	Load func(key Key, dst []byte) error
	// Evicted, if set, is called when a clean table leaves the set to make
	// room, before its memory is reused: a place to offer the table to the
	// shared clean cache. data is valid only during the call. It runs
	// outside the set's lock, on the goroutine whose Get caused the
	// eviction.
	Evicted func(key Key, data []byte)
}

// Set is one image's bounded write-back set of tables (tier 1 in
// docs/design/metadata-cache.md): the only place a dirty or pinned table
// lives. Its capacity is fixed at creation; a miss reuses the least recently
// used clean, unpinned slot and never allocates table memory.
//
// Entry states, all changed under mu:
//
//	free ──Get miss──▶ loading ──Load ok──▶ ready ──Discard / evicted──▶ free
//	  │                   └──Load error──▶ free       │
//	  └──Insert (filled from the caller's bytes)──▶ ready
//	                                                   └─Discard while pinned─▶ orphan ──last Unpin──▶ free
//
// A ready entry is on the LRU list exactly when it is clean and unpinned;
// only entries on that list are eviction victims. Dirty entries become
// clean only in Flush, after their level's barrier.
//
// Set is safe for concurrent use.
type Set struct {
	cfg    Config
	tables []Table // slot i is tables[i]; never reallocated

	// flushMu serialises Flush calls.
	flushMu sync.Mutex
	// flushBuf holds the tables a Flush writes; it is allocated once
	// (capacity Tables) and owned by the Flush holding flushMu.
	flushBuf []flushItem

	// idx is the set's one index (index.go): changed under mu, read
	// without a lock by View.
	idx slotIndex

	mu struct {
		sync.Mutex
		free []int32 // slots in state free, used as a stack
		// head is the most recently used evictable entry, tail the
		// least; -1 when the list is empty.
		head, tail int32
		// INVARIANT: dirty == number of ready entries with dirty set.
		dirty int64
		// INVARIANT: pinned == number of entries with pins > 0.
		pinned int64
		// INVARIANT: lruLen == number of entries on the LRU list (ready,
		// clean, unpinned).
		lruLen   int64
		flushing bool
		// barrier is set by RequireBarrier and cleared when a Flush's
		// opening barrier succeeds.
		barrier bool

		hits, misses, fills, evictions, full uint64
	}
}

type tableState uint8

const (
	stateFree tableState = iota
	stateLoading
	stateReady
	// stateOrphan: discarded while pinned. The entry is out of the index
	// and never written back; its slot becomes free at the last Unpin.
	stateOrphan
)

// Table is one slot of a Set: a fixed-size buffer and the state that governs
// it. A Table is handed out pinned by Set.Get and stays valid (its key and
// buffer do not change) until the matching Unpin.
//
// The bytes are the caller's to interpret. The table's own read-write lock
// orders readers and writers of the bytes: read them under RLock, modify
// them under Lock and call MarkDirty before Unlock. The set never touches
// the bytes of a pinned table; Flush reads them only through the caller's
// writeBack.
type Table struct {
	rw   sync.RWMutex
	data []byte
	set  *Set
	slot int32

	// seq is the table's sequence for lock-free readers (View): odd
	// while the slot is not readable (free, loading, orphan) and for the
	// length of a SetWord; every change of key or bytes moves it. koff and
	// kik mirror key for those readers. Written under set.mu (SetWord:
	// under the caller's writer lock, on a pinned table).
	seq  atomic.Uint64
	koff atomic.Int64
	kik  atomic.Uint64
	// refd is set by Referenced (a lock-free hit); eviction gives the
	// table a second chance and clears it.
	refd atomic.Bool

	// Guarded by set.mu.
	key   Key
	state tableState
	// INVARIANT: pins >= 0; pins > 0 implies the entry is not on the LRU
	// list and is neither evicted nor discarded.
	pins  int32
	dirty bool
	level Level
	// dirtySeq counts MarkDirty calls. Flush cleans a table only if
	// dirtySeq has not moved since it took the table, so a modification
	// that races with a Flush is never marked clean unwritten.
	dirtySeq   uint64
	prev, next int32
	// flight is non-nil while state == stateLoading.
	flight *flight
}

// flight is one load in progress; waiters block on done.
type flight struct {
	done chan struct{}
	err  error
}

type flushItem struct {
	t     *Table
	seq   uint64
	level Level
}

// NewSet returns an empty set with all its table memory allocated.
func NewSet(cfg Config) (*Set, error) {
	if cfg.Tables < 1 || cfg.Tables > 1<<30 {
		return nil, fmt.Errorf("cache: Config.Tables %d out of range [1, 2^30]", cfg.Tables)
	}
	if cfg.TableSize < 1 {
		return nil, fmt.Errorf("cache: Config.TableSize %d must be positive", cfg.TableSize)
	}
	if cfg.Load == nil {
		return nil, errors.New("cache: Config.Load is required")
	}
	s := &Set{
		cfg:      cfg,
		tables:   make([]Table, cfg.Tables),
		flushBuf: make([]flushItem, 0, cfg.Tables),
	}
	// One backing array keeps the tables contiguous and costs one
	// allocation; each table's capacity is clipped so an append by a
	// caller cannot run into its neighbour.
	mem := make([]byte, cfg.Tables*cfg.TableSize)
	s.idx = newSlotIndex(cfg.Tables)
	s.mu.free = make([]int32, 0, cfg.Tables)
	s.mu.head, s.mu.tail = -1, -1
	for i := range s.tables {
		t := &s.tables[i]
		lo := i * cfg.TableSize
		t.data = mem[lo : lo+cfg.TableSize : lo+cfg.TableSize]
		t.set = s
		t.slot = int32(i)
		t.prev, t.next = -1, -1
		t.seq.Store(1) // free: not readable
		t.koff.Store(-1)
	}
	for i := cfg.Tables - 1; i >= 0; i-- {
		s.mu.free = append(s.mu.free, int32(i))
	}
	return s, nil
}

// Get returns the table for key, pinned; the caller must Unpin it exactly
// once. On a miss it takes a free slot, or evicts the least recently used
// clean unpinned table, and runs Config.Load without holding the lock; a
// concurrent Get of the same key waits for that load instead of loading
// again. It returns ErrFull when no slot can be taken, and the load's error
// if the load fails. A hit does not allocate.
func (s *Set) Get(key Key) (*Table, error) {
	s.mu.Lock()
	for {
		i, ok := s.idx.get(s, key)
		if !ok {
			break
		}
		t := &s.tables[i]
		if t.state == stateReady {
			s.pinLocked(t)
			s.mu.hits++
			s.mu.Unlock()
			return t, nil
		}
		// Loading: wait for the loader, then look again (the entry may
		// have failed, or even been loaded and evicted meanwhile). An
		// Insert in progress has no flight: it finishes without I/O, so
		// yield and look again.
		fl := t.flight
		s.mu.Unlock()
		if fl == nil {
			runtime.Gosched()
			s.mu.Lock()
			continue
		}
		<-fl.done
		if fl.err != nil {
			return nil, fl.err
		}
		s.mu.Lock()
	}
	return s.loadLocked(key)
}

// loadLocked handles a miss. REQUIRES: s.mu held; it is released on return.
func (s *Set) loadLocked(key Key) (*Table, error) {
	s.mu.misses++
	t := s.claimLocked(key, true)
	if t == nil {
		return nil, ErrFull
	}
	fl := t.flight
	// The slot is ours alone now: it is out of the LRU list, pinned and
	// loading, so nobody else reads or writes its bytes.
	err := s.cfg.Load(key, t.data)

	s.mu.Lock()
	t.flight = nil
	if err != nil {
		s.idx.del(s, key)
		t.pins = 0
		s.mu.pinned--
		t.state = stateFree
		s.mu.free = append(s.mu.free, t.slot)
		fl.err = err
		s.mu.Unlock()
		close(fl.done)
		return nil, err
	}
	t.state = stateReady
	t.seq.Add(1) // readable
	s.mu.Unlock()
	close(fl.done)
	return t, nil
}

// claimLocked makes a slot key's entry: taken (takeSlotLocked), pinned,
// loading, in the index, with a flight for Gets to wait on when
// withFlight. It then releases s.mu and hands the evicted victim, if any,
// to Config.Evicted. With no slot to take it counts Full, releases s.mu
// and returns nil. REQUIRES: s.mu held; it is released on return.
func (s *Set) claimLocked(key Key, withFlight bool) *Table {
	t, victim, evicted := s.takeSlotLocked()
	if t == nil {
		s.mu.full++
		s.mu.Unlock()
		return nil
	}
	t.key = key
	t.koff.Store(key.Off)
	t.kik.Store(packIK(key))
	t.refd.Store(false)
	t.state = stateLoading
	t.flight = nil
	if withFlight {
		t.flight = &flight{done: make(chan struct{})}
	}
	t.dirty = false
	t.level = 0
	s.pinLocked(t)
	s.idx.put(key, t.slot)
	s.mu.fills++
	s.mu.Unlock()
	if evicted && s.cfg.Evicted != nil {
		s.cfg.Evicted(victim, t.data)
	}
	return t
}

// takeSlotLocked returns a slot for a new entry: a free one, else the LRU
// victim (whose key is returned and which is removed from the index), else
// nil. REQUIRES: s.mu held.
func (s *Set) takeSlotLocked() (t *Table, victim Key, evicted bool) {
	if n := len(s.mu.free); n > 0 {
		i := s.mu.free[n-1]
		s.mu.free = s.mu.free[:n-1]
		return &s.tables[i], Key{}, false
	}
	if s.mu.tail < 0 {
		return nil, Key{}, false
	}
	// Second chance: a table used through View since it last reached the
	// tail goes back to the front (in tail order) instead of out.
	for range s.mu.lruLen {
		t = &s.tables[s.mu.tail]
		if !t.refd.Load() {
			break
		}
		t.refd.Store(false)
		if s.mu.head != t.slot {
			s.unlinkLocked(t)
			s.pushFrontLocked(t)
		}
	}
	t = &s.tables[s.mu.tail]
	if invariants.Enabled && (t.state != stateReady || t.dirty || t.pins != 0) {
		s.failLocked("cache: LRU victim %+v is state %d dirty %t pins %d", t.key, t.state, t.dirty, t.pins)
	}
	s.unlinkLocked(t)
	s.idx.del(s, t.key)
	t.seq.Add(1) // no longer readable
	s.mu.evictions++
	return t, t.key, true
}

// failLocked reports a broken invariant. It releases s.mu first, so a test
// (or a recover in the caller) does not deadlock on the set afterwards.
// REQUIRES: s.mu held.
func (s *Set) failLocked(format string, args ...any) {
	s.mu.Unlock()
	invariants.Failf(format, args...)
}

// pinLocked adds a pin. REQUIRES: s.mu held.
func (s *Set) pinLocked(t *Table) {
	if t.pins == 0 {
		s.mu.pinned++
		if t.state == stateReady && !t.dirty {
			s.unlinkLocked(t)
		}
	}
	t.pins++
}

// unpinLocked drops a pin; the last one makes a clean table evictable as the
// most recently used. REQUIRES: s.mu held.
func (s *Set) unpinLocked(t *Table) {
	if t.pins <= 0 {
		s.failLocked("cache: Unpin of unpinned table %+v", t.key)
	}
	t.pins--
	if t.pins == 0 {
		s.mu.pinned--
		switch {
		case t.state == stateOrphan:
			t.state = stateFree
			s.mu.free = append(s.mu.free, t.slot)
		case !t.dirty:
			s.pushFrontLocked(t)
		}
	}
}

func (s *Set) pushFrontLocked(t *Table) {
	s.mu.lruLen++
	t.prev = -1
	t.next = s.mu.head
	if s.mu.head >= 0 {
		s.tables[s.mu.head].prev = t.slot
	} else {
		s.mu.tail = t.slot
	}
	s.mu.head = t.slot
}

func (s *Set) unlinkLocked(t *Table) {
	s.mu.lruLen--
	if t.prev >= 0 {
		s.tables[t.prev].next = t.next
	} else {
		s.mu.head = t.next
	}
	if t.next >= 0 {
		s.tables[t.next].prev = t.prev
	} else {
		s.mu.tail = t.prev
	}
	t.prev, t.next = -1, -1
}

// Lookup returns the table for key, pinned, if it is resident and loaded.
// It never loads, evicts or waits. Hits and misses are counted as for Get.
func (s *Set) Lookup(key Key) (*Table, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	i, ok := s.idx.get(s, key)
	if !ok || s.tables[i].state != stateReady {
		s.mu.misses++
		return nil, false
	}
	t := &s.tables[i]
	s.pinLocked(t)
	s.mu.hits++
	return t, true
}

// Peek returns the table for key if it is resident and loaded, without
// pinning it, and makes it the most recently used. It never loads, evicts
// or waits. Hits and misses are counted as for Get.
//
// The table is not pinned: its bytes stay the key's only while the caller
// keeps every Insert, Get and Discard of the set from running (a driver
// that makes all of them under its own lock, and reads under that lock).
// A hit does not allocate.
func (s *Set) Peek(key Key) (*Table, bool) {
	return s.peek(key, true)
}

// Resident is Peek without the counters, for a caller looking again at a
// table it has just counted (a retry after Insert).
func (s *Set) Resident(key Key) (*Table, bool) {
	return s.peek(key, false)
}

func (s *Set) peek(key Key, count bool) (*Table, bool) {
	s.mu.Lock()
	i, ok := s.idx.get(s, key)
	if !ok || s.tables[i].state != stateReady {
		if count {
			s.mu.misses++
		}
		s.mu.Unlock()
		return nil, false
	}
	t := &s.tables[i]
	if t.pins == 0 && !t.dirty && s.mu.head != t.slot {
		s.unlinkLocked(t)
		s.pushFrontLocked(t)
	}
	if count {
		s.mu.hits++
	}
	s.mu.Unlock()
	return t, true
}

// Pin pins t if it is still resident, for a caller that found it with
// Peek and has kept Insert, Get and Discard from running since; it reports
// false (and pins nothing) if t left the set. Not counted as a lookup.
func (s *Set) Pin(t *Table) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t.set != s || t.state != stateReady {
		return false
	}
	s.pinLocked(t)
	return true
}

// ErrLoading is returned by Insert when a Get is loading the same key.
var ErrLoading = errors.New("cache: table is being loaded")

// Insert makes key resident with the bytes of src (the rest of the table
// zeroed; src may be nil) and returns it pinned; the caller must Unpin it.
// It is Get for a caller that does its own I/O and must never block on the
// set: it takes a free slot or evicts the least recently used clean,
// unpinned table (calling Config.Evicted on this goroutine, outside the
// lock) and copies src, never running Load. If key is already resident the
// resident table wins: it is pinned and returned, and src is ignored. With
// no slot to take it returns ErrFull; with a Get loading key, ErrLoading.
// It counts a fill, not a miss (the lookup that missed counted that). It
// does not allocate.
// REQUIRES: len(src) <= TableSize; src is not the bytes of a slot that
// this Insert may evict (a pinned table's bytes are safe).
func (s *Set) Insert(key Key, src []byte) (*Table, error) {
	if len(src) > s.cfg.TableSize {
		return nil, fmt.Errorf("cache: Insert of %d bytes into %d-byte tables", len(src), s.cfg.TableSize)
	}
	s.mu.Lock()
	if i, ok := s.idx.get(s, key); ok {
		t := &s.tables[i]
		if t.state != stateReady {
			s.mu.Unlock()
			return nil, ErrLoading
		}
		s.pinLocked(t)
		s.mu.Unlock()
		return t, nil
	}
	// Loading until the bytes are in: lookups miss it, Flush skips it and
	// nothing evicts it (it is pinned and off the LRU list).
	t := s.claimLocked(key, false)
	if t == nil {
		return nil, ErrFull
	}
	fillTable(t.data, src)

	s.mu.Lock()
	t.state = stateReady
	t.seq.Add(1) // readable
	s.mu.Unlock()
	return t, nil
}

// Available returns how many tables a miss could take now: free slots plus
// clean, unpinned tables. Only pins and MarkDirty lower it.
func (s *Set) Available() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.mu.free) + int(s.mu.lruLen)
}

// Slot returns the table in slot i, in [0, Capacity), whatever it holds
// now: for a caller that keeps per-slot state beside the set (see
// Table.Slot). Its key and bytes are the caller's to use only under the
// rules of Table.
func (s *Set) Slot(i int) *Table { return &s.tables[i] }

// Capacity returns Config.Tables.
func (s *Set) Capacity() int { return len(s.tables) }

// Discard removes key without writing it back, dirty or not: QEMU's
// qcow2_cache_discard, for a table whose cluster has just been freed. It
// reports whether an entry was removed. A table that is loading is left
// alone (false). A pinned table leaves the index at once (lookups miss, a
// new table may be inserted under the same key) but keeps its bytes for
// its holders; its slot is freed at the last Unpin, and a MarkDirty of it
// meanwhile is ignored: the table is gone.
func (s *Set) Discard(key Key) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	i, ok := s.idx.get(s, key)
	if !ok || s.tables[i].state != stateReady {
		return false
	}
	t := &s.tables[i]
	if t.dirty {
		t.dirty = false
		s.mu.dirty--
	} else if t.pins == 0 {
		s.unlinkLocked(t)
	}
	s.idx.del(s, key)
	t.seq.Add(1) // no longer readable
	if t.pins != 0 {
		t.state = stateOrphan
		return true
	}
	t.state = stateFree
	s.mu.free = append(s.mu.free, t.slot)
	return true
}

// RequireBarrier records that data written since the last barrier must be
// durable before any table is written (QEMU's depends_on_flush, rule R4:
// COW data before the L2 entry that points at it). The next Flush then
// starts with a barrier.
func (s *Set) RequireBarrier() {
	s.mu.Lock()
	s.mu.barrier = true
	s.mu.Unlock()
}

// Flush writes every dirty table in level order and makes it durable:
//
//	[barrier, if RequireBarrier was called]
//	writeBack(each dirty table of the lowest level) ; barrier
//	writeBack(each dirty table of the next level)   ; barrier   …
//
// Levels with no dirty table are skipped, so an idle set costs nothing.
// After a level's barrier returns, its tables are clean and evictable. On
// the first error Flush stops and returns it; tables not yet covered by a
// successful barrier stay dirty, and the next Flush writes them again.
//
// writeBack receives the table pinned; it reads the bytes (under RLock if
// other goroutines may read concurrently) and must not Unpin. Flush calls
// serialise.
//
// REQUIRES: no table of the set is modified while Flush runs. The caller
// holds its metadata lock across Flush, as QEMU holds the image lock
// (s->lock): a table modified in the middle of a flush may be written before
// the tables it depends on. Readers may carry on, and misses still load
// into clean slots. Invariants builds panic on a MarkDirty during Flush;
// other builds keep such a table dirty (it is never marked clean unwritten).
func (s *Set) Flush(writeBack func(t *Table) error, barrier func() error) error {
	s.flushMu.Lock()
	defer s.flushMu.Unlock()

	s.mu.Lock()
	items := s.flushBuf[:0]
	for i := range s.tables {
		t := &s.tables[i]
		if t.state == stateReady && t.dirty {
			s.pinLocked(t)
			items = append(items, flushItem{t: t, seq: t.dirtySeq, level: t.level})
		}
	}
	needBarrier := s.mu.barrier
	if len(items) == 0 && !needBarrier {
		s.mu.Unlock()
		return nil
	}
	s.mu.flushing = true
	s.mu.Unlock()

	slices.SortStableFunc(items, byLevel)
	err := s.flushItems(items, needBarrier, writeBack, barrier)

	s.mu.Lock()
	s.mu.flushing = false
	for _, it := range items {
		s.unpinLocked(it.t)
	}
	s.mu.Unlock()
	clear(items) // drop the *Table references until the next Flush
	return err
}

func byLevel(a, b flushItem) int { return int(a.level) - int(b.level) }

func (s *Set) flushItems(items []flushItem, needBarrier bool, writeBack func(*Table) error, barrier func() error) error {
	if needBarrier {
		if err := barrier(); err != nil {
			return err
		}
		s.mu.Lock()
		s.mu.barrier = false
		s.mu.Unlock()
	}
	for lo := 0; lo < len(items); {
		hi := lo + 1
		for hi < len(items) && items[hi].level == items[lo].level {
			hi++
		}
		for _, it := range items[lo:hi] {
			if err := writeBack(it.t); err != nil {
				return err
			}
		}
		if err := barrier(); err != nil {
			return err
		}
		s.mu.Lock()
		for _, it := range items[lo:hi] {
			if it.t.dirty && it.t.dirtySeq == it.seq {
				it.t.dirty = false
				s.mu.dirty--
			}
		}
		s.mu.Unlock()
		lo = hi
	}
	return nil
}

// Stats returns the set's counters.
func (s *Set) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Stats{
		Hits:      s.mu.hits,
		Misses:    s.mu.misses,
		Fills:     s.mu.fills,
		Evictions: s.mu.evictions,
		Full:      s.mu.full,
		Resident:  int64(s.idx.n),
		Dirty:     s.mu.dirty,
		Pinned:    s.mu.pinned,
	}
}

// Key returns the table's key.
func (t *Table) Key() Key { return t.key }

// Slot returns the table's index in its set, in [0, Capacity): stable for
// the set's life, so a caller may keep per-slot state beside the set.
func (t *Table) Slot() int { return int(t.slot) }

// Data returns the table's bytes (len Config.TableSize). See Table for the
// locking rules.
func (t *Table) Data() []byte { return t.data }

// RLock, RUnlock, Lock and Unlock guard the table's bytes.
func (t *Table) RLock()   { t.rw.RLock() }
func (t *Table) RUnlock() { t.rw.RUnlock() }
func (t *Table) Lock()    { t.rw.Lock() }
func (t *Table) Unlock()  { t.rw.Unlock() }

// Pin adds a pin for another holder, who must Unpin it.
// REQUIRES: the caller holds a pin.
func (t *Table) Pin() {
	s := t.set
	s.mu.Lock()
	if t.pins <= 0 {
		s.failLocked("cache: Pin of unpinned table %+v", t.key)
	}
	t.pins++
	s.mu.Unlock()
}

// Unpin drops one pin. After the last, the table may be evicted (if clean)
// and the caller must not touch it again.
func (t *Table) Unpin() {
	s := t.set
	s.mu.Lock()
	s.unpinLocked(t)
	s.mu.Unlock()
}

// MarkDirty records that the bytes were modified and must be written back at
// level (or a higher level it already had: a table dirtied at several
// levels is written at the highest, after everything below). A dirty table
// is never evicted.
// REQUIRES: the caller holds a pin; no Flush of the set is running.
func (t *Table) MarkDirty(level Level) {
	s := t.set
	s.mu.Lock()
	if t.pins <= 0 {
		s.failLocked("cache: MarkDirty of unpinned table %+v", t.key)
	}
	if invariants.Enabled && s.mu.flushing {
		s.failLocked("cache: MarkDirty of %+v during Flush", t.key)
	}
	t.dirtySeq++
	if t.state != stateReady {
		s.mu.Unlock() // discarded while pinned: nothing to write back
		return
	}
	if !t.dirty {
		t.dirty = true
		t.level = level
		s.mu.dirty++
	} else if level > t.level {
		t.level = level
	}
	s.mu.Unlock()
}

// Dirty reports whether the table has modifications not yet flushed.
func (t *Table) Dirty() bool {
	s := t.set
	s.mu.Lock()
	defer s.mu.Unlock()
	return t.dirty
}
