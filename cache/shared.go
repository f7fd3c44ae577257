package cache

import (
	"fmt"
	"sync/atomic"

	"github.com/dgraph-io/ristretto/v2"
)

// Shared is the Clean cache built on ristretto v2 (PolicyTinyLFU): sharded
// storage, TinyLFU admission and sampled-LFU eviction, with costs in bytes.
//
// Ristretto applies Sets later, on its own goroutine, and may drop, reject,
// delay or reorder them (qcow2.md §4.1). Shared is correct under all of
// that because it only ever holds clean, immutable copies and checks each
// hit against the full Key and the caller's generation:
//   - a dropped or rejected Set is a later miss and reload;
//   - a delayed Set is invisible for a while (concurrent misses share one
//     load through Fill's singleflight);
//   - a stale Set applied late carries an old generation, which no lookup
//     accepts, and ShouldUpdate refuses to let it replace a newer copy.
//
// Close must be called: ristretto runs two goroutines and a ticker.
type Shared struct {
	c       *ristretto.Cache[uint64, *cleanEntry]
	keyOf   func(Key) uint64 // rawKey; a field so benchmarks can compare
	waitSet bool             // benchmark only: ristretto.Wait after each fill's Set
	closed  atomic.Bool
	fl      flights

	hits, misses paddedCounter
	stale, fills, joined, evictions,
	rejected, dropped atomic.Uint64
}

// NewShared returns a ristretto-backed Clean cache. cfg.Policy is ignored.
func NewShared(cfg CleanConfig) (*Shared, error) {
	return newShared(cfg, mixKeyToHash)
}

// newShared lets benchmarks pass nil for ristretto's default (identity)
// KeyToHash on raw keys.
func newShared(cfg CleanConfig, keyToHash func(uint64) (uint64, uint64)) (*Shared, error) {
	tableSize := int64(cfg.TableSize)
	if tableSize == 0 {
		tableSize = 64 << 10
	}
	tables := cfg.MaxBytes / tableSize
	if tables < 1 {
		tables = 1
	}
	s := &Shared{keyOf: Key.rawKey}
	c, err := ristretto.NewCache(&ristretto.Config[uint64, *cleanEntry]{
		// Ten counters per table that fits, as ristretto recommends.
		NumCounters: 10 * tables,
		MaxCost:     cfg.MaxBytes,
		BufferItems: 64,
		// Cost is table bytes and MaxBytes is a budget for table bytes;
		// ristretto's ~48 bytes of bookkeeping per item are left out, as
		// they are next to 4-64 KiB tables.
		IgnoreInternalCost: true,
		KeyToHash:          keyToHash,
		// A late Set never replaces a newer copy of the same table.
		ShouldUpdate: func(cur, prev *cleanEntry) bool {
			return cur.key != prev.key || cur.gen >= prev.gen
		},
		// OnEvict and OnReject run on ristretto's goroutine, concurrently
		// with Gets that returned the same entry: count, never recycle.
		OnEvict:  func(*ristretto.Item[*cleanEntry]) { s.evictions.Add(1) },
		OnReject: func(*ristretto.Item[*cleanEntry]) { s.rejected.Add(1) },
	})
	if err != nil {
		return nil, fmt.Errorf("cache: ristretto: %w", err)
	}
	s.c = c
	return s, nil
}

// Get implements Clean.
func (s *Shared) Get(key Key, gen uint64) ([]byte, bool) {
	e, ok := s.c.Get(s.keyOf(key))
	if !ok || e.key != key {
		s.misses.Add(1)
		return nil, false
	}
	if e.gen != gen {
		// No Del: it blocks on ristretto's Set buffer, and the entry
		// can never match again (generations do not repeat), so the
		// policy will evict it.
		s.stale.Add(1)
		s.misses.Add(1)
		return nil, false
	}
	s.hits.Add(1)
	return e.data, true
}

// Contains implements Clean. Ristretto counts the access in its frequency
// sketch, which is the point.
func (s *Shared) Contains(key Key, gen uint64) bool {
	e, ok := s.c.Get(s.keyOf(key))
	return ok && e.key == key && e.gen == gen
}

// Fill implements Clean.
func (s *Shared) Fill(key Key, gen uint64, load func(Key) ([]byte, error)) ([]byte, error) {
	if data, ok := s.Get(key, gen); ok {
		return data, nil
	}
	if s.closed.Load() {
		return nil, ErrClosed
	}
	data, joined, err := s.fl.do(key, gen, func(k Key) ([]byte, error) {
		s.fills.Add(1)
		d, err := load(k)
		if err == nil {
			s.offer(k, gen, d)
		}
		return d, err
	})
	if joined {
		s.joined.Add(1)
	}
	return data, err
}

// Offer implements Clean.
func (s *Shared) Offer(key Key, gen uint64, data []byte) {
	s.offer(key, gen, data)
}

func (s *Shared) offer(key Key, gen uint64, data []byte) {
	if s.closed.Load() || len(data) == 0 {
		return
	}
	if !s.c.Set(s.keyOf(key), &cleanEntry{key: key, gen: gen, data: data}, int64(len(data))) {
		s.dropped.Add(1)
		return
	}
	if s.waitSet {
		s.c.Wait()
	}
}

// Stats implements Clean. Resident is not tracked by ristretto without its
// metrics, which cost on every Get; it stays 0.
func (s *Shared) Stats() Stats {
	return Stats{
		Hits:      s.hits.Load(),
		Misses:    s.misses.Load(),
		Stale:     s.stale.Load(),
		Fills:     s.fills.Load(),
		Joined:    s.joined.Load(),
		Evictions: s.evictions.Load(),
		Rejected:  s.rejected.Load(),
		Dropped:   s.dropped.Load(),
	}
}

// Close implements Clean: it stops ristretto's goroutines and ticker.
// Calling it again does nothing.
// REQUIRES: no Offer or Fill runs concurrently with Close (ristretto's
// Close closes the channel a concurrent Set sends on).
func (s *Shared) Close() {
	if s.closed.Swap(true) {
		return
	}
	s.c.Close()
}
